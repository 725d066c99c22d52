"""Kernels of any elementwise activation by Gauss-Hermite quadrature.

For (u, v) ~ N(0, [[q1, K], [K, q2]]) write u = sqrt(q1) z1 and
v = sqrt(q2) (c z1 + sqrt(1 - c^2) z2) with z1, z2 independent standard normals, so

    E[phi(u) phi(v)] ~= sum_i sum_j w_i w_j phi(sqrt(q1) z_i) phi(sqrt(q2)(c z_i + s z_j))

on the probabilists' Gauss-Hermite nodes z_i and weights w_i (exact for polynomials of
degree < 2n in each variable). The NTK needs E[phi'(u) phi'(v)], the same sum over phi',
which is taken from ``fn`` by autograd.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import field

import numpy as np
import torch
from torch import Tensor

from widenets.errors import check_positive_int
from widenets.layers.activations import Activation, correlation, outer_sqrt
from widenets.layers.base import declare

DEFAULT_DEGREE = 128
#: numpy's Gauss-Hermite weights overflow to NaN beyond about 370 points
MAX_DEGREE = 360
#: the composite Gauss-Legendre rule (``panels``): Legendre points per panel, half-width
PANEL_POINTS = 16
HALF_WIDTH = 9.0


@functools.lru_cache(maxsize=32)
def _panels_numpy(panels: int, points: int, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(points)
    h = 2.0 * half_width / panels
    left = -half_width + h * np.arange(panels)
    z = (left[:, None] + h * (x[None, :] + 1.0) / 2.0).ravel()
    density = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    return z, np.tile(w, panels) * (h / 2.0) * density


def panel_nodes(panels: int, points: int, half_width: float, dtype, device=None):
    """Composite Gauss-Legendre for the standard normal density: ``panels`` equal panels on
    [-half_width, half_width], ``points`` Legendre nodes each, the density folded into the
    weights. For an integrand analytic in a strip of half-width d around the real axis the
    error falls geometrically in ``points`` once the panel width is below about 2d (unlike
    Gauss-Hermite, whose nodes spread out as the degree grows); the truncated tails weigh
    2 Phi(-half_width)."""
    z, w = _panels_numpy(panels, points, half_width)
    return (
        torch.as_tensor(z, dtype=dtype, device=device),
        torch.as_tensor(w, dtype=dtype, device=device),
    )


@functools.lru_cache(maxsize=32)
def _hermite_numpy(degree: int) -> tuple[np.ndarray, np.ndarray]:
    z, w = np.polynomial.hermite_e.hermegauss(degree)  # an eigenproblem: ~7 ms for 64
    return z, w / w.sum()


def hermite_nodes(degree: int, dtype, device=None) -> tuple[Tensor, Tensor]:
    """Nodes and weights of probabilists' Gauss-Hermite quadrature, weights summing to 1."""
    z, w = _hermite_numpy(degree)
    return (
        torch.as_tensor(z, dtype=dtype, device=device),
        torch.as_tensor(w, dtype=dtype, device=device),
    )


