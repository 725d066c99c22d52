"""Spatial helpers shared by convolution and pooling kernels: padding geometry and
windowed sums over the position axes of a kernel, in both spatial layouts.

A convolution with a k-tap filter (shift d = 0..k-1, stride s) maps a kernel as

    K'[p, p'] = (1/k) sum_d K[s p + d, s p' + d]            (both positions move together),

one spatial axis at a time, so a d-dimensional filter costs sum_i k_i slice-adds per
entry rather than prod_i k_i (the filter is separable over axes). In the diagonal layout
p = p' and it is a plain moving average; in the full layout it runs along the diagonals
of each (S_i, S_i') plane. Pooling moves the two positions independently:
K'[p, p'] = (1/k^2) sum_{d, d'} K[s p + d, s p' + d'].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from widenets import _workspace
from widenets.errors import check_positive_int, shape_str

PADDINGS = ("same", "valid", "circular")


def check_padding(padding: str) -> str:
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise ValueError(f"`padding` must be one of {PADDINGS}, got {padding!r}.")
    return padding.lower()


def as_tuple(value, n: int | None, name: str) -> tuple[int, ...] | int:
    """An int (kept as int: the dimension follows the input) or a tuple of positive ints."""
    if isinstance(value, (tuple, list)):
        if not value:
            raise ValueError(f"`{name}` must not be empty.")
        out = tuple(check_positive_int(v, name) for v in value)
        if n is not None and len(out) != n:
            raise ValueError(f"`{name}` must have {n} entries, got {value!r}.")
        return out
    return check_positive_int(value, name)


def expand(value, d: int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * d


def spatial_dims(layer, in_shape, dims: int | None) -> int:
    """Number of spatial axes of a per-example (C, *spatial) shape, checked against ``dims``."""
    if not isinstance(in_shape, tuple):
        raise ValueError(f"{layer!r} takes a single input, got {len(in_shape)} branches.")
    d = len(in_shape) - 1
    if dims is not None and d != dims:
        want = "(C, L)" if dims == 1 else "(C, H, W)" if dims == 2 else f"(C, +{dims} axes)"
        hint = " Add a channel axis, e.g. x[:, None]." if d == dims - 1 else ""
        raise ValueError(
            f"{layer!r} has a {dims}-D window and needs per-example inputs {want}, channels "
            f"first, got {shape_str(in_shape)}.{hint}"
        )
    if d < 1:
        raise ValueError(
            f"{layer!r} needs spatial axes: per-example inputs (C, L) or (C, H, W), channels "
            f"first, got {shape_str(in_shape)}."
        )
    if d > 3:
        raise ValueError(f"{layer!r} supports 1 to 3 spatial axes, got {shape_str(in_shape)}.")
    return d


def geometry(size: int, k: int, s: int, padding: str, what: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) of a window of k taps with stride s.

    "valid": no padding, out = (size - k) // s + 1 (an error if k > size). "same" and
    "circular": out = ceil(size / s), padded by max((out - 1) s + k - size, 0) split with
    the smaller half before (the convention of torch, TensorFlow and JAX).
    """
    if padding == "valid":
        if k > size:
            raise ValueError(
                f"{what} of size {k} does not fit an input of size {size} with padding="
                f"'valid'; use a smaller window or padding='same'."
            )
        return (size - k) // s + 1, 0, 0
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    lo = total // 2
    hi = total - lo
    if padding == "circular" and max(lo, hi) > size:
        raise ValueError(
            f"{what} of size {k} is too large for circular padding of an input of size {size}."
        )
    return out, lo, hi


def pad_input(x: Tensor, pads: tuple[tuple[int, int], ...], circular: bool) -> Tensor:
    """Pad the spatial axes of activations (N, C, *spatial); ``pads`` is ((lo, hi), ...) per
    axis: zeros, or wrapped around when ``circular`` (the finite faces of Conv, AvgPool)."""
    flat = []
    for lo, hi in reversed(pads):  # F.pad starts from the last axis
        flat += [lo, hi]
    if not any(flat):
        return x
    if circular:
        # F.pad's circular mode needs pads <= size; wrapping one axis at a time keeps it simple
        for i, (lo, hi) in enumerate(pads):
            axis = 2 + i
            n = x.shape[axis]
            parts = []
            if lo:
                parts.append(x.narrow(axis, n - lo, lo))
            parts.append(x)
            if hi:
                parts.append(x.narrow(axis, 0, hi))
            x = torch.cat(parts, axis)
        return x
    return torch.nn.functional.pad(x, flat)


