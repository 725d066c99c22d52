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
``ABRelu._pair_from_roots`` entry by entry, arccos by SLEEF's asin polynomial). Arithmetic
is float64: a float32 tile is read, computed in float64 and rounded once, as in the
fully-connected chain, its pairs flagged where sin(theta) < ``lim`` at any pixel of an
ABRelu layer (the eager rule) for recomputation in float64. ``nogil=True, cache=True``
(compiled once per dtype), serial: the parallelism comes from the caller's threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from widenets._numba_fc import _relu1
from widenets._numba_loops import FM


@njit(fastmath=FM, cache=True, nogil=True)
def _conv(src, dst, add, has_add, h, w, scale, bvar):
    """dst = scale * (3x3 window sum of src) + bvar (+ add) over the interior of the padded
    (h + 2) x (w + 2) buffers (src's border zeros; dst's left and right border columns
    set to zeros after a flat pass over the rows)."""
    wp = w + 2
    n = h * wp - 2  # the flat run from the first interior entry to the last
    s0 = src[0:]
    s1 = src[1:]
    s2 = src[2:]
    s3 = src[wp:]
    s4 = src[wp + 1 :]
    s5 = src[wp + 2 :]
    s6 = src[2 * wp :]
    s7 = src[2 * wp + 1 :]
    s8 = src[2 * wp + 2 :]
    d = dst[wp + 1 :]
    a = add[wp + 1 :]
    for e in range(n):  # (the test of has_add is hoisted out of the loop by LLVM)
        acc = 0.0
        acc += s0[e]
        acc += s1[e]
        acc += s2[e]
        acc += s3[e]
        acc += s4[e]
        acc += s5[e]
        acc += s6[e]
        acc += s7[e]
        acc += s8[e]
        v = acc * scale + bvar
        if has_add:
            v += a[e]
        d[e] = v
    for y in range(1, h + 1):
        dst[y * wp] = 0.0
        dst[y * wp + wp - 1] = 0.0


@njit(fastmath=FM, cache=True, nogil=True, inline="always")
def _load(buf, src, h, w):
    """The flat h x w map ``src`` into the interior of the padded buffer ``buf``."""
    wp = w + 2
    for y in range(h):
        row = buf[(y + 1) * wp + 1 :]
        for x in range(w):
            row[x] = src[y * w + x]


@njit(fastmath=FM, cache=True, nogil=True, inline="always")
def _store(dst, buf, h, w):
    """The interior of the padded buffer ``buf`` into the flat h x w map ``dst``."""
    wp = w + 2
    for y in range(h):
        row = buf[(y + 1) * wp + 1 :]
        for x in range(w):
            dst[y * w + x] = row[x]


@njit(fastmath=FM, cache=True, nogil=True)
def _relu(kb, tb, has_t, n1, i2, s1, r2, lo, n, ab, coef, tol, lim):
    """ABRelu over the flat run [lo, lo + n) of the padded buffers (factors zero on the
    border: there K stays zero, sin(theta) 1); whether sin(theta) < ``lim`` anywhere."""
    k = kb[lo:]
    t = tb[lo:]
    f1n = n1[lo:]
    f2i = i2[lo:]
    f1s = s1[lo:]
    f2r = r2[lo:]
    bad = False
    for e in range(n):
        kn, dot, sn = _relu1(k[e], f1n[e], f2i[e], f1s[e], f2r[e], ab, coef, tol)
        k[e] = kn
        if has_t:
            t[e] = t[e] * dot
        bad = bad | (sn < lim)
    return bad


