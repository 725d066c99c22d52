"""Kernels of any elementwise activation by Gauss-Hermite quadrature.

For (u, v) ~ N(0, [[q1, K], [K, q2]]) write u = sqrt(q1) z1 and
v = sqrt(q2) (c z1 + sqrt(1 - c^2) z2) with z1, z2 independent standard normals, so

    E[phi(u) phi(v)] ~= sum_i sum_j w_i w_j phi(sqrt(q1) z_i) phi(sqrt(q2)(c z_i + s z_j))

on the probabilists' Gauss-Hermite nodes z_i and weights w_i (exact for polynomials of
degree < 2n in each variable). The NTK needs E[phi'(u) phi'(v)], the same sum over phi',
which is taken from ``fn`` by autograd.

Gauss-Hermite converges slowly where phi is steep (large variance) or kinked. The split
rule (``pair_by_split``) instead integrates z1 and, for each z1 node, z2 by Gauss-Legendre
on the intervals of [-9, 9] between break points: where u or v crosses a kink (or the
centre of a steep activation), so each piece is smooth. Near |c| = 1 the inner integral,
as a function of z1, turns a kink at v = B into a ramp of width ~ s/|c| about
z1 = B/(sqrt(q2) c); panels of that width on either side resolve it.
"""

from __future__ import annotations

