"""numba loops of the fully-connected chain (:mod:`widenets._fc_chain`): a run of Dense and
ABRelu-family layers on a diagonal-layout kernel without spatial axes, in one pass.

Imported only when numba is installed and the fused loops are on. Module-level functions
with ``nogil=True, cache=True``: compiled once per dtype and array layout (seconds), then
loaded from numba's disk cache by later processes; serial (no numba threads): parallelism
comes from the caller's threads (the tile pool, or :mod:`widenets._fc_chain` splitting a
tile's rows), which run them without the GIL.

Layers are encoded as ``kinds`` (0: Dense in the NTK parameterisation, 1: ABRelu) and
``params`` rows: Dense (w^2, b^2, ., .), K' = b^2 + w^2 K, Theta' = K' + w^2 Theta; ABRelu
(a b, (b - a)^2 / (2 pi), ., .), the map ``_numba_loops.abrelu_map`` (the eager
``ABRelu._pair_from_roots`` entry by entry: -c = K (-1/sqrt q1) (1/sqrt q2) clipped to
[-1, 1], phi = arccos(-c) by SLEEF's asin polynomial, snapped within ``tol`` of 0 or pi,
K' = (sin phi - phi (-c)) sqrt(q1) coef sqrt(q2) + ab K, Theta' = Theta (phi coef + ab)).

:func:`variances` maps each input's variance through the layers once and keeps the
per-input factors of every ABRelu layer; :func:`chain` runs the tile, a row at a time in
column chunks of :data:`BLK` entries held in float64 buffers (L1-resident), one layer after
another over the chunk so that each layer's loop vectorises. The variance of an input and
its entry with itself go through the same scalar function (:func:`_relu1`): the diagonal
of a set with itself equals the variances bit for bit. Arithmetic is float64 whatever the
tile's dtype (float32 tiles: read, computed in float64, rounded once on the way out); with
``watch`` the entries whose sin(theta) falls below ``lim`` at any ABRelu layer are flagged
(the eager path's rule, ``numerics.flag_pairs_below``) for recomputation in float64.
No reassociation (``FM``: the order is the written one), but multiply-adds may be
contracted into FMA instructions (16% faster per entry on the demo network; the results
stay within 1e-15 relative of the eager path's, ``tests/test_fc_chain.py``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from widenets._numba_loops import FM as _FM
from widenets._numba_loops import abrelu_map

#: the flags of ``_numba_loops`` plus FMA contraction (see the module doc)
FM = _FM | {"contract"}
#: columns per chunk of a row (the chunk's buffers stay in L1)
BLK = 1024
#: rows of a tile whose mirror image is written together (16 float64: two cache lines;
#: 16 measured faster than 8 and 32 on a 500 x 3500 tile)
MIRROR_ROWS = 16


#: one entry of ABRelu, (K', phi coef + ab, sin(theta) after snapping): the shared
#: ``_numba_loops.abrelu_map`` compiled with this module's flags (FMA contraction) and
#: inlined into its callers
_relu1 = njit(fastmath=FM, nogil=True, inline="always")(abrelu_map)


@njit(fastmath=FM, cache=True, nogil=True)
def variances(q, kinds, params, tiny, tol, rowf, qout):
    """Each input's variance q[i] through the layers (into qout[i]), keeping for ABRelu
    layer l its factors rowf[l] = (-1/sqrt q, sqrt q coef, 1/sqrt q, sqrt q) (the eager
    ``ABRelu._root_factors``, sqrt clamped at ``tiny``)."""
    n = q.shape[0]
    nl = kinds.shape[0]
    for i in range(n):
        v = np.float64(q[i])
        for layer in range(nl):
            if kinds[layer] == 0:
                v = params[layer, 1] + params[layer, 0] * v
            else:
                root = max(math.sqrt(v), tiny)
                inv = 1.0 / root
                s1 = root * params[layer, 1]
                rowf[layer, 0, i] = -inv
                rowf[layer, 1, i] = s1
                rowf[layer, 2, i] = inv
                rowf[layer, 3, i] = root
                v = _relu1(v, -inv, inv, s1, root, params[layer, 0], params[layer, 1], tol)[0]
        qout[i] = v


@njit(fastmath=FM, cache=True, nogil=True)
def _dense_chunk(kb, tb, m, w2, b2, has_t):
    for e in range(m):
        kn = b2 + w2 * kb[e]
        kb[e] = kn
        if has_t:
            tb[e] = kn + w2 * tb[e]


@njit(fastmath=FM, cache=True, nogil=True)
def _relu_chunk(kb, tb, fb, m, n1, s1, i2, r2, ab, coef, tol, lim, has_t, watch):
    # two loops, not one with ``if watch`` inside: the flag store in the loop keeps LLVM
    # from vectorising it (scalar sqrt and FMAs: about 3x slower per entry)
    if watch:
        for e in range(m):
            kn, dot, sn = _relu1(kb[e], n1, i2[e], s1, r2[e], ab, coef, tol)
            kb[e] = kn
            if has_t:
                tb[e] = tb[e] * dot
            fb[e] = fb[e] | (sn < lim)
    else:
        for e in range(m):
            kn, dot, _ = _relu1(kb[e], n1, i2[e], s1, r2[e], ab, coef, tol)
            kb[e] = kn
            if has_t:
                tb[e] = tb[e] * dot


@njit(fastmath=FM, cache=True, nogil=True)
def chain(
    k, t, t_mode, t_const, r0, r1, kinds, params, rowf, colf, tol, lim, watch, ko, to, flags,
    mko, mto, moff,
):  # fmt: skip
    """Rows [r0, r1) of the tile k (n1, n2) through the layers into ko (and to, when
    ``t_mode``: 1 the input NTK is the constant ``t_const``, 2 the array t); rowf (L, 4,
    n1) and colf (L, 4, n2) the factors of :func:`variances` of x1's and x2's inputs;
    with ``watch`` the flags (n1, n2) set where an ABRelu layer's sin(theta) < lim; the
    columns c >= ``moff`` also written transposed into mko[c - moff, r] (and mto), when
    those are not empty (the mirror image of a tile of a set with itself)."""
    n2 = k.shape[1]
    nl = kinds.shape[0]
    has_t = t_mode != 0
    kb = np.empty(BLK, np.float64)
    tb = np.empty(BLK, np.float64)
    fb = np.zeros(BLK, np.uint8)
    mirror = mko.shape[0] > 0
    # the mirror image is written MIRROR_ROWS rows at a time (a run of adjacent entries of
    # each of its rows) from a staging copy, not entry by entry down its columns
    g = MIRROR_ROWS if mirror else 1
    sk = np.empty((g, BLK), np.float64)
    st = np.empty((g, BLK), np.float64)
    for g0 in range(r0, r1, g):
        g1 = min(g0 + g, r1)
        for c0 in range(0, n2, BLK):
            m = min(BLK, n2 - c0)
            for r in range(g0, g1):
                kr = k[r, c0 : c0 + m]
                for e in range(m):
                    kb[e] = kr[e]
                if t_mode == 1:
                    for e in range(m):
                        tb[e] = t_const
                elif t_mode == 2:
                    tr = t[r, c0 : c0 + m]
                    for e in range(m):
                        tb[e] = tr[e]
                if watch:
                    for e in range(m):
                        fb[e] = 0
                for layer in range(nl):
                    if kinds[layer] == 0:
                        _dense_chunk(kb, tb, m, params[layer, 0], params[layer, 1], has_t)
                    else:
                        _relu_chunk(
                            kb, tb, fb, m, rowf[layer, 0, r], rowf[layer, 1, r],
                            colf[layer, 2, c0 : c0 + m], colf[layer, 3, c0 : c0 + m],
                            params[layer, 0], params[layer, 1], tol, lim, has_t, watch,
                        )  # fmt: skip
                ok = ko[r, c0 : c0 + m]
                for e in range(m):
                    ok[e] = kb[e]
                if has_t:
                    ot = to[r, c0 : c0 + m]
                    for e in range(m):
                        ot[e] = tb[e]
                if watch:
                    of = flags[r, c0 : c0 + m]
                    for e in range(m):
                        of[e] = fb[e]
                if mirror:
                    skr = sk[r - g0]
                    for e in range(m):
                        skr[e] = kb[e]
                    if has_t:
                        stt = st[r - g0]
                        for e in range(m):
                            stt[e] = tb[e]
            if mirror and c0 + m > moff:
                for e in range(max(0, moff - c0), m):
                    mk = mko[c0 + e - moff, g0:g1]
                    for q in range(g1 - g0):
                        mk[q] = sk[q, e]
                if has_t:
                    for e in range(max(0, moff - c0), m):
                        mt = mto[c0 + e - moff, g0:g1]
                        for q in range(g1 - g0):
                            mt[q] = st[q, e]
