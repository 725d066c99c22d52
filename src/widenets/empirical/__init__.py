"""Empirical (finite-width) kernels: of any torch.nn.Module, and Monte-Carlo averages."""

from widenets.empirical.monte_carlo import MonteCarloKernel, monte_carlo
from widenets.empirical.ntk import nngp, ntk

__all__ = ["MonteCarloKernel", "monte_carlo", "nngp", "ntk"]
