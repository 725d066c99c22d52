"""Regularisation, Cholesky and eigendecomposition helpers shared by ``widenets.predict``.

All computations run in float64; callers cast results back to the inputs' dtype.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from widenets.errors import ReducedPrecisionWarning
from widenets.numerics import is_reduced


def regularize(k: Tensor, diag_reg: float, diag_reg_absolute_scale: bool) -> Tensor:
    """K + diag_reg * s * I in float64, with s = mean(diag(K)) (or s = 1 if absolute).

    The input is also symmetrised, (K + K^T) / 2, to remove round-off asymmetry.
    """
    k = k.to(torch.float64)
    k = (k + k.T).mul_(0.5)  # one N x N allocation; * 0.5 is / 2 exactly
    if diag_reg == 0.0:
        return k
    scale = 1.0 if diag_reg_absolute_scale else float(torch.diagonal(k).mean())
    k.diagonal().add_(diag_reg * scale)
    return k


def cholesky(k_reg: Tensor, name: str = "k_train_train", dtype=None) -> Tensor:
    """Lower Cholesky factor of a regularised kernel; a ValueError if it is not PD
    (``dtype``: that of the kernel as given, for the advice on reduced precision)."""
    chol, info = torch.linalg.cholesky_ex(k_reg)
    if int(info) != 0:
        wider = ""
        if dtype is not None and is_reduced(dtype):
            eps = torch.finfo(dtype).eps
            wider = (
                f" It is {str(dtype).replace('torch.', '')}, whose rounding (eps = {eps:.2g}) "
                "can make a nearly singular kernel (near-duplicate inputs) indefinite: "
                "compute it in float64, or pass a `diag_reg` well above that eps."
            )
        raise ValueError(
            f"`{name}` (plus the diagonal regulariser) is not positive definite, so its "
            f"Cholesky factorisation failed (leading minor of order {int(info)}). Pass a "
            f"larger `diag_reg` (e.g. 1e-6 relative to the mean diagonal, or more).{wider}"
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


#: a reduced-precision train kernel whose (effective) condition number times its dtype's
#: eps exceeds this gets a ReducedPrecisionWarning: its rounding errors, of relative size
#: eps, may then change the prediction by more than about this fraction
CONDITION_RISK = 1e-2


def extreme_eigenvalues(k_reg: Tensor, chol: Tensor, iterations: int = 4) -> tuple[float, float]:
    """Estimates of the largest and smallest eigenvalues of a positive-definite matrix from
    its Cholesky factor, in O(N^2) per iteration (a few power and inverse iterations; the
    smallest is also bounded by the smallest pivot squared). Both tend to be slightly low
    (high) respectively, so their ratio rarely overstates the condition number."""
    n = k_reg.shape[0]
    g = torch.Generator(device="cpu").manual_seed(0)
    v = torch.rand(n, 1, generator=g, dtype=torch.float64).to(k_reg.device) + 0.5
    u = v.clone()
    for _ in range(iterations):
        v = k_reg @ v
        v = v / v.norm()
        u = torch.cholesky_solve(u, chol)
        u = u / u.norm()
    lam_max = float((v.T @ k_reg @ v).item())
    lam_min = float((u.T @ k_reg @ u).item())
    pivot = float(chol.diagonal().min()) ** 2
    return max(lam_max, float(k_reg.diagonal().max())), min(lam_min, pivot)


def warn_if_ill_conditioned(
    dtype,
    lam_max: float,
    lam_min: float,
    mean_diag: float,
    *,
    diag_reg: float,
    absolute: bool,
    name: str = "k_train_train",
    tau: float = math.inf,
) -> None:
    """A ReducedPrecisionWarning if the train kernel, stored in a reduced precision
    ``dtype``, is too ill-conditioned for a prediction that applies (I - exp(-K tau)) K^-1
    (tau = inf: K^-1 itself; a finite tau bounds the amplification by lam_max tau).

    The estimate is eps(dtype) * lam_max / max(lam_min, 1 / tau) (of the regularised kernel):
    a perturbation of relative size eps, the kernel's own rounding, changes such a solve by
    up to about that fraction. The message gives the estimate and the remedies: the kernel
    in float64, or the ``diag_reg`` that brings the estimate down to CONDITION_RISK."""
    if dtype is None or not dtype.is_floating_point or not is_reduced(dtype):
        return
    eps = torch.finfo(dtype).eps
    floor = max(lam_min, 0.0) if math.isinf(tau) else max(lam_min, 1.0 / tau)
    cond = lam_max / floor if floor > 0 else math.inf
    if not eps * cond > CONDITION_RISK:
        return
    # r added to the diagonal makes (lam_max + r) / (lam_min + r) * eps = CONDITION_RISK
    extra = (eps * lam_max - CONDITION_RISK * max(lam_min, 0.0)) / (CONDITION_RISK - eps)
    unit = 1.0 if absolute else mean_diag
    needed = diag_reg + extra / unit
    suggestion = float(f"{needed:.0e}")
    suggestion = suggestion if suggestion >= needed else float(f"{needed * 1.5:.0e}")
    where = "" if math.isinf(tau) else f" at the training time asked for (tau = {tau:.3g})"
    scale = "absolute" if absolute else "relative to the mean diagonal"
    warnings.warn(
        ReducedPrecisionWarning(
            f"`{name}` is {str(dtype).replace('torch.', '')} and too ill-conditioned for "
            f"this prediction: its estimated condition number{where} is {cond:.3g}, so its "
            f"rounding errors (eps = {eps:.2g}) may change the prediction by up to about "
            f"{100 * eps * cond:.3g}%. Compute the kernel in float64 "
            "(net.kernel(..., dtype=torch.float64)), or pass diag_reg >= "
            f"{suggestion:.0e} ({scale}) to bring that below {100 * CONDITION_RISK:g}%."
        ),
        stacklevel=_user_stacklevel(),
    )


def _user_stacklevel() -> int:
    """The stacklevel of ``warnings.warn`` that points at the first frame outside
    widenets (the user's call)."""
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(root):
        level += 1
        frame = frame.f_back
    return level
