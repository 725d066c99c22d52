"""Executors run the tiles of a plan; sinks assemble their results.

The division of labour (``widenets.tiling`` plans):

- a **work** object computes: ``work.block(block)`` the inputs a block's tiles share (for
  kernels: the input Gram of the block's rows against its columns), ``work.tile(shared,
  block, tile)`` one tile's result from those alone. Nothing in it writes outside the tile.
- a **sink** assembles: ``sink.write(tile, result)`` puts a result in its place (and its
  mirror image), ``sink.finish()`` returns the whole. :class:`KernelSink` holds the kernel
  as tensors in memory.
- an **executor** decides where and in which order blocks run: ``executor.workers`` is how
  many tiles it runs at once (the planner sizes tiles so that each gets several), and
  ``executor.run(plan, work, sink, progress)`` runs every block and hands each tile's
  result to the sink.

:class:`LocalExecutor` is the default: the blocks in this process, one after another on
torch's own threads, or on a pool of threads (``widenets._pool``) when asked for several
workers. A distributed executor (e.g. Dask writing tiles to a zarr store) implements the
same two members: each block is independent (its inputs are rows and columns of x1, x2 and
their variances), and its sink writes tiles where ``KernelSink.write`` does.
"""

from __future__ import annotations

import contextvars
import threading
from contextlib import contextmanager, nullcontext
from typing import Protocol

import torch
from torch import Tensor

from widenets._pool import run_tasks
from widenets.kernel import Kernel
from widenets.numerics import FiniteCheck
from widenets.tiling import Block, Tile, TilePlan


class TileWork(Protocol):
    """Computes tiles (see the module docstring)."""

    def block(self, block: Block): ...

    def tile(self, shared, block: Block, tile: Tile): ...


class TileSink(Protocol):
    """Assembles tile results (see the module docstring)."""

    def write(self, tile: Tile, result) -> None: ...

    def finish(self): ...


class Executor(Protocol):
    """Runs the blocks of a plan (see the module docstring)."""

    workers: int

    def run(self, plan: TilePlan, work: TileWork, sink: TileSink, progress: bool) -> None: ...


class LocalExecutor:
    """Blocks in this process: one after another (``workers`` 1, torch's own intra-op
    threads), or on ``workers`` threads each with one intra-op thread (``_pool.run_tasks``).
    Tiles write disjoint parts of the sink, so threads need no lock but the sink's own."""

    def __init__(self, workers: int = 1, desc: str = "kernel"):
        self.workers = max(1, int(workers))
        self.desc = desc  # the progress bar's label

    def run(self, plan: TilePlan, work: TileWork, sink: TileSink, progress: bool) -> None:
        lock = threading.Lock()
        with progress_bar(plan.n_tiles, progress, self.desc) as bar:

            def run_block(block: Block) -> None:
                shared = work.block(block)
                for tile in block.tiles:
                    # the tile's place in the result, offered to the layers (a fused
                    # loop may write its output there: ``KernelSink.target``)
                    with _offer(sink, tile, work):
                        sink.write(tile, work.tile(shared, block, tile))
                    with lock:
                        bar.update()

            run_tasks(plan.blocks, run_block, self.workers)


def _offer(sink, tile: Tile, work):
    """Within the block, ``TARGET`` holds the tile's place in ``sink`` (a
    :class:`KernelSink`) for the network ``work.layer``; else nothing."""
    if not isinstance(sink, KernelSink) or tile.packed or getattr(work, "layer", None) is None:
        return nullcontext()
    return _target_set(Target(sink, tile, work.layer))


@contextmanager
def _target_set(target):
    token = TARGET.set(target)
    try:
        yield
    finally:
        TARGET.reset(token)


#: the place in the result of the tile being computed (:class:`Target`), or None
TARGET: contextvars.ContextVar = contextvars.ContextVar("widenets_tile_target", default=None)


