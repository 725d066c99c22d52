"""Exact Gaussian-process (NNGP) posterior from kernel matrices."""

from __future__ import annotations

import torch
from torch import Tensor

from widenets.numerics import is_reduced
from widenets.predict import _validation as v
from widenets.predict._linalg import (
    cholesky,
    extreme_eigenvalues,
    regularize,
    warn_if_ill_conditioned,
)


def gp_inference(
    k_train_train,
    y_train,
    k_test_train=None,
    k_test_test=None,
    *,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Posterior of a GP with prior covariance ``k`` conditioned on (X_train, y_train).

    With K = k_train_train + diag_reg * mean(diag(k_train_train)) * I (or + diag_reg * I if
    ``diag_reg_absolute_scale``), K_* = k_test_train and K_** = k_test_test:

        mean = K_* K^{-1} y,    cov = K_** - K_* K^{-1} K_*^T,

    computed with a Cholesky factorisation of K (Rasmussen & Williams 2006, eq. 2.19; for
    the NNGP kernel this is the Bayesian posterior of an infinitely wide network, Lee et al.
    2018, "Deep Neural Networks as Gaussian Processes").

    Args:
        k_train_train: (N, N) train-train kernel (torch tensor or numpy array).
        y_train: (N,) or (N, O) targets.
        k_test_train: (N_test, N) test-train kernel. None evaluates the posterior at the
            training points, i.e. uses K_* = k_train_train (un-regularised), so with
            ``diag_reg`` > 0 the mean is the regularised fit K_* K^{-1} y, not y itself.
        k_test_test: (N_test, N_test) test-test kernel for the covariance (with
            ``k_test_train=None`` pass k_train_train); None skips the covariance.
        diag_reg: non-negative diagonal regulariser (observation-noise variance), relative
            to mean(diag(k_train_train)) unless ``diag_reg_absolute_scale``.
        diag_reg_absolute_scale: treat ``diag_reg`` as an absolute variance.

    Returns:
        ``(mean, cov)``: mean of shape (N_test, O), or (N_test,) if ``y_train`` is 1-D; cov of
        shape (N_test, N_test), symmetric, or None if ``k_test_test`` is None. The dtype is
        the promoted floating dtype of the inputs (float64 for integer inputs).

    Raises:
        ValueError: bad shapes, NaN/inf, negative ``diag_reg``, or a regularised
            ``k_train_train`` that is not positive definite (increase ``diag_reg``).

    Warns:
        ReducedPrecisionWarning: ``k_train_train`` is float32/float16/bfloat16 and its
            estimated condition number times the dtype's eps exceeds 1e-2, so that its
            own rounding may change the test prediction by more than ~1% (the message
            says by how much and which ``diag_reg`` would bound it).
    """
    k_dd, y, k_td, k_tt, diag_reg, dtype = v.posterior_inputs(
        k_train_train, y_train, k_test_train, k_test_test, diag_reg
    )
    n = k_dd.shape[0]

    k_reg = regularize(k_dd, diag_reg, diag_reg_absolute_scale)
    chol = cholesky(k_reg, dtype=k_dd.dtype)
    if k_test_train is not None and is_reduced(k_dd.dtype):
        # a kernel in reduced precision: is its rounding amplified past ~1% by the solve?
        # (at the training points themselves the perturbation cancels: K K^-1 y = y)
        lam_max, lam_min = extreme_eigenvalues(k_reg, chol)
        warn_if_ill_conditioned(
            k_dd.dtype,
            lam_max,
            lam_min,
            float(k_dd.diagonal().to(torch.float64).mean()),
            diag_reg=diag_reg,
            absolute=diag_reg_absolute_scale,
        )
    y2 = y.to(torch.float64).reshape(n, -1)
    k_td64 = k_td.to(torch.float64)
    mean = k_td64 @ torch.cholesky_solve(y2, chol)
    mean = mean.reshape((k_td.shape[0],) + tuple(y.shape[1:])).to(dtype)

    cov = None
    if k_tt is not None:
        # L^{-1} K_*^T, so that K_* K^{-1} K_*^T = W^T W.
        w = torch.linalg.solve_triangular(chol, k_td64.T, upper=False)
        cov = k_tt.to(torch.float64) - w.T @ w
        cov = ((cov + cov.T) / 2).to(dtype)
    return mean, cov
