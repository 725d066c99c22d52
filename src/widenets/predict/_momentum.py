"""Gradient descent with heavy-ball momentum in the continuous-time limit (as Neural Tangents).

Heavy ball, v <- m v - lr dL/dtheta, theta <- theta + v, moves the linearised network's
outputs as f_{k+1} - f_k = m (f_k - f_{k-1}) - lr Theta dL/df(f_k). With h = sqrt(lr) and
tau = h * k this is, to first order in h, the damped second-order ODE

    f'' + c f' = -Theta dL/df(f),      c = (1 - m) / sqrt(lr),  f(0) = f_0,  f'(0) = 0,

Neural Tangents' ``predict.gradient_descent(..., momentum=m)``: time t counts steps and
tau = sqrt(lr) t, so ``learning_rate`` and ``t`` are not interchangeable as they are without
momentum. For the MSE loss ||f - y||^2 / (2n) each eigen-direction of Theta (eigenvalue e)
is a damped oscillator x'' + c x' + (e / n) x = 0, x(0) = 1, x'(0) = 0, whose solution is

    1 - x(tau) = (e / n) tau^2 exp[0, z_1, z_2],   z_{1,2} = tau (c / 2 -+ sqrt(c^2 / 4 - e / n)),

with exp[0, z_1, z_2] the second divided difference of w -> exp(-w) at 0, z_1, z_2 (real, or a
complex-conjugate pair when underdamped). It is read off the exponential of a 3x3 bidiagonal
matrix (McCurdy, Ng & Parlett 1984), which stays accurate through critical damping (z_1 = z_2),
e -> 0 (z_1 -> 0) and small tau, where the closed forms in cosh and sinh cancel.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor


def check_momentum(momentum, name: str = "momentum") -> float | None:
    """``None`` (plain gradient flow) or a real number in [0, 1)."""
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, (numbers.Real, np.ndarray, Tensor)):
        raise TypeError(f"`{name}` must be None or a real number in [0, 1), got {momentum!r}.")
    try:
        m = float(momentum)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"`{name}` must be None or a real number in [0, 1), got {momentum!r}."
        ) from None
    if not (0.0 <= m < 1.0):
        raise ValueError(f"`{name}` must be in [0, 1) (heavy-ball momentum), got {momentum!r}.")
    return m


def damping(learning_rate: float, momentum: float) -> float:
    """c = (1 - m) / sqrt(lr): the friction of the ODE in units tau = sqrt(lr) t."""
    return (1.0 - momentum) / math.sqrt(learning_rate)


def _phi1(x: Tensor) -> Tensor:
    """(1 - exp(-x)) / x, 1 at x = 0 (complex)."""
    zero = x == 0
    safe = torch.where(zero, torch.ones_like(x), x)
    return torch.where(zero, torch.ones_like(x), -torch.expm1(-safe) / safe)


def exp_divided_difference(z1: Tensor, z2: Tensor, d: Tensor) -> Tensor:
    """exp(-w)[0, z1, z2], the second divided difference of w -> exp(-w) (complex inputs,
    |z1| <= |z2|, ``d`` = z2 - z1 computed without cancellation).

    Where |z2| <= 1: the (0, 2) entry of expm(-A) for the bidiagonal A = [[0, 1, 0],
    [0, z1, 1], [0, 0, z2]] (any f(A) of such a matrix holds f's divided differences at its
    diagonal), accurate to a few ulps at that norm. Elsewhere the recurrence
    (f[z1, z2] - f[0, z1]) / z2 = (phi(z1) - exp(-z1) phi(d)) / z2, phi(x) = (1 - e^-x) / x,
    whose two terms do not cancel there."""
    small = z2.abs() <= 1.0
    a = torch.zeros(z1.shape + (3, 3), dtype=z1.dtype, device=z1.device)
    a[..., 0, 1] = 1.0
    a[..., 1, 2] = 1.0
    a[..., 1, 1] = torch.where(small, z1, torch.zeros_like(z1))
    a[..., 2, 2] = torch.where(small, z2, torch.zeros_like(z2))
    by_expm = torch.linalg.matrix_exp(-a)[..., 0, 2]
    big = torch.where(small, torch.ones_like(z2), z2)
    z1b = torch.where(small, torch.zeros_like(z1), z1)
    db = torch.where(small, torch.zeros_like(d), d)
    direct = (_phi1(z1b) - torch.exp(-z1b) * _phi1(db)) / big
    return torch.where(small, by_expm, direct)


def oscillator_growth_over_e(e: Tensor, tau: Tensor, c: float, n: int) -> Tensor:
    """(1 - x(tau)) / e for the damped oscillator x'' + c x' + (e / n) x = 0, x(0) = 1,
    x'(0) = 0, at eigenvalues ``e`` >= 0 (N,) and finite times ``tau`` >= 0 (T, 1): (T, N).

    Equal to tau^2 exp(-w)[0, z1, z2] / n (module docstring); at e = 0 it is the finite
    limit (c tau - 1 + exp(-c tau)) / (n c^2)."""
    w = (e / n).to(torch.complex128)[None, :]
    t = tau.to(torch.complex128)
    half = 0.5 * c
    root = torch.sqrt(half * half - w)  # real (overdamped) or imaginary (underdamped)
    z2 = t * (half + root)  # the larger node (|z2| >= |z1|), never a difference
    nonzero = z2 != 0
    z1 = torch.where(nonzero, w * t * t / torch.where(nonzero, z2, 1), torch.zeros_like(z2))
    dd = exp_divided_difference(z1, z2.expand_as(z1), (2 * t * root).expand_as(z1))
    return (tau * tau).to(torch.float64) * dd.real / n