@njit(fastmath=FM, cache=True, nogil=True)
def variances(q, kinds, params, h, w, tiny, tol, rowf, qout):
    """Each input's variance map q[i] (N, h w) through the layers (into qout[i]), keeping
    for ABRelu layer l its factors rowf[l, :, i] = (-1/sqrt q, sqrt q coef, 1/sqrt q,
    sqrt q) per pixel (sqrt clamped at ``tiny``) in the padded (h + 2) x (w + 2) layout
    (rowf zeros on entry: the border stays zero)."""
    n = q.shape[0]
    nl = kinds.shape[0]
    wp = w + 2
    a = np.zeros((h + 2) * wp, np.float64)
    b = np.zeros((h + 2) * wp, np.float64)
    for i in range(n):
        _load(a, q[i], h, w)
        for layer in range(nl):
            if kinds[layer] == 0:
                _conv(a, b, a, False, h, w, params[layer, 0], params[layer, 1])
                a, b = b, a
            else:
                ab = params[layer, 0]
                coef = params[layer, 1]
                for y in range(h):
                    for x in range(w):
                        pp = (y + 1) * wp + 1 + x
                        v = a[pp]
                        root = max(math.sqrt(v), tiny)
                        inv = 1.0 / root
                        s1 = root * coef
                        rowf[layer, 0, i, pp] = -inv
                        rowf[layer, 1, i, pp] = s1
                        rowf[layer, 2, i, pp] = inv
                        rowf[layer, 3, i, pp] = root
                        a[pp] = _relu1(v, -inv, inv, s1, root, ab, coef, tol)[0]
        _store(qout[i], a, h, w)


@njit(fastmath=FM, cache=True, nogil=True)
def chain(
    k, t, t_mode, r0, r1, ridx, cidx, kinds, params, h, w, rowf, colf, tol, red, ko, to,
    lim, watch, flags,
):  # fmt: skip
    """Entries (a, b), a in [r0, r1), of k (A, B, h w) through the layers into ko (and to,
    when ``t_mode``: 1 the input kernel (the first Conv's NTK is its NNGP), 2 the NTK t):
    the pair of inputs (a, b), or with ``ridx`` not empty (the packed layout, B = 1) the
    pair (ridx[a], cidx[a]); rowf (L, 4, n1, (h + 2)(w + 2)) and colf (L, 4, n2, ...) the
    factors of :func:`variances` of x1's and x2's inputs; with ``red`` (a Flatten after the
    run) ko and to (A, B, 1) get the mean of the maps, else (A, B, h w) the maps. With
    ``watch``, flags[a, b] is set where an ABRelu layer's sin(theta) < ``lim`` at any pixel
    (the eager rule, ``numerics.flag_pairs_below``). Arithmetic is float64 whatever the
    dtype of k and ko (a float32 tile: read, computed in float64, rounded once)."""
    nb = k.shape[1]
    nl = kinds.shape[0]
    wp = w + 2
    size = (h + 2) * wp
    has_t = t_mode != 0
    packed = ridx.shape[0] > 0
    ka = np.zeros(size, np.float64)
    kb = np.zeros(size, np.float64)
    ta = np.zeros(size, np.float64)
    tb = np.zeros(size, np.float64)
    for a in range(r0, r1):
        for b in range(nb):
            r = ridx[a] if packed else a
            c = cidx[a] if packed else b
            _load(ka, k[a, b], h, w)
            if t_mode == 2:
                _load(ta, t[a, b], h, w)
            first = t_mode == 1
            bad = False
            for layer in range(nl):
                if kinds[layer] == 0:
                    _conv(ka, kb, ka, False, h, w, params[layer, 0], params[layer, 1])
                    if has_t:
                        if first:  # the input NTK is zero: Theta' = K'
                            tb[:] = kb
                            first = False
                        else:
                            _conv(ta, tb, kb, True, h, w, params[layer, 0], 0.0)
                        ta, tb = tb, ta
                    ka, kb = kb, ka
                else:
                    bad |= _relu(
                        ka, ta, has_t, rowf[layer, 0, r], colf[layer, 2, c], rowf[layer, 1, r],
                        colf[layer, 3, c], wp + 1, h * wp - 2, params[layer, 0], params[layer, 1],
                        tol, lim,
                    )  # fmt: skip
            if watch:
                flags[a, b] = bad
            ok = ko[a, b]
            if red:
                ok[0] = _mean(ka, h, w)
                if has_t:
                    to[a, b, 0] = _mean(ta, h, w)
                continue
            _store(ok, ka, h, w)
            if has_t:
                _store(to[a, b], ta, h, w)


@njit(fastmath=FM, cache=True, nogil=True, inline="always")
def _mean(buf, h, w):
    """The mean of the interior of a padded buffer (row by row, as ``Flatten``: sum / n)."""
    wp = w + 2
    s = 0.0
    for y in range(h):
        row = buf[(y + 1) * wp + 1 :]
        for x in range(w):
            s += row[x]
    return s / (h * w)
