"""Evaluation of a network's infinite-width kernels: inputs, layout, tiles, checks.

:func:`evaluate_kernel` (behind ``Layer.kernel``) checks and prepares the inputs, picks the
layout (:func:`kernel_layout`), asks the planner (``widenets.tiling``) for the tiles, and
has an executor (``widenets.executors``, by default the in-process ``LocalExecutor``) run
them through :class:`KernelWork` into a ``KernelSink``. Each tile's input kernel is folded
through every layer before the next tile starts, so intermediates stay in cache and memory
is bounded by the tile. For a set with itself (x2 None, or equal to x1 by value:
:func:`same_inputs`) only the tiles on or above the diagonal are computed and the rest is
mirrored. Every entry is computed by the same elementwise operations whatever the tiling,
so the result does not depend on the tile size.

Spatial inputs are carried in the diagonal layout (each position with itself: cost linear
in positions) unless a layer of the network needs every pair of positions (pooling,
attention: ``Layer.needs_pixel_pairs``), in which case the full layout is used and tiles
are sized so that one tile's pixel-pair tensors stay bounded (never all pairs at once).
The constants below are the planner's budgets (read at each call) and the thread pool's
settings.
"""

from __future__ import annotations

import math
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from widenets._fc_chain import chain_budgets, prefers_pool
from widenets._fused import call as fused_call
from widenets._fused import wants_pool
from widenets._malloc import tune_if_asked
from widenets._pool import busy_workers, default_workers, one_intra_op_thread, others_running
from widenets._variance_memo import VarianceMemo
from widenets.errors import NonFiniteKernelError, check_get, shape_str
from widenets.executors import KernelSink, LocalExecutor
from widenets.kernel import Kernel, input_kernel, input_variances, slice_pairs
from widenets.layers.masking import zero_masked
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
from widenets.side_inputs import SideInputs, prepare_side_inputs
from widenets.tiling import Block, Budgets, Tile, TileRequest, plan_tiles

#: scalars per intermediate tile (float64: 4 MiB): near the caches, yet large enough that
#: the per-operation overhead is amortised (the sweep that chose it: docs/tile_budgets.md)
TILE_NUMEL = 1 << 19
#: scalars per input-kernel block: the input Gram is one matrix product per block (large
#: products run faster), then the layers are folded over cache-sized row tiles of it
BLOCK_NUMEL = 1 << 21
#: scalars per intermediate tile for the full pixel-pair layout (float64: 4 MiB), raised
#: (up to twice that) until a tile holds MIN_PAIRS_FULL input pairs: each tile recomputes
#: the pixel-pair covariances of its own b1 + b2 inputs, a 2/b share of a b x b tile, yet
#: smaller tiles stay in cache (docs/tile_budgets.md)
TILE_NUMEL_FULL = 1 << 19
MIN_PAIRS_FULL = 24
#: scalars per intermediate chunk of listed pairs in the packed layout (a set with itself,
#: diagonal layout: ``widenets.tiling.packed_tiles``). Fewer chunks mean fewer small
#: operations, larger ones fall out of cache (docs/tile_budgets.md)
PACKED_NUMEL = 1 << 20
#: scalars per tile of two sets of spatial inputs in the diagonal layout, in tiles of whole
#: rows of at least MIN_WIDE_ROWS inputs against as many columns as fit: fewer, longer
#: operations than square tiles (docs/tile_budgets.md)
WIDE_NUMEL = 1 << 20
MIN_WIDE_ROWS = 16
#: above this many pair-scalars a progress bar is shown by default
PROGRESS_NUMEL = 1 << 26
#: threads of the tile pool (``widenets._pool``). None: decided per call, tiles one after
#: another on torch's own intra-op threads on a quiet machine, and when another process is
#: running one thread per CPU that torch may use (``torch.get_num_threads()``, at most the
#: CPUs of this process) plus one per other running thread, at most BUSY_EXTRA_WORKERS more
#: (``_pool.busy_workers``); 1: always one after another
TILE_WORKERS: int | None = None
#: 0: a thread more than the cores loses more than it wins from a neighbour: whenever it
#: preempts one of our threads that holds the GIL, every other thread of the pool waits
#: (measured: 3 threads on 2 cores take twice the time of 2 on a quiet machine)
BUSY_EXTRA_WORKERS = 0
#: seconds for which the load seen by one call is taken as that of the next ones (a look at
#: the load costs about 2 ms beside a busy process: a share of a call of 50 ms)
LOAD_MAX_AGE = 1.0
#: with several threads, tiles are made small enough that each thread gets this many, so
#: that a thread slowed by another process holds up little; but not below MIN_TASK_NUMEL
#: pair-scalars (2 MiB of float64 per operation): the threads share the GIL between the
#: operations, and beside a busy process a thread preempted while it holds the GIL stops
#: the others, so the fewer (larger) operations the better (measured on the Flatten CNN of
#: ``bench/threads_under_load.py``: tiles of 2^18 take 20% less time under load than 2^17)
TASKS_PER_WORKER = 4
MIN_TASK_NUMEL = 1 << 18


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


