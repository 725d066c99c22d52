"""numba loops behind :mod:`widenets.predict._skinny` (imported only when numba is installed).

``rows_times(k, vt, out, cast)``: out = k @ vt^T for a row-major (m, n) block k of a kernel and a
skinny right-hand side given transposed, vt (R, n) row-major (R ~ 10: one column per class).
Each of k's rows is a dot product with each row of vt, summed over n in registers for a
block of 4 rows x 4 columns (16 accumulators: 4 rows of k and 4 of vt are read once per
16 products). Serial and ``nogil``: the caller splits the rows over its threads.
``reassoc`` (and ``contract``) let LLVM vectorise the sums over n: the result differs from
BLAS's by rounding only (the order of the additions), about 1e-16 N relative at worst.

``upper_times(k, vt, acc_t, i0, i1, cast, width)``: the share of rows i0 <= i < i1 of a
symmetric k's upper triangle in (k @ vt^T)^T, each entry read once for its two products
(``_skinny_upper``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# no nnan / ninf: a NaN or inf in K must reach the product (the solvers check for it)
FM = {"reassoc", "contract", "nsz", "arcp"}


@njit(nogil=True, cache=True, fastmath=FM)
def rows_times(k, vt, out, cast):
    """out[i, c] = sum_j k[i, j] vt[c, j] for k (m, n), vt (R, n), out (m, R), all
    row-major, summed in vt's dtype (float32 vt: float32 sums, twice the lanes); ``cast``
    (m, n) gets k's entries in its own dtype (a float32 copy made by the same pass over k,
    while each block of rows is in cache), or is empty (0, 0)."""
    m, n = k.shape
    r = vt.shape[0]
    m4 = m - m % 4
    r4 = r - r % 4
    zero = np.zeros(1, vt.dtype)[0]  # the sums' type
    copy = cast.shape[0] > 0
    for i in range(0, m4, 4):
        k0 = k[i]
        k1 = k[i + 1]
        k2 = k[i + 2]
        k3 = k[i + 3]
        for c in range(0, r4, 4):
            v0 = vt[c]
            v1 = vt[c + 1]
            v2 = vt[c + 2]
            v3 = vt[c + 3]
            a00 = a01 = a02 = a03 = zero
            a10 = a11 = a12 = a13 = zero
            a20 = a21 = a22 = a23 = zero
            a30 = a31 = a32 = a33 = zero
            for j in range(n):
                x0 = k0[j]
                x1 = k1[j]
                x2 = k2[j]
                x3 = k3[j]
                y0 = v0[j]
                y1 = v1[j]
                y2 = v2[j]
                y3 = v3[j]
                a00 += x0 * y0
                a01 += x0 * y1
                a02 += x0 * y2
                a03 += x0 * y3
                a10 += x1 * y0
                a11 += x1 * y1
                a12 += x1 * y2
                a13 += x1 * y3
                a20 += x2 * y0
                a21 += x2 * y1
                a22 += x2 * y2
                a23 += x2 * y3
                a30 += x3 * y0
                a31 += x3 * y1
                a32 += x3 * y2
                a33 += x3 * y3
            out[i, c] = a00
            out[i, c + 1] = a01
            out[i, c + 2] = a02
            out[i, c + 3] = a03
            out[i + 1, c] = a10
            out[i + 1, c + 1] = a11
            out[i + 1, c + 2] = a12
            out[i + 1, c + 3] = a13
            out[i + 2, c] = a20
            out[i + 2, c + 1] = a21
            out[i + 2, c + 2] = a22
            out[i + 2, c + 3] = a23
            out[i + 3, c] = a30
            out[i + 3, c + 1] = a31
            out[i + 3, c + 2] = a32
            out[i + 3, c + 3] = a33
        for c in range(r4, r):  # the last columns, 4 rows at a time
            v0 = vt[c]
            a0 = a1 = a2 = a3 = zero
            for j in range(n):
                y = v0[j]
                a0 += k0[j] * y
                a1 += k1[j] * y
                a2 += k2[j] * y
                a3 += k3[j] * y
            out[i, c] = a0
            out[i + 1, c] = a1
            out[i + 2, c] = a2
            out[i + 3, c] = a3
        if copy:
            for q in range(4):
                kq = k[i + q]
                cq = cast[i + q]
                for j in range(n):
                    cq[j] = kq[j]
    for i in range(m4, m):  # the last rows, one at a time
        ki = k[i]
        for c in range(r):
            vc = vt[c]
            a = zero
            for j in range(n):
                a += ki[j] * vc[j]
            out[i, c] = a
        if copy:
            ci = cast[i]
            for j in range(n):
                ci[j] = ki[j]


@njit(nogil=True, cache=True, fastmath=FM)
def cols_times(ft, c, out_t, start, stop):
    """out_t[q, i] = sum_j ft[j, i] c[j, q], start <= i < stop, for ft (r, n) row-major
    (float32 or float64),
    c (r, R) float64 and out_t (R, n) float64: the product F c of F = ft^T, read from F^T's
    rows (no row-major copy of F), given transposed; the caller's threads take ranges of
    columns (the whole arrays passed: a slice of their columns would be strided, and the
    loop not vectorised, 3x slower). Blocks of 512 entries of n: the block
    of out_t (R x 512 float64, 40 KiB for R = 10) stays in cache while 4 rows of ft at a
    time are added to it (axpys over n, vectorised)."""
    r = ft.shape[0]
    nr = c.shape[1]
    r4 = r - r % 4
    width = 512
    for s in range(start, stop, width):
        e = min(s + width, stop)
        w = e - s
        for q in range(nr):
            oq = out_t[q, s:e]
            for i in range(w):
                oq[i] = 0.0
        for j in range(0, r4, 4):
            f0 = ft[j, s:e]
            f1 = ft[j + 1, s:e]
            f2 = ft[j + 2, s:e]
            f3 = ft[j + 3, s:e]
            for q in range(nr):
                c0 = c[j, q]
                c1 = c[j + 1, q]
                c2 = c[j + 2, q]
                c3 = c[j + 3, q]
                oq = out_t[q, s:e]
                for i in range(w):
                    oq[i] += c0 * f0[i] + c1 * f1[i] + c2 * f2[i] + c3 * f3[i]
        for j in range(r4, r):
            fj = ft[j, s:e]
            for q in range(nr):
                cj = c[j, q]
                oq = out_t[q, s:e]
                for i in range(w):
                    oq[i] += cj * fj[i]


@njit(nogil=True, cache=True, fastmath=FM)
def upper_times(k, vt, acc_t, i0, i1, cast, width):
    """acc_t[c, :] += the share of rows i0 <= i < i1 of a symmetric K's upper triangle in
    (K V)^T, reading k[i, i:] only: for each stored entry K_ij (j >= i), acc_t[c, i] +=
    K_ij vt[c, j] and, for j > i, acc_t[c, j] += K_ij vt[c, i] (K_ji = K_ij), so each
    entry is read once for both of its products: half the bytes of :func:`rows_times`
    over the whole matrix for the same arithmetic (N^2 R multiply-adds).

    k (N, N) row-major, of which only the upper triangle is read; vt (R, N) and acc_t
    (R, N) row-major in the sums' dtype (float32 vt: float32 sums, twice the lanes);
    acc_t holds this call's own sums (a buffer per thread, added up by the caller).
    ``cast`` (N, N) gets k[i, i:] in its own dtype (a float32 copy of the triangle made by
    the same pass) or is empty (0, 0). Rows are taken 4 at a time, their columns in
    blocks of ``width`` (K's 4 rows, vt's and acc_t's R rows of a block stay in L1 while
    every column c passes over them): per entry a multiply-add into the row's dot product
    (a register) and one into acc_t[c, j] (an axpy over the block, vectorised)."""
    n = k.shape[1]
    r = vt.shape[0]
    zero = np.zeros(1, acc_t.dtype)[0]
    copy = cast.shape[0] > 0
    m4 = i1 - (i1 - i0) % 4
    for i in range(i0, m4, 4):
        for c in range(r):  # the 4 x 4 corner: its upper part, the diagonal once
            v = vt[c]
            t = acc_t[c]
            for q in range(4):
                a = k[i + q, i + q] * v[i + q]
                for p in range(q + 1, 4):
                    x = k[i + q, i + p]
                    a += x * v[i + p]
                    t[i + p] += x * v[i + q]
                t[i + q] += a
        if copy:
            for q in range(4):
                for p in range(q, 4):
                    cast[i + q, i + p] = k[i + q, i + p]
        for s in range(i + 4, n, width):
            e = min(s + width, n)
            w = e - s
            k0 = k[i, s:e]
            k1 = k[i + 1, s:e]
            k2 = k[i + 2, s:e]
            k3 = k[i + 3, s:e]
            for c in range(r):
                v = vt[c, s:e]
                t = acc_t[c, s:e]
                y0 = vt[c, i]
                y1 = vt[c, i + 1]
                y2 = vt[c, i + 2]
                y3 = vt[c, i + 3]
                a0 = a1 = a2 = a3 = zero
                for j in range(w):
                    x0 = k0[j]
                    x1 = k1[j]
                    x2 = k2[j]
                    x3 = k3[j]
                    u = v[j]
                    a0 += x0 * u
                    a1 += x1 * u
                    a2 += x2 * u
                    a3 += x3 * u
                    t[j] += x0 * y0 + x1 * y1 + x2 * y2 + x3 * y3
                acc_t[c, i] += a0
                acc_t[c, i + 1] += a1
                acc_t[c, i + 2] += a2
                acc_t[c, i + 3] += a3
            if copy:
                for q in range(4):
                    kq = k[i + q, s:e]
                    cq = cast[i + q, s:e]
                    for j in range(w):
                        cq[j] = kq[j]
    for i in range(m4, i1):  # the last rows, one at a time
        ki = k[i]
        for c in range(r):
            v = vt[c]
            t = acc_t[c]
            y = v[i]
            a = ki[i] * y
            for j in range(i + 1, n):
                x = ki[j]
                a += x * v[j]
                t[j] += x * y
            t[i] += a
        if copy:
            ci = cast[i]
            for j in range(i, n):
                ci[j] = ki[j]