@declare
class Elementwise(Activation):
    """Any elementwise activation ``fn`` (a torch function), its kernels by quadrature.

    Args:
        fn: elementwise, differentiable torch function (torch.tanh, F.softplus, F.silu...).
        degree: Gauss-Hermite points per dimension (``degree**2`` evaluations per pair), at
            most ``MAX_DEGREE``.
        name: shown in reprs and error messages.
        panels: if given, composite Gauss-Legendre instead: ``panels`` equal panels of
            ``PANEL_POINTS`` points on [-9, 9] in each standard-normal direction
            (``panel_nodes``; ``degree`` is then unused). It converges where Gauss-Hermite
            stalls: at large pre-activation variance (fn steep near 0) and, with an even
            number of panels, at a kink at 0 in the first direction.

    Two Elementwise layers are equal when their ``fn`` is the same function object (and
    ``degree`` and ``name`` agree).
    """

    fn: Callable[[Tensor], Tensor] = field()  # the field shadows Activation.fn per instance
    degree: int = DEFAULT_DEGREE
    name: str | None = None
    panels: int | None = None

    def __post_init__(self):
        fn = self.fn
        if not callable(fn):
            raise TypeError(f"`fn` must be a callable torch function, got {type(fn).__name__}.")
        self.degree = check_positive_int(self.degree, "degree")
        if self.degree > MAX_DEGREE:
            raise ValueError(
                f"`degree` must be at most {MAX_DEGREE} (Gauss-Hermite weights overflow "
                f"beyond), got {self.degree}; pass `panels` for a finer rule."
            )
        if self.panels is not None:
            self.panels = check_positive_int(self.panels, "panels")
        self.label = self.name or getattr(fn, "__name__", "fn")
        probe = torch.linspace(-1, 1, 5, dtype=torch.float64)
        try:
            out = fn(probe)
        except Exception as e:  # noqa: BLE001 - report any failure of the user's function
            raise TypeError(f"`fn` failed on a float64 tensor: {e}") from None
        if not isinstance(out, Tensor) or out.shape != probe.shape:
            raise TypeError(
                "`fn` must map a tensor elementwise to a tensor of the same shape "
                f"(got {type(out).__name__} {getattr(out, 'shape', '')})."
            )

    def __repr__(self):  # the field ``name`` is the label, not the class's name
        degree = "" if self.degree == DEFAULT_DEGREE else f", degree={self.degree}"
        panels = "" if self.panels is None else f", panels={self.panels}"
        return f"Elementwise({self.label}{degree}{panels})"

    def derivative(self, x: Tensor) -> Tensor:
        """phi'(x) by autograd (``fn`` must be elementwise); differentiable itself when
        ``x`` tracks gradients (e.g. of learnable w_std/b_std)."""
        if x.requires_grad and torch.is_grad_enabled():
            (g,) = torch.autograd.grad(self.fn(x).sum(), x, create_graph=True, allow_unused=True)
            return torch.zeros_like(x) if g is None else g
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fn(x).sum(), x, allow_unused=True)
        return torch.zeros_like(x) if g is None else g.detach()

    def pair_cost(self, in_shape) -> int:
        return self.degree**2 if self.panels is None else (self.panels * PANEL_POINTS) ** 2

    def pair(self, nngp, q1, q2, want_dot):
        if self.panels is None:
            z, w = hermite_nodes(self.degree, nngp.dtype, nngp.device)
        else:
            z, w = panel_nodes(self.panels, PANEL_POINTS, HALF_WIDTH, nngp.dtype, nngp.device)
        return pair_by_rule(self.fn, self.derivative, nngp, q1, q2, z, w, want_dot)


def pair_by_rule(fn, derivative, nngp, q1, q2, z, w, want_dot):
    """(E[fn(u) fn(v)], E[fn'(u) fn'(v)] or None) by the product rule on nodes ``z`` and
    weights ``w`` of a 1-D rule for the standard normal (used in both directions)."""
    s12 = outer_sqrt(q1, q2)
    c = correlation(nngp, s12)
    s = torch.mul(c, c).neg().add(1.0).clamp_min(0.0).sqrt()
    sq1 = q1.sqrt().expand_as(nngp).unsqueeze(-1)  # (..., 1)
    sq2 = q2.sqrt().expand_as(nngp).unsqueeze(-1).unsqueeze(-1)  # (..., 1, 1)
    u = sq1 * z  # (..., n): node i
    # v[..., i, j] = sqrt(q2) (c z_i + s z_j)
    v = sq2 * (c[..., None, None] * z[:, None] + s[..., None, None] * z[None, :])
    out = _expect(fn, u, v, w)
    dot = _expect(derivative, u, v, w) if want_dot else None
    return out, dot


def _expect(f, u, v, w):
    fu = f(u)  # (..., n)
    inner = f(v) @ w  # (..., n): sum_j w_j f(v_ij)
    return (fu * inner) @ w
