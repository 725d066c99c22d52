"""numba loops of the pixel-pair convolutional chain (:mod:`widenets._gap_chain`): a run of
3x3 "same" Conv and ABRelu-family layers on the full (pixel-pair) layout, then a global
average pool, one pair of inputs at a time.

A pair's map K[h, h', w, w'] is held in a zero-bordered buffer of (H + 2)(W + 2) rows (the
position (h, w) of the first input, padded) by as many columns ((h', w') of the second):
entry (r, c) with r = (h + 1)(W + 2) + w + 1, c likewise. A 3x3 tap (dh, dw) moves both
positions by the same step o = dh (W + 2) + dw, i.e. the flat index by o (P + 1) (P the
row length), so that the window sum of an interior row is nine shifted runs added:
K_c = w^2/9 sum K + b^2 and Theta_c = w^2/9 sum Theta + K_c (the taps in the order of
``_numba_loops.window3``, then scaled), zeros outside the planes kept zero by a column mask.
The ABRelu map (Cho & Saul 2009) is ``_numba_loops.abrelu_entry`` (as ``_abrelu_row``), with
the square-root factors of each input's per-position variances (each input's own
pixel-pair covariance folded through the same layers first, :func:`variances`). The global
average pool is the mean of the map's H^2 W^2 entries, so that only a scalar per pair of
NNGP and NTK leaves the loop.

Loops run on the calling thread and release the GIL (as ``_numba_loops``): the tiles of a
kernel run on the pool of ``widenets._pool``.
"""

from __future__ import annotations

import math

import numpy as np

from widenets._numba_loops import _jit, abrelu_entry


@_jit
def _load(src, buf, h, w):
    """buf's interior (r, c) entries from src (H, H', W, W'), any strides."""
    wp = w + 2
    p = (h + 2) * wp
    for a in range(h):
        for b in range(w):
            base = ((a + 1) * wp + b + 1) * p
            for a2 in range(h):
                row = base + (a2 + 1) * wp + 1
                for b2 in range(w):
                    buf[row + b2] = src[a, a2, b, b2]