def budgets() -> Budgets:
    """The tile budgets of this module, as the planner takes them (read at each call, so
    that setting a module constant takes effect)."""
    return Budgets(
        tile=TILE_NUMEL,
        block=BLOCK_NUMEL,
        full=TILE_NUMEL_FULL,
        min_pairs_full=MIN_PAIRS_FULL,
        packed=PACKED_NUMEL,
        wide=WIDE_NUMEL,
        min_wide_rows=MIN_WIDE_ROWS,
        tasks_per_worker=TASKS_PER_WORKER,
        min_task=MIN_TASK_NUMEL,
    )


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


def kernel_layout(layer, in_shape, same: bool, batch_size) -> str:
    """The layout a network computes in: "full" when a layer needs every pixel pair,
    "packed" for a spatial set with itself whose layers all accept listed pairs (and no
    tile size asked for), else "diagonal"."""
    spatial = len(in_shape) > 1
    if spatial and layer.needs_pixel_pairs():
        return "full"
    if same and spatial and batch_size is None and layer.packs_pairs():
        return "packed"
    return "diagonal"


def evaluate_kernel(
    layer,
    x1,
    x2=None,
    *,
    get=("nngp", "ntk"),
    dtype: torch.dtype = torch.float64,
    batch_size=None,
    progress: bool | None = None,
    executor=None,
    pattern=None,
    mask_constant=None,
) -> Kernel:
    """Fold ``layer`` over the input kernel of (x1, x2), tile by tile. See ``Layer.kernel``.

    The planner (``widenets.tiling``) lists the tiles; ``executor`` (default: a
    ``LocalExecutor`` with ``_workers`` threads) runs them through :class:`KernelWork`
    into a ``KernelSink``."""
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"`progress` must be True, False or None, got {progress!r}.")
    busy = _workers(x1) if executor is None else 1
    # a fully-connected network the fused chain folds (``_fc_chain``): the pool, larger tiles
    chain = executor is None and prefers_pool(layer, x1, x2)
    # on the pool (a busy machine), the steps outside the tiles also run on one torch thread
    with one_intra_op_thread() if busy > 1 else nullcontext():
        job = prepare_kernel(
            layer,
            x1,
            x2,
            get=get,
            dtype=dtype,
            batch_size=batch_size,
            pattern=pattern,
            mask_constant=mask_constant,
        )
    numel = job.n1 * job.n2 * job.cost
    own_pool = False
    if executor is None:  # (else an executor of the caller's: its own threads)
        executor = LocalExecutor(_pool_workers(busy, x1, numel, job.layout, chain))
        own_pool = executor.workers > 1
    # before one_intra_op_thread: within it torch has one thread, and the tiles would be
    # planned for one worker (one tile: the whole pool idle but one thread). With a pool of
    # our own, the steps outside the tiles also run on one torch thread (as on a busy machine)
    plan_workers = _plan_workers(executor)
    with one_intra_op_thread() if own_pool else nullcontext():
        plan = plan_tiles(
            job.request(plan_workers), chain_budgets(budgets()) if chain else budgets()
        )
        work = job.work()
        sink = KernelSink(plan, dtype, job.names, "ntk" in job.names)
        # the fused loops' "auto" switch
        with fused_call(numel, job.layout, spatial=len(job.in_shape) > 1):
            executor.run(plan, work, sink, job.show_progress(progress))
        return _checked(sink.finish(), layer, job.prep, sink.check, job.full, job.side)


