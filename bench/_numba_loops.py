"""numba loops for one Conv(3x3, "same", stride 1) + ABRelu layer over a kernel tile
(issue 19; measured by ``bench/fused_numba.py``). Defined at module level so that
``cache=True`` finds them again in a later process (closures miss numba's cache).

A tile is (P, R, L): for P pairs of inputs (i, j) (all of them for two sets, i <= j for a
set with itself: the upper triangle, as widenets evaluates it), R rows of L entries. Full
(pixel-pair) layout: R = H and a row is (H', W, W'); diagonal layout: R = 1 and a row is
(H, W). The tap dh moves to row
r + rho dh (rho = 1 full, 0 diagonal) and by dh hoff within it; the tap dw by dw woff
within it, where ``mask`` (2, period) is 0 for the entries it would carry off the plane.

Per entry: K_c = w^2/9 sum K + b^2, Theta_c = w^2/9 sum Theta + K_c (the window sums
in the eager path's order: the first spatial axis, scaled, then the second); then with
-c = K_c n1 i2 (n1 = -1/sqrt q1, i2 = 1/sqrt q2) clipped to [-1, 1], phi = arccos(-c)
snapped within tol of 0 or pi: K' = ab K_c + (sin phi - phi (-c)) s1 r2 (s1 = sqrt(q1)
(b - a)^2 / (2 pi), r2 = sqrt q2) and Theta' = Theta_c (phi coef + ab) (Cho & Saul 2009).
arccos by the polynomial of SLEEF's asin (within 1 ulp) and sin(arccos d) = sqrt(1 - d^2),
so that the loop vectorises (no libm calls): the library's ``widenets._numba_loops.abrelu_map``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# the ABRelu map and the flags are the library's (widenets on the path: PYTHONPATH=src)
from widenets._numba_loops import FM, abrelu_entry


@njit(fastmath=FM, cache=True)
def relu_map(kr, tr, n1, i2, s1, r2, coef, ab, tol):
    """ABRelu in place over 1-D rows: kr holds K_c, tr Theta_c - K_c."""
    for e in range(kr.shape[0]):
        kc = kr[e]
        kn, dot, _ = abrelu_entry(kc, n1[e], i2[e], s1[e], r2[e], ab, coef, tol)
        kr[e] = kn
        tr[e] = (tr[e] + kc) * dot


@njit(fastmath=FM, cache=True)
def window_sum(src, r, rho, hoff, woff, mask, scale, bvar, p, out):
    """out = the 3x3 window sum of row r of src (R, L), times scale, + bvar; p: scratch."""
    nr, n = src.shape
    row = src[r]
    for e in range(n):
        p[e] = row[e] * scale
    for dh in (-1, 1):
        rr = r + rho * dh
        if rr < 0 or rr >= nr:
            continue
        off = dh * hoff
        lo = max(0, -off)
        hi = min(n, n - off)
        sv = src[rr][lo + off : hi + off]
        pv = p[lo:hi]
        for e in range(hi - lo):
            pv[e] += sv[e] * scale
    for e in range(n):
        out[e] = p[e]
    period = mask.shape[1]
    for q in range(2):
        off = (2 * q - 1) * woff
        m = mask[q]
        lo = max(0, -off)
        hi = min(period, period - off)
        for base in range(0, n, period):
            ov = out[base + lo : base + hi]
            pv = p[base + lo + off : base + hi + off]
            mv = m[lo:hi]
            for e in range(hi - lo):
                ov[e] += pv[e] * mv[e]
    if bvar != 0.0:
        for e in range(n):
            out[e] += bvar


@njit(parallel=True, fastmath=FM, cache=True)
def conv_relu(k, t, pi, pj, f1n, f1s, f2i, f2r, mask, rho, hoff, woff, scale, bvar, coef, ab,
              tol, ko, to):  # fmt: skip
    """Conv + ABRelu, one pass per tile row: k, t (P, R, L) for the pairs (pi[p], pj[p]) (t
    empty: the input NTK is zero); f1n, f1s (n1, R, L); f2i, f2r (n2, L); into ko, to."""
    npair, nr, n = k.shape
    has_t = t.shape[0] > 0
    for idx in prange(npair * nr):
        q = idx // nr
        r = idx % nr
        i = pi[q]
        j = pj[q]
        p = np.empty(n, k.dtype)
        kb = ko[q, r]
        tb = to[q, r]
        window_sum(k[q], r, rho, hoff, woff, mask, scale, bvar, p, kb)
        if has_t:
            window_sum(t[q], r, rho, hoff, woff, mask, scale, 0.0, p, tb)
        else:
            tb[:] = 0.0
        relu_map(kb, tb, f1n[i, r], f2i[j], f1s[i, r], f2r[j], coef, ab, tol)


@njit(parallel=True, fastmath=FM, cache=True)
def conv_only(k, t, mask, rho, hoff, woff, scale, bvar, ko, to):
    """The window sums alone (a Conv layer's loop): ko = K_c, to = Theta_c - K_c."""
    npair, nr, n = k.shape
    has_t = t.shape[0] > 0
    for idx in prange(npair * nr):
        q = idx // nr
        r = idx % nr
        p = np.empty(n, k.dtype)
        window_sum(k[q], r, rho, hoff, woff, mask, scale, bvar, p, ko[q, r])
        if has_t:
            window_sum(t[q], r, rho, hoff, woff, mask, scale, 0.0, p, to[q, r])
        else:
            to[q, r][:] = 0.0


@njit(parallel=True, fastmath=FM, cache=True)
def relu_only(ko, to, pi, pj, f1n, f1s, f2i, f2r, coef, ab, tol):
    """The ABRelu map alone (an activation layer's loop), in place."""
    npair, nr, n = ko.shape
    for idx in prange(npair * nr):
        q = idx // nr
        r = idx % nr
        i = pi[q]
        j = pj[q]
        relu_map(ko[q, r], to[q, r], f1n[i, r], f2i[j], f1s[i, r], f2r[j], coef, ab, tol)