class Target:
    """The place of one tile of a fully-connected kernel in a :class:`KernelSink`, which the
    network's last layers may write into directly (once: :meth:`claim`), mirror included,
    sparing the sink the copies (``widenets._fc_chain``)."""

    def __init__(self, sink: KernelSink, tile: Tile, layer):
        self.sink, self.tile, self.layer = sink, tile, layer
        self.claimed = None  # (nngp view, ntk view or None) once claimed
        self.mirrored = False  # the claimant wrote the mirror image too

    def claim(self, n1: int, n2: int, dtype: torch.dtype, ntk: bool):
        """(nngp, ntk or None, mirror nngp, mirror ntk, first mirrored column of the tile)
        to write a (n1, n2) fully-connected tile into, or None (claimed already, another
        shape, dtype or set of outputs). The mirror views are (columns, rows): entry
        [c - first, r] takes the tile's [r, c] (None: no mirror)."""
        t, sink = self.tile, self.sink
        if self.claimed is not None or (t.r1 - t.r0, t.c1 - t.c0) != (n1, n2):
            return None
        if dtype != sink.dtype or ntk != sink.compute_ntk:
            return None
        if not sink.allocate_fc():
            return None
        views = [sink.nngp[t.r0 : t.r1, t.c0 : t.c1]]
        views.append(sink.ntk[t.r0 : t.r1, t.c0 : t.c1] if ntk else None)
        self.claimed = tuple(views)
        m0 = t.mirror_from
        if m0 is None:
            return (*views, None, None, n2)
        mk = sink.nngp[m0 : t.c1, t.r0 : t.r1]
        mt = sink.ntk[m0 : t.c1, t.r0 : t.r1] if ntk else None
        self.mirrored = True
        return (*views, mk, mt, m0 - t.c0)

    def holds(self, k: Kernel) -> bool:
        """Whether the tile's result ``k`` is what was written in place (mirror too)."""
        return (
            self.claimed is not None
            and k.nngp is self.claimed[0]
            and (k.ntk is self.claimed[1] or self.claimed[1] is None and k.ntk is None)
        )


def progress_bar(tiles: int, show: bool, desc: str = "kernel"):
    """A tqdm bar over the tiles (drawing nothing unless ``show`` and more than one tile);
    a context manager that closes it."""
    from tqdm.auto import tqdm

    return tqdm(total=tiles, desc=desc, unit="tile", leave=False, disable=not show or tiles <= 1)


