"""Tiled evaluation of a network's infinite-width kernels.

The (N1, N2) kernel is computed in tiles of (b1, b2) input pairs: each tile's input
kernel is folded through every layer before the next tile starts, so intermediates stay
in cache and memory is bounded by the tile. For a set with itself (x2 None, or equal to x1
by value: :func:`same_inputs`) only the tiles on or above the diagonal are computed and the
rest is mirrored. Every entry is computed by the same elementwise operations whatever the
tiling, so the result does not depend on the tile size.

Spatial inputs are carried in the diagonal layout (each position with itself: cost linear
in positions) unless a layer of the network needs every pair of positions (pooling,
attention: ``Layer.needs_pixel_pairs``), in which case the full layout is used and tiles
are sized so that one tile's pixel-pair tensors stay bounded (never all pairs at once).
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

from widenets._malloc import tune_if_asked
from widenets._pool import default_workers, others_running, run_tasks
from widenets.errors import NonFiniteKernelError, check_get, shape_str
from widenets.kernel import Kernel, input_kernel, input_variances, slice_pairs
from widenets.numerics import (
    FiniteCheck,
    PreparedInputs,
    _wider,
    first_nonfinite,
    is_reduced,
    prepare_inputs,
    raise_nonfinite,
    scale_output,
    watch_pairs,
)

#: scalars per intermediate tile (float64: 4 MiB): near the caches, yet large enough that
#: the per-operation overhead is amortised (measured on the demo kernels, 2 cores: 2^17
#: 0.58 s, 2^18 0.52 s, 2^19 0.48 s, 2^20 0.48 s, 2^21 0.52 s; `bench/kernel_fc.py`)
TILE_NUMEL = 1 << 19
#: scalars per input-kernel block: the input Gram is one matrix product per block (large
#: products run faster), then the layers are folded over cache-sized row tiles of it
BLOCK_NUMEL = 1 << 21
#: scalars per intermediate tile for the full pixel-pair layout (float64: 4 MiB), raised
#: (up to twice that) until a tile holds MIN_PAIRS_FULL input pairs: each tile recomputes
#: the pixel-pair covariances of its own b1 + b2 inputs, a 2/b share of a b x b tile, yet
#: smaller tiles stay in cache. Steady state of 5-layer CNN-GAPs for budgets 2^18 / 2^19 /
#: 2^20 / 2^21 (``python bench/kernel_cnn.py --tile-sweep``, 2 threads, 2 cores): 8x8 N=32
#: 0.30 / 0.31-0.33 / 0.42-0.47 / 0.44 s; 14x14 N=40 (NNGP) 4.5-6.2 / 4.0-4.3 / 3.4 /
#: 4.2-4.4 s; 16x16 N=24 3.2-3.5 / 3.0-3.1 / 2.9-3.0 / 3.8-3.9 s
TILE_NUMEL_FULL = 1 << 19
MIN_PAIRS_FULL = 24
#: scalars per intermediate chunk of listed pairs in the packed layout (a set with itself,
#: diagonal layout: see ``_evaluate_packed``). Fewer chunks mean fewer small operations:
#: 5-layer CNN-VEC NNGP+NTK, steady state, 2 threads, budgets 2^18 / 2^19 / 2^20 / 2^21 /
#: 2^22 (before chunks were balanced): 16x16 N=100 162 / 125 / 125 / 122 / 108 ms; 8x8
#: N=400 560 / 492 / 491 / 543 / 726 ms; 16x16 N=200 622 / 436 / 387 / 407 / 425 ms
PACKED_NUMEL = 1 << 20
#: scalars per tile of two sets of spatial inputs in the diagonal layout, in tiles of whole
#: rows of at least MIN_WIDE_ROWS inputs against as many columns as fit. Neural Tangents'
#: time over ours, 5-layer CNN-VEC NNGP+NTK, Flatten 8x8 N=100 / N=400, 16x16 N=100 /
#: N=200 (``python bench/kernel_cnn.py --cross``, one run each): 1.19 / 1.57 / 1.43 / 1.55
#: with the square 2^19 tiles used before, 1.38 / 1.76 / 1.59 / 1.50 with these
WIDE_NUMEL = 1 << 20
MIN_WIDE_ROWS = 16
#: above this many pair-scalars a progress bar is shown by default
PROGRESS_NUMEL = 1 << 26
#: threads of the tile pool (``widenets._pool``). None: decided per call, tiles one after
#: another on torch's own intra-op threads on a quiet machine, and one thread per CPU that
#: torch may use (``torch.get_num_threads()``, at most the CPUs of this process) when another
#: process is running; 1: always one after another
TILE_WORKERS: int | None = None
#: with several threads, tiles are made small enough that each thread gets this many, so
#: that a thread slowed by another process holds up little; but not below MIN_TASK_NUMEL
#: pair-scalars, where per-operation overhead would dominate
TASKS_PER_WORKER = 4
MIN_TASK_NUMEL = 1 << 15


def check_batch_size(batch_size) -> tuple[int, int]:
    """``batch_size`` as a pair of positive ints (from an int or a pair), else a ValueError."""
    pair = (batch_size, batch_size) if isinstance(batch_size, int) else batch_size
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in pair)
    ):
        raise ValueError(
            f"`batch_size` must be a positive int or a pair of them, got {batch_size!r}."
        )
    return int(pair[0]), int(pair[1])


def _tile_sizes(
    n1: int,
    n2: int,
    pair_cost: int,
    batch_size,
    budget_numel: int = TILE_NUMEL,
    square: bool = False,
    thin_rows: bool = False,
    wide_rows: bool = False,
) -> tuple[int, int]:
    if batch_size is not None:
        b1, b2 = check_batch_size(batch_size)
        return min(b1, n1), min(b2, n2)
    budget = max(1, budget_numel // max(1, pair_cost))
    if wide_rows:
        # two sets in the diagonal layout: rows against as many columns as fit (at least
        # MIN_WIDE_ROWS rows a tile, which bounds the per-input variance passes of a tile's
        # b1 + b2 inputs to a few percent of its pairs), then evened out into equal tiles
        b2 = min(n2, max(1, budget // MIN_WIDE_ROWS))
        b1 = min(n1, max(1, budget // b2))
        return _even(n1, b1), _even(n2, b2)
    if thin_rows:
        # a set with itself in the diagonal layout: a row tile computes its whole
        # (b1, b1) diagonal square, of which half is mirrored, so the wasted share is about
        # b1 / N; the per-input variances cost only (b1 + b2) positions a tile
        b1 = min(n1, max(16, math.isqrt(budget) // 4))
        return b1, min(n2, max(1, budget // b1))
    if square:
        # spatial kernels recompute the per-input covariances of a tile's b1 + b2 inputs
        # (as large as a pair's entries): square tiles make that a 2/sqrt(budget) share
        b1 = min(n1, max(1, math.isqrt(budget)))
        b2 = min(n2, max(1, budget // b1))
        return b1, b2
    b2 = min(n2, max(1, min(8192, budget)))
    b1 = min(n1, max(1, budget // b2))
    return b1, b2


def _even(n: int, b: int) -> int:
    """The size of ceil(n / b) tiles of about equal size covering n."""
    return math.ceil(n / math.ceil(n / b))


def _swap_pairs(t: Tensor, full_spatial: bool = False) -> Tensor:
    """K(x2, x1) from K(x1, x2): swap the two batch axes (and, in the full spatial layout,
    the two positions of every spatial pair: K(x2, x1)[s', s] = K(x1, x2)[s, s'])."""
    t = t.transpose(0, 1)
    if full_spatial:
        for a in range(2, t.ndim, 2):
            t = t.transpose(a, a + 1)
    return t


def _spatial_factor(in_shape, full: bool) -> int:
    """Scalars per pair and per unit of ``pair_cost``: positions (diagonal) or their square."""
    positions = math.prod(in_shape[1:]) if len(in_shape) > 1 else 1
    return positions * positions if full else positions


def same_inputs(x1: torch.Tensor, x2: torch.Tensor | None) -> bool:
    """Whether x2 is the set x1 itself: None, the same tensor, or equal by value (as Neural
    Tangents decides). A set with itself gets the exact diagonal (the variances, Dropout's
    added noise) and the symmetric, packed evaluation, whichever way it was passed."""
    if x2 is None or x2 is x1:
        return True
    return x1.shape == x2.shape and x1.device == x2.device and bool(torch.equal(x1, x2))


def evaluate_kernel(
    layer,
    x1,
    x2=None,
    *,
    get=("nngp", "ntk"),
    dtype: torch.dtype = torch.float64,
    batch_size=None,
    progress: bool | None = None,
) -> Kernel:
    """Fold ``layer`` over the input kernel of (x1, x2), tile by tile. See ``Layer.kernel``."""
    names = check_get(get)
    tune_if_asked()  # process-wide: only when WIDENETS_MALLOC=tuned
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"`dtype` must be a floating torch dtype, got {dtype!r}.")
    prep = prepare_inputs(layer, x1, x2, dtype)  # NaN/inf rejected, overflow rescaled
    x1, x2 = prep.x1, prep.x2
    same = same_inputs(x1, x2)
    x2 = x1 if same else x2
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"`x1` and `x2` must have the same per-example shape, got {shape_str(x1.shape[1:])} "
            f"and {shape_str(x2.shape[1:])} (mismatched feature dimensions)."
        )
    in_shape = tuple(x1.shape[1:])
    layer.out_shape(in_shape)  # architecture/shape errors before any work
    compute_ntk = "ntk" in names
    n1, n2 = x1.shape[0], x2.shape[0]
    full = len(in_shape) > 1 and layer.needs_pixel_pairs()
    cost = layer.pair_cost(in_shape) * _spatial_factor(in_shape, full)
    if same and not full and len(in_shape) > 1 and batch_size is None and layer.packs_pairs():
        return _evaluate_packed(layer, x1, names, dtype, cost, progress, prep)
    spatial = len(in_shape) > 1
    budget = TILE_NUMEL
    if full:
        budget = max(TILE_NUMEL_FULL, min(MIN_PAIRS_FULL * cost, 2 * TILE_NUMEL_FULL))
    elif spatial and not same:
        budget = WIDE_NUMEL
    workers = _workers(x1)
    if batch_size is None:
        budget = _task_budget(budget, n1 * n2 * cost // (2 if same else 1), workers)
    b1, b2 = _tile_sizes(
        n1,
        n2,
        cost,
        batch_size,
        budget,
        square=spatial,
        thin_rows=same and not full and spatial,
        wide_rows=not same and not full and spatial,
    )

    rows_per_block = b1 * max(1, BLOCK_NUMEL // max(1, b1 * b2 * cost))
    if workers > 1:  # one task per tile: the pool takes tiles, not blocks of them
        rows_per_block = b1
    blocks = []  # (row start, row end, column start)
    for i0 in range(0, n1, rows_per_block):
        i1 = min(i0 + rows_per_block, n1)
        for j0 in range(i0 if same else 0, n2, b2):
            blocks.append((i0, i1, j0))
    n_tiles = sum(
        1
        for b0, b_end, j0 in blocks
        for i0 in range(b0, b_end, b1)
        if not same or i0 < min(j0 + b2, n2)
    )
    # full layout: each block computes the pixel-pair covariances of its own inputs (all
    # N inputs' at once would be N P^2 numbers)
    gram_exponent = prep.gram_exponent
    var1 = None if full else input_variances(x1, gram_exponent=gram_exponent)
    var2 = None if full else var1 if same else input_variances(x2, gram_exponent=gram_exponent)
    # reduced precision: the pairs an activation flags as ill-conditioned are recomputed
    # in float64 (``widenets.numerics``); every tile adds its sum to a finiteness check
    refine = _Refiner(layer, prep, names, dtype, same, full, cost)
    check = FiniteCheck()
    out = _Outputs(n1, n2, dtype, compute_ntk, same)

    def run_block(task):
        b0, b_end, j0 = task
        j1 = min(j0 + b2, n2)
        offset = (b0 - j0) if same and b0 < j1 and j0 < b_end else None
        block = input_kernel(
            x1[b0:b_end],
            x2[j0:j1],
            diagonal_offset=offset,
            compute_ntk=compute_ntk,
            cov1=None if full else var1[b0:b_end],
            cov2=None if full else var2[j0:j1],
            full_spatial=full,
            gram_exponent=gram_exponent,
        )
        for r0 in range(0, b_end - b0, b1):
            r1 = min(r0 + b1, b_end - b0)
            i0, i1 = b0 + r0, b0 + r1
            # on a set with itself, a tile needs only the columns from its own diagonal
            c0 = max(0, i0 - j0) if same else 0
            if c0 >= j1 - j0:  # wholly below the diagonal: mirrored from another tile
                continue
            with watch_pairs(refine.enabled) as watch:
                k = _one_kernel(layer.kernel_fn(slice_pairs(block, r0, r1, c0)))
            nngp_out, ntk_out, cov1, cov2 = out.allocate(k)
            cs = j0 + c0
            for o, t in ((nngp_out, k.nngp), (ntk_out, k.ntk)):
                if o is None:
                    continue
                o[i0:i1, cs:j1] = t
                if same and j1 > i1:  # mirror below the diagonal while the tile is hot
                    m0 = max(cs, i1)
                    o[m0:j1, i0:i1] = _swap_pairs(t[:, m0 - cs :], k.full_spatial)
            if j0 + c0 == (i0 if same else 0):
                cov1[i0:i1] = k.cov1
            if not same and b0 == 0 and r0 == 0:
                cov2[j0:j1] = k.cov2
            with out.lock:
                check.add(k.nngp)
                check.add(k.ntk)
                if watch.mask is not None:
                    gi, gj = _flagged_cells(watch.mask, i0 - cs if same else None, i0, cs)
                    refine(gi, gj, nngp_out, ntk_out, check, k.full_spatial)
                out.last = k
                bar.update()

    with _progress_bar(n_tiles, progress, n1 * n2 * cost) as bar:
        run_tasks(blocks, run_block, workers)
    nngp_out, ntk_out, cov1, cov2, last = out.nngp, out.ntk, out.cov1, out.cov2, out.last

    if same:
        for out in (nngp_out, ntk_out):
            if out is not None:
                _symmetrize_diagonal_blocks(out, b1, last.full_spatial)
    result = _assembled(names, nngp_out, ntk_out, cov1, cov2, last, same)
    return _checked(result, layer, prep, check, full)


class _Outputs:
    """The whole kernel's tensors, allocated (on the CPU) when the first tile tells their
    shape; tiles write disjoint slices of them from the pool's threads."""

    def __init__(self, n1, n2, dtype, compute_ntk, same):
        self.n1, self.n2, self.dtype, self.compute_ntk, self.same = n1, n2, dtype, compute_ntk, same
        self.nngp = self.ntk = self.cov1 = self.cov2 = self.last = None
        self.lock = threading.Lock()

    def allocate(self, k: Kernel):
        with self.lock:
            if self.nngp is None:
                tail = tuple(k.nngp.shape[2:])
                shape = (self.n1, self.n2, *tail)
                self.ntk = torch.empty(shape, dtype=self.dtype) if self.compute_ntk else None
                self.cov1 = torch.empty((self.n1, *k.cov1.shape[1:]), dtype=self.dtype)
                self.cov2 = (
                    self.cov1
                    if self.same
                    else torch.empty((self.n2, *k.cov2.shape[1:]), dtype=self.dtype)
                )
                self.nngp = torch.empty(shape, dtype=self.dtype)  # last: the flag
        return self.nngp, self.ntk, self.cov1, self.cov2


