"""Closed-form predictions of infinitely wide networks from their NNGP/NTK kernels.

- :func:`gp_inference`: exact NNGP (Bayesian) posterior;
- :func:`student_t_inference`: the Student-t process of an inverse-gamma prior on the
  readout variance (scale mixture of the NNGP);
- :func:`gradient_descent_mse`: outputs under gradient flow on the MSE loss at any time
  (with ``momentum``: heavy ball in the continuous-time limit, in closed form);
- :func:`gradient_descent`: gradient flow on any differentiable loss (e.g.
  :func:`cross_entropy`), by integrating the function-space ODE (with or without momentum);
- :func:`max_learning_rate`: the largest stable step of (momentum) gradient descent on MSE;
- :func:`ensemble` / :func:`ensemble_from_kernels`: mean and covariance of the infinite
  ensemble of networks trained by gradient flow (Lee et al. 2019);
- :func:`gp_mean_pcg` / :func:`gradient_descent_mse_pcg`: the NNGP posterior mean and the
  t = inf gradient-flow outputs at large N, by preconditioned conjugate gradients over a
  kernel given by row tiles (:class:`DenseKernel`, :class:`NetworkKernel`,
  :class:`RowFunctionKernel`), never factorised or held whole (``docs/large_n.md``).

Conventions follow Neural Tangents: ``diag_reg`` is relative to the mean diagonal of the
train kernel, and the loss is ||f(X_train) - y||^2 / (2 * y_train.numel()).
"""

from widenets.predict.ensemble import ensemble, ensemble_from_kernels
from widenets.predict.gp import gp_inference
from widenets.predict.gradient_descent_mse import GradientDescentMSEPredictor, gradient_descent_mse
from widenets.predict.gradient_flow import (
    GradientDescentPredictor,
    cross_entropy,
    gradient_descent,
)
from widenets.predict.learning_rate import max_learning_rate
from widenets.predict.operators import (
    DenseKernel,
    KernelOperator,
    NetworkKernel,
    RowFunctionKernel,
)
from widenets.predict.pcg import (
    ConvergenceError,
    ConvergenceWarning,
    PCGPrediction,
    PCGResult,
    gp_mean_pcg,
    gradient_descent_mse_pcg,
    pcg_solve,
)
from widenets.predict.preconditioners import LowRankPreconditioner, nystrom, rpcholesky
from widenets.predict.student_t import StudentTPosterior, student_t_inference

__all__ = [
    "ConvergenceError",
    "ConvergenceWarning",
    "DenseKernel",
    "GradientDescentMSEPredictor",
    "GradientDescentPredictor",
    "KernelOperator",
    "LowRankPreconditioner",
    "NetworkKernel",
    "PCGPrediction",
    "PCGResult",
    "RowFunctionKernel",
    "StudentTPosterior",
    "cross_entropy",
    "ensemble",
    "ensemble_from_kernels",
    "gp_inference",
    "gp_mean_pcg",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_pcg",
    "max_learning_rate",
    "nystrom",
    "pcg_solve",
    "rpcholesky",
    "student_t_inference",
]
