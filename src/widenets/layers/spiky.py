"""Spiky-smooth kernels and activations (Haas, Holzmueller, von Luxburg & Steinwart 2023,
"Mind the spikes: Benign overfitting of kernels and neural networks in fixed dimension").

A spiky-smooth kernel is a smooth kernel plus a small, narrow spike,

    k(x, x') = k_smooth(x, x') + rho * k_gamma(x, x'),

with k_gamma a Gaussian exp(-|x - x'|^2 / gamma^2) or Laplace exp(-|x - x'| / gamma)
kernel of small bandwidth gamma. Ridgeless regression with it interpolates the data yet,
when gamma is far below the spacing of the data, predicts like kernel ridge regression
with k_smooth and ridge rho: it overfits benignly in fixed dimension.

In a network the spike comes from the activation: phi(x) = relu(x) + a sin(w x + p).
With p = pi/4 the sine part alone has E[phi(u) phi(v)] = (a^2/2) exp(-w^2 E[(u - v)^2] / 2),
a Gaussian spike of bandwidth ~1/w in the pre-activations.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import dawsn
from torch import Tensor

from widenets.errors import as_tensor, check_finite_real, check_nonnegative
from widenets.kernel import Kernel
from widenets.layers.activations import ABRelu, Activation, Sin
from widenets.layers.base import declare

SQRT2 = math.sqrt(2.0)
SQRT_2PI = math.sqrt(2 * math.pi)
SQRT_PI = math.sqrt(math.pi)


def _dawson(t: Tensor) -> Tensor:
    """Dawson's function F(t) = exp(-t^2) int_0^t exp(s^2) ds (scipy, float64 on the CPU)."""
    out = dawsn(t.detach().cpu().to(torch.float64).numpy())
    return torch.as_tensor(np.asarray(out), dtype=t.dtype, device=t.device)


@declare
class SpikySmooth(Activation):
    """phi(x) = relu(x) + amplitude * sin(frequency * x + phase) (phase pi/4 by default).

    Kernel, exact (closed forms, no quadrature), for (u, v) ~ N(0, [[q1, K], [K, q2]]):

        E[phi(u) phi(v)] = E[relu relu] + a^2 E[sin sin] + C(q1, q2) + C(q2, q1),

    with the arc-cosine kernel for relu-relu, the Gaussian integral of :class:`Sin` for
    sin-sin, and the cross term derived by conditioning v on u (v = (K/q1) u + r):

        C(q1, q2) = E[relu(u) a sin(w v + p)]
                  = a e^{-w^2 r^2 / 2} sqrt(q1) [cos p * t e^{-t^2/2} / 2
                                                 + sin p * (1 - sqrt2 t F(t/sqrt2)) / sqrt(2 pi)],

    t = w K / sqrt(q1), r^2 = q2 - K^2 / q1 and F Dawson's function (from
    int_0^inf z phi(z) e^{i t z} dz). The NTK factor E[phi'(u) phi'(v)] likewise adds

        E[1{u > 0} a w cos(w v + p)] = a w e^{-w^2 r^2 / 2} [cos p e^{-t^2/2} / 2
                                                             - sin p F(t/sqrt2) / sqrt(pi)]

    and its mirror image to the relu and sine terms.
    """

    name = "SpikySmooth"

    amplitude: float = 0.05
    frequency: float = 20.0
    phase: float = math.pi / 4

    def __post_init__(self):
        self.amplitude = check_finite_real(self.amplitude, "amplitude")
        self.frequency = check_finite_real(self.frequency, "frequency")
        self.phase = check_finite_real(self.phase, "phase")
        self._relu = ABRelu(0.0, 1.0)
        self._sin = Sin(self.amplitude, self.frequency, self.phase)

    def fn(self, x):
        return torch.relu(x) + self.amplitude * torch.sin(self.frequency * x + self.phase)

    def _cross(self, nngp, qa, qb, want_dot):
        """E[relu(u) a sin(w v + p)] and E[1{u>0} a w cos(w v + p)], u ~ qa, v ~ qb."""
        a, w, p = self.amplitude, self.frequency, self.phase
        tiny = torch.finfo(nngp.dtype).tiny
        sa = qa.sqrt().clamp_min(tiny)
        t = nngp * w / sa
        ratio = nngp / sa
        r2 = (qb - ratio * ratio).clamp_min(0.0)
        damp = torch.exp(-(w * w / 2) * r2)
        gauss = torch.exp(-t * t / 2)
        daw = _dawson(t / SQRT2)
        value = math.cos(p) * t * gauss / 2 + math.sin(p) * (1 - SQRT2 * t * daw) / SQRT_2PI
        value = value * damp * sa * a
        dot = None
        if want_dot:
            dot = (math.cos(p) * gauss / 2 - math.sin(p) * daw / SQRT_PI) * damp * (a * w)
        return value, dot

    def pair(self, nngp, q1, q2, want_dot):
        rr, rdot = self._relu.pair(nngp, q1, q2, want_dot)
        ss, sdot = self._sin.pair(nngp, q1, q2, want_dot)
        c12, d12 = self._cross(nngp, q1, q2, want_dot)
        c21, d21 = self._cross(nngp, q2, q1, want_dot)
        out = rr + ss + c12 + c21
        dot = rdot + sdot + d12 + d21 if want_dot else None
        return out, dot


