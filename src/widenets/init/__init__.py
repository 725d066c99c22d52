"""Initialisers for finite networks: ``net.build(..., init=scheme)`` or ``apply(model, scheme)``.

Schemes draw weights with entries of mean 0 and variance 1 (the layer applies
w_std / sqrt(fan_in)), so every scheme here has the infinite-width kernel of the Gaussian
IID network: the IID family (Gaussian, uniform, generalised Gaussian) and the pseudo-IID
family (orthogonal, low-rank, sparse) of Nait Saada et al. 2024. ``scaled`` sets the overall
output scale alpha (lazy versus rich training). The mean-field / maximal-update
parameterisation is ``wn.Dense(..., parameterization="mean_field")`` (alias "mup").
"""

from widenets.init.apply import apply
from widenets.init.schemes import (
    Gaussian,
    GeneralizedGaussian,
    LowRank,
    Orthogonal,
    Scheme,
    Sparse,
    Uniform,
)
from widenets.layers.scaled import Scaled, ScaledModule, scaled  # the output scale (a layer)

__all__ = [
    "Gaussian",
    "GeneralizedGaussian",
    "LowRank",
    "Orthogonal",
    "Scaled",
    "ScaledModule",
    "Scheme",
    "Sparse",
    "Uniform",
    "apply",
    "scaled",
]