@dataclass(frozen=True)
class KernelJob:
    """A checked kernel request before planning: the prepared inputs, the layout and the
    cost per pair (``prepare_kernel``); ``request`` gives the planner's ``TileRequest``,
    ``work`` the :class:`KernelWork` of its tiles."""

    layer: object
    names: tuple
    dtype: torch.dtype
    prep: PreparedInputs
    same: bool
    layout: str
    cost: int
    in_shape: tuple
    batch_size: tuple[int, int] | None
    side: SideInputs = SideInputs()

    @property
    def full(self) -> bool:
        return self.layout == "full"

    @property
    def n1(self) -> int:
        return self.prep.x1.shape[0]

    @property
    def n2(self) -> int:
        return self.n1 if self.same else self.prep.x2.shape[0]

    def request(self, workers: int, chunk: int | None = None) -> TileRequest:
        spatial = len(self.in_shape) > 1
        return TileRequest(
            self.n1, self.n2, self.same, self.layout, self.cost, spatial, self.batch_size,
            workers, chunk,
        )  # fmt: skip

    def work(self) -> KernelWork:
        return KernelWork(
            self.layer,
            self.prep,
            self.names,
            self.dtype,
            self.same,
            self.full,
            self.cost,
            side=self.side,
        )

    def show_progress(self, progress: bool | None) -> bool:
        return self.n1 * self.n2 * self.cost >= PROGRESS_NUMEL if progress is None else progress


def prepare_kernel(
    layer,
    x1,
    x2=None,
    *,
    get=("nngp", "ntk"),
    dtype=torch.float64,
    batch_size=None,
    grid=False,
    pattern=None,
    mask_constant=None,
) -> KernelJob:
    """Check and prepare a kernel request (``get``, ``dtype``, inputs, shapes, layout, cost
    per pair) without computing anything. ``grid``: never the packed layout (a store's
    chunk-aligned tiles, ``widenets.kernel_store``). ``pattern``, ``mask_constant``: the
    per-input graphs and masks (``widenets.side_inputs``)."""
    names = check_get(get)
    tune_if_asked()  # process-wide: only when WIDENETS_MALLOC=tuned
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"`dtype` must be a floating torch dtype, got {dtype!r}.")
    side, patterns_equal = SideInputs(), True
    if pattern is not None or mask_constant is not None:
        x1, x2, side, patterns_equal = prepare_side_inputs(x1, x2, pattern, mask_constant)
    prep = prepare_inputs(layer, x1, x2, dtype)  # NaN/inf rejected, overflow rescaled
    x1, x2 = prep.x1, prep.x2
    same = same_inputs(x1, x2) and patterns_equal
    x2 = x1 if same else x2
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"`x1` and `x2` must have the same per-example shape, got {shape_str(x1.shape[1:])} "
            f"and {shape_str(x2.shape[1:])} (mismatched feature dimensions)."
        )
    in_shape = tuple(x1.shape[1:])
    layer.out_shape(in_shape)  # architecture/shape errors before any work
    if batch_size is not None:
        batch_size = check_batch_size(batch_size)
    layout = kernel_layout(layer, in_shape, same, batch_size if not grid else (1, 1))
    cost = layer.pair_cost(in_shape) * _spatial_factor(in_shape, layout == "full")
    if same and side.mask2 is not side.mask1:
        side = SideInputs(side.mask1, side.mask1, side.pattern1, side.pattern1)
    return KernelJob(
        layer, names, dtype, prep, same, layout, cost, in_shape, batch_size, side
    )  # fmt: skip