SPIKES = ("gaussian", "laplace")


def spike_kernel(x1, x2=None, *, gamma: float, spike: str = "gaussian") -> Tensor:
    """exp(-|x - x'|^2 / gamma^2) ("gaussian") or exp(-|x - x'| / gamma) ("laplace").

    Inputs are flattened per example; returns (N1, N2) in float64.
    """
    gamma = check_nonnegative(gamma, "gamma")
    if gamma == 0:
        raise ValueError("`gamma` must be a positive bandwidth, got 0.")
    if spike not in SPIKES:
        raise ValueError(f"`spike` must be one of {SPIKES}, got {spike!r}.")
    x1 = as_tensor(x1, "x1", torch.float64).flatten(1)
    x2 = x1 if x2 is None else as_tensor(x2, "x2", torch.float64).flatten(1)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(
            f"`x1` and `x2` must have the same number of features, got {x1.shape[1]} and "
            f"{x2.shape[1]}."
        )
    d2 = (x1.pow(2).sum(1)[:, None] + x2.pow(2).sum(1)[None, :] - 2 * x1 @ x2.T).clamp_min(0)
    if spike == "gaussian":
        return torch.exp(-d2 / gamma**2)
    return torch.exp(-d2.sqrt() / gamma)


def spiky_smooth_kernel(smooth, x1, x2=None, *, rho: float, gamma: float, spike="gaussian"):
    """The spiky-smooth kernel k_smooth + rho * k_gamma.

    Args:
        smooth: the smooth kernel between x1 and x2: an (N1, N2) tensor (e.g. an NTK
            matrix), or a :class:`~widenets.Kernel` from ``net.kernel(x1, x2)``, in which
            case the spike is added to both its NNGP and NTK (and to the variances), so the
            result plugs into ``gp_inference``, ``gradient_descent_mse`` and ``ensemble``.
        x1, x2: the inputs (x2 None: x1 with itself).
        rho: height of the spike (>= 0): ridgeless regression then behaves like kernel
            ridge regression with ridge rho.
        gamma: bandwidth of the spike; spike: "gaussian" or "laplace".
    """
    rho = check_nonnegative(rho, "rho")
    s = spike_kernel(x1, x2, gamma=gamma, spike=spike)
    if isinstance(smooth, Kernel):
        if smooth.nngp is not None and tuple(smooth.nngp.shape) != tuple(s.shape):
            raise ValueError(
                f"`smooth` is a kernel of shape {tuple(smooth.nngp.shape)} but x1, x2 give "
                f"{tuple(s.shape)}."
            )

        def add(t):
            return None if t is None else t + rho * s.to(t.dtype)

        cov1 = smooth.cov1 + rho
        cov2 = cov1 if smooth.cov2 is smooth.cov1 else smooth.cov2 + rho
        return smooth.replace(nngp=add(smooth.nngp), ntk=add(smooth.ntk), cov1=cov1, cov2=cov2)
    k = as_tensor(smooth, "smooth", torch.float64)
    if tuple(k.shape) != tuple(s.shape):
        raise ValueError(
            f"`smooth` must be the (N1, N2) = {tuple(s.shape)} kernel of x1 and x2, got "
            f"shape {tuple(k.shape)}."
        )
    return k + rho * s