class KernelSink:
    """The whole (n1, n2, ...) kernel as CPU tensors, allocated when the first tile tells
    their shape and filled tile by tile (see ``write``); ``finish`` returns the Kernel."""

    def __init__(self, plan: TilePlan, dtype: torch.dtype, names, compute_ntk: bool):
        self.plan, self.dtype, self.names, self.compute_ntk = plan, dtype, names, compute_ntk
        self.nngp = self.ntk = self.cov1 = self.cov2 = self.last = None
        self.check = FiniteCheck()  # a running sum: NaN or inf anywhere make it non-finite
        self.lock = threading.Lock()

    def _allocate(self, k: Kernel) -> None:
        self._allocate_shapes(k.nngp.shape[2:], k.cov1.shape[1:], k.cov2.shape[1:])

    def _allocate_shapes(self, pair, var1, var2) -> None:
        with self.lock:
            if self.nngp is None:
                p = self.plan
                shape = (p.n1, p.n2, *pair)
                self.ntk = torch.empty(shape, dtype=self.dtype) if self.compute_ntk else None
                self.cov1 = torch.empty((p.n1, *var1), dtype=self.dtype)
                self.cov2 = self.cov1 if p.same else torch.empty((p.n2, *var2), dtype=self.dtype)
                self.nngp = torch.empty(shape, dtype=self.dtype)  # last: the flag

    def allocate_fc(self) -> bool:
        """The result allocated as a fully-connected kernel ((n1, n2), variances (n,)) if
        it is not yet; whether it is one (the layout diagonal, no axes past the pairs)."""
        if self.plan.layout != "diagonal":
            return False
        if self.nngp is None:
            self._allocate_shapes((), (), ())
        return self.nngp.ndim == 2 and self.cov1.ndim == 1

    def write(self, tile: Tile, k: Kernel) -> None:
        """Tile ``k`` (rows [r0, r1) against columns [c0, c1); a packed tile lists its
        pairs, ``k.pairs``) into place; mirrored tiles also below the diagonal, transposed
        (``swap_pairs``); its variances if the tile owns them."""
        if self.nngp is None:
            self._allocate(k)
        r0, r1, c0, c1 = tile.r0, tile.r1, tile.c0, tile.c1
        if tile.cov1:
            self.cov1[r0:r1] = k.cov1[: r1 - r0]
        if tile.cov2:
            self.cov2[c0:c1] = k.cov2
        if tile.packed:
            n = self.plan.n2
            i, j = k.pairs
            ic, jc = i.cpu() + r0, j.cpu() + c0
            upper, lower = ic * n + jc, jc * n + ic
        m0 = tile.mirror_from
        target = TARGET.get()
        if target is not None and target.tile is tile and target.holds(k):
            if target.mirrored:  # written in place, mirror image too
                m0 = None
        for o, t in ((self.nngp, k.nngp), (self.ntk, k.ntk)):
            if o is None:
                continue
            if tile.packed:
                flat, t = o.view(o.shape[0] * o.shape[1], -1), t.reshape(len(i), -1).to(o.device)
                flat.index_copy_(0, upper, t)
                flat.index_copy_(0, lower, t)
                continue
            o[r0:r1, c0:c1] = t
            if m0 is not None:  # mirror below the diagonal while the tile is hot
                o[m0:c1, r0:r1] = swap_pairs(t[:, m0 - c0 :], k.full_spatial)
        with self.lock:
            self.check.add(k.nngp)
            self.check.add(k.ntk)
            self.last = k

    def finish(self) -> Kernel:
        """The assembled kernel, its diagonal squares made exactly symmetric
        (``TilePlan.square``), with the flags of the last tile."""
        last = self.last
        if self.plan.square:
            for out in (self.nngp, self.ntk):
                if out is not None:
                    symmetrize_diagonal_blocks(out, self.plan.square, last.full_spatial)
        same = self.plan.same
        return Kernel(
            nngp=self.nngp if "nngp" in self.names else None,
            ntk=self.ntk,
            cov1=self.cov1,
            cov2=self.cov2,
            shape1=last.shape1,
            shape2=last.shape2,
            x1_is_x2=same,
            is_gaussian=last.is_gaussian,
            is_input=last.is_input,
            full_spatial=last.full_spatial,
            diagonal_offset=0 if same else None,
        )


def swap_pairs(t: Tensor, full_spatial: bool = False) -> Tensor:
    """K(x2, x1) from K(x1, x2): swap the two batch axes (and, in the full spatial layout,
    the two positions of every spatial pair: K(x2, x1)[s', s] = K(x1, x2)[s, s'])."""
    t = t.transpose(0, 1)
    if full_spatial:
        for a in range(2, t.ndim, 2):
            t = t.transpose(a, a + 1)
    return t


def symmetrize_diagonal_blocks(out: Tensor, b1: int, full_spatial: bool = False) -> None:
    """In each diagonal (b1 x b1) block of a (N, N, ...) kernel, copy the upper triangle
    onto the lower one (the rest below the diagonal was mirrored tile by tile)."""
    n = out.shape[0]
    for i0 in range(0, n, b1):
        i1 = min(i0 + b1, n)
        block = out[i0:i1, i0:i1]
        if block.ndim == 2:  # zero below the diagonal, then add the transposed upper part
            low = block.mT.tril(-1)  # (2.5x faster than the indexed copy at 500 x 500)
            block.triu_()
            block.add_(low)
            continue
        rows, cols = torch.tril_indices(i1 - i0, i1 - i0, offset=-1)
        block[rows, cols] = swap_pairs(block, full_spatial)[rows, cols]
