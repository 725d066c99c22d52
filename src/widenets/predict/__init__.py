"""Closed-form predictions of infinitely wide networks from their NNGP/NTK kernels.

- :func:`gp_inference`: exact NNGP (Bayesian) posterior;
- :func:`student_t_inference`: the Student-t process of an inverse-gamma prior on the
  readout variance (scale mixture of the NNGP);
- :func:`gradient_descent_mse`: outputs under gradient flow on the MSE loss at any time;
- :func:`ensemble` / :func:`ensemble_from_kernels`: mean and covariance of the infinite
  ensemble of networks trained by gradient flow (Lee et al. 2019).

Conventions follow Neural Tangents: ``diag_reg`` is relative to the mean diagonal of the
train kernel, and the loss is ||f(X_train) - y||^2 / (2 * y_train.numel()).
"""

from widenets.predict.ensemble import ensemble, ensemble_from_kernels
from widenets.predict.gp import gp_inference
from widenets.predict.gradient_descent import GradientDescentMSEPredictor, gradient_descent_mse
from widenets.predict.student_t import StudentTPosterior, student_t_inference

__all__ = [
    "GradientDescentMSEPredictor",
    "StudentTPosterior",
    "ensemble",
    "ensemble_from_kernels",
    "gp_inference",
    "gradient_descent_mse",
    "student_t_inference",
]
