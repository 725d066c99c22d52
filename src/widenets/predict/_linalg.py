"""Regularisation, Cholesky and eigendecomposition helpers shared by ``widenets.predict``.

All computations run in float64; callers cast results back to the inputs' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def regularize(k: Tensor, diag_reg: float, diag_reg_absolute_scale: bool) -> Tensor:
    """K + diag_reg * s * I in float64, with s = mean(diag(K)) (or s = 1 if absolute).

    The input is also symmetrised, (K + K^T) / 2, to remove round-off asymmetry.
    """
    k = k.to(torch.float64)
    k = (k + k.T) / 2
    if diag_reg == 0.0:
        return k
    scale = 1.0 if diag_reg_absolute_scale else float(torch.diagonal(k).mean())
    return k + (diag_reg * scale) * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)


def cholesky(k_reg: Tensor, name: str = "k_train_train") -> Tensor:
    """Lower Cholesky factor of a regularised kernel; a ValueError if it is not PD."""
    chol, info = torch.linalg.cholesky_ex(k_reg)
    if int(info) != 0:
        raise ValueError(
            f"`{name}` (plus the diagonal regulariser) is not positive definite, so its "
            f"Cholesky factorisation failed (leading minor of order {int(info)}). Pass a "
            f"larger `diag_reg` (e.g. 1e-6 relative to the mean diagonal, or more)."
        )
    return chol


class Spectrum:
    """Eigendecomposition K = V diag(e) V^T of a regularised kernel and the time functions
    of gradient flow in its eigenbasis, with tau = learning_rate * t / y_train.numel().

    Eigenvalues below zero (round-off of a PSD matrix) are clipped to 0. Eigenvalues
    e <= rtol * max(e), rtol = N * eps(float64) (the default cutoff of ``torch.linalg.pinv``),
    count as exactly zero at every tau, finite or infinite: their directions are never
    learned, so the outputs at a large finite tau tend to those at tau = inf (a pseudo-inverse)
    instead of drifting linearly in tau along a null direction of the kernel. Any
    positive-definite kernel with condition number below 1 / rtol is therefore inverted
    exactly, which makes the t = inf limit equal to kernel ridge regression.
    """

    def __init__(self, k_reg: Tensor):
        evals, evecs = torch.linalg.eigh(k_reg.to(torch.float64))
        self.evals = evals.clamp_min(0.0)
        self.evecs = evecs
        n = evals.shape[0]
        self.cutoff = n * torch.finfo(torch.float64).eps * float(self.evals.max())

    def _eval(self, tau: Tensor, finite_fn, inf_fn) -> Tensor:
        """(T, N) values: finite_fn(e, tau) for finite tau, inf_fn(e) where tau = inf."""
        tau = tau.to(self.evals.device, torch.float64)[:, None]
        is_inf = torch.isinf(tau)
        tau_finite = torch.where(is_inf, torch.zeros_like(tau), tau)
        e = self.evals[None, :]
        return torch.where(is_inf, inf_fn(e), finite_fn(e, tau_finite))

    def _learned(self, e: Tensor) -> Tensor:
        return e > self.cutoff

    def growth(self, tau: Tensor) -> Tensor:
        """1 - exp(-e tau), i.e. the eigenvalues of I - exp(-K tau) (0 where e is cut off)."""

        def finite(e: Tensor, t: Tensor) -> Tensor:
            return torch.where(self._learned(e), -torch.expm1(-e * t), torch.zeros_like(e * t))

        return self._eval(tau, finite, lambda e: self._learned(e).to(e.dtype))

    def decay(self, tau: Tensor) -> Tensor:
        """exp(-e tau), i.e. the eigenvalues of exp(-K tau) (1 where e is cut off)."""

        def finite(e: Tensor, t: Tensor) -> Tensor:
            return torch.where(self._learned(e), torch.exp(-e * t), torch.ones_like(e * t))

        return self._eval(tau, finite, lambda e: (~self._learned(e)).to(e.dtype))

    def growth_over_e(self, tau: Tensor) -> Tensor:
        """(1 - exp(-e tau)) / e: eigenvalues of K^+ (I - exp(-K tau)), 0 where e is cut off
        (the limit e -> 0 would be tau, growing without bound on a null direction)."""

        def finite(e: Tensor, t: Tensor) -> Tensor:
            learned = self._learned(e)
            safe = torch.where(learned, e, torch.ones_like(e))
            return torch.where(learned, -torch.expm1(-e * t) / safe, torch.zeros_like(e * t))

        def inf(e: Tensor) -> Tensor:
            learned = self._learned(e)
            safe = torch.where(learned, e, torch.ones_like(e))
            return torch.where(learned, 1.0 / safe, torch.zeros_like(e))

        return self._eval(tau, finite, inf)