class KernelWork:
    """Computes the tiles of a network's kernel (``widenets.executors.TileWork``): a
    block's input kernel from its rows and columns (``block``), then the layers folded over
    each tile of it (``tile``), in reduced precision with the flagged pairs recomputed in
    float64 and put in place (``widenets.numerics``). Per-input variances are computed
    once for the whole set in the diagonal layouts; in the full layout each block forms
    its own (all N inputs at once would be N P^2 numbers). ``refine=False``: no float64
    recomputation (the GPyTorch kernel: its tiles carry autograd and stay as computed)."""

    def __init__(
        self,
        layer,
        prep: PreparedInputs,
        names,
        dtype,
        same: bool,
        full: bool,
        cost,
        refine: bool = True,
        side: SideInputs | None = None,
    ):
        self.layer, self.prep, self.same, self.full = layer, prep, same, full
        self.side = SideInputs() if side is None else side
        self.compute_ntk = "ntk" in names
        x1, ge = prep.x1, prep.gram_exponent
        self.x1 = x1
        self.x2 = x1 if same else prep.x2
        self.var1 = None if full else input_variances(x1, gram_exponent=ge)
        self.var2 = (
            None if full else self.var1 if same else input_variances(self.x2, gram_exponent=ge)
        )
        self.refine = _Refiner(layer, prep, names, dtype, same, full, cost, self.side)
        self.refine.enabled = self.refine.enabled and refine
        # the full layout's tiles map their inputs' variances once for all (``_variance_memo``)
        self.memo = VarianceMemo() if full and _memo_safe(layer) else None

    def block(self, b: Block) -> Kernel:
        """The input kernel of rows [r0, r1) of x1 against columns [c0, c1) of x2 (a
        diagonal square of a set with itself: ``cov2 is cov1``, so that layers map the
        variances once)."""
        packed = b.tiles[0].packed  # a packed tile brings its own (zero) input NTK
        cov1 = cov2 = None
        square = self.same and (b.r0, b.r1) == (b.c0, b.c1)
        if not self.full:
            cov1 = self.var1[b.r0 : b.r1]
            cov2 = cov1 if square else self.var2[b.c0 : b.c1]
        k = input_kernel(
            self.x1[b.r0 : b.r1],
            self.x2[b.c0 : b.c1],
            diagonal_offset=b.diagonal_offset,
            compute_ntk=self.compute_ntk and not packed,
            cov1=cov1,
            cov2=cov2,
            full_spatial=self.full,
            gram_exponent=self.prep.gram_exponent,
        )
        if self.side.empty:
            return k
        return k.replace(**self.side.rows(slice(b.r0, b.r1), slice(b.c0, b.c1), square))

    def tile(self, block: Kernel, b: Block, t: Tile) -> Kernel:
        """The network's kernel of one tile of ``block`` (a packed tile: its pairs i <= j
        listed, ``Kernel.pairs``)."""
        if t.packed:
            rows, cols = t.r1 - t.r0, t.c1 - t.c0
            i, j = torch.triu_indices(rows, cols, device=block.nngp.device)
            nngp = block.nngp.reshape(rows * cols, *block.nngp.shape[2:])
            nngp = nngp.index_select(0, i * cols + j).unsqueeze(1)
            cov = self.var2[t.c0 : t.c1]
            k = block.replace(
                nngp=nngp,
                ntk=nngp.new_zeros(()).expand_as(nngp) if self.compute_ntk else None,
                cov1=cov,
                cov2=cov,
                x1_is_x2=True,
                diagonal_offset=None,
                pairs=(i, j),
                **self.side.rows(slice(t.c0, t.c1), None, square=True),
            )
        elif (t.r0, t.r1, t.c0, t.c1) == (b.r0, b.r1, b.c0, b.c1):
            k = block  # the whole block (keeps ``cov2 is cov1``)
        else:
            k = slice_pairs(block, t.r0 - b.r0, t.r1 - b.r0, t.c0 - b.c0)
        if self.memo is None or t.packed:
            k, mask = self.fold(k)
        else:
            with self.memo.tile((1, t.r0, t.r1), (1 if self.same else 2, t.c0, t.c1)):
                k, mask = self.fold(k)
        if mask is None:
            return k
        if t.packed:  # listed pairs (M, 1), less those of an input with itself
            i, j = k.pairs
            m = (mask[:, 0] & (i != j)).nonzero()[:, 0]
            gi, gj = (i.index_select(0, m) + t.r0).cpu(), (j.index_select(0, m) + t.c0).cpu()
            where = (m, 0)
        else:
            offset = t.r0 - t.c0 if self.same else None
            gi, gj = _flagged_cells(mask, offset, t.r0, t.c0)
            where = (gi - t.r0, gj - t.c0)
        return self.refine(k, gi, gj, where)

    def fold(self, k: Kernel) -> tuple[Kernel, Tensor | None]:
        """The layers folded over the input kernel ``k`` (listed pairs when ``k.pairs`` is
        set: the output must keep them, else a ValueError naming ``handles_packed_pairs``),
        and the mask of the pairs the activations flagged for recomputation in float64
        (None: none, or refinement off)."""
        packed = k.pairs is not None
        with watch_pairs(self.refine.enabled) as watch:
            try:
                out = _one_kernel(self.layer.kernel_fn(k))
            except RuntimeError as err:
                if packed and "must match the size of tensor" in str(err):
                    raise ValueError(f"{_PACKED_HINT} ({err})") from err
                raise
        if packed:
            _check_packed(out, len(k.pairs[0]))
        return out, watch.mask


