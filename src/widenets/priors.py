"""Priors on the last layer's variance: finite networks of a scale mixture of NNGPs.

``net.build(..., last_layer_variance_prior=InverseGamma(alpha, beta))`` draws
sigma^2 ~ InvGamma(alpha, beta) once per network and multiplies the network's output (its
readout's weights and bias) by sqrt(sigma^2). Given sigma^2 a wide network is then a GP with
kernel sigma^2 K, and marginally a Student-t process with 2 alpha degrees of freedom and
scale (beta / alpha) K (Lee et al. 2022, "Scale Mixtures of Neural Network Gaussian
Processes"); :func:`widenets.predict.student_t_inference` is its posterior.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from widenets.predict._validation import check_scalar


class InverseGamma:
    """sigma^2 ~ InvGamma(alpha, beta): density prop. to s^{-alpha-1} exp(-beta / s).

    Mean beta / (alpha - 1) for alpha > 1; sampled as beta / Gamma(alpha, 1).
    """

    def __init__(self, alpha: float, beta: float):
        self.alpha = check_scalar(alpha, "alpha", positive=True)
        self.beta = check_scalar(beta, "beta", positive=True)

    def __repr__(self):
        return f"InverseGamma(alpha={self.alpha}, beta={self.beta})"

    @property
    def mean(self) -> float:
        return self.beta / (self.alpha - 1) if self.alpha > 1 else math.inf

    def sample(self, generator: torch.Generator) -> float:
        """One draw, reproducible from the torch ``generator``."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        g = np.random.default_rng(seed).standard_gamma(self.alpha)
        return self.beta / float(g)


def as_variance_prior(prior) -> InverseGamma:
    """An :class:`InverseGamma`, from itself or an (alpha, beta) pair."""
    if isinstance(prior, InverseGamma):
        return prior
    if isinstance(prior, (tuple, list)) and len(prior) == 2:
        return InverseGamma(*prior)
    raise TypeError(
        "`last_layer_variance_prior` must be a widenets.priors.InverseGamma or an "
        f"(alpha, beta) pair, got {prior!r}."
    )


class ScaledOutput(nn.Module):
    """``module``'s output times sqrt(``variance``) (the readout rescaled by sqrt(sigma^2))."""

    def __init__(self, module: nn.Module, variance: float):
        super().__init__()
        self.module = module
        self.variance = float(variance)
        self.scale = math.sqrt(self.variance)

    def forward(self, x) -> Tensor:
        return self.module(x) * self.scale

    def extra_repr(self) -> str:
        return f"variance={self.variance:.6g}"


def apply_variance_prior(module: nn.Module, prior, generator: torch.Generator) -> ScaledOutput:
    """Draw sigma^2 from ``prior`` and wrap ``module`` so its output is scaled by sigma."""
    return ScaledOutput(module, as_variance_prior(prior).sample(generator))
