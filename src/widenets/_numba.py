"""The fused loops by numba (``widenets._numba_loops``): a backend of :mod:`widenets._fused`.

Two loops, each one pass over a tile: the ABRelu pair map with the NTK product
(:func:`abrelu_pair`, the operations of ``_fused._abrelu``) and the 3x3 "same" stride-1
window sum of a convolution with its bias and NTK update (:func:`window_sum`:
scale * sum + b^2 (+ the new NNGP, for Theta' = w^2/9 sum Theta + K')). Each returns None
where it does not apply (a layout it does not know, numba missing or failing): the caller
then takes the eager path. numba is imported on first use; the loops are compiled on the
first call of a process for each dtype (about 2 s) and cached on disk by numba (``cache=True``,
about 0.2 s to load in a later process; ``NUMBA_CACHE_DIR`` to move the cache).
Each loop runs on the calling thread alone and releases the GIL: no numba threading layer
is launched (it would set the OpenMP thread count torch shares, process-wide), and the tiles
of a kernel run on the pool of ``widenets._pool`` (``_fused.wants_pool``), each thread
calling the loops on its own tile.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from torch import Tensor

from widenets import _workspace

_lock = threading.Lock()
_state: dict = {}  # "loops": the module, "numba": numba; "failed": why not


def loops():
    """The loops module, or None when numba is missing or failed (the reason in
    :func:`failure`)."""
    if "loops" in _state:
        return _state["loops"]
    if "failed" in _state:
        return None
    with _lock:
        if "loops" not in _state and "failed" not in _state:
            try:
                import numba

                from widenets import _numba_loops

                _state["numba"] = numba
                _state["loops"] = _numba_loops
            except Exception as e:  # noqa: BLE001 - not installed, broken llvmlite, ...
                _state["failed"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return _state.get("loops")


def failure() -> str | None:
    """Why the numba loops are not available (None: available or not tried yet)."""
    return _state.get("failed")


def _np(t: Tensor):
    return t.detach().numpy()


def _coalesce(shape, strides_list):
    """Drop size-1 axes and merge neighbours that every array steps through as one; the
    shape and strides (one list per array) of the result."""
    dims = [(n, [s[i] for s in strides_list]) for i, n in enumerate(shape) if n != 1]
    out: list = []
    for n, ss in dims:
        if out and all(p == s * n for p, s in zip(out[-1][1], ss, strict=True)):
            out[-1] = (out[-1][0] * n, ss)
        else:
            out.append((n, ss))
    return [n for n, _ in out], [[ss[j] for _, ss in out] for j in range(len(strides_list))]


def _empty_as(t: Tensor, order) -> Tensor:
    """An uninitialised tensor of ``t``'s shape with its memory order ``order`` (axes,
    outermost first), from the workspace when one is active."""
    buf = _workspace.empty([t.shape[a] for a in order], t.dtype)
    return buf.permute(_inverse(order))


def _inverse(order):
    inv = [0] * len(order)
    for i, a in enumerate(order):
        inv[a] = i
    return inv


def _memory_order(t: Tensor):
    """``t``'s axes, outermost first, when it is dense in that order (else None)."""
    order = sorted(range(t.ndim), key=lambda a: (-t.stride(a), -t.shape[a]))
    if not t.permute(order).is_contiguous():
        return None
    return order


def abrelu_pair(ab, coef, tol, nngp, ntk, neg_inv1, inv2, scaled1, root2):
    """(K', Theta Kdot) of ABRelu by the numba loop, or None where it does not apply."""
    mod = loops()
    if mod is None:
        return None
    order = _memory_order(nngp)
    if order is None or (ntk is not None and ntk.stride() != nngp.stride()):
        # (a strided view, say): a dense copy, so that every tile takes the loop (the
        # same bits whatever the tiling)
        nngp = nngp.contiguous()
        ntk = None if ntk is None else ntk.contiguous()
        order = list(range(nngp.ndim))
    facs = [f.expand(nngp.shape).permute(order) for f in (neg_inv1, inv2, scaled1, root2)]
    base = nngp.permute(order)
    shape, strides = _coalesce(base.shape, [base.stride(), *(f.stride() for f in facs)])
    if len(shape) > 3 or (shape and strides[0][-1] != 1):
        return None
    shape = [1] * (3 - len(shape)) + shape
    views = []
    for t, ss in zip((base, *facs), strides, strict=True):
        ss = [0] * (3 - len(ss)) + ss
        views.append(t.as_strided(shape, ss, t.storage_offset()))
    ko = _empty_as(nngp, order)
    to = _empty_as(ntk, order) if ntk is not None else None
    k3 = views[0]
    ko3 = ko.permute(order).reshape(shape)
    empty = np.empty((0, 0, 0), np.dtype(str(nngp.dtype).split(".")[-1]))
    t3 = _np(ntk.permute(order).reshape(shape)) if ntk is not None else empty
    to3 = _np(to.permute(order).reshape(shape)) if to is not None else empty
    mod.abrelu(_np(k3), t3, *(_np(v) for v in views[1:]), ab, coef, tol, _np(ko3), to3)
    return ko, to


def window_sum(t: Tensor, full: bool, scale: float, bvar: float, add: Tensor | None = None):
    """scale * (3x3 "same" window sum of the tile t) + bvar (+ add) by the numba loop: t
    (n1, n2, H, H', W, W') in the full layout, (n1, n2, H, W) or packed (P, 1, H, W) in the
    diagonal one; None where it does not apply."""
    mod = loops()
    if mod is None:
        return None
    if full:
        if t.ndim != 6:
            return None
        n1, n2, h, h2, w, w2 = t.shape
        order = [0, 2, 4, 1, 3, 5]  # rows (i, h, w), columns (j, h', w')
        shape, rho, rh, rw, ch, cw = (n1 * h * w, n2 * h2 * w2), 1, h, w, h2, w2
    else:
        if t.ndim != 4:
            return None
        n1, n2, h, w = t.shape
        order = [0, 1, 2, 3]
        shape, rho, rh, rw, ch, cw = (n1 * n2, h * w), 0, 1, 1, h, w
    src = t.permute(order).contiguous()  # (a copy only for a strided view)
    if add is not None:
        add = add.permute(order).contiguous().permute(_inverse(order))
    mask = np.zeros((9, ch, cw), np.dtype(str(t.dtype).split(".")[-1]))
    for q in range(9):
        dh, dw = q // 3 - 1, q % 3 - 1
        mask[q, max(0, -dh) : min(ch, ch - dh), max(0, -dw) : min(cw, cw - dw)] = 1
    out = _empty_as(t, order)
    a2 = _np(add.permute(order).reshape(shape)) if add is not None else mask[:0, 0]
    mod.window3(
        _np(src.reshape(shape)), rho, rh, rw, ch, cw, mask.reshape(9, -1),
        scale, bvar, a2, _np(out.permute(order).reshape(shape)),
    )  # fmt: skip
    return out


def tol(dtype: torch.dtype) -> float:
    """The snapping tolerance of the ABRelu map (as the eager one's)."""
    return math.sqrt(2 * 64 * torch.finfo(dtype).eps)
