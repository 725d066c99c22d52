"""Empirical (finite-width) kernels of any torch.nn.Module, and Monte-Carlo averages."""

from widenets.empirical.cost import CostReport
from widenets.empirical.monte_carlo import MonteCarloKernel, monte_carlo
from widenets.empirical.ntk import explain, nngp, ntk
from widenets.empirical.params import all_but_embeddings, norm_affine, readout, select_params

__all__ = [
    "CostReport",
    "MonteCarloKernel",
    "all_but_embeddings",
    "explain",
    "monte_carlo",
    "nngp",
    "norm_affine",
    "ntk",
    "readout",
    "select_params",
]
