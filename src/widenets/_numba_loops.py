"""numba loops behind :mod:`widenets._numba` (imported only when numba is installed and the
fused loops are on). Module-level functions with ``cache=True``: compiled once per dtype and
array layout, then loaded from numba's disk cache by later processes; where no cache
directory is writable (a read-only install, no writable ``NUMBA_CACHE_DIR`` or home) they
are compiled in each process instead (:func:`_jit`).

Each loop runs on the calling thread only (no ``parallel=True``: numba's threading layer
would share, and set, the OpenMP thread count of torch) and releases the GIL
(``nogil=True``): the parallelism comes from the tile pool (``widenets._pool``), whose
threads call the loops on their own tiles at the same time.

``abrelu``: the ABRelu pair map and NTK product of ``_fused._abrelu`` (Cho & Saul 2009), per
entry -c = K n1 i2 clipped to [-1, 1], phi = arccos(-c) snapped within tol of 0 or pi,
K' = ab K + (sin phi - phi (-c)) s1 r2, Theta' = Theta (phi coef + ab), over rows of a
(A, B, C) tile whose factors are broadcast views; arccos by the polynomial of SLEEF's asin
(within 1 ulp) and sin(arccos d) = sqrt(1 - d^2), so that the row loop vectorises.

``window3``: the 3x3 "same" window sum of a convolution with stride 1 (zeros outside),
times ``scale``, plus ``bvar`` (plus ``add``), over an (R, C) tile whose rows carry the
positions (h, w) of the first input (``rho`` = 1: the full, pixel-pair layout; 0: the
diagonal layout, whose rows have none) and whose columns are blocks of (h', w').
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

PI = math.pi
# asin(x) = x + x^3 P(x^2) on [0, 0.5]
P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11 = (
    +0.3161587650653934628e-1, -0.1581918243329996643e-1, +0.1929045477267910674e-1,
    +0.6606077476277170610e-2, +0.1215360525577377331e-1, +0.1388715184501609218e-1,
    +0.1735956991223614604e-1, +0.2237176181932048341e-1, +0.3038195928038132237e-1,
    +0.4464285681377102438e-1, +0.7500000000378581611e-1, +0.1666666666666497543e+0,
)  # fmt: skip
# no NaN/inf reach the loops (variances clamped above 0): these flags let LLVM vectorise
# min/max and selects; no reassociation and no contraction, so the order is the written one
FM = {"nnan", "ninf", "nsz"}


def _jit(fn):
    """``njit`` with fastmath :data:`FM`, the GIL released and the disk cache; without the
    cache where numba finds no writable place for it (it raises at decoration then)."""
    try:
        return njit(fastmath=FM, nogil=True, cache=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(fastmath=FM, nogil=True)(fn)


def abrelu_map(kc, n1, i2, s1, r2, ab, coef, tol):
    """One entry of ABRelu (plain Python, compiled into each loop that calls it: the one
    home of the map; :data:`abrelu_entry`, ``_numba_fc._relu1``): from K = kc and the
    factors n1 = -1/sqrt q1, i2 = 1/sqrt q2, s1 = sqrt(q1) coef, r2 = sqrt q2 of its two
    inputs, -c = K n1 i2 clipped to [-1, 1], phi = arccos(-c) = pi/2 + asin(-c) by SLEEF's
    asin polynomial (asin x = x + x^3 P(x^2) on [0, 1/2], asin x = pi/2 - 2 asin(sqrt((1 -
    x)/2)) above), sin phi = sqrt(1 - c^2), both snapped within ``tol`` of 0 or pi; returns
    (K' = (sin phi - phi (-c)) s1 r2 + ab K, the NTK factor phi coef + ab, sin phi)."""
    d = min(max(kc * n1 * i2, -1.0), 1.0)
    a = abs(d)
    small = a < 0.5
    x2 = d * d if small else (1.0 - a) * 0.5
    x = a if small else math.sqrt(x2)
    u = P0
    u = u * x2 + P1
    u = u * x2 + P2
    u = u * x2 + P3
    u = u * x2 + P4
    u = u * x2 + P5
    u = u * x2 + P6
    u = u * x2 + P7
    u = u * x2 + P8
    u = u * x2 + P9
    u = u * x2 + P10
    u = u * x2 + P11
    s = x + u * x2 * x  # asin of the reduced argument
    big = 2.0 * s
    phi = (PI / 2 - math.copysign(s, d)) if small else (PI - big if d < 0 else big)
    sn = math.sqrt((1.0 - d) * (1.0 + d))
    snap0 = phi < tol
    snap1 = phi > PI - tol
    phi = 0.0 if snap0 else (PI if snap1 else phi)
    sn = 0.0 if (snap0 or snap1) else sn
    return (sn - phi * d) * s1 * r2 + ab * kc, phi * coef + ab, sn


#: :func:`abrelu_map` with the flags :data:`FM` (no contraction), inlined into its callers
#: (numba inlines its IR: the caller's loop keeps vectorising); not cached on its own
abrelu_entry = njit(fastmath=FM, nogil=True, inline="always")(abrelu_map)


@_jit
def _abrelu_row(kr, tr, n1, i2, s1, r2, ab, coef, tol, ko, to):
    """ABRelu over 1-D rows: from K (kr) and Theta (tr) to K' (ko) and Theta Kdot (to)."""
    for e in range(kr.shape[0]):
        kn, dot, _ = abrelu_entry(kr[e], n1[e], i2[e], s1[e], r2[e], ab, coef, tol)
        ko[e] = kn
        to[e] = tr[e] * dot


@_jit
def _stale(f, idx, b, nb):
    """Whether row (a, b) of the (A, B, C) factor view f differs from the previous row of
    the loop over idx = a nb + b (broadcast axes have stride 0: rows repeat)."""
    return idx == 0 or (f.strides[1] != 0 and nb > 1) or (f.strides[0] != 0 and b == 0)


@_jit
def abrelu(k, t, f1n, f2i, f1s, f2r, ab, coef, tol, ko, to):
    """ABRelu over the rows of k (A, B, C), contiguous; t (the NTK, or empty) and the outputs
    ko, to alike; the factors (A, B, C) views of any strides (broadcast ones: 0), copied
    into contiguous rows only when the row they give changes."""
    na, nb, n = k.shape
    has_t = t.shape[0] > 0
    n1 = np.empty(n, k.dtype)  # the factors' rows, contiguous
    i2 = np.empty(n, k.dtype)
    s1 = np.empty(n, k.dtype)
    r2 = np.empty(n, k.dtype)
    scratch = np.zeros(n, k.dtype)
    for idx in range(na * nb):
        a = idx // nb
        b = idx % nb
        if _stale(f1n, idx, b, nb):
            n1[:] = f1n[a, b]
        if _stale(f2i, idx, b, nb):
            i2[:] = f2i[a, b]
        if _stale(f1s, idx, b, nb):
            s1[:] = f1s[a, b]
        if _stale(f2r, idx, b, nb):
            r2[:] = f2r[a, b]
        if has_t:
            _abrelu_row(k[a, b], t[a, b], n1, i2, s1, r2, ab, coef, tol, ko[a, b], to[a, b])
        else:  # (a scratch row for Theta: its products are not read)
            _abrelu_row(k[a, b], scratch, n1, i2, s1, r2, ab, coef, tol, ko[a, b], scratch)


@_jit
def window3(src, rho, rh, rw, ch, cw, mask, scale, bvar, add, out):
    """out = scale * (3x3 window sum of src) + bvar (+ add): src, add (or empty), out (R, C)
    contiguous; a row r holds the position (h, w) = ((r // rw) % rh, r % rw) when ``rho``;
    a column block of ch cw entries the positions (h', w'); ``mask`` (9, ch cw): 1 where
    the tap (dh, dw) = (q // 3 - 1, q % 3 - 1) stays inside the (h', w') plane."""
    nr, n = src.shape
    blk = ch * cw
    has_add = add.shape[0] > 0
    acc = np.empty(n, src.dtype)
    for r in range(nr):
        h = (r // rw) % rh
        w = r % rw
        acc[:] = 0.0
        for q in range(9):
            dh = q // 3 - 1
            dw = q % 3 - 1
            if rho and (h + dh < 0 or h + dh >= rh or w + dw < 0 or w + dw >= rw):
                continue
            row = src[r + rho * (dh * rw + dw)]
            off = dh * cw + dw
            m = mask[q]
            lo = max(0, -off)
            hi = min(blk, blk - off)
            for base in range(0, n, blk):
                av = acc[base + lo : base + hi]
                sv = row[base + lo + off : base + hi + off]
                mv = m[lo:hi]
                for e in range(hi - lo):
                    av[e] += sv[e] * mv[e]
        o = out[r]
        if has_add:
            ar = add[r]
            for e in range(n):
                o[e] = acc[e] * scale + bvar + ar[e]
        else:
            for e in range(n):
                o[e] = acc[e] * scale + bvar