def _workers(x: Tensor) -> int:
    """Threads of the tile pool: ``TILE_WORKERS`` if set; else one (torch's own threads) on
    a quiet machine and one per CPU torch may use when another process is running; one for
    inputs on a GPU (its own queue orders the work)."""
    if x.device.type != "cpu":
        return 1
    if TILE_WORKERS is not None:
        return TILE_WORKERS
    workers = default_workers()
    if workers > 1 and not others_running():
        return 1
    return workers


def _task_budget(budget: int, total: int, workers: int) -> int:
    """A tile budget small enough that ``total`` pair-scalars make at least
    TASKS_PER_WORKER tiles for each of the pool's threads (when there are several), and no
    smaller than MIN_TASK_NUMEL."""
    if workers <= 1:
        return budget
    return max(1, min(budget, max(MIN_TASK_NUMEL, total // (TASKS_PER_WORKER * workers))))


def _flagged_cells(mask: Tensor, offset, row0: int, col0: int) -> tuple[Tensor, Tensor]:
    """Global (row, column) indices of the flagged cells of a tile whose first cell is
    (row0, col0). With ``offset`` (a set with itself: cell (r, r + offset) is an input
    with itself, exact in any dtype) those cells are left out, and so are the cells below
    the diagonal (their mirror images are recomputed and written to both)."""
    if offset is not None and -mask.shape[0] < offset < mask.shape[1]:
        mask.diagonal(offset).fill_(False)
    if not bool(mask.any()):
        empty = torch.empty(0, dtype=torch.long, device=mask.device)
        return empty, empty
    idx = mask.nonzero()
    gi, gj = idx[:, 0] + row0, idx[:, 1] + col0
    if offset is not None:
        upper = gi < gj
        gi, gj = gi[upper], gj[upper]
    return gi, gj


class _Refiner:
    """Recomputes listed pairs in float64 and writes them, rounded, into the outputs."""

    def __init__(self, layer, prep: PreparedInputs, names, dtype, same, full, cost):
        self.layer, self.prep, self.names = layer, prep, names
        self.enabled = is_reduced(dtype)
        self.same, self.full, self.cost = same, full, cost
        self.pairs = 0  # how many were recomputed (for tests and benchmarks)

    def __call__(self, gi, gj, nngp_out, ntk_out, check, full_spatial) -> None:
        if not len(gi):
            return
        self.pairs += len(gi)
        nngp, ntk = recompute_pairs(
            self.layer, self.prep, gi, gj, self.names, self.same, self.full, self.cost
        )
        for out, t in ((nngp_out, nngp), (ntk_out, ntk)):
            if out is None or t is None:
                continue
            t = t.to(out.dtype).to(out.device)
            check.add(t)
            ri, ci = gi.to(out.device), gj.to(out.device)
            out[ri, ci] = t
            if self.same:
                out[ci, ri] = _swap_pairs(t.unsqueeze(1), full_spatial).squeeze(0)


def recompute_pairs(layer, prep: PreparedInputs, gi, gj, names, same, full, cost):
    """The network's (nngp, ntk) of the pairs (x1[gi], x2[gj]) computed in float64 from the
    inputs as given, each (P, ...) (ntk None unless asked for).

    A network that accepts packed pairs gets the list itself (the inputs involved as one
    set, so that an index names one input); any other the block of the rows and columns
    involved, of which the listed cells are kept (at most a tile's worth of work)."""
    compute_ntk = "ntk" in names
    if not full and layer.packs_pairs():
        if same:
            u, inv = torch.unique(torch.cat([gi, gj]), return_inverse=True)
            a, b = inv[: len(gi)], inv[len(gi) :]
            x = prep.rows64(1, u)
        else:
            ur, a = torch.unique(gi, return_inverse=True)
            uc, b = torch.unique(gj, return_inverse=True)
            x = torch.cat([prep.rows64(1, ur), prep.rows64(2, uc)])
            b = b + len(ur)
        a, b = a.to(x.device), b.to(x.device)
        var = input_variances(x, gram_exponent=prep.gram_exponent)
        per_pair = max(1, x[0].numel())
        chunk = max(1, min(BLOCK_NUMEL // per_pair, PACKED_NUMEL // max(1, cost)))
        nngps, ntks = [], []
        for s0 in range(0, len(a), chunk):
            ai, bi = a[s0 : s0 + chunk], b[s0 : s0 + chunk]
            nngp = (x.index_select(0, ai) * x.index_select(0, bi)).sum(1) / x.shape[1]
            if prep.gram_exponent:
                scale_output(nngp, prep.gram_exponent)
            nngp = nngp.unsqueeze(1)
            k = Kernel(
                nngp=nngp,
                ntk=nngp.new_zeros(()).expand_as(nngp) if compute_ntk else None,
                cov1=var,
                cov2=var,
                shape1=tuple(x.shape[1:]),
                shape2=tuple(x.shape[1:]),
                x1_is_x2=True,
                pairs=(ai, bi),
            )
            out = _one_kernel(layer.kernel_fn(k))
            nngps.append(out.nngp[:, 0])
            ntks.append(out.ntk[:, 0] if compute_ntk else None)
        return torch.cat(nngps), torch.cat(ntks) if compute_ntk else None
    rows, ri = torch.unique(gi, return_inverse=True)
    cols, ci = torch.unique(gj, return_inverse=True)
    block = input_kernel(
        prep.rows64(1, rows),
        prep.rows64(2, cols),
        compute_ntk=compute_ntk,
        full_spatial=full,
        gram_exponent=prep.gram_exponent,
    )
    out = _one_kernel(layer.kernel_fn(block))
    ri, ci = ri.to(out.nngp.device), ci.to(out.nngp.device)
    return out.nngp[ri, ci], out.ntk[ri, ci] if compute_ntk else None


def _checked(k: Kernel, layer, prep: PreparedInputs, check: FiniteCheck, full: bool) -> Kernel:
    """The finished kernel after the checks: NaN or inf anywhere raise a
    NonFiniteKernelError naming the layer where the first bad entry arises; a homogeneous
    network's rescaled kernel is multiplied back (exactly) first."""
    x1 = prep.x1
    x2 = x1 if k.x1_is_x2 or prep.x2 is None else prep.x2
    fields = [t for t in (k.nngp, k.ntk) if t is not None]
    if not check.ok():
        for t in fields:
            bad = first_nonfinite(t)
            if bad is not None:
                i, j = bad[0], bad[1]
                raise_nonfinite(
                    layer,
                    x1,
                    x2,
                    i,
                    j,
                    k.x1_is_x2 and i == j,
                    full_spatial=full,
                    gram_exponent=prep.gram_exponent,
                    inputs=prep,
                    field="NTK" if t is k.ntk else "NNGP kernel",
                    same_set=k.x1_is_x2,
                )
    for which, cov, xs in ((1, k.cov1, x1), (2, k.cov2, x2)):
        if which == 2 and cov is k.cov1:
            continue
        bad = first_nonfinite(cov)
        if bad is not None:
            i = bad[0]
            raise_nonfinite(
                layer,
                xs,
                xs,
                i,
                i,
                True,
                full_spatial=full,
                gram_exponent=prep.gram_exponent,
                inputs=prep,
                field=f"variance of x{which}[{i}]",
            )
    if prep.out_exponent:
        covs = [k.cov1] if k.cov2 is k.cov1 else [k.cov1, k.cov2]
        for t in fields + covs:
            scale_output(t, prep.out_exponent)
        if not all(bool(torch.isfinite(t).all()) for t in fields + covs):
            big = math.ldexp(max(float(x.abs().amax()) for x in (x1, x2)), prep.exponent)
            raise NonFiniteKernelError(
                f"the kernel's values exceed the range of {x1.dtype} (up to "
                f"{torch.finfo(x1.dtype).max:.5g}): the network is positively homogeneous "
                f"of degree {prep.degree:g}, so its kernel grows as |x|^{2 * prep.degree:g}, "
                f"and the inputs' largest |x| is {big:.3g}. The kernel was computed on inputs "
                "rescaled by a power of two, but cannot be scaled back. Rescale the inputs "
                "(e.g. standardise them)"
                + ("" if x1.dtype == torch.float64 else f" or compute in {_wider(x1.dtype)}")
                + "."
            )
    return k


def _assembled(names, nngp, ntk, cov1, cov2, last: Kernel, same: bool) -> Kernel:
    """The whole kernel from its assembled tensors and the flags of the last tile."""
    return Kernel(
        nngp=nngp if "nngp" in names else None,
        ntk=ntk,
        cov1=cov1,
        cov2=cov2,
        shape1=last.shape1,
        shape2=last.shape2,
        x1_is_x2=same,
        is_gaussian=last.is_gaussian,
        is_input=last.is_input,
        full_spatial=last.full_spatial,
        diagonal_offset=0 if same else None,
    )


def _progress_bar(tiles: int, progress: bool | None, scalars: int):
    """A tqdm bar over the tiles, disabled (drawing nothing) unless ``progress`` asks for
    it (None: from PROGRESS_NUMEL pair-scalars on) and there is more than one tile; a
    context manager that closes it."""
    from tqdm.auto import tqdm

    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"`progress` must be True, False or None, got {progress!r}.")
    show = scalars >= PROGRESS_NUMEL if progress is None else progress

    return tqdm(
        total=tiles, desc="kernel", unit="tile", leave=False, disable=not show or tiles <= 1
    )


def _one_kernel(k):
    """The network's output kernel: an error if it ended with several branches."""
    if isinstance(k, list):
        raise ValueError(
            "the network ends with several branches; merge them with fan_in_sum or fan_in_concat."
        )
    return k


def _packed_chunks(n: int, budget_pairs: int) -> list[tuple[int, int]]:
    """Row ranges [r0, r1) of the upper triangle of an (n, n) kernel: as few chunks as
    hold ``budget_pairs`` pairs (i, j >= i) each, of about equal size (whole rows; a chunk
    may pass the budget by less than a row)."""
    total = n * (n + 1) // 2
    target = math.ceil(total / math.ceil(total / max(1, budget_pairs)))
    chunks, r0 = [], 0
    while r0 < n:
        r1, pairs = r0 + 1, n - r0
        while r1 < n and pairs < target:
            pairs += n - r1
            r1 += 1
        chunks.append((r0, r1))
        r0 = r1
    return chunks


def _packed_tiles(n: int, budget_pairs: int) -> list[tuple[int, int, int, int]]:
    """Tiles (r0, r1, c0, c1) of the upper triangle of an (n, n) kernel, rows [r0, r1)
    against columns [c0, c1). While at least MIN_WIDE_ROWS whole rows fit the budget, the
    tiles are chunks of whole rows (``_packed_chunks``, c0 = r0, c1 = n); beyond, square
    blocks of about sqrt(budget) inputs, so that no tile outgrows the budget however large
    n is: those on the diagonal (c0 = r0) hold a triangle, the others a full rectangle."""
    if n <= max(1, budget_pairs // MIN_WIDE_ROWS):
        return [(r0, r1, r0, n) for r0, r1 in _packed_chunks(n, budget_pairs)]
    b = _even(n, max(1, math.isqrt(budget_pairs)))
    edges = [*range(0, n, b), n]
    return [
        (edges[r], edges[r + 1], edges[c], edges[c + 1])
        for r in range(len(edges) - 1)
        for c in range(r, len(edges) - 1)
    ]


def _evaluate_packed(layer, x: Tensor, names, dtype, cost: int, progress, prep) -> Kernel:
    """A spatial set with itself in the diagonal layout, packed (``Kernel.pairs``): only
    the pairs i <= j are computed, in tiles of the upper triangle (``_packed_tiles``); a
    tile that meets the diagonal lists its pairs, one above it is a plain rectangle of two
    sets. Each computed pair is written to both (i, j) and (j, i). The operations per entry
    are those of the tiled path."""
    n = x.shape[0]
    compute_ntk = "ntk" in names
    var = input_variances(x, gram_exponent=prep.gram_exponent)
    workers = _workers(x)
    budget = _task_budget(PACKED_NUMEL, n * n * cost // 2, workers)
    tiles = _packed_tiles(n, max(1, budget // max(1, cost)))
    refine = _Refiner(layer, prep, names, dtype, True, False, cost)
    check = FiniteCheck()
    out = _Outputs(n, n, dtype, compute_ntk, True)

    def run_tile(tile):
        r0, r1, c0, c1 = tile
        rows, cols = r1 - r0, c1 - c0
        on_diagonal = c0 == r0
        block = input_kernel(
            x[r0:r1],
            x[c0:c1],
            diagonal_offset=0 if on_diagonal else None,
            compute_ntk=compute_ntk and not on_diagonal,
            cov1=var[r0:r1],
            cov2=var[c0:c1],
            gram_exponent=prep.gram_exponent,
        )
        if on_diagonal:  # the pairs i <= j, listed
            i, j = torch.triu_indices(rows, cols, device=x.device)
            nngp = block.nngp.reshape(rows * cols, *block.nngp.shape[2:])
            nngp = nngp.index_select(0, i * cols + j).unsqueeze(1)
            cov = var[c0:c1]
            block = block.replace(
                nngp=nngp,
                ntk=nngp.new_zeros(()).expand_as(nngp) if compute_ntk else None,
                cov1=cov,
                cov2=cov,
                x1_is_x2=True,
                diagonal_offset=None,
                pairs=(i, j),
            )
        with watch_pairs(refine.enabled) as watch:
            k = _one_kernel(layer.kernel_fn(block))
        nngp_out, ntk_out, cov_out, _ = out.allocate(k)
        # the whole kernel is assembled on the CPU, as the tiled path does
        if on_diagonal:
            cov_out[r0:r1] = k.cov1[:rows]
            ic, jc = i.cpu() + r0, j.cpu() + c0
            upper, lower = ic * n + jc, jc * n + ic
        for o, t in ((nngp_out, k.nngp), (ntk_out, k.ntk)):
            if o is None:
                continue
            if on_diagonal:
                flat, t = o.view(n * n, -1), t.reshape(len(i), -1).to(o.device)
                flat.index_copy_(0, upper, t)
                flat.index_copy_(0, lower, t)
            else:  # above the diagonal: mirrored below it
                o[r0:r1, c0:c1] = t
                o[c0:c1, r0:r1] = t.transpose(0, 1)
        with out.lock:
            check.add(k.nngp)
            check.add(k.ntk)
            if watch.mask is not None:
                if on_diagonal:  # listed pairs (M, 1), less those of an input with itself
                    m = (watch.mask[:, 0] & (i != j)).nonzero()[:, 0]
                    gi, gj = (i.index_select(0, m) + r0).cpu(), (j.index_select(0, m) + c0).cpu()
                else:
                    gi, gj = _flagged_cells(watch.mask, None, r0, c0)
                refine(gi, gj, nngp_out, ntk_out, check, False)
            out.last = k
            bar.update()

    with _progress_bar(len(tiles), progress, n * n * cost) as bar:
        run_tasks(tiles, run_tile, workers)
    nngp_out, ntk_out, cov_out, last = out.nngp, out.ntk, out.cov1, out.last
    result = _assembled(names, nngp_out, ntk_out, cov_out, cov_out, last, True)
    return _checked(result, layer, prep, check, False)


def _symmetrize_diagonal_blocks(out: Tensor, b1: int, full_spatial: bool = False) -> None:
    """In each diagonal (b1 x b1) block of a (N, N, ...) kernel, copy the upper triangle
    onto the lower one (the rest below the diagonal was mirrored tile by tile)."""
    n = out.shape[0]
    for i0 in range(0, n, b1):
        i1 = min(i0 + b1, n)
        block = out[i0:i1, i0:i1]
        rows, cols = torch.tril_indices(i1 - i0, i1 - i0, offset=-1)
        block[rows, cols] = _swap_pairs(block, full_spatial)[rows, cols]


def tile_count(n1: int, n2: int, b1: int, b2: int) -> int:
    return math.ceil(n1 / b1) * math.ceil(n2 / b2)
