"""Signal propagation through deep random networks (mean-field theory of initialisation).

For a fully-connected network with pre-activations h^{l+1} = (w / sqrt n) W phi(h^l) + b b0
(Poole et al. 2016, "Exponential expressivity in deep neural networks through transient
chaos"; Schoenholz et al. 2017, "Deep information propagation"), at infinite width:

- the variance map      q^{l+1} = V(q^l) = w^2 E[phi(sqrt(q) z)^2] + b^2, z ~ N(0, 1),
  with the stable fixed point q* (the largest crossing of V(q) = q from above);
- the correlation map   c^{l+1} = C(c^l) = (w^2 E[phi(u) phi(v)] + b^2) / q*, where
  (u, v) ~ N(0, q* [[1, c], [c, 1]]); C(1) = 1 and C is convex on [0, 1];
- chi_1 = C'(1) = w^2 E[phi'(u)^2] (u ~ N(0, q*)): c* = 1 is stable (ordered phase) for
  chi_1 < 1, and for chi_1 > 1 (chaotic phase) correlations converge to c* < 1;
- depth scales xi_q = -1 / log V'(q*) and xi_c = -1 / log C'(c*), diverging on the edge of
  chaos chi_1 = 1 (for each b_std, the w_std where chi_1 = 1).

The expectations are the activation's kernel map ``pair`` (closed form, or Gauss-Hermite
quadrature for :class:`~widenets.Elementwise`), so every activation with a kernel works; a
plain torch function (``torch.tanh``) is wrapped in ``Elementwise``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from widenets.errors import check_nonnegative, check_positive_int
from widenets.layers.activations import Activation
from widenets.layers.base import Layer
from widenets.layers.quadrature import Elementwise

Q_MAX = 1e30  # variances beyond this count as divergent (q* = inf)
Q_MIN = 1e-30  # variances below this count as collapsed (q* = 0)
_DT = torch.float64


def as_activation(activation) -> Activation:
    """An activation with a kernel map; a plain callable is wrapped in ``Elementwise``."""
    if isinstance(activation, Layer):
        if not isinstance(activation, Activation) or type(activation).pair is Activation.pair:
            raise ValueError(
                f"`activation` {activation!r} has no infinite-width kernel map (no `pair`); "
                "signal propagation needs an elementwise activation such as wn.Relu(), "
                "wn.Erf() or wn.Elementwise(fn)."
            )
        return activation
    if callable(activation):
        return Elementwise(activation)
    raise TypeError(
        f"`activation` must be a widenets activation or a torch function, got {activation!r}."
    )


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=_DT)


def _out(t: torch.Tensor):
    a = t.detach().numpy()
    return float(a) if a.ndim == 0 else a


def _vmap(act, q, w2, b2):
    return w2 * act.pair(q, q, q, False)[0] + b2


def _cmap(act, c, q, w2, b2):
    return (w2 * act.pair(c * q, q, q, False)[0] + b2) / q


def _params(w_std, b_std):
    w, b = _t(w_std), _t(b_std)
    if (w < 0).any() or (b < 0).any() or not torch.isfinite(w).all():
        raise ValueError("`w_std` and `b_std` must be finite and non-negative.")
    return w * w, b * b


def variance_map(q, activation, w_std: float, b_std: float = 0.0):
    """V(q) = w^2 E[phi(sqrt(q) z)^2] + b^2 (arrays broadcast)."""
    act = as_activation(activation)
    w2, b2 = _params(w_std, b_std)
    return _out(_vmap(act, _t(q), w2, b2))


def _q_star(act, w2, b2, q0):
    """Vectorised stable fixed point of V: bracket, then bisection in log q."""
    w2, b2, q0 = torch.broadcast_tensors(w2, b2, q0)
    q0 = q0.clone()

    def h(q):
        return _vmap(act, q, w2, b2) - q

    h0 = h(q0)
    exact = h0.abs() <= 1e-13 * q0  # every q is fixed (e.g. ReLU at w^2 = 2, b = 0)
    hi = q0.clone()
    up = h0 > 0
    for _ in range(110):  # hi up to ~1e33
        grow = up & (h(hi) > 0)
        if not grow.any():
            break
        hi = torch.where(grow, hi * 2, hi)
        hi = torch.where(grow & (hi > Q_MAX), torch.full_like(hi, Q_MAX), hi)
        if (grow & (hi >= Q_MAX)).all():
            break
    diverged = up & (h(hi) > 0)
    lo = torch.where(up, hi / 2, q0.clone())
    down = ~up
    for _ in range(110):
        shrink = down & (h(lo) <= 0) & (lo > Q_MIN)
        if not shrink.any():
            break
        lo = torch.where(shrink, lo / 2, lo)
    collapsed = down & (h(lo) <= 0)
    hi = torch.where(down, torch.minimum(lo * 2, q0), hi)
    # invariant for the rest: h(lo) > 0 >= h(hi) (where neither diverged nor collapsed)
    llo, lhi = lo.log(), hi.log()
    active = ~(diverged | collapsed | exact)
    for _ in range(200):
        if not ((lhi - llo) > 1e-15 * torch.clamp(llo.abs(), min=1.0))[active].any():
            break
        mid = (llo + lhi) / 2
        pos = h(mid.exp()) > 0
        llo = torch.where(pos, mid, llo)
        lhi = torch.where(pos, lhi, mid)
    q = ((llo + lhi) / 2).exp()
    q = torch.where(exact, q0, q)
    q = torch.where(diverged & ~exact, torch.full_like(q, np.inf), q)
    q = torch.where(collapsed & ~exact, torch.zeros_like(q), q)
    return q


def q_star(activation, w_std: float, b_std: float = 0.0, q0: float = 1.0):
    """Stable fixed point of the variance map reached from q0 (arrays broadcast).

    Returns ``inf`` where the variance diverges with depth (no finite fixed point above q0,
    e.g. ReLU with w_std^2 > 2) and 0 where it collapses (e.g. tanh with w_std < 1, b = 0).
    Where V(q) = q identically (ReLU at w_std^2 = 2, b_std = 0) it returns q0.
    """
    act = as_activation(activation)
    w2, b2 = _params(w_std, b_std)
    q0 = _t(q0)
    if (q0 <= 0).any():
        raise ValueError(f"`q0` must be > 0, got {q0}.")
    return _out(_q_star(act, w2, b2, q0))


def _q_for(act, w2, b2, q):
    """q* where q is None, else q; a divergent q* is replaced by Q_MAX (see chi_1)."""
    if q is None:
        q = _q_star(act, w2, b2, torch.ones_like(w2 + b2))
    else:
        q = _t(q)
    q = torch.where(torch.isinf(q), torch.full_like(q, Q_MAX), q)
    return q.clamp_min(Q_MIN)


def correlation_map(c, activation, w_std: float, b_std: float = 0.0, q=None):
    """C(c) = (w^2 E[phi(u) phi(v)] + b^2) / q, (u, v) with variances q, covariance c q.

    ``q`` defaults to q* (so that C(1) = 1); arrays broadcast.
    """
    act = as_activation(activation)
    w2, b2 = _params(w_std, b_std)
    q = _q_for(act, w2, b2, q)
    return _out(_cmap(act, _t(c), q, w2, b2))


def chi_1(activation, w_std: float, b_std: float = 0.0, q=None):
    """chi_1 = w^2 E[phi'(u)^2], u ~ N(0, q*): the slope of the correlation map at c = 1.

    Where q* diverges it is evaluated at q = 1e30 (its limit for activations that grow
    linearly, such as ReLU, where chi_1 does not depend on q).
    """
    act = as_activation(activation)
    w2, b2 = _params(w_std, b_std)
    q = _q_for(act, w2, b2, q)
    return _out(w2 * act.pair(q, q, q, True)[1])


def _c_star(act, w2, b2, q):
    """Vectorised stable fixed point of C on [0, 1] (C convex with C(1) = 1)."""
    w2, b2, q = torch.broadcast_tensors(w2, b2, q)
    chi = w2 * act.pair(q, q, q, True)[1]
    chaotic = chi > 1

    def g(c):
        return _cmap(act, c, q, w2, b2) - c

    lo = torch.zeros_like(q)
    fixed_zero = g(lo) <= 0  # odd activation, no bias: c* = 0
    delta = torch.full_like(q, 1e-2)
    for _ in range(60):
        need = chaotic & (g(1 - delta) >= 0) & (delta > 1e-15)
        if not need.any():
            break
        delta = torch.where(need, delta / 4, delta)
    hi = 1 - delta
    active = chaotic & ~fixed_zero
    for _ in range(80):
        if not ((hi - lo) > 1e-16)[active].any():
            break
        mid = (lo + hi) / 2
        pos = g(mid) > 0
        lo = torch.where(pos, mid, lo)
        hi = torch.where(pos, hi, mid)
    c = (lo + hi) / 2
    c = torch.where(fixed_zero, torch.zeros_like(c), c)
    return torch.where(chaotic, c, torch.ones_like(c))


def c_star(activation, w_std: float, b_std: float = 0.0):
    """Stable fixed point of the correlation map reached from c0 in (0, 1).

    1 in the ordered phase (chi_1 <= 1); in the chaotic phase the unique crossing of C(c) = c
    in [0, 1) (0 for odd activations without bias).
    """
    act = as_activation(activation)
    w2, b2 = _params(w_std, b_std)
    q = _q_for(act, w2, b2, None)
    return _out(_c_star(act, w2, b2, q))


@dataclass(frozen=True)
class DepthScales:
    """Depth scales of the variance and correlation maps (layers to converge by 1/e)."""

    xi_q: float | np.ndarray
    xi_c: float | np.ndarray
    chi_q: float | np.ndarray  # V'(q*)
    chi_c: float | np.ndarray  # C'(c*)


def depth_scales(activation, w_std: float, b_std: float = 0.0) -> DepthScales:
    """xi_q = -1 / log V'(q*), xi_c = -1 / log C'(c*) (Schoenholz et al. 2017).

    C'(c*) = w^2 E[phi'(u) phi'(v)] at correlation c* (chi_1 when c* = 1). V'(q*) is taken
    by a central difference of V with relative step 1e-5. Infinite on the edge of chaos.
    """
    act = as_activation(activation)
    w2, b2 = _params(w_std, b_std)
    q = _q_for(act, w2, b2, None)
    c = _c_star(act, w2, b2, q)
    w2, b2, q = torch.broadcast_tensors(w2, b2, q)
    hstep = 1e-5 * q
    chi_q = (_vmap(act, q + hstep, w2, b2) - _vmap(act, q - hstep, w2, b2)) / (2 * hstep)
    chi_c = w2 * act.pair(c * q, q, q, True)[1]

    def xi(chi):
        inside = (chi > 0) & (chi < 1)
        safe = torch.where(inside, chi, torch.full_like(chi, 0.5))
        return torch.where(inside, -1 / torch.log(safe), torch.full_like(chi, np.inf))

    return DepthScales(_out(xi(chi_q)), _out(xi(chi_c)), _out(chi_q), _out(chi_c))


def _check_range(values, name):
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"`{name}` is empty: give at least one value.")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"`{name}` must hold finite non-negative values, got {values!r}.")
    return a


def edge_of_chaos(activation, b_std, w_std_bracket=(0.1, 10.0), tol: float = 1e-14):
    """For each b_std, the w_std where chi_1(q*(w, b), w) = 1 (NaN if none in the bracket).

    On the critical line chi_1 = 1 and V(q) = q, so it is parameterised by q:
    w^2(q) = 1 / E[phi'(sqrt(q) z)^2] and b^2(q) = q - w^2(q) E[phi(sqrt(q) z)^2]. For each
    b the first crossing of b^2(q) = b^2 on a log grid of q is refined by bisection in log q
    (b = 0 with b^2(q) -> 0 as q -> 0, e.g. tanh: the q -> 0 limit). The point is kept if
    q is the stable fixed point q*(w, b); otherwise (e.g. ReLU with b > 0, where q* diverges
    on the critical line) chi_1(q*(w, b), w) - 1 is bisected in w over ``w_std_bracket``.
    Returns an array with the shape of ``b_std`` (a float for a scalar).
    """
    act = as_activation(activation)
    scalar = np.ndim(b_std) == 0
    b = _t(_check_range(b_std, "b_std"))
    lo_w, hi_w = (float(v) for v in w_std_bracket)
    if not 0 <= lo_w < hi_w or not np.isfinite(hi_w):
        raise ValueError(
            f"`w_std_bracket` must be (lo, hi) with 0 <= lo < hi, got {w_std_bracket!r}."
        )
    b2 = b * b
    w_q, q_c = _edge_by_q(act, b2)
    ok_q = torch.isfinite(w_q) & (w_q >= lo_w) & (w_q <= hi_w)
    if ok_q.any():
        check = _q_star(act, w_q.where(ok_q, torch.ones_like(w_q)) ** 2, b2, torch.ones_like(b2))
        # same fixed point (both ~0 counts: tanh at b = 0 has q* -> 0 on the edge, where
        # round-off leaves q* anywhere below ~1e-16)
        big = torch.maximum(check, q_c)
        ok_q &= ((check - q_c).abs() <= 1e-6 * big) | (big <= 1e-12)
    if ok_q.all():
        out = w_q.numpy()
        return float(out[0]) if scalar else out
    b_all, b = b, b[~ok_q]
    b2 = b * b

    def g(w):
        w2 = w * w
        q = _q_for(act, w2, b2, None)
        return w2 * act.pair(q, q, q, True)[1] - 1

    lo, hi = torch.full_like(b, lo_w), torch.full_like(b, hi_w)
    glo, ghi = g(lo), g(hi)
    ok = (glo <= 0) & (ghi >= 0)
    for _ in range(200):
        mid = (lo + hi) / 2
        below = g(mid) < 0
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
        if ((hi - lo) <= tol * hi).all():
            break
    w = (lo + hi) / 2
    w = torch.where(ok, w, torch.full_like(w, np.nan))
    out = w_q.clone()
    out[~ok_q] = w
    out = out.numpy()
    del b_all
    return float(out[0]) if scalar else out


def _edge_by_q(act, b2):
    """(w, q) on the critical line for each b^2 (NaN where no crossing is found)."""
    grid = torch.logspace(-30, 30, 121, dtype=_DT)

    def w2_and_f(q):
        e_phi2, e_dphi2 = act.pair(q, q, q, True)
        w2 = 1 / e_dphi2
        return w2, q - w2 * e_phi2

    w2g, fg = w2_and_f(grid)
    fg = torch.where(torch.isfinite(fg), fg, torch.full_like(fg, np.nan))
    n_b = b2.shape[0]
    w_out = torch.full((n_b,), np.nan, dtype=_DT)
    q_out = torch.full((n_b,), np.nan, dtype=_DT)
    lo = torch.empty(n_b, dtype=_DT)
    hi = torch.empty(n_b, dtype=_DT)
    found = torch.zeros(n_b, dtype=torch.bool)
    for i in range(n_b):
        d = fg - b2[i]
        if b2[i] == 0 and bool(d[0].abs() <= 1e-12 * grid[0]):
            q_out[i] = grid[0]
            w_out[i] = w2g[0].sqrt()
            continue
        cross = ((d[:-1] < 0) & (d[1:] >= 0)).nonzero()
        if len(cross):
            j = int(cross[0])
            lo[i], hi[i], found[i] = grid[j].log(), grid[j + 1].log(), True
    if found.any():
        llo, lhi, bb = lo[found], hi[found], b2[found]
        for _ in range(200):
            mid = (llo + lhi) / 2
            below = w2_and_f(mid.exp())[1] - bb < 0
            llo = torch.where(below, mid, llo)
            lhi = torch.where(below, lhi, mid)
            if ((lhi - llo) <= 1e-15 * torch.clamp(llo.abs(), min=1.0)).all():
                break
        q = ((llo + lhi) / 2).exp()
        q_out[found] = q
        w_out[found] = w2_and_f(q)[0].sqrt()
    return w_out, q_out


@dataclass(frozen=True)
class PhaseDiagram:
    """chi_1, q*, c* over a (b_std, w_std) grid, the critical line, and a figure."""

    w_std: np.ndarray  # (n_w,)
    b_std: np.ndarray  # (n_b,)
    chi_1: np.ndarray  # (n_b, n_w)
    q_star: np.ndarray  # (n_b, n_w)
    c_star: np.ndarray  # (n_b, n_w)
    critical_w_std: np.ndarray  # (n_b,), NaN where the edge is outside the w range
    figure: object


def phase_diagram(activation, w_std_range, b_std_range) -> PhaseDiagram:
    """Ordered (chi_1 < 1) and chaotic (chi_1 > 1) phases over w_std x b_std grids.

    Args:
        activation: a widenets activation (or a torch function, wrapped in Elementwise).
        w_std_range, b_std_range: 1-D arrays of the values to evaluate (non-empty).

    Returns:
        a :class:`PhaseDiagram` with the arrays and a matplotlib figure (log chi_1 as colour,
        the edge of chaos as a line).
    """
    act = as_activation(activation)
    w = _check_range(w_std_range, "w_std_range")
    b = _check_range(b_std_range, "b_std_range")
    W, B = np.meshgrid(w, b)
    w2, b2 = _t(W) ** 2, _t(B) ** 2
    q = _q_star(act, w2, b2, torch.ones_like(w2))
    qf = torch.where(torch.isinf(q), torch.full_like(q, Q_MAX), q)
    chi = w2 * act.pair(qf, qf, qf, True)[1]
    c = _c_star(act, w2, b2, qf)
    lo = max(float(w.min()), 1e-6)
    hi = float(w.max())
    crit = edge_of_chaos(act, b, (lo, hi)) if hi > lo else np.full(b.shape, np.nan)
    fig = _phase_figure(act, w, b, chi.numpy(), crit)
    return PhaseDiagram(w, b, chi.numpy(), q.numpy(), c.numpy(), crit, fig)


def _phase_figure(act, w, b, chi, crit):
    from widenets._plot import figure, legend

    fig, ax = figure(size=(5, 4))
    with np.errstate(divide="ignore"):
        z = np.log(np.clip(chi, 1e-300, None))
    lim = max(float(np.nanmax(np.abs(z[np.isfinite(z)]), initial=1.0)), 1e-3)
    if len(w) > 1 and len(b) > 1:
        m = ax.pcolormesh(w, b, z, cmap="coolwarm", vmin=-lim, vmax=lim, shading="auto")
        fig.colorbar(m, ax=ax, label="log χ₁  (< 0 ordered, > 0 chaotic)")
    else:
        ax.scatter(np.meshgrid(w, b)[0], np.meshgrid(w, b)[1], c=z, cmap="coolwarm")
    ax.plot(crit, b, "k-", lw=2, label="edge of chaos (χ₁ = 1)")
    ax.set_xlabel("w_std")
    ax.set_ylabel("b_std")
    ax.set_title(f"Phase diagram of {act!r}")
    legend(ax, loc="upper left")
    return fig


def propagate(
    activation,
    w_std: float,
    b_std: float,
    depth: int,
    *,
    q0: float = 1.0,
    c0: float = 0.5,
    width: int = 1000,
    n_samples: int = 4,
    seed: int = 0,
    init=None,
):
    """Empirical q^l and c^l of two inputs through finite random networks, and the maps.

    Two inputs of dimension ``width`` with mean-square q0 and correlation c0 enter
    ``serial(Dense(width, w, b), act, ..., Dense(width, w, b))`` built with ``init``; the
    pre-activations h^l of each Dense layer give q^l = |h^l|^2 / n (mean over both inputs)
    and c^l = h^l(x1).h^l(x2) / sqrt(|h^l(x1)|^2 |h^l(x2)|^2).

    Returns:
        dict with ``q_empirical``, ``c_empirical`` (depth,), their standard errors over
        ``n_samples`` networks, and ``q_map``, ``c_map`` (depth,) from iterating the
        infinite-width maps from q^1 = w^2 q0 + b^2, c^1 = (w^2 q0 c0 + b^2) / q^1.
    """
    from widenets.layers.combinators import serial
    from widenets.layers.dense import Dense

    act = as_activation(activation)
    depth = check_positive_int(depth, "depth")
    width = check_positive_int(width, "width")
    w_std = check_nonnegative(w_std, "w_std")
    b_std = check_nonnegative(b_std, "b_std")
    layers = []
    for i in range(depth):
        if i:
            layers.append(act)
        layers.append(Dense(width, w_std, b_std))
    net = serial(*layers)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, width, generator=g, dtype=_DT)
    z1 = z[0] / z[0].norm() * width**0.5
    v = z[1] - (z[1] @ z1) / width * z1
    v = v / v.norm() * width**0.5
    x = torch.stack([z1, c0 * z1 + (1 - c0**2) ** 0.5 * v]) * q0**0.5
    qs, cs = np.zeros((n_samples, depth)), np.zeros((n_samples, depth))
    for s in range(n_samples):
        model = net.build((width,), seed=seed * 7919 + s, dtype=_DT, init=init)
        h = x
        with torch.no_grad():
            li = 0
            for m in model:
                h = m(h)
                if hasattr(m, "weight"):
                    n1, n2 = (h * h).mean(1)
                    qs[s, li] = float((n1 + n2) / 2)
                    cs[s, li] = float((h[0] * h[1]).mean() / (n1 * n2).sqrt())
                    li += 1
    w2, b2 = w_std**2, b_std**2
    q_map, c_map = np.zeros(depth), np.zeros(depth)
    q_t = torch.tensor(w2 * q0 + b2, dtype=_DT)
    k_t = torch.tensor(w2 * q0 * c0 + b2, dtype=_DT)
    for li in range(depth):
        q_map[li], c_map[li] = float(q_t), float(k_t / q_t)
        k_t = w2 * act.pair(k_t, q_t, q_t, False)[0] + b2
        q_t = _vmap(act, q_t, torch.tensor(w2, dtype=_DT), torch.tensor(b2, dtype=_DT))
    se = n_samples**0.5
    return {
        "q_empirical": qs.mean(0),
        "c_empirical": cs.mean(0),
        "q_se": qs.std(0, ddof=1) / se if n_samples > 1 else np.full(depth, np.nan),
        "c_se": cs.std(0, ddof=1) / se if n_samples > 1 else np.full(depth, np.nan),
        "q_map": q_map,
        "c_map": c_map,
    }
