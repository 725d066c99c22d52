"""Closed-form predictions of infinitely wide networks from their NNGP/NTK kernels.

- :func:`gp_inference`: exact NNGP (Bayesian) posterior;
- :func:`gradient_descent_mse`: outputs under gradient flow on the MSE loss at any time;
- :func:`ensemble` / :func:`ensemble_from_kernels`: mean and covariance of the infinite
  ensemble of networks trained by gradient flow (Lee et al. 2019).

Conventions follow Neural Tangents: ``diag_reg`` is relative to the mean diagonal of the
train kernel, and the loss is ||f(X_train) - y||^2 / (2 * y_train.numel()).
"""

from widenets.predict.ensemble import ensemble, ensemble_from_kernels
from widenets.predict.gp import gp_inference
from widenets.predict.gradient_descent import GradientDescentMSEPredictor, gradient_descent_mse

__all__ = [
    "GradientDescentMSEPredictor",
    "ensemble",
    "ensemble_from_kernels",
    "gp_inference",
    "gradient_descent_mse",
]