_PACKED_HINT = (
    "a layer of the network does not handle the packed pair layout (a set of spatial inputs "
    "with itself: Kernel.pairs lists the pairs i <= j, nngp is (M, 1, ...)): a layer whose "
    "kernel_fn reads per-input tensors (cov1, cov2) directly, not through Kernel.map / "
    "gather_pairs / pair_variances, must declare handles_packed_pairs = False"
)


def _check_packed(k: Kernel, pairs: int) -> None:
    """A ValueError when the network's output lost the packed layout ((M, 1) leading
    axes and ``Kernel.pairs``): a layer handled the list as a square (N1, N2) kernel."""
    if k.pairs is None or tuple(k.nngp.shape[:2]) != (pairs, 1):
        raise ValueError(
            f"{_PACKED_HINT} (the kernel's leading shape is {tuple(k.nngp.shape[:2])}, "
            f"expected ({pairs}, 1), pairs {'lost' if k.pairs is None else 'kept'})."
        )


def _memo_safe(layer) -> bool:
    """Whether every tile folds ``layer`` through the same sequence of variance maps, so
    that tiles may share them (``widenets._variance_memo``): the library's own layers but
    the fixed-point DEQ (its iterations depend on the tile's values); not a layer defined
    elsewhere, which might branch on them."""
    module = type(layer).__module__
    if not module.startswith("widenets.layers.") or module == "widenets.layers.deq":
        return False
    return all(_memo_safe(c) for c in layer.children())


def _workers(x) -> int:
    """Threads of the tile pool: ``TILE_WORKERS`` if set; else one (torch's own threads) on
    a quiet machine and, when another process is running, one per CPU torch may use plus
    one per other running thread, at most ``BUSY_EXTRA_WORKERS`` more
    (``_pool.busy_workers``); one for inputs on a GPU (its own queue orders the work)."""
    if isinstance(x, Tensor) and x.device.type != "cpu":
        return 1
    if TILE_WORKERS is not None:
        return TILE_WORKERS
    threads = default_workers()
    if threads <= 1:  # the user asked torch for one thread: no pool
        return 1
    return busy_workers(threads, others_running(max_age=LOAD_MAX_AGE), BUSY_EXTRA_WORKERS)


def _pool_workers(busy: int, x, numel: int, layout: str, chain: bool = False) -> int:
    """Threads of the default executor: ``busy`` (``_workers``), or one per CPU torch may use
    (``_pool.default_workers``) however quiet the machine when the evaluation takes the
    numba loops, which run serially on each thread (``_fused.wants_pool``); ``TILE_WORKERS``
    if set, one on a GPU. ``chain``: a fully-connected network the fused chain folds
    (``_fc_chain.prefers_pool``) takes the pool too: its tiles are a matrix product and one
    loop that runs without the GIL, and the pool spreads the page faults of the result."""
    if TILE_WORKERS is not None or busy > 1:
        return busy
    if isinstance(x, Tensor) and x.device.type != "cpu":
        return 1
    return default_workers() if chain or wants_pool(numel, layout) else 1


def _plan_workers(executor) -> int:
    """Workers the planner sizes tiles for: the CPUs torch may use at most (threads beyond
    them, ``BUSY_EXTRA_WORKERS``, only take the next tile sooner: smaller tiles would cost
    more per-tile work, such as the full layout's per-tile covariances); all of a
    ``TILE_WORKERS`` that was set."""
    if TILE_WORKERS is not None:
        return max(1, executor.workers)
    return max(1, min(executor.workers, default_workers()))


