"""A run of 3x3 convolutions and ReLU-family layers folded in one compiled pass
(``Serial.kernel_fn``), one pair of inputs at a time.

On a diagonal-layout kernel with two spatial axes (``nngp`` (N1, N2, H, W): per-pixel
variances, no pixel pairs, as under a Flatten readout) the eager path applies each layer to
the whole tile: a window sum, then an ABRelu map, each a pass over N1 N2 H W entries and a
tile-sized temporary. :func:`fold` recognises a run of Conv (3x3, "same", stride 1, NTK
parameterisation, float scales) and ABRelu-family layers (Relu, LeakyRelu, Abs, ABRelu) in a
``serial`` and evaluates it pair by pair (``widenets._numba_conv.chain``): each pair's H x W
maps stay in L1-sized buffers through all the layers of the run; the per-input, per-pixel
variances and the square-root factors of each ABRelu layer are computed once per input
(``_numba_conv.variances``), not per pair.

It applies where the fully-connected chain does (``widenets._fc_chain``: the fused switch
on, or "auto" within a large enough call; numba importable; CPU float32/float64; no
autograd), with a plain record (no masks or patterns; the packed pairs of a set with
itself are handled). Elsewhere, or if the loop fails (then the fused loops are off for the
process), the layers run one by one (the eager path, the reference). Results equal the
eager path's to about 1e-15 relative in float64. A float32 tile is computed in float64 and
rounded once (as in the fully-connected chain: the eager float32 path rounds at every
layer, so the two differ by its rounding error, about 1e-6 relative); its ill-conditioned
pairs (sin(theta) < ``SIN_LIMIT`` at some pixel of an ABRelu layer) are flagged for
recomputation in float64 by the eager rule when a call watches them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from widenets import _fused
from widenets._chain_runs import conv_run_end, encode, own_variances
from widenets._fc_chain import MIN_SPLIT_NUMEL, _loops, split_rows, split_threads
from widenets.layers.activations import ABRelu
from widenets.layers.conv import Conv
from widenets.layers.pooling import Flatten
from widenets.numerics import _WATCH, SIN_LIMIT

#: pairs below which a tile is not split across threads
MIN_SPLIT_PAIRS = 64


def _plain(k) -> bool:
    return (
        not isinstance(k, list)
        and k.nngp is not None
        and k.nngp.ndim == 4
        and k.nngp.dtype in (torch.float64, torch.float32)
        and k.cov1.ndim == 3
        and k.cov2.ndim == 3
        and not k.full_spatial
        and k.mask1 is None
        and k.mask2 is None
        and k.pattern1 is None
        and k.pattern2 is None
        and len(k.shape1) == 3
        and tuple(k.shape1[1:]) == tuple(k.nngp.shape[2:])
        and (k.ntk is None or k.ntk.shape == k.nngp.shape)
    )


def fold(layers, i: int, k):
    """(the kernel after layers[i:j], j) when a run with a Conv and an ABRelu layer starting
    at i can be folded in one pass over ``k``, else None (the caller applies layers[i])."""
    if not _plain(k):
        return None
    j = conv_run_end(layers, i, k.is_gaussian, k.is_input, tuple(k.shape1))
    run = layers[i:j]
    if not any(isinstance(a, ABRelu) for a in run) or not any(isinstance(a, Conv) for a in run):
        return None
    if not _fused.usable(k.nngp, k.ntk, k.cov1, k.cov2, chain=True):
        return None
    if _loops() is None:
        return None
    try:
        from widenets import _numba_conv
    except Exception as e:  # noqa: BLE001 - as in the fully-connected chain
        _fused._fail(e)
        return None
    red = j < len(layers) and type(layers[j]) is Flatten  # the readout folded too
    try:
        out = _evaluate(_numba_conv, run, k, red)
    except Exception as e:  # noqa: BLE001 - a typing or LLVM error, no cache...: eager
        _fused._fail(e)
        return None
    return out, j + red


def _factors(mod, q, kinds, params, h, w, tiny, tol):
    """(rowf (L, 4, N, (h + 2)(w + 2)), the variance maps after the run (N, h w))."""
    qn = q.detach().reshape(len(q), h * w).contiguous().numpy()
    rowf = np.zeros((len(kinds), 4, len(qn), (h + 2) * (w + 2)), np.float64)
    qout = np.empty((len(qn), h * w), np.float64)
    mod.variances(qn, kinds, params, h, w, tiny, tol, rowf, qout)
    return rowf, qout


def _evaluate(mod, run, k, red=False):
    nngp, dtype = k.nngp, k.nngp.dtype
    n1, n2, h, w = nngp.shape
    kinds, params = encode(run, Conv, 1.0 / 9)
    finfo = torch.finfo(dtype)
    tiny, tol = float(finfo.tiny), math.sqrt(2 * 64 * finfo.eps)
    f1, q1 = _factors(mod, k.cov1, kinds, params, h, w, tiny, tol)
    if k.cov2 is k.cov1:
        f2, q2 = f1, q1
    else:
        f2, q2 = _factors(mod, k.cov2, kinds, params, h, w, tiny, tol)
    src = nngp.detach().contiguous().view(n1, n2, h * w).numpy()
    m = 1 if red else h * w  # (a Flatten after the run: the mean of each map)
    ko = torch.empty((n1, n2, h, w) if not red else (n1, n2), dtype=dtype)
    empty = np.empty((0, 0, 0), src.dtype)
    t_mode, t_arr, to = 0, empty, None
    if k.ntk is not None:
        to = torch.empty(ko.shape, dtype=dtype)
        if k.is_input:
            t_mode = 1
        else:
            t_mode, t_arr = 2, k.ntk.detach().contiguous().view(n1, n2, h * w).numpy()
    idx = np.empty(0, np.int64), np.empty(0, np.int64)
    if k.pairs is not None:
        idx = tuple(p.to(torch.int64).contiguous().numpy() for p in k.pairs)
    watch = _WATCH.get()
    flags = np.zeros((n1, n2) if watch is not None else (0, 0), np.bool_)
    args = (
        t_arr, t_mode, *idx, kinds, params, h, w, f1, f2, tol, red,
        ko.view(n1, n2, m).numpy(), empty if to is None else to.view(n1, n2, m).numpy(),
        SIN_LIMIT, watch is not None, flags,
    )  # fmt: skip
    _rows(mod, src, args, n1, n2 * h * w)
    if watch is not None:
        watch.add(torch.from_numpy(flags))
    if red:  # (Flatten's own operation on the variance maps, in float64, then rounded)
        cov1 = torch.from_numpy(q1).mean(-1).to(dtype)
        cov2 = cov1 if k.cov2 is k.cov1 else torch.from_numpy(q2).mean(-1).to(dtype)
    else:
        cov1 = torch.from_numpy(q1).view(len(q1), h, w).to(dtype)
        cov2 = cov1 if k.cov2 is k.cov1 else torch.from_numpy(q2).view(len(q2), h, w).to(dtype)
    off = k.diagonal_offset
    if k.pairs is not None:  # the listed pairs of an input with itself: its variance
        p1, p2 = k.pairs
        same = (p1 == p2).nonzero().flatten()
        ko[same, 0] = cov1[p1[same]]
    else:
        own_variances(ko, cov1, off, n1, n2)
    convs = [layer for layer in run if isinstance(layer, Conv)]
    width = convs[-1].out_channels
    return k.replace(
        nngp=ko,
        ntk=to,
        cov1=cov1,
        cov2=cov2,
        is_gaussian=isinstance(run[-1], Conv),
        is_input=False,
        shape1=(width * h * w,) if red else (width, *k.shape1[1:]),
        shape2=(width * h * w,) if red else (width, *k.shape2[1:]),
    )


def _rows(mod, src, args, n1: int, row_numel: int) -> None:
    """The chain over all rows of pairs: on this thread, or split across torch's thread
    count (as ``_fc_chain._rows``)."""
    t_arr, t_mode, ridx, cidx, *rest = args
    threads = split_threads()
    parts = min(threads, n1 * row_numel // MIN_SPLIT_NUMEL, n1)
    if n1 * (row_numel // max(1, src.shape[2])) < MIN_SPLIT_PAIRS:
        parts = 1
    if parts <= 1:
        mod.chain(src, t_arr, t_mode, 0, n1, ridx, cidx, *rest)
        return
    split_rows(lambda lo, hi: mod.chain(src, t_arr, t_mode, lo, hi, ridx, cidx, *rest), n1, parts)
