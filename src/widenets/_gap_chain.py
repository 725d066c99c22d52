"""A run of 3x3 convolutions and ReLU-family layers read out by a global average pool,
folded in one compiled pass per pair of inputs on the full (pixel-pair) layout
(``Serial.kernel_fn``).

On a full-layout tile (``nngp`` (N1, N2, H, H', W, W'): every pair of positions, as
under a GlobalAvgPool readout) the eager path, and the per-layer numba loops
(``widenets._fused``), apply each layer to the whole tile: a window sum, then an ABRelu
map, each a pass over N1 N2 H^2 W^2 entries and a tile-sized temporary, and a dozen Python
calls a layer. :func:`fold` recognises a run of Conv (3x3, "same", stride 1, NTK
parameterisation, float scales) and ABRelu-family layers that starts at layer i and is
followed by a ``GlobalAvgPool``, and evaluates the run and the pool pair by pair
(``widenets._numba_gap.pairs``): each pair's map stays in two small zero-bordered buffers
through every layer, and only its mean (one NNGP and one NTK scalar) is written. Each
input's own pixel-pair covariance is folded through the same layers first
(``_numba_gap.variances``), giving the square-root factors of each ABRelu layer (and the
pooled variance); within a kernel evaluation these are computed once per group of inputs
and shared by the tiles (``widenets._variance_memo.memo_get``). For a set with itself the
pairs of a tile below the diagonal are copied from their mirror images, not computed.

It applies where the convolutional chain of the diagonal layout does
(``widenets._conv_chain``: the fused switch on, or "auto" within a large enough call; numba
importable; CPU; no autograd; float64 tiles not watched for recomputation; no masks or
patterns). Elsewhere, or if the loop fails (then the fused loops are off for the process),
the layers run one by one. Results equal the eager path's to about 1e-15 relative
(``tests/test_gap_chain.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from widenets import _fused, _numba, _variance_memo
from widenets._chain_runs import conv_run_end, encode, own_variances
from widenets.layers.activations import ABRelu
from widenets.layers.conv import Conv
from widenets.layers.pooling import GlobalAvgPool
from widenets.numerics import _WATCH


def _plain(k) -> bool:
    """A full-layout float64 record of two spatial axes with nothing the loop ignores."""
    return (
        not isinstance(k, list)
        and k.nngp is not None
        and k.full_spatial
        and k.nngp.ndim == 6
        and k.nngp.dtype == torch.float64
        and k.pairs is None
        and k.cov1.ndim == 5
        and k.cov2.ndim == 5
        and k.cov1.dtype == torch.float64
        and k.cov2.dtype == torch.float64
        and k.mask1 is None
        and k.mask2 is None
        and k.pattern1 is None
        and k.pattern2 is None
        and len(k.shape1) == 3
        and (k.ntk is None or k.ntk.shape == k.nngp.shape)
    )


def fold(layers, i: int, k):
    """(the kernel after layers[i:j + 1], j + 1) when layers[i:j] is a run of Conv and ABRelu
    layers (at least one of each) followed by a GlobalAvgPool at j, all folded in one pass
    over ``k``; else None (the caller applies layers[i])."""
    if not _plain(k) or _WATCH.get() is not None:
        return None
    j = conv_run_end(layers, i, k.is_gaussian, k.is_input, tuple(k.shape1))
    if j >= len(layers) or type(layers[j]) is not GlobalAvgPool:
        return None
    run = layers[i:j]
    if not any(isinstance(a, ABRelu) for a in run) or not any(isinstance(a, Conv) for a in run):
        return None
    if not _fused.usable(k.nngp, k.ntk, k.cov1, k.cov2, chain=True):
        return None
    if _fused.BACKEND == "compile" or _numba.loops() is None:
        return None
    try:  # (its loops compile, or load from numba's cache, at first use)
        from widenets import _numba_gap
    except Exception as e:  # noqa: BLE001 - as in the other chains
        _fused._fail(e)
        return None
    try:
        out = _evaluate(_numba_gap, run, k)
    except Exception as e:  # noqa: BLE001 - a typing or LLVM error, no cache...: eager
        _fused._fail(e)
        return None
    return out, j + 1


def _variances(mod, cov, which, kinds, params, h, w, tiny, tol):
    """(factors (L, n, 4, P), pooled variances (n,)) of the inputs of ``cov``, from the
    evaluation's memo when a tile of the same inputs computed them."""

    def compute():
        p = (h + 2) * (w + 2)
        fac = np.zeros((len(kinds), len(cov), 4, p), np.float64)
        red = np.empty(len(cov), np.float64)
        mod.variances(cov.detach().numpy(), kinds, params, h, w, tiny, tol, fac, red)
        return fac, red

    key = ("gap_chain", kinds.tobytes(), params.tobytes())
    return _variance_memo.memo_get(which, key, compute)


def _evaluate(mod, run, k):
    nngp = k.nngp
    n1, n2, h, _, w, _ = nngp.shape
    kinds, params = encode(run, Conv, 1.0 / 9)
    finfo = torch.finfo(torch.float64)
    tiny, tol = float(finfo.tiny), math.sqrt(2 * 64 * finfo.eps)
    f1, v1 = _variances(mod, k.cov1, 1, kinds, params, h, w, tiny, tol)
    if k.cov2 is k.cov1:
        f2, v2 = f1, v1
    else:
        f2, v2 = _variances(mod, k.cov2, 2, kinds, params, h, w, tiny, tol)
    ko = torch.empty((n1, n2), dtype=torch.float64)
    empty = np.empty((0, 0, 0, 0, 0, 0), np.float64)
    t_mode, t_arr, to = 0, empty, None
    if k.ntk is not None:
        to = torch.empty((n1, n2), dtype=torch.float64)
        if k.is_input:
            t_mode = 1
        else:
            t_mode, t_arr = 2, k.ntk.detach().numpy()
    off = k.diagonal_offset
    mod.pairs(
        nngp.detach().numpy(), t_arr, t_mode, off is not None, 0 if off is None else off,
        kinds, params, h, w, f1, f2, tol,
        ko.numpy(), np.empty((0, 0)) if to is None else to.numpy(),
    )  # fmt: skip
    cov1 = torch.from_numpy(v1)
    cov2 = cov1 if k.cov2 is k.cov1 else torch.from_numpy(v2)
    own_variances(ko, cov1, off, n1, n2)
    width = [layer for layer in run if isinstance(layer, Conv)][-1].out_channels
    return k.replace(
        nngp=ko,
        ntk=to,
        cov1=cov1,
        cov2=cov2,
        is_gaussian=isinstance(run[-1], Conv),
        is_input=False,
        shape1=(width,),
        shape2=(width,),
        full_spatial=False,
    )