@_jit
def _conv(src, dst, h, w, scale, bvar, cmask, add, has_add):
    """dst = (scale * 3x3 window sum of src + bvar (+ add)) on every interior row's run of
    columns, zero at the border columns (cmask)."""
    wp = w + 2
    p = (h + 2) * wp
    lo = wp + 1
    n = (h - 1) * wp + w
    for a in range(h):
        for b in range(w):
            d0 = ((a + 1) * wp + b + 1) * p + lo
            dv = dst[d0 : d0 + n]  # (slices: the loops vectorise)
            s0 = d0 - (wp + 1) * (p + 1)
            sv = src[s0 : s0 + n]
            for e in range(n):
                dv[e] = sv[e]
            for q in range(1, 9):
                s0 = d0 + ((q // 3 - 1) * wp + q % 3 - 1) * (p + 1)
                sv = src[s0 : s0 + n]
                for e in range(n):
                    dv[e] += sv[e]
            if has_add:
                av = add[d0 : d0 + n]
                for e in range(n):
                    dv[e] = (dv[e] * scale + bvar + av[e]) * cmask[e]
            else:
                for e in range(n):
                    dv[e] = (dv[e] * scale + bvar) * cmask[e]


@_jit
def _relu(kb, tb, h, w, f1, f2, ab, coef, tol):
    """ABRelu in place on every interior row's run: K' into kb, Theta Kdot into tb; f1 (4, P)
    the row input's factors (-1/sqrt q, ., sqrt(q) coef, .), f2 those of the column input
    (., 1/sqrt q, ., sqrt q; 1 and 0 at the border columns)."""
    wp = w + 2
    p = (h + 2) * wp
    lo = wp + 1
    n = (h - 1) * wp + w
    i2 = f2[1, lo : lo + n]
    r2 = f2[3, lo : lo + n]
    for a in range(h):
        for b in range(w):
            r = (a + 1) * wp + b + 1
            n1 = f1[0, r]
            s1 = f1[2, r]
            kr = kb[r * p + lo : r * p + lo + n]
            tr = tb[r * p + lo : r * p + lo + n]
            for e in range(n):
                kn, dot, _ = abrelu_entry(kr[e], n1, i2[e], s1, r2[e], ab, coef, tol)
                kr[e] = kn
                tr[e] = tr[e] * dot


@_jit
def _interior_sum(buf, h, w):
    """The sum of every interior entry (the border entries are zero), row by row."""
    wp = w + 2
    p = (h + 2) * wp
    lo = wp + 1
    n = (h - 1) * wp + w
    total = 0.0
    for a in range(h):
        for b in range(w):
            d0 = ((a + 1) * wp + b + 1) * p + lo
            part = 0.0  # (a row's sum first: a rounding error of about (n + h w) eps)
            for e in range(n):
                part += buf[d0 + e]
            total += part
    return total


@_jit
def border_mask(h, w):
    """1 at the interior columns of an interior row's run, 0 at the border ones."""
    wp = w + 2
    n = (h - 1) * wp + w
    m = np.zeros(n)
    for a in range(h):
        for b in range(w):
            m[a * wp + b] = 1.0
    return m


@_jit
def variances(cov, kinds, params, h, w, tiny, tol, fac, red):
    """Each input's own pixel-pair covariance cov (n, H, H', W, W') folded through the run
    (kinds: 0 Conv, 1 ABRelu; params: w^2/9 and b^2, or ab and coef): at each ABRelu layer l
    its per-position variances q give fac[l, i] = (-1/sqrt q, 1/sqrt q, sqrt(q) coef,
    sqrt q) on the padded positions (0, 1, 0, 0 at the border), sqrt q taken at least
    ``tiny`` (as ``ABRelu._root_factors``); red[i]: the mean of the folded map."""
    n = cov.shape[0]
    wp = w + 2
    p = (h + 2) * wp
    cm = border_mask(h, w)
    ka = np.zeros(p * p)
    kb = np.zeros(p * p)
    scratch = np.zeros(p * p)
    for i in range(n):
        _load(cov[i], ka, h, w)
        for layer in range(len(kinds)):
            if kinds[layer] == 0:
                _conv(ka, kb, h, w, params[layer, 0], params[layer, 1], cm, ka, False)
                ka, kb = kb, ka
                continue
            f = fac[layer, i]
            coef = params[layer, 1]
            for c in range(p):
                f[0, c] = 0.0
                f[1, c] = 1.0
                f[2, c] = 0.0
                f[3, c] = 0.0
            for a in range(h):
                for b in range(w):
                    r = (a + 1) * wp + b + 1
                    root = max(math.sqrt(ka[r * p + r]), tiny)
                    inv = 1.0 / root
                    f[0, r] = -inv
                    f[1, r] = inv
                    f[2, r] = root * coef
                    f[3, r] = root
            _relu(ka, scratch, h, w, f, f, params[layer, 0], coef, tol)
        red[i] = _interior_sum(ka, h, w) / (h * h * w * w)


@_jit
def pairs(src, tsrc, t_mode, same, off, kinds, params, h, w, f1, f2, tol, kout, tout):
    """The run and the global average pool over the pairs of a tile: src (n1, n2, H, H', W,
    W') the input NNGP (any strides), tsrc the NTK (t_mode 2; 1: zero, 0: none); f1, f2
    the factors of the rows' and the columns' inputs (:func:`variances`); kout, tout (n1,
    n2) the pooled NNGP and NTK. ``same`` (a set with itself: row a and column a + off are
    one input): a pair whose mirror image lies in the tile below the diagonal
    is copied from it, not computed."""
    n1 = src.shape[0]
    n2 = src.shape[1]
    wp = w + 2
    p = (h + 2) * wp
    cm = border_mask(h, w)
    scale_out = 1.0 / (h * h * w * w)
    ka = np.zeros(p * p)
    kb = np.zeros(p * p)
    ta = np.zeros(p * p)
    tb = np.zeros(p * p)
    for a in range(n1):
        for b in range(n2):
            if same and b < a + off and 0 <= b - off < n1 and a + off < n2:
                continue  # (b - off, a + off) above the diagonal: its value, below
            _load(src[a, b], ka, h, w)
            t_zero = t_mode != 2
            if not t_zero:
                _load(tsrc[a, b], ta, h, w)
            for layer in range(len(kinds)):
                if kinds[layer] == 0:
                    _conv(ka, kb, h, w, params[layer, 0], params[layer, 1], cm, ka, False)
                    if t_mode != 0:
                        if t_zero:  # w^2/9 sum 0 + K_c
                            tb[:] = kb
                            t_zero = False
                        else:
                            _conv(ta, tb, h, w, params[layer, 0], 0.0, cm, kb, True)
                        ta, tb = tb, ta
                    ka, kb = kb, ka
                    continue
                _relu(ka, ta, h, w, f1[layer, a], f2[layer, b], params[layer, 0],
                      params[layer, 1], tol)  # fmt: skip
            kout[a, b] = _interior_sum(ka, h, w) * scale_out
            if t_mode != 0:
                tout[a, b] = _interior_sum(ta, h, w) * scale_out
    if same:
        for a in range(n1):
            for b in range(n2):
                if b < a + off and 0 <= b - off < n1 and a + off < n2:
                    kout[a, b] = kout[b - off, a + off]
                    if t_mode != 0:
                        tout[a, b] = tout[b - off, a + off]