def pad_axis(t: Tensor, axis: int, lo: int, hi: int, circular: bool) -> Tensor:
    """Pad one axis with zeros or by wrapping around."""
    if lo == 0 and hi == 0:
        return t
    n = t.shape[axis]
    if circular:
        parts = []
        if lo:
            parts.append(t.narrow(axis, n - lo, lo))
        parts.append(t)
        if hi:
            parts.append(t.narrow(axis, 0, hi))
        return torch.cat(parts, axis)
    shape = list(t.shape)
    shape[axis] = n + lo + hi
    out = t.new_zeros(shape)
    out.narrow(axis, lo, n).copy_(t)
    return out


def shift_sum(
    t: Tensor, axes: tuple[int, ...], k: int, s: int, out_len: int, scale: float | None = None
) -> Tensor:
    """sum_{d<k} t[..., s p + d, ...] with the same shift d on every axis in ``axes``
    (times ``scale`` when given, folded into the same passes)."""

    def index(d):
        idx = [slice(None)] * t.ndim
        for a in axes:
            idx[a] = slice(d, d + s * (out_len - 1) + 1, s)
        return tuple(idx)

    out = scaled_copy(t[index(0)], scale)
    for d in range(1, k):
        out.add_(t[index(d)], alpha=1.0 if scale is None else scale)
    return out


def conv_window_mean(
    t: Tensor,
    n_batch: int,
    full: bool,
    geoms: tuple[tuple[int, int, int], ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    circular: bool,
    scale: float | None = None,
) -> Tensor:
    """The kernel map of a convolution's shared shifts: the window sum, times ``scale``
    when given (folded into the first axis's passes). Returns ``t`` itself only when
    there is nothing to do (a 1x1 filter with stride 1 and no scale)."""
    for i, ((out, lo, hi), k, s) in enumerate(zip(geoms, kernel, stride, strict=True)):
        axes = (n_batch + 2 * i, n_batch + 2 * i + 1) if full else (n_batch + i,)
        if k == 1 and s == 1:
            continue
        if not circular and s == 1 and out == t.shape[axes[0]] and 0 <= lo < k:
            t = _same_shift_sum(t, axes, k, lo, scale)
        else:
            for a in axes:
                t = pad_axis(t, a, lo, hi, circular)
            t = shift_sum(t, axes, k, s, out, scale)
        scale = None  # applied once
    return t if scale is None else t * scale


def scaled_copy(t: Tensor, scale: float | None) -> Tensor:
    """A new tensor holding ``t`` (times ``scale``), in a workspace buffer when one may be
    used (``widenets._workspace``; a contiguous copy, as ``clone`` of a sliced view is)."""
    if not _workspace.usable(t) or not (t.is_contiguous() or _sliced(t)):
        return t.clone() if scale is None else t * scale
    out = _workspace.empty_like(t)
    return out.copy_(t) if scale is None else torch.mul(t, scale, out=out)


def _sliced(t: Tensor) -> bool:
    """Whether ``t`` is a view that ``clone`` and ``*`` would return contiguous: its
    strides decrease along its axes (a slice of a contiguous tensor) but leave gaps."""
    strides = [s for s, n in zip(t.stride(), t.shape, strict=True) if n > 1]
    return all(a > b for a, b in zip(strides, strides[1:], strict=False))


def _same_shift_sum(
    t: Tensor, axes: tuple[int, ...], k: int, lo: int, scale: float | None = None
) -> Tensor:
    """sum_d t[p + d - lo] over taps d < k with zeros outside (times ``scale``), stride 1,
    output size = input size: no padded copy, each tap adds the overlapping block in place."""
    n = t.shape[axes[0]]
    out = scaled_copy(t, scale)  # the tap with shift 0 (d = lo)
    alpha = 1.0 if scale is None else scale
    for d in range(k):
        e = d - lo
        if e == 0 or abs(e) >= n:
            continue
        dst = [slice(None)] * t.ndim
        src = [slice(None)] * t.ndim
        for a in axes:
            dst[a] = slice(0, n - e) if e > 0 else slice(-e, n)
            src[a] = slice(e, n) if e > 0 else slice(0, n + e)
        out[tuple(dst)].add_(t[tuple(src)], alpha=alpha)
    return out


def pool_window_sum(
    t: Tensor,
    n_batch: int,
    geoms: tuple[tuple[int, int, int], ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    circular: bool,
) -> Tensor:
    """Independent windowed sums over both positions of every pair (full layout only)."""
    for i, ((out, lo, hi), k, s) in enumerate(zip(geoms, kernel, stride, strict=True)):
        for a in (n_batch + 2 * i, n_batch + 2 * i + 1):
            t = pad_axis(t, a, lo, hi, circular)
            if not (k == 1 and s == 1):
                t = shift_sum(t, (a,), k, s, out)
    return t
