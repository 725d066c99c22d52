"""numba loops of the convolutional chain (:mod:`widenets._conv_chain`): a run of 3x3
"same" stride-1 Conv layers (NTK parameterisation, float scales) and ABRelu-family layers
on a diagonal-layout kernel with two spatial axes (``nngp`` (N1, N2, H, W)), one pair of
inputs at a time.

Each pair's (H, W) maps (NNGP and NTK) stay in small buffers (L1-resident for 16x16)
while they go through every layer of the run; the per-input, per-pixel variances and the
square-root factors of each ABRelu layer are computed once per input (:func:`variances`),
not per pair. Layers are encoded as ``kinds`` (0: Conv, 1: ABRelu) and ``params`` rows:
Conv (w^2 / 9, b^2), ABRelu (a b, (b - a)^2 / (2 pi)).

The window sum is that of ``_numba_loops.window3`` (taps in the same order, summed from
0, then times the scale plus b^2; the NTK: plus the new NNGP), on buffers with a border
of zeros instead of masks: the same arithmetic. ABRelu is ``_numba_fc._relu1`` (the eager
``ABRelu._pair_from_roots`` entry by entry, arccos by SLEEF's asin polynomial). float64
only; ``nogil=True, cache=True``, serial: the parallelism comes from the caller's threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from widenets._numba_fc import _relu1
from widenets._numba_loops import FM


@njit(fastmath=FM, cache=True, nogil=True, inline="always")
def _conv(src, dst, h, w, scale, bvar):
    """dst = scale * (3x3 window sum of src) + bvar over the interior of the padded
    (h + 2) x (w + 2) buffers (src's border zeros)."""
    wp = w + 2
    for y in range(h):
        base = (y + 1) * wp + 1
        for x in range(w):
            p = base + x
            acc = 0.0
            acc += src[p - wp - 1]
            acc += src[p - wp]
            acc += src[p - wp + 1]
            acc += src[p - 1]
            acc += src[p]
            acc += src[p + 1]
            acc += src[p + wp - 1]
            acc += src[p + wp]
            acc += src[p + wp + 1]
            dst[p] = acc * scale + bvar


@njit(fastmath=FM, cache=True, nogil=True, inline="always")
def _conv_add(src, dst, add, h, w, scale):
    """dst = scale * (3x3 window sum of src) + 0 + add (the NTK of a Conv)."""
    wp = w + 2
    for y in range(h):
        base = (y + 1) * wp + 1
        for x in range(w):
            p = base + x
            acc = 0.0
            acc += src[p - wp - 1]
            acc += src[p - wp]
            acc += src[p - wp + 1]
            acc += src[p - 1]
            acc += src[p]
            acc += src[p + 1]
            acc += src[p + wp - 1]
            acc += src[p + wp]
            acc += src[p + wp + 1]
            dst[p] = acc * scale + 0.0 + add[p]


@njit(fastmath=FM, cache=True, nogil=True)
def variances(q, kinds, params, h, w, tiny, tol, rowf, qout):
    """Each input's variance map q[i] (N, h w) through the layers (into qout[i]), keeping
    for ABRelu layer l its factors rowf[l, :, i] = (-1/sqrt q, sqrt q coef, 1/sqrt q,
    sqrt q) per pixel (sqrt clamped at ``tiny``)."""
    n = q.shape[0]
    nl = kinds.shape[0]
    wp = w + 2
    a = np.zeros((h + 2) * wp, np.float64)
    b = np.zeros((h + 2) * wp, np.float64)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                a[(y + 1) * wp + 1 + x] = q[i, y * w + x]
        for layer in range(nl):
            if kinds[layer] == 0:
                _conv(a, b, h, w, params[layer, 0], params[layer, 1])
                a, b = b, a
            else:
                ab = params[layer, 0]
                coef = params[layer, 1]
                for y in range(h):
                    for x in range(w):
                        pp = (y + 1) * wp + 1 + x
                        p = y * w + x
                        v = a[pp]
                        root = max(math.sqrt(v), tiny)
                        inv = 1.0 / root
                        s1 = root * coef
                        rowf[layer, 0, i, p] = -inv
                        rowf[layer, 1, i, p] = s1
                        rowf[layer, 2, i, p] = inv
                        rowf[layer, 3, i, p] = root
                        a[pp] = _relu1(v, -inv, inv, s1, root, ab, coef, tol)[0]
        for y in range(h):
            for x in range(w):
                qout[i, y * w + x] = a[(y + 1) * wp + 1 + x]


@njit(fastmath=FM, cache=True, nogil=True)
def chain(k, t, t_mode, r0, r1, kinds, params, h, w, rowf, colf, tol, ko, to):
    """Pairs (r, c), r in [r0, r1), of k (n1, n2, h w) through the layers into ko (and to,
    when ``t_mode``: 1 the input kernel (the first Conv's NTK is its NNGP), 2 the NTK t);
    rowf (L, 4, n1, h w) and colf (L, 4, n2, h w) the factors of :func:`variances`."""
    n2 = k.shape[1]
    nl = kinds.shape[0]
    wp = w + 2
    size = (h + 2) * wp
    has_t = t_mode != 0
    ka = np.zeros(size, np.float64)
    kb = np.zeros(size, np.float64)
    ta = np.zeros(size, np.float64)
    tb = np.zeros(size, np.float64)
    for r in range(r0, r1):
        for c in range(n2):
            kr = k[r, c]
            for y in range(h):
                for x in range(w):
                    ka[(y + 1) * wp + 1 + x] = kr[y * w + x]
            if t_mode == 2:
                tr = t[r, c]
                for y in range(h):
                    for x in range(w):
                        ta[(y + 1) * wp + 1 + x] = tr[y * w + x]
            first = t_mode == 1
            for layer in range(nl):
                if kinds[layer] == 0:
                    _conv(ka, kb, h, w, params[layer, 0], params[layer, 1])
                    if has_t:
                        if first:  # the input NTK is zero: Theta' = K'
                            for y in range(h):
                                for x in range(w):
                                    p = (y + 1) * wp + 1 + x
                                    tb[p] = kb[p]
                            first = False
                        else:
                            _conv_add(ta, tb, kb, h, w, params[layer, 0])
                        ta, tb = tb, ta
                    ka, kb = kb, ka
                else:
                    ab = params[layer, 0]
                    coef = params[layer, 1]
                    f1n = rowf[layer, 0, r]
                    f1s = rowf[layer, 1, r]
                    f2i = colf[layer, 2, c]
                    f2r = colf[layer, 3, c]
                    for y in range(h):
                        for x in range(w):
                            p = y * w + x
                            pp = (y + 1) * wp + 1 + x
                            kn, dot, sn = _relu1(
                                ka[pp], f1n[p], f2i[p], f1s[p], f2r[p], ab, coef, tol
                            )
                            ka[pp] = kn
                            if has_t:
                                ta[pp] = ta[pp] * dot
            ok = ko[r, c]
            for y in range(h):
                for x in range(w):
                    ok[y * w + x] = ka[(y + 1) * wp + 1 + x]
            if has_t:
                ot = to[r, c]
                for y in range(h):
                    for x in range(w):
                        ot[y * w + x] = ta[(y + 1) * wp + 1 + x]
