"""Products K V of a symmetric kernel in memory from its upper triangle alone, for the
float32 first pass of PCG (:class:`widenets.predict.pcg._Float32Copy`).

Why: a product with a skinny V (R ~ 10 columns) reads all of K for 2 N^2 R flops. K being
symmetric, each entry K_ij of the upper triangle (j >= i) serves both of its products,
y_i += K_ij v_j and y_j += K_ij v_i: half the bytes read, and a float32 copy of K holds
its upper triangle only (half the pages to fault in when it is written). The numba loop
:func:`widenets.predict._skinny_loops.upper_times` does it row range by row range, each
range with its own (R, N) sums (the y_j scattered across rows), added at the end; the
ranges hold about equal areas of the triangle.

Symmetry is the caller's to vouch for (a non-symmetric k gives the product of its upper
triangle mirrored): :func:`looks_symmetric` is a cheap sampled check, not a proof.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from widenets._pool import run_tasks
from widenets.predict._skinny import _MIN_THREADED, _loops, fits, threads

#: columns of a block in the loop: K's 4 rows and the R rows of V and of the sums over a
#: block stay in L1 (32 KiB here) while each column of V passes over them
WIDTH = 256
#: rows (and as many columns) compared by :func:`looks_symmetric`, in blocks of 16
_SAMPLED = 64


def splits(n: int, parts: int) -> list[int]:
    """Row bounds 0 = b_0 < ... < b_p = n of at most ``parts`` ranges of about equal area
    of the upper triangle (row i holds n - i entries), inner bounds multiples of 4: b_t is
    the smaller root of i (2 n + 1 - i) / 2 = t / parts * n (n + 1) / 2, rounded."""
    total = n * (n + 1) / 2
    bounds = [0]
    for t in range(1, parts):
        b = 2 * n + 1
        i = (b - (b * b - 8 * total * t / parts) ** 0.5) / 2
        i = int(round(i / 4)) * 4
        if bounds[-1] < i < n:
            bounds.append(i)
    bounds.append(n)
    return bounds


def matmul(
    k: Tensor,
    v: Tensor,
    n_threads: int | None = None,
    *,
    sums: torch.dtype = torch.float64,
    cast: Tensor | None = None,
):
    """K v in float64 for a square, symmetric k (N, N), float32 or float64 with contiguous
    rows, and v (N, R), reading only k[i, i:] (the lower triangle may hold anything, e.g.
    a buffer of which only the upper part was written). Sums in ``sums`` (float32 or
    float64; v rounded to it; float32: twice the lanes), per row range, added in float64.
    Rows split over ``n_threads`` (default :func:`widenets.predict._skinny.threads`).
    ``cast``: a contiguous float32 (N, N) tensor that gets k[i, i:] by the same pass; its
    lower triangle is never written (its pages are never touched). Returns an (N, R) view
    of a contiguous (R, N) tensor, or None where the loop does not apply (numba missing,
    ``WIDENETS_SKINNY=off``, k not a square float32 / float64 CPU tensor with contiguous
    rows, a bad ``cast``)."""
    n = k.shape[0] if k.ndim == 2 else -1
    if (
        not fits(k)
        or k.shape[1] != n
        or v.ndim != 2
        or v.shape[0] != n
        or v.device.type != "cpu"
        or sums not in (torch.float32, torch.float64)
    ):
        return None
    if cast is not None and (
        cast.shape != k.shape or cast.dtype != torch.float32 or not cast.is_contiguous()
    ):
        return None
    r = v.shape[1]
    if r == 0 or n == 0:
        if cast is not None:
            cast.copy_(k)
        return torch.zeros(r, n, dtype=torch.float64).T
    mod = _loops()
    kn = k.detach().numpy()  # rows with a gap between them: numba's strided layout
    vt = v.detach().to(sums).T.contiguous().numpy()  # (R, N): a column a row
    cn = cast.numpy() if cast is not None else np.empty((0, 0), np.float32)
    n_threads = threads() if n_threads is None else max(1, int(n_threads))
    if n_threads == 1 or n * n < 2 * _MIN_THREADED:
        parts = 1
    else:  # 2 ranges a thread (one that loses its core to another process delays less)
        parts = 2 * n_threads
    bounds = splits(n, parts)
    acc = torch.zeros(len(bounds) - 1, r, n, dtype=sums)
    an = acc.numpy()

    def one(t: int) -> None:
        mod.upper_times(kn, vt, an[t], bounds[t], bounds[t + 1], cn, WIDTH)

    run_tasks(list(range(len(bounds) - 1)), one, n_threads)
    out = acc[0].to(torch.float64)
    for t in range(1, len(acc)):
        out += acc[t]
    return out.T


def looks_symmetric(k: Tensor) -> bool:
    """A sampled check that a square k is symmetric: blocks of 16 rows k[s:s+16, :] equal,
    up to float32's rounding of k's largest diagonal entry (2^-24 max |K_ii|; exactly for
    a kernel computed by the library, which mirrors its triangles), the columns
    k[:, s:s+16] transposed, for 4 blocks spread over the matrix (64 rows and columns,
    contiguous reads). A non-symmetric matrix is caught unless its asymmetry avoids every
    sampled row and column; what it misses costs iterations, never accuracy, in the float32
    pass (its result is checked with k itself)."""
    n = k.shape[0]
    if k.ndim != 2 or k.shape[1] != n:
        return False
    width = min(16, n)
    starts = sorted({int(s) for s in np.linspace(0, n - width, max(1, _SAMPLED // 16))})
    bound = 2.0**-24 * float(k.diagonal().abs().max())
    for s in starts:
        rows = k[s : s + width, :]
        cols = k[:, s : s + width].T
        if not bool((rows - cols).abs().max() <= bound):
            return False
    return True