def _flagged_cells(mask: Tensor, offset, row0: int, col0: int) -> tuple[Tensor, Tensor]:
    """Global (row, column) indices of the flagged cells of a tile whose first cell is
    (row0, col0). With ``offset`` (a set with itself: cell (r, r + offset) is an input
    with itself, exact in any dtype) those cells are left out, and so are the cells below
    the diagonal (their mirror images are recomputed, and the sink copies them across)."""
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
    """Recomputes listed pairs of a tile in float64 and puts them, rounded, in its place."""

    def __init__(self, layer, prep: PreparedInputs, names, dtype, same, full, cost, side):
        self.layer, self.prep, self.names, self.side = layer, prep, names, side
        self.enabled = is_reduced(dtype)
        self.same, self.full, self.cost = same, full, cost
        self.pairs = 0  # how many were recomputed (for tests and benchmarks)
        self.lock = threading.Lock()

    def __getstate__(self):  # picklable, for executors in other processes
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def __call__(self, k: Kernel, gi: Tensor, gj: Tensor, where) -> Kernel:
        """``k`` with the pairs (x1[gi], x2[gj]) recomputed, at ``where`` in its tensors
        (a copy of each tensor changed: a layer may return a view of shared data)."""
        if not len(gi):
            return k
        with self.lock:
            self.pairs += len(gi)
        nngp, ntk = recompute_pairs(
            self.layer, self.prep, gi, gj, self.names, self.same, self.full, self.cost, self.side
        )
        changes = {}
        for name, t in (("nngp", nngp), ("ntk", ntk)):
            old = getattr(k, name)
            if old is None or t is None:
                continue
            new = old.clone()
            new[tuple(w.to(old.device) if isinstance(w, Tensor) else w for w in where)] = t.to(
                old.dtype
            ).to(old.device)
            changes[name] = new
        return k.replace(**changes)


def recompute_pairs(layer, prep: PreparedInputs, gi, gj, names, same, full, cost, side=None):
    """The network's (nngp, ntk) of the pairs (x1[gi], x2[gj]) computed in float64 from the
    inputs as given, each (P, ...) (ntk None unless asked for).

    A network that accepts packed pairs gets the list itself (the inputs involved as one
    set, so that an index names one input); any other the block of the rows and columns
    involved, of which the listed cells are kept (at most a tile's worth of work)."""
    compute_ntk = "ntk" in names
    side = SideInputs() if side is None else side
    if not full and layer.packs_pairs():
        if same:
            u, inv = torch.unique(torch.cat([gi, gj]), return_inverse=True)
            a, b = inv[: len(gi)], inv[len(gi) :]
            x = prep.rows64(1, u)
            fields = side.rows(u, u, square=True)
        else:
            ur, a = torch.unique(gi, return_inverse=True)
            uc, b = torch.unique(gj, return_inverse=True)
            x = torch.cat([prep.rows64(1, ur), prep.rows64(2, uc)])
            b = b + len(ur)
            two = side.rows(ur, uc)  # the rows of both sets as one set
            one = {n: None if two[n + "1"] is None else torch.cat([two[n + "1"], two[n + "2"]])
                   for n in ("mask", "pattern")}  # fmt: skip
            fields = {f"{n}{w}": one[n] for n in one for w in "12"}
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
                **fields,
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
    if not side.empty:
        block = block.replace(**side.rows(rows, cols))
    out = _one_kernel(layer.kernel_fn(block))
    ri, ci = ri.to(out.nngp.device), ci.to(out.nngp.device)
    return out.nngp[ri, ci], out.ntk[ri, ci] if compute_ntk else None


def _checked(
    k: Kernel, layer, prep: PreparedInputs, check: FiniteCheck, full: bool, side=None
) -> Kernel:
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
                rows = None if side is None else side.rows(slice(i, i + 1), slice(j, j + 1))
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
                    side_fields=rows,
                )
    for which, cov, xs in ((1, k.cov1, x1), (2, k.cov2, x2)):
        if which == 2 and cov is k.cov1:
            continue
        bad = first_nonfinite(cov)
        if bad is not None:
            i = bad[0]
            rows = None
            if side is not None:
                two = SideInputs(side.mask2, side.mask2, side.pattern2, side.pattern2)
                one = side if which == 1 else two
                rows = one.rows(slice(i, i + 1), slice(i, i + 1), square=True)
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
                side_fields=rows,
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


def _one_kernel(k):
    """The network's output kernel: an error if it ended with several branches."""
    if isinstance(k, list):
        raise ValueError(
            "the network ends with several branches; merge them with fan_in_sum or fan_in_concat."
        )
    return zero_masked(k)  # a spatial output is 0 at masked positions (as Neural Tangents)
