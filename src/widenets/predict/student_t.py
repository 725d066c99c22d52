"""Student-t process posterior: the NNGP with an inverse-gamma prior on the last layer's variance.

Lee et al. 2022 ("Scale Mixtures of Neural Network Gaussian Processes", ICLR): if the
readout of a network is scaled so that its output covariance is sigma^2 K (K the NNGP kernel
at sigma^2 = 1) and sigma^2 ~ InvGamma(alpha, beta), the infinite-width prior is a Student-t
process. With observation noise also scaled by sigma^2 (K_reg = K + diag_reg I, as in
:func:`gp_inference`), m = N O targets sharing sigma^2 and d = sum_o y_o^T K_reg^{-1} y_o:

- marginal: vec(y) ~ MVT_{2 alpha}(0, (beta / alpha) I_O (x) K_reg);
- posterior of sigma^2: InvGamma(alpha' = alpha + m / 2, beta' = beta + d / 2);
- predictive of the latent outputs: f_* | y ~ MVT_{2 alpha'}(mean, scale) per output channel,
  mean = K_* K_reg^{-1} y, scale = (beta' / alpha') (K_** - K_* K_reg^{-1} K_*^T);
  its covariance is scale * nu / (nu - 2) for nu = 2 alpha' > 2;
- log marginal likelihood  log Gamma(alpha') - log Gamma(alpha) - (m/2) log(2 pi beta)
  - (O/2) log det K_reg - alpha' log(1 + d / (2 beta)).

As alpha -> inf with beta / alpha fixed at s, sigma^2 concentrates at s and this becomes
:func:`gp_inference` with kernel s K.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from widenets.predict import _validation as v
from widenets.predict._linalg import cholesky, regularize


class StudentTPosterior(NamedTuple):
    """Predictive Student-t of the test outputs and the evidence of the training data."""

    mean: Tensor
    scale: Tensor | None
    df: float
    log_marginal_likelihood: float
    alpha: float
    beta: float

    @property
    def covariance(self) -> Tensor | None:
        """scale * df / (df - 2); infinite when df <= 2."""
        if self.scale is None:
            return None
        if self.df <= 2:
            return torch.full_like(self.scale, math.inf)
        return self.scale * (self.df / (self.df - 2))


def student_t_inference(
    k_train_train,
    y_train,
    k_test_train=None,
    k_test_test=None,
    alpha: float = 2.0,
    beta: float = 2.0,
    diag_reg: float = 0.0,
    *,
    diag_reg_absolute_scale: bool = False,
) -> StudentTPosterior:
    """Posterior predictive of a Student-t process (inverse-gamma scale mixture of a GP).

    Args:
        k_train_train: (N, N) kernel at sigma^2 = 1 (e.g. ``net.kernel(x_train).nngp``).
        y_train: (N,) or (N, O) targets; all O channels share sigma^2.
        k_test_train: (N_test, N); None evaluates at the training points.
        k_test_test: (N_test, N_test) for the scale matrix; None skips it.
        alpha, beta: shape and scale of the InvGamma(alpha, beta) prior on sigma^2 (> 0).
        diag_reg: noise variance relative to mean(diag(k_train_train)) (absolute with
            ``diag_reg_absolute_scale``); the noise is scaled by sigma^2 as well.

    Returns:
        :class:`StudentTPosterior` with ``mean`` (N_test, O) or (N_test,), ``scale``
        (N_test, N_test) or None, ``df`` = 2 alpha + N O, ``log_marginal_likelihood``, and
        the posterior ``alpha``, ``beta`` of sigma^2.
    """
    alpha = v.check_scalar(alpha, "alpha", positive=True)
    beta = v.check_scalar(beta, "beta", positive=True)
    k_dd, y, k_td, k_tt, diag_reg, dtype = v.posterior_inputs(
        k_train_train, y_train, k_test_train, k_test_test, diag_reg
    )
    n = k_dd.shape[0]

    chol = cholesky(regularize(k_dd, diag_reg, diag_reg_absolute_scale))
    y2 = y.to(torch.float64).reshape(n, -1)
    n_out = y2.shape[1]
    m = n * n_out
    alpha_post = alpha + m / 2
    kinv_y = torch.cholesky_solve(y2, chol)
    d = float((y2 * kinv_y).sum())
    beta_post = beta + d / 2
    logdet = 2.0 * float(torch.log(torch.diagonal(chol)).sum())
    lml = (
        math.lgamma(alpha_post)
        - math.lgamma(alpha)
        - (m / 2) * math.log(2 * math.pi * beta)
        - (n_out / 2) * logdet
        - alpha_post * math.log1p(d / (2 * beta))
    )
    k_td64 = k_td.to(torch.float64)
    mean = (k_td64 @ kinv_y).reshape((k_td.shape[0],) + tuple(y.shape[1:])).to(dtype)
    scale = None
    if k_tt is not None:
        w = torch.linalg.solve_triangular(chol, k_td64.T, upper=False)
        cov = k_tt.to(torch.float64) - w.T @ w
        scale = ((cov + cov.T) / 2 * (beta_post / alpha_post)).to(dtype)
    return StudentTPosterior(mean, scale, 2 * alpha_post, lml, alpha_post, beta_post)
