"""Numerical safeguards of kernel evaluation: reduced precision, overflow, NaN.

Three mechanisms, used by :func:`widenets.compute.evaluate_kernel` (and the GPyTorch
kernel):

- **Near-degenerate pairs in reduced precision.** The closed forms of the ReLU family
  (and Sign, Erf, Gelu) depend on the angle theta between two pre-activations, which a
  kernel stored in float32 determines only to eps / sin(theta): for near-duplicate
  inputs (theta ~ 1e-3) the NTK is then wrong in its 4th digit, whatever the snapping
  rule, and the error carries into every later layer. While a tile is evaluated in a
  reduced precision, the activations flag the pairs whose map is ill-conditioned
  (:func:`flag_pairs`, e.g. sin(theta) < ``SIN_LIMIT``) and those pairs alone are
  recomputed in float64 from the inputs and rounded (``compute.recompute_pairs``). Every
  other pair keeps the fast path, with errors of a few ulps of the dtype.
- **Input scaling** (:func:`prepare_inputs`). Inputs whose Gram matrix x.x / C would
  overflow (or, for a homogeneous network, underflow) the dtype are multiplied by a power
  of two first. If the network is positively homogeneous of a known degree p
  (``Layer.scaling_degree``: no biases, ReLU-like activations, ...) the whole kernel is
  computed on the rescaled inputs and multiplied back by 2^(2 p e), exactly; otherwise
  only the input Gram is rescaled (exactly) and, if the Gram itself cannot be stored, the
  inputs are rejected with their norm and the advice to rescale them.
- **NaN / inf** (:class:`FiniteCheck`, :func:`raise_nonfinite`). Each finished tile adds
  its sum to a running total (a NaN or inf anywhere makes it non-finite); only if
  the total is not finite is the kernel searched for the first bad entry, whose pair is
  then re-run layer by layer to name the first layer with a non-finite output, whether it
  overflowed (inf) or produced NaN from finite values, and what to do.
"""

from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from widenets.errors import NonFiniteKernelError, as_tensor

# ----- near-degenerate pairs in reduced precision ------------------------------------------

#: an activation flags a pair when the sine of the angle between its two pre-activations
#: (or the analogue for Erf and Gelu, see their ``_pair``) is below this: the
#: closed form then amplifies the relative rounding error of the kernel by 1 / SIN_LIMIT
#: or more (a dtype's eps gives errors of about eps / (2 pi sin theta) in the ReLU NTK's
#: factor (pi - theta) / (2 pi)). Flagged pairs are recomputed in float64.
SIN_LIMIT = 0.25

_WATCH: contextvars.ContextVar[PairWatch | None] = contextvars.ContextVar(
    "widenets_pair_watch", default=None
)


class PairWatch:
    """Collects, over the layers of one tile, which (x1, x2) pairs were flagged."""

    __slots__ = ("mask",)

    def __init__(self):
        self.mask: Tensor | None = None

    def add(self, mask: Tensor) -> None:
        if mask.ndim > 2:  # spatial positions: a pair is flagged if any position is
            mask = mask.any(dim=tuple(range(2, mask.ndim)))  # (no copy of strided tiles)
        self.mask = mask if self.mask is None else self.mask | mask

    def add_below(self, values: Tensor, limit: float) -> None:
        if values.ndim > 2:  # one reduction over positions, no tile-sized bool tensor
            values = values.amin(dim=tuple(range(2, values.ndim)))
        self.add(values < limit)


