"""The empirical NTK's tiles, on the kernel planner (``widenets.tiling``) and executors.

Theta(x1, x2) is cut into (b1, b2) tiles of examples (the blocks chosen for the method:
``ntk._Setup``). A :class:`~widenets.tiling.Block` is one band of b1 rows against every
column it needs, so that a method's left factor (per-example Jacobians, or the rows of
J(x1)) is formed once per band; for a set with itself (b1 = b2) the band starts at its own
diagonal tile, and the tiles above the diagonal are written again transposed below it.

- :func:`plan`: the bands and their tiles.
- :class:`EmpiricalWork`: ``block(b)`` the left factor of rows [r0, r1); ``tile(left, b,
  t)`` the pair with the right factor of columns [c0, c1). The diagonal tile of a set with
  itself reuses the left factor when the method's right factor is the same
  (``symmetric_right``) and is averaged with its transpose (Theta(x, x') = Theta(x', x)^T
  exactly, whatever the rounding of the products).
- :class:`EmpiricalSink`: writes each tile at [r0:r1, c0:c1] and its mirror image.
"""

from __future__ import annotations

from torch import Tensor

from widenets.empirical._common import Batch
from widenets.tiling import Block, Tile, TilePlan, grid


def plan(n1: int, n2: int, same: bool, block: tuple[int, int]) -> TilePlan:
    """One block per band of ``block[0]`` rows (all its columns: ``block_cols = n2``), cut
    into tiles of ``block[1]`` columns; for a set with itself (``same``, square tiles) only
    the tiles on or above the diagonal. ``square``: the diagonal squares, which
    :class:`EmpiricalWork` makes exactly symmetric itself."""
    b1, b2 = block
    if same and (n1 != n2 or b1 != b2):
        raise ValueError(f"a set with itself needs square tiles, got {block} of {n1} x {n2}.")
    blocks = grid(n1, n2, b1, b2, same=same, block_rows=b1, block_cols=n2)
    return TilePlan(n1, n2, same, "diagonal", blocks, b1 if same else 0)


class EmpiricalWork:
    """Tiles of the empirical NTK by a method of :mod:`._methods` or :mod:`.structured`
    (``left``, ``right``, ``pair``, ``symmetric_right``); see the module docstring."""

    def __init__(self, method, x1: Batch, x2: Batch | None, trace: bool):
        self.m, self.x1, self.trace = method, x1, trace
        self.same = x2 is None
        self.x2 = x1 if x2 is None else x2

    def block(self, b: Block):
        """The method's left factor of rows [r0, r1) of x1 (every tile of the block has
        those rows)."""
        return self.m.left(self.x1.slice(b.r0, b.r1))

    def tile(self, left, b: Block, t: Tile) -> Tensor:
        """Theta of rows [r0, r1) against columns [c0, c1): (b1, b2), or (b1, b2, O, O)
        untraced."""
        if (t.r0, t.r1) != (b.r0, b.r1):
            raise RuntimeError(f"internal error: a tile must span its block's rows, got {t}.")
        diagonal = self.same and (t.c0, t.c1) == (t.r0, t.r1)
        if diagonal and self.m.symmetric_right:
            right = left
        else:
            right = self.m.right(self.x2.slice(t.c0, t.c1))
        out = self.m.pair(left, right)
        if diagonal:  # exactly symmetric, whatever the rounding of the products
            out = (out + (out.T if self.trace else out.permute(1, 0, 3, 2))) / 2
        return out


class EmpiricalSink:
    """The (n1, n2) or (n1, n2, O, O) kernel, allocated on the first tile's device and in
    its dtype; ``write`` puts a tile in place and its mirror image transposed (the output
    axes too when not traced), ``finish`` returns the tensor."""

    def __init__(self, plan: TilePlan):
        self.plan = plan
        self.out: Tensor | None = None

    def write(self, tile: Tile, t: Tensor) -> None:
        if self.out is None:
            shape = (self.plan.n1, self.plan.n2, *t.shape[2:])
            self.out = t.new_empty(shape)
        r0, r1, c0, c1 = tile.r0, tile.r1, tile.c0, tile.c1
        self.out[r0:r1, c0:c1] = t
        m0 = tile.mirror_from
        if m0 is not None:  # Theta(x', x)[b, a] = Theta(x, x')[a, b]
            mirror = t[:, m0 - c0 :].transpose(0, 1)
            self.out[m0:c1, r0:r1] = mirror if mirror.ndim == 2 else mirror.transpose(2, 3)

    def finish(self) -> Tensor:
        if self.out is None:
            raise ValueError("the empirical NTK's plan has no tiles (no examples).")
        return self.out
