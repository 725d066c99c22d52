"""The tile planner: which tiles of an (N1, N2) kernel are computed, and how each is written.

A :class:`TileRequest` names the kernel (N1 by N2 inputs, whether x2 is the set x1 itself,
the layout, the scalars held per pair) and the executor's parallelism; :func:`plan_tiles`
returns a :class:`TilePlan`: blocks of tiles covering the kernel once (only on and above
the diagonal for a set with itself). Planning is pure arithmetic on sizes: no tensor is
touched, so the same plan can be run in this process (``widenets.executors.LocalExecutor``)
or elsewhere.

- A :class:`Tile` is one unit of computation: rows [r0, r1) of x1 against columns
  [c0, c1) of x2, computed from those rows and columns only. ``packed``: only its pairs
  i <= j are listed (``Kernel.pairs``, a diagonal piece of a set with itself); ``mirror``:
  its entries are also written transposed below the diagonal; ``cov1`` / ``cov2``: it is
  the tile that writes the per-input variances of its rows / columns.
- A :class:`Block` groups tiles that share one input computation (the input Gram of the
  block's rows against its columns: one large matrix product rather than one per tile).

Layouts: ``"diagonal"`` and ``"full"`` (``widenets.kernel``) are cut into a grid of
(b1, b2) tiles; ``"packed"`` (a spatial set with itself in the diagonal layout) into
chunks of whole rows of the upper triangle, or square blocks of it when few rows fit.
The budgets (scalars per tile) come from ``widenets.compute`` (:class:`Budgets`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LAYOUTS = ("diagonal", "full", "packed")


@dataclass(frozen=True)
class Budgets:
    """Scalars per tile (pairs times per-pair scalars) of each case; see ``widenets.compute``."""

    tile: int
    block: int
    full: int
    min_pairs_full: int
    packed: int
    wide: int
    min_wide_rows: int
    tasks_per_worker: int
    min_task: int


@dataclass(frozen=True)
class TileRequest:
    """What to tile.

    Attributes:
        n1, n2: inputs in x1 and x2.
        same: x2 is the set x1 itself (only tiles on or above the diagonal are computed).
        layout: "diagonal", "full" or "packed" (packed needs ``same``).
        cost: scalars held per pair (the layer's pair cost times positions, or their square).
        spatial: the inputs have spatial axes.
        batch_size: (b1, b2) tiles asked for by the user, or None.
        workers: tiles the executor runs at once; with several, tiles are made small enough
            that each worker gets ``Budgets.tasks_per_worker`` of them.
        chunk: tiles of (chunk, chunk) on the grid of a store's chunks, one tile a block, so
            that no two tiles write one chunk (``widenets.kernel_store``); grid layouts only,
            and it replaces ``batch_size`` and the budgets.
    """

    n1: int
    n2: int
    same: bool
    layout: str
    cost: int
    spatial: bool = False
    batch_size: tuple[int, int] | None = None
    workers: int = 1
    chunk: int | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"`layout` must be one of {LAYOUTS}, got {self.layout!r}.")
        if self.chunk is not None and (self.layout == "packed" or self.chunk < 1):
            raise ValueError(
                f"`chunk` needs a grid layout and a positive size, got chunk={self.chunk!r} "
                f"with layout {self.layout!r}."
            )
        if self.layout == "packed" and not (self.same and self.n1 == self.n2):
            raise ValueError("the packed layout needs a set with itself (same=True, n1 == n2).")


@dataclass(frozen=True)
class Tile:
    """Rows [r0, r1) of x1 against columns [c0, c1) of x2 (see the module docstring)."""

    r0: int
    r1: int
    c0: int
    c1: int
    packed: bool = False
    mirror: bool = False
    cov1: bool = False
    cov2: bool = False

    @property
    def mirror_from(self) -> int | None:
        """First column whose entries are also written transposed (rows [that, c1) of the
        transposed kernel, columns [r0, r1)), or None. The entries left of it lie in the
        tile's own diagonal square, finished by ``TilePlan.square``."""
        if not self.mirror or self.packed or self.c1 <= self.r1:
            return None
        return max(self.c0, self.r1)


@dataclass(frozen=True)
class Block:
    """Tiles sharing one input computation over rows [r0, r1) and columns [c0, c1).

    ``diagonal_offset``: ``x1[r]`` and ``x2[r + offset]`` are the same input for rows of
    the block (a set with itself whose block meets the diagonal), else None."""

    r0: int
    r1: int
    c0: int
    c1: int
    diagonal_offset: int | None
    tiles: tuple[Tile, ...]


@dataclass(frozen=True)
class TilePlan:
    """Blocks of tiles covering an (n1, n2) kernel once.

    ``square``: for a set with itself in a grid layout, the side of the diagonal squares
    [i b, (i + 1) b)^2 whose lower triangle the assembly finally takes from the transposed
    upper one (so the result is exactly symmetric whatever the rounding); 0 for none.
    """

    n1: int
    n2: int
    same: bool
    layout: str
    blocks: tuple[Block, ...]
    square: int = 0

    @property
    def tiles(self) -> tuple[Tile, ...]:
        return tuple(t for b in self.blocks for t in b.tiles)

    @property
    def n_tiles(self) -> int:
        return sum(len(b.tiles) for b in self.blocks)


def plan_tiles(request: TileRequest, budgets: Budgets) -> TilePlan:
    """The tiles of a kernel request: ``grid`` tiles for the diagonal and full layouts,
    ``packed_tiles`` for the packed one, each sized from ``budgets``."""
    r = request
    if r.layout == "packed":
        n = r.n1
        budget = task_budget(budgets.packed, n * n * r.cost // 2, r.workers, budgets)
        blocks = []
        for r0, r1, c0, c1 in packed_tiles(n, max(1, budget // max(1, r.cost)), budgets):
            on_diagonal = c0 == r0
            tile = Tile(r0, r1, c0, c1, packed=on_diagonal, mirror=True, cov1=on_diagonal)
            blocks.append(Block(r0, r1, c0, c1, 0 if on_diagonal else None, (tile,)))
        return TilePlan(n, n, True, "packed", tuple(blocks))
    if r.chunk is not None:  # a store's chunk grid: each chunk written by one tile alone
        b1, b2 = min(r.chunk, r.n1), min(r.chunk, r.n2)
        blocks = grid(r.n1, r.n2, b1, b2, same=r.same, block_rows=b1, block_cols=b2)
        return TilePlan(r.n1, r.n2, r.same, r.layout, blocks, b1 if r.same else 0)
    b1, b2 = tile_shape(r, budgets)
    rows_per_block = b1 * max(1, budgets.block // max(1, b1 * b2 * r.cost))
    if r.workers > 1:  # one task per tile: the pool takes tiles, not blocks of them
        rows_per_block = b1
    blocks = grid(r.n1, r.n2, b1, b2, same=r.same, block_rows=rows_per_block, block_cols=b2)
    return TilePlan(r.n1, r.n2, r.same, r.layout, blocks, b1 if r.same else 0)


def grid(
    n1: int, n2: int, b1: int, b2: int, *, same: bool, block_rows: int, block_cols: int
) -> tuple[Block, ...]:
    """Blocks of ``block_rows`` rows by ``block_cols`` columns, each cut into (b1, b2)
    tiles. For a set with itself (``same``) only what lies on or above the diagonal: column
    blocks start at their row block's first row, and a tile starts at its own first row's
    column (the rest of its diagonal square is computed and later replaced by the mirror
    image, ``TilePlan.square``)."""
    blocks = []
    for i0 in range(0, n1, block_rows):
        i1 = min(i0 + block_rows, n1)
        for j0 in range(i0 if same else 0, n2, block_cols):
            j1 = min(j0 + block_cols, n2)
            tiles = []
            for r0 in range(i0, i1, b1):
                r1 = min(r0 + b1, i1)
                for t0 in range(j0, j1, b2):
                    t1 = min(t0 + b2, j1)
                    c0 = max(t0, r0) if same else t0
                    if c0 >= t1:  # wholly below the diagonal: mirrored from another tile
                        continue
                    first_col = r0 if same else 0
                    tiles.append(
                        Tile(
                            r0,
                            r1,
                            c0,
                            t1,
                            mirror=same,
                            cov1=c0 == first_col,
                            cov2=not same and r0 == 0,
                        )
                    )
            offset = i0 - j0 if same and i0 < j1 and j0 < i1 else None
            blocks.append(Block(i0, i1, j0, j1, offset, tuple(tiles)))
    return tuple(blocks)


def tile_shape(r: TileRequest, budgets: Budgets) -> tuple[int, int]:
    """(b1, b2) of the grid layouts: the user's ``batch_size``, else from the budget of the
    case (fully connected; full layout; a spatial set with itself; two spatial sets)."""
    full = r.layout == "full"
    budget = budgets.tile
    if full:
        budget = max(budgets.full, min(budgets.min_pairs_full * r.cost, 2 * budgets.full))
    elif r.spatial and not r.same:
        budget = budgets.wide
    if r.batch_size is None:
        budget = task_budget(
            budget, r.n1 * r.n2 * r.cost // (2 if r.same else 1), r.workers, budgets
        )
    return tile_sizes(
        r.n1,
        r.n2,
        r.cost,
        r.batch_size,
        budget,
        budgets,
        square=r.spatial,
        thin_rows=r.same and not full and r.spatial,
        wide_rows=not r.same and not full and r.spatial,
    )


def tile_sizes(
    n1: int,
    n2: int,
    pair_cost: int,
    batch_size: tuple[int, int] | None,
    budget_numel: int,
    budgets: Budgets,
    square: bool = False,
    thin_rows: bool = False,
    wide_rows: bool = False,
) -> tuple[int, int]:
    """(b1, b2) for a budget of ``budget_numel`` scalars, ``pair_cost`` scalars a pair."""
    if batch_size is not None:
        b1, b2 = batch_size
        return min(b1, n1), min(b2, n2)
    budget = max(1, budget_numel // max(1, pair_cost))
    if wide_rows:
        # two sets in the diagonal layout: rows against as many columns as fit (at least
        # min_wide_rows rows a tile, which bounds the per-input variance passes of a tile's
        # b1 + b2 inputs to a few percent of its pairs), then evened out into equal tiles
        b2 = min(n2, max(1, budget // budgets.min_wide_rows))
        b1 = min(n1, max(1, budget // b2))
        return even(n1, b1), even(n2, b2)
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


def even(n: int, b: int) -> int:
    """The size of ceil(n / b) tiles of about equal size covering n."""
    return math.ceil(n / math.ceil(n / b))


def task_budget(budget: int, total: int, workers: int, budgets: Budgets) -> int:
    """A tile budget small enough that ``total`` pair-scalars make at least
    ``tasks_per_worker`` tiles for each of the executor's workers (when there are
    several), and no smaller than ``min_task``."""
    if workers <= 1:
        return budget
    per = total // (budgets.tasks_per_worker * workers)
    return max(1, min(budget, max(budgets.min_task, per)))


def packed_chunks(n: int, budget_pairs: int) -> list[tuple[int, int]]:
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


def packed_tiles(n: int, budget_pairs: int, budgets: Budgets) -> list[tuple[int, int, int, int]]:
    """Tiles (r0, r1, c0, c1) of the upper triangle of an (n, n) kernel, rows [r0, r1)
    against columns [c0, c1). While at least ``min_wide_rows`` whole rows fit the budget,
    the tiles are chunks of whole rows (``packed_chunks``, c0 = r0, c1 = n); beyond, square
    blocks of about sqrt(budget) inputs, so that no tile outgrows the budget however large
    n is: those on the diagonal (c0 = r0) hold a triangle, the others a full rectangle."""
    if n <= max(1, budget_pairs // budgets.min_wide_rows):
        return [(r0, r1, r0, n) for r0, r1 in packed_chunks(n, budget_pairs)]
    b = even(n, max(1, math.isqrt(budget_pairs)))
    edges = [*range(0, n, b), n]
    return [
        (edges[r], edges[r + 1], edges[c], edges[c + 1])
        for r in range(len(edges) - 1)
        for c in range(r, len(edges) - 1)
    ]