def is_reduced(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a floating dtype less precise than float64."""
    return dtype.is_floating_point and torch.finfo(dtype).eps > torch.finfo(torch.float64).eps


def watching() -> bool:
    """Whether a tile in reduced precision is being evaluated (activations then flag their
    ill-conditioned pairs through :func:`flag_pairs`)."""
    return _WATCH.get() is not None


def flag_pairs(mask: Tensor) -> None:
    """Mark the pairs where ``mask`` (shaped as the tile's ``nngp``) is True."""
    watch = _WATCH.get()
    if watch is not None:
        watch.add(mask)


def flag_pairs_below(values: Tensor, limit: float) -> None:
    """Mark the pairs where ``values`` (shaped as the tile's ``nngp``) is below ``limit``
    at any position (cheaper than :func:`flag_pairs` on spatial tiles)."""
    watch = _WATCH.get()
    if watch is not None:
        watch.add_below(values, limit)


@contextmanager
def watch_pairs(enabled: bool):
    """Within the block, activations flag ill-conditioned pairs (if ``enabled``); yields
    the :class:`PairWatch` (its ``mask`` None if nothing was flagged)."""
    watch = PairWatch()
    if not enabled:
        yield watch
        return
    token = _WATCH.set(watch)
    try:
        yield watch
    finally:
        _WATCH.reset(token)


# ----- inputs: checks and exact rescaling ----------------------------------------------------

#: the input Gram's partial sums, at most C max_i mean_c(x_ic^2) (Cauchy-Schwarz), are
#: kept below max(dtype) times this; the same margin against underflow for homogeneous
#: networks
GRAM_HEADROOM = 2.0**-2


@dataclass
class PreparedInputs:
    """Checked inputs in the working dtype, possibly multiplied by a power of two.

    ``x1``/``x2``: the working tensors, ``2^-exponent`` times the inputs.
    ``gram_exponent``: their input Gram is multiplied by ``2^gram_exponent`` (exactly, in
    steps) when only the Gram is rescaled, else 0. ``out_exponent``: the network's kernels
    are multiplied by ``2^out_exponent`` at the end (a homogeneous network of ``degree``),
    else None. ``src1``/``src2`` are the inputs as given (checked), for the float64
    recomputation of flagged pairs.
    """

    x1: Tensor
    x2: Tensor | None
    src1: Tensor
    src2: Tensor | None
    exponent: int = 0
    gram_exponent: int = 0
    out_exponent: int | None = None
    degree: float | None = None

    def rows64(self, which: int, rows: Tensor) -> Tensor:
        """Rows of x1 (``which=1``) or x2 in float64, scaled as the working tensors."""
        src = self.src1 if which == 1 or self.src2 is None else self.src2
        x = src.index_select(0, rows.to(src.device)).to(torch.float64)
        return _ldexp(x, -self.exponent) if self.exponent else x


def _ldexp(t: Tensor, exponent: int) -> Tensor:
    return torch.ldexp(t, torch.tensor(exponent, dtype=t.dtype, device=t.device))


def _abs_max(t: Tensor) -> float:
    return float(t.abs().amax())


def _gram_max(t: Tensor, exponent: int) -> float:
    """max over rows (and positions) of sum_c x^2 / C, in float64, from the inputs'
    2^-exponent multiples (so that the sums do not overflow), a few rows at a time. By
    Cauchy-Schwarz, C times it bounds every partial sum of the input Gram."""
    rows = max(1, (1 << 20) // max(1, t[0].numel()))
    g = 0.0
    for r0 in range(0, t.shape[0], rows):
        x = _ldexp(t[r0 : r0 + rows].to(torch.float64), -exponent)
        g = max(g, float((x * x).sum(1).amax()))
    g /= t.shape[1]
    try:
        return math.ldexp(g, 2 * exponent)
    except OverflowError:  # beyond any float: its order of magnitude, for the message
        return _Huge(math.log10(g) + 2 * exponent * math.log10(2.0))


class _Huge(float):
    """A number too large for a float (an overflowing Gram entry), kept as its log10."""

    def __new__(cls, log10: float):
        out = super().__new__(cls, math.inf)
        out.log10 = log10
        return out

    def __format__(self, spec: str) -> str:
        e = math.floor(self.log10)
        return f"{10 ** (self.log10 - e):.3g}e+{e}"


def prepare_inputs(layer, x1, x2, dtype: torch.dtype) -> PreparedInputs:
    """Check x1/x2 (NaN or inf rejected naming the row), cast them to ``dtype`` and rescale
    them by a power of two where their Gram matrix would overflow (see the module
    docstring); raise a ValueError if they cannot be computed in ``dtype`` at all."""
    src1 = as_tensor(x1, "x1", None)
    src2 = None if x2 is None else as_tensor(x2, "x2", None)
    info = torch.finfo(dtype)
    big = _abs_max(src1) if src2 is None else max(_abs_max(src1), _abs_max(src2))
    channels = src1.shape[1]
    tiny = 0.0 < big * big < info.tiny / GRAM_HEADROOM  # the Gram would underflow
    # the common case, decided by one pass: no partial sum of the Gram can overflow
    if channels * big * big <= info.max * GRAM_HEADROOM and not tiny:
        return _plain(src1, src2, dtype)
    exponent = math.frexp(big)[1]  # 2^-exponent |x| lies in [1/2, 1)
    g1 = _gram_max(src1, exponent)
    g2 = 0.0 if src2 is None else _gram_max(src2, exponent)
    overflow = big > info.max or channels * max(g1, g2) > info.max * GRAM_HEADROOM
    if not (overflow or tiny):
        return _plain(src1, src2, dtype)
    degree = layer.scaling_degree(1)
    if isinstance(degree, list) or (degree is not None and not float(2 * degree).is_integer()):
        degree = None
    if degree is None and not overflow:
        return _plain(src1, src2, dtype)

    def scaled(src: Tensor) -> Tensor:
        return _ldexp(src.to(torch.float64), -exponent).to(dtype)

    out = PreparedInputs(scaled(src1), None if src2 is None else scaled(src2), src1, src2, exponent)
    if degree is not None:  # homogeneous: K(x) = 2^(2 p e) K(2^-e x), undone at the end
        out.degree = degree
        out.out_exponent = int(2 * degree * exponent)
        return out
    if not max(g1, g2) < info.max:
        which, gram = ("x1", g1) if g1 >= g2 else ("x2", g2)
        raise ValueError(
            f"the input kernel x.x / C of `{which}` overflows {dtype}: its largest entry "
            f"is about {gram:.3g} (largest |x| = {big:.3g}, C = {channels} "
            f"channels) and {dtype} holds up to {info.max:.5g}. Rescale the inputs (e.g. "
            "standardise them). Only a positively homogeneous network (no biases; ReLU, "
            "LeakyRelu, Abs, ABRelu or Monomial activations) is rescaled automatically, "
            "since its kernel scales exactly as a power of the input norm."
        )
    out.gram_exponent = 2 * exponent
    return out


def _plain(src1: Tensor, src2: Tensor | None, dtype: torch.dtype) -> PreparedInputs:
    """The inputs cast to ``dtype``, not rescaled."""
    return PreparedInputs(src1.to(dtype), None if src2 is None else src2.to(dtype), src1, src2)


def scale_output(t: Tensor | None, exponent: int) -> Tensor | None:
    """t * 2^exponent in place (exact, in steps the dtype can represent)."""
    from widenets.kernel import _scale_exactly

    if t is None or exponent == 0:
        return t
    return _scale_exactly(t, exponent)


# ----- NaN and inf ---------------------------------------------------------------------------


class FiniteCheck:
    """A running sum of every finished tile: NaN or inf anywhere make it
    non-finite (finite values whose sum overflows give a false alarm, settled by
    ``torch.isfinite`` on the whole result). One reduction per tile, no synchronisation."""

    __slots__ = ("total",)

    def __init__(self):
        self.total: Tensor | None = None

    def add(self, t: Tensor | None) -> None:
        if t is None:
            return
        # in the tile's dtype (a float64 sum would convert float32 tiles: a copy), half
        # precisions in float32 (whose sums overflow at 65504)
        s = t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum()
        self.total = s if self.total is None else self.total + s

    def ok(self) -> bool:
        return self.total is None or bool(torch.isfinite(self.total))


def first_nonfinite(t: Tensor) -> tuple[int, ...] | None:
    """Index of the first NaN or inf entry of ``t``, or None."""
    if t is None or bool(torch.isfinite(t).all()):
        return None
    return tuple((~torch.isfinite(t)).nonzero()[0].tolist())


def _fields(k):
    if isinstance(k, list):
        for i, kk in enumerate(k):
            for name, t in _fields(kk):
                yield f"{name} (branch {i})", t
        return
    yield from (
        (name, t)
        for name, t in (
            ("NNGP", k.nngp),
            ("NTK", k.ntk),
            ("variances of x1", k.cov1),
            ("variances of x2", k.cov2),
        )
        if t is not None
    )


def _bad_fields(k) -> list[tuple[str, bool, bool]]:
    """(field, has NaN, has inf) of each non-finite field of a kernel record (or list)."""
    out = []
    for name, t in _fields(k):
        if not bool(torch.isfinite(t).all()):
            out.append((name, bool(torch.isnan(t).any()), bool(torch.isinf(t).any())))
    return out


def _to64(k):
    if isinstance(k, list):
        return [_to64(kk) for kk in k]
    return k.replace(
        **{
            f: getattr(k, f).to(torch.float64)
            for f in ("nngp", "ntk", "cov1", "cov2")
            if getattr(k, f) is not None
        }
    )


def _trace(layer, k, path: tuple[str, ...]):
    """Fold ``layer`` over ``k`` through Serial and Parallel one leaf at a time; at the
    first leaf with a non-finite output, return (path, leaf, its input, its output)."""
    from widenets.layers.combinators import Parallel, Serial

    if isinstance(layer, Serial):
        for i, child in enumerate(layer.layers):
            k = _trace(child, k, (*path, f"layer {i}"))
            if isinstance(k, tuple):
                return k
        return k
    if isinstance(layer, Parallel) and isinstance(k, list):
        outs = []
        for i, (branch, kk) in enumerate(zip(layer.branches, k, strict=True)):
            out = _trace(branch, kk, (*path, f"branch {i}"))
            if isinstance(out, tuple):
                return out
            outs.append(out)
        return outs
    out = layer.kernel_fn(k)
    return (path, layer, k, out) if _bad_fields(out) else out


#: points where an activation is probed when it produced NaN (its domain)
PROBES = (-1e4, -100.0, -10.0, -2.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0, 10.0, 100.0)


def _undefined_points(layer) -> list[float]:
    """Probe points where an activation's ``fn`` is not finite (empty if it has none)."""
    fn = getattr(layer, "fn", None)
    if fn is None:
        return []
    x = torch.tensor(PROBES, dtype=torch.float64)
    try:
        with torch.no_grad():
            y = fn(x)
    except Exception:  # noqa: BLE001 - a probe only
        return []
    if not isinstance(y, Tensor) or y.shape != x.shape:
        return []
    return [p for p, ok in zip(PROBES, torch.isfinite(y).tolist(), strict=True) if not ok]


def _domain_advice(points: list[float]) -> str:
    neg = [p for p in points if p < 0]
    where = ", ".join(f"{p:g}" for p in points)
    if neg and len(neg) == sum(p < 0 for p in PROBES):
        what = "it is not defined for negative inputs" + (" (nor at 0)" if 0.0 in points else "")
    else:
        what = "it is not defined on the whole real line"
    return (
        f"the activation is not finite at x = {where}: {what}. Its kernel is an expectation "
        "over Gaussian pre-activations, which take every real value, so the activation "
        "must be finite everywhere; use one that is (e.g. softplus instead of log)"
    )


def _wider(dtype: torch.dtype) -> str:
    """The advice on dtype: float64, or float32 / float64 from a half precision."""
    if torch.finfo(dtype).bits < 32:
        return "float32 or float64 (dtype=torch.float32)"
    return "float64 (dtype=torch.float64)"


def _describe(layer) -> str:
    text = repr(layer)
    return text if "\n" not in text else f"{type(layer).__name__}(...)"


def raise_nonfinite(
    layer,
    x1: Tensor,
    x2: Tensor,
    i: int,
    j: int,
    same_input: bool,
    *,
    full_spatial: bool,
    gram_exponent: int = 0,
    field: str = "kernel",
    inputs: PreparedInputs | None = None,
    same_set: bool = False,
    side_fields: dict | None = None,
) -> None:
    """Raise a :class:`NonFiniteKernelError` for the pair (x1[i], x2[j]) (the rows of the
    working tensors, as evaluated): the pair is re-run one layer at a time to find the
    first layer whose output is not finite, and the message says whether it overflowed or
    produced NaN and what to do. ``side_fields``: the pair's masks and graphs
    (``widenets.side_inputs.SideInputs.rows``), if any."""
    from widenets.kernel import input_kernel

    dtype = x1.dtype
    info = torch.finfo(dtype)
    if same_input:
        pair = f"x1[{i}] with itself"
    else:
        pair = f"x1[{i}] and x{1 if same_set else 2}[{j}]"
    with torch.no_grad():
        k = input_kernel(
            x1[i : i + 1],
            x2[j : j + 1],
            diagonal_offset=0 if same_input else None,
            compute_ntk=True,
            full_spatial=full_spatial,
            gram_exponent=gram_exponent,
        )
        if side_fields:
            k = k.replace(**side_fields)
        found = _trace(layer, k, ()) if not _bad_fields(k) else ((), None, None, k)
    big = float(torch.cat([x1[i].flatten(), x2[j].flatten()]).abs().amax())
    if inputs is not None and inputs.exponent:
        big = math.ldexp(big, inputs.exponent)  # as given, before the rescaling
    rescale = (
        f"rescale the inputs (their largest |x| here is {big:.3g}; e.g. standardise them, "
        "or divide raw pixels by 255)"
    )
    wider = "" if dtype == torch.float64 else f" or compute in {_wider(dtype)}"
    if not isinstance(found, tuple):
        raise NonFiniteKernelError(
            f"the {field} of {pair} is NaN or inf, but re-running that pair layer by layer "
            f"gives finite values in {dtype}; this should not happen: please report it, "
            f"and meanwhile {rescale}{wider}."
        )
    path, leaf, k_in, out = found
    if leaf is None:
        raise NonFiniteKernelError(
            f"the input kernel x.x / C of {pair} is not finite in {dtype} (largest |x| = "
            f"{big:.3g}, {dtype} holds up to {info.max:.5g}): {rescale}{wider}."
        )
    where = " > ".join(path) if path else "the network"
    where = f"{where} ({_describe(leaf)})" if path else f"the network ({_describe(leaf)})"
    bad = _bad_fields(out)
    names = ", ".join(name for name, _, _ in bad)
    verb = "are" if len(bad) > 1 else "is"
    any_nan = any(nan for _, nan, _ in bad)
    if not any_nan:
        raise NonFiniteKernelError(
            f"overflow in {where}: its {names} for {pair} {verb} inf from finite inputs "
            f"(values beyond the largest {dtype}, {info.max:.5g}). To fix it, {rescale}"
            f"{wider}, or use smaller weight scales."
        )
    # NaN from finite values: an overflow inside the layer (inf - inf, inf / inf) that a
    # wider dtype avoids, or an operation that is invalid at these values
    if dtype != torch.float64:
        with torch.no_grad():
            try:
                ok64 = not _bad_fields(leaf.kernel_fn(_to64(k_in)))
            except Exception:  # noqa: BLE001 - a diagnosis only
                ok64 = False
        if ok64:
            raise NonFiniteKernelError(
                f"overflow in {where}: its {names} for {pair} {verb} NaN in {dtype} (an "
                f"intermediate value exceeded {info.max:.5g}), though finite in float64. "
                f"To fix it, {rescale}{wider}."
            )
    points = _undefined_points(leaf)
    advice = (
        _domain_advice(points)
        if points
        else (
            "an operation of the layer is invalid at these values (0/0, inf - inf, the "
            f"square root of a negative number...); check its hyperparameters, or {rescale}"
        )
    )
    raise NonFiniteKernelError(
        f"invalid operation in {where}: its {names} for {pair} {verb} NaN though its inputs "
        f"are finite: {advice}."
    )