import functools
import math
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
#: the split rule (``pair_by_split``): Legendre points per panel
SPLIT_POINTS = 64
#: half-widths (in units of the ramp s/|c|) of the panels about a kink's ramp (see above):
#: beyond 8 the ramp differs from the kink by < phi(8) ~ 5e-15
RAMP_WIDTH = 8.0


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
def _legendre_numpy(points: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(points)


def split_nodes(breaks: Tensor, panels: int, points: int, half_width: float = HALF_WIDTH):
    """Gauss-Legendre for the standard normal density with break points: the intervals of
    [-half_width, half_width] between the (sorted, clamped) ``breaks`` (shape (..., K))
    each cut into ``panels`` equal panels of ``points`` nodes, the density folded into the
    weights. Returns nodes and weights of shape (..., (K + 1) * panels * points); a break
    outside the range gives an empty interval (zero weights)."""
    x, w = _legendre_numpy(points)
    x = torch.as_tensor(x, dtype=breaks.dtype, device=breaks.device)
    w = torch.as_tensor(w, dtype=breaks.dtype, device=breaks.device)
    b = breaks.clamp(-half_width, half_width).sort(dim=-1).values
    end = b.new_full(b.shape[:-1] + (1,), half_width)  # also when there are no breaks
    edges = torch.cat([-end, b, end], dim=-1)  # (..., K + 2)
    lo, width = edges[..., :-1], edges[..., 1:] - edges[..., :-1]  # (..., K + 1)
    step = torch.arange(panels, dtype=b.dtype, device=b.device) / panels
    h = (width / (2 * panels)).unsqueeze(-1)  # (..., K + 1, 1): half-width of a panel
    left = lo.unsqueeze(-1) + width.unsqueeze(-1) * step  # (..., K + 1, panels)
    z = left.unsqueeze(-1) + (h * (x + 1.0)).unsqueeze(-2)  # (..., K + 1, panels, points)
    weights = (h * w).unsqueeze(-2) * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return z.flatten(-3), weights.flatten(-3)


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
        panels: if given (and no ``kinks``), composite Gauss-Legendre instead: ``panels``
            equal panels of ``PANEL_POINTS`` points on [-9, 9] in each standard-normal
            direction (``panel_nodes``; ``degree`` is then unused). It converges where
            Gauss-Hermite stalls: at large pre-activation variance (fn steep near 0).
        kinks: points where ``fn`` (or its derivative) is not smooth, e.g. ``(0.0,)`` for
            ReLU, abs or a leaky ReLU, ``(-1.0, 1.0)`` for a hard tanh. Then the split rule
            (``pair_by_split``): Gauss-Legendre on the intervals between the kinks in each
            direction, ``panels`` (default 1) panels of ``SPLIT_POINTS`` points each
            (``degree`` is then unused). It converges as for a smooth function: on ReLU,
            Abs and LeakyRelu it meets the closed forms within 1.1e-14 relative at
            variances 1/64 to 16, |c| up to 1 (``bench/quadrature_accuracy.py``; tested
            to 1e-8), at about 7x the time of the default Gauss-Hermite rule. A kink
            not declared is not resolved.

    Two Elementwise layers are equal when their ``fn`` is the same function object (and
    ``degree``, ``name``, ``panels`` and ``kinks`` agree).
    """

    fn: Callable[[Tensor], Tensor] = field()  # the field shadows Activation.fn per instance
    degree: int = DEFAULT_DEGREE
    name: str | None = None
    panels: int | None = None
    kinks: tuple[float, ...] | None = None

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
        if self.kinks is not None:
            self.kinks = check_kinks(self.kinks)
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
        kinks = "" if self.kinks is None else f", kinks={self.kinks}"
        return f"Elementwise({self.label}{degree}{panels}{kinks})"

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
        if self.kinks is not None:
            return split_cost(self.kinks, True, self.panels or 1, SPLIT_POINTS)
        return self.degree**2 if self.panels is None else (self.panels * PANEL_POINTS) ** 2

    def pair(self, nngp, q1, q2, want_dot):
        if self.kinks is not None:
            return pair_by_split(
                self.fn, self.derivative, nngp, q1, q2, want_dot, self.kinks,
                self.panels or 1, ramps=True,
            )  # fmt: skip
        if self.panels is None:
            z, w = hermite_nodes(self.degree, nngp.dtype, nngp.device)
        else:
            z, w = panel_nodes(self.panels, PANEL_POINTS, HALF_WIDTH, nngp.dtype, nngp.device)
        return pair_by_rule(self.fn, self.derivative, nngp, q1, q2, z, w, want_dot)


def check_kinks(kinks) -> tuple[float, ...]:
    """``kinks`` as a sorted tuple of distinct finite floats, or a one-line error."""
    try:
        values = tuple(float(k) for k in kinks)
    except (TypeError, ValueError):
        raise TypeError(f"`kinks` must be a sequence of real numbers, got {kinks!r}.") from None
    if not all(math.isfinite(k) for k in values):
        raise ValueError(f"`kinks` must be finite, got {kinks!r}.")
    return tuple(sorted(set(values)))


def pair_by_rule(fn, derivative, nngp, q1, q2, z, w, want_dot):
    """(E[fn(u) fn(v)], E[fn'(u) fn'(v)] or None) by the product rule on nodes ``z`` and
    weights ``w`` of a 1-D rule for the standard normal (used in both directions)."""
    c = _correlation(nngp, q1, q2)
    s = torch.mul(c, c).neg().add(1.0).clamp_min(0.0).sqrt()
    sq1 = q1.sqrt().expand_as(nngp).unsqueeze(-1)  # (..., 1)
    sq2 = q2.sqrt().expand_as(nngp).unsqueeze(-1).unsqueeze(-1)  # (..., 1, 1)
    u = sq1 * z  # (..., n): node i
    # v[..., i, j] = sqrt(q2) (c z_i + s z_j)
    v = sq2 * (c[..., None, None] * z[:, None] + s[..., None, None] * z[None, :])
    out = _expect(fn, u, v, w)
    dot = _expect(derivative, u, v, w) if want_dot else None
    return out, dot


def _correlation(nngp, q1, q2):
    """c = K / sqrt(q1 q2) (``correlation``), and 0 where both variances are 0: there
    ``outer_sqrt`` underflows to 0 and K = 0 (a zero input without bias)."""
    return correlation(nngp, outer_sqrt(q1, q2).clamp_min(torch.finfo(nngp.dtype).tiny))


def _expect(f, u, v, w):
    fu = f(u)  # (..., n)
    inner = f(v) @ w  # (..., n): sum_j w_j f(v_ij)
    return (fu * inner) @ w


def split_sizes(breaks: tuple[float, ...], ramps: bool) -> tuple[int, int]:
    """Numbers of break points of ``pair_by_split`` in z1 and in z2."""
    shifted = sum(1 for b in breaks if b != 0.0)
    return len(breaks) + shifted + (2 * len(breaks) if ramps else 0), len(breaks)


def split_cost(breaks: tuple[float, ...], ramps: bool, panels: int, points: int) -> int:
    """Scalars held per pair by ``pair_by_split``: nodes in z1 times nodes in z2, twice
    (the values and their per-pair weights)."""
    outer, inner = split_sizes(breaks, ramps)
    return 2 * (outer + 1) * (inner + 1) * (panels * points) ** 2


def pair_by_split(
    fn, derivative, nngp, q1, q2, want_dot, breaks, panels, points=SPLIT_POINTS, ramps=False
):
    """(E[fn(u) fn(v)], E[fn'(u) fn'(v)] or None) by Gauss-Legendre split at ``breaks``.

    u = sqrt(q1) z1, v = mu + sigma z2 with mu = sqrt(q2) c z1, sigma = sqrt(q2) s; z1 is
    split where u = B and where mu = B (the inner integral is steepest there), z2 where
    v = B, for every B in ``breaks`` (``split_nodes``: ``panels`` panels of ``points``
    nodes per interval). ``ramps``: also split z1 at RAMP_WIDTH s/|c| either side of
    mu = B, which a kink at B needs near |c| = 1 (module docstring)."""
    c = _correlation(nngp, q1, q2)
    s = (1.0 - c).mul(1.0 + c).clamp_min(0.0).sqrt()  # accurate near |c| = 1
    a, b = q1.sqrt().expand_as(nngp), q2.sqrt().expand_as(nngp)
    tiny, big = torch.finfo(nngp.dtype).tiny, 2.0 * HALF_WIDTH
    cols = []
    for br in breaks:
        centre = torch.zeros_like(c)
        if br != 0.0:
            cols.append((br / a.clamp_min(tiny)).clamp(-big, big))
            centre = (br / (b * c)).clamp(-big, big)  # +-inf at c = 0, then clamped
        cols.append(centre)
        if ramps:
            width = (RAMP_WIDTH * s / c.abs()).clamp(0.0, big)  # no inf - inf below
            cols += [centre - width, centre + width]
    outer = torch.stack(cols, dim=-1) if cols else c.new_zeros(c.shape + (0,))
    z1, w1 = split_nodes(outer, panels, points)  # (..., n)
    mu = (b * c).unsqueeze(-1) * z1  # (..., n)
    sigma = (b * s).unsqueeze(-1)  # (..., 1)
    kinks = torch.tensor(breaks, dtype=c.dtype, device=c.device)
    t = (kinks - mu.unsqueeze(-1)) / sigma.clamp_min(tiny).unsqueeze(-1)  # (..., n, K)
    t = torch.where(sigma.unsqueeze(-1) > 0, t, torch.zeros_like(t)).clamp(-big, big)
    z2, w2 = split_nodes(t, panels, points)  # (..., n, N)
    u = a.unsqueeze(-1) * z1
    v = mu.unsqueeze(-1) + sigma.unsqueeze(-1) * z2
    out = _expect_split(fn, u, v, w1, w2)
    dot = _expect_split(derivative, u, v, w1, w2) if want_dot else None
    return out, dot


def _expect_split(f, u, v, w1, w2):
    inner = torch.linalg.vecdot(f(v), w2)  # (..., n)
    return torch.linalg.vecdot(f(u) * inner, w1)
