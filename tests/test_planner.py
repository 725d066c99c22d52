"""The tile planner covers a kernel once, and any executor that runs its blocks, in any
order, gives the default executor's kernel bit for bit (tiles depend only on their own
rows and columns; assembly is separate from computation)."""

from __future__ import annotations

import pytest
import torch

import widenets as wn
import widenets.compute as compute
from widenets.empirical import tiles as empirical_tiles
from widenets.executors import LocalExecutor
from widenets.tiling import TileRequest, plan_tiles


def _coverage(plan):
    """How often each entry is written directly, by a mirror, and which lie in the
    diagonal squares finished at the end."""
    direct = torch.zeros(plan.n1, plan.n2, dtype=torch.int64)
    mirrored = torch.zeros(plan.n1, plan.n2, dtype=torch.int64)
    for block in plan.blocks:
        for t in block.tiles:
            assert block.r0 <= t.r0 < t.r1 <= block.r1 and block.c0 <= t.c0 < t.c1 <= block.c1
            if t.packed:  # the pairs i <= j listed, written both ways
                assert t.r0 == t.c0
                for i in range(t.r0, t.r1):
                    direct[i, max(i, t.c0) : t.c1] += 1
                    mirrored[max(i + 1, t.c0) : t.c1, i] += 1
                continue
            direct[t.r0 : t.r1, t.c0 : t.c1] += 1
            if t.mirror_from is not None:
                mirrored[t.mirror_from : t.c1, t.r0 : t.r1] += 1
            elif t.mirror and plan.layout == "packed":  # a rectangle above the diagonal
                mirrored[t.c0 : t.c1, t.r0 : t.r1] += 1
    return direct, mirrored


CASES = [
    # n1, n2, same, layout, cost, spatial, batch_size, workers
    (37, 37, True, "diagonal", 1, False, None, 1),
    (37, 23, False, "diagonal", 1, False, (5, 3), 1),
    (37, 37, True, "diagonal", 1, False, (11, 7), 1),
    (37, 37, True, "diagonal", 1, False, (4, 9), 3),
    (50, 50, True, "diagonal", 64, True, None, 1),
    (50, 30, False, "diagonal", 64, True, None, 4),
    (300, 200, False, "diagonal", 64, True, None, 4),
    (20, 20, True, "full", 4096, True, None, 1),
    (20, 9, False, "full", 4096, True, (3, 4), 2),
    (31, 31, True, "packed", 64, True, None, 1),
    (31, 31, True, "packed", 64, True, None, 3),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("small", [False, True])
def test_plan_covers_every_entry_once(case, small, monkeypatch):
    if small:  # budgets of a few pairs: many tiles, square packed blocks
        for name in ("TILE_NUMEL", "BLOCK_NUMEL", "PACKED_NUMEL", "WIDE_NUMEL"):
            monkeypatch.setattr(compute, name, 25 * case[4])
    n1, n2, same, layout, cost, spatial, batch_size, workers = case
    plan = plan_tiles(
        TileRequest(n1, n2, same, layout, cost, spatial, batch_size, workers), compute.budgets()
    )
    _check_covers_once(plan)
    b = compute.budgets()
    if batch_size is None and n1 * n2 * cost >= workers * b.tasks_per_worker * b.min_task:
        assert plan.n_tiles >= workers  # tiles for every worker of the executor


def _check_covers_once(plan):
    """Every entry written once: directly on and above the diagonal of a set with itself
    (everywhere for two sets), below it by a mirror or in a diagonal square that the
    assembly finishes; every input's variances by one tile."""
    n1, n2, same = plan.n1, plan.n2, plan.same
    direct, mirrored = _coverage(plan)
    if not same:
        assert torch.equal(direct, torch.ones(n1, n2, dtype=torch.int64))
        assert not mirrored.any()
    else:
        upper = torch.ones(n1, n1, dtype=torch.bool).triu()
        assert torch.equal(direct[upper], torch.ones_like(direct[upper]))
        # below the diagonal: a mirror image, or (grid layouts) the diagonal squares that
        # the assembly finishes from the transposed upper triangle
        i, j = torch.tril_indices(n1, n1, offset=-1)
        in_square = (i // plan.square == j // plan.square) if plan.square else i < 0
        assert torch.equal(mirrored[i, j] + in_square.long(), torch.ones_like(i))
    cov1 = torch.zeros(n1, dtype=torch.int64)
    cov2 = torch.zeros(n2, dtype=torch.int64)
    for t in plan.tiles:
        cov1[t.r0 : t.r1] += t.cov1
        cov2[t.c0 : t.c1] += t.cov2
    assert torch.equal(cov1, torch.ones_like(cov1))
    assert torch.equal(cov2, torch.zeros_like(cov2) if same else torch.ones_like(cov2))


@pytest.mark.parametrize(
    "n1, n2, same, block",
    [
        (37, 37, True, (5, 5)),
        (37, 37, True, (37, 37)),
        (36, 36, True, (6, 6)),
        (37, 23, False, (5, 3)),
        (37, 23, False, (40, 40)),
        (1, 1, True, (1, 1)),
    ],
)
def test_empirical_plan_covers_every_entry_once(n1, n2, same, block):
    """The empirical NTK's plan (one block per band of b1 rows, every tile of it spanning
    those rows: the method's left factor is formed once per band) covers the kernel once."""
    plan = empirical_tiles.plan(n1, n2, same, block)
    _check_covers_once(plan)
    b1 = min(block[0], n1)
    assert len(plan.blocks) == -(-n1 // b1)
    for blk in plan.blocks:
        assert all((t.r0, t.r1) == (blk.r0, blk.r1) for t in blk.tiles)
    if same:  # the diagonal tiles are the diagonal squares (made symmetric by the work)
        diag = [t for t in plan.tiles if t.c0 == t.r0]
        assert [(t.r0, t.r1) for t in diag] == [(t.c0, t.c1) for t in diag]
        assert plan.square == b1 and len(diag) == len(plan.blocks)
    with pytest.raises(ValueError, match="square tiles"):
        empirical_tiles.plan(6, 6, True, (2, 3))


def test_packed_needs_a_set_with_itself():
    with pytest.raises(ValueError, match="packed"):
        TileRequest(4, 5, False, "packed", 1)
    with pytest.raises(ValueError, match="layout"):
        TileRequest(4, 4, True, "square", 1)


class ShuffledExecutor:
    """Another executor: blocks in reverse order, every tile from a freshly computed block
    (as a distributed executor would compute each independently)."""

    workers = 1

    def __init__(self):
        self.tiles = 0

    def run(self, plan, work, sink, progress):
        for block in reversed(plan.blocks):
            for tile in reversed(block.tiles):
                sink.write(tile, work.tile(work.block(block), block, tile))
                self.tiles += 1


def _nets():
    conv = [wn.Conv(4, (3, 3), w_std=1.4, b_std=0.1), wn.Relu()]
    return {
        "fc": (wn.serial(wn.Dense(8, 1.5, 0.05), wn.Erf(), wn.Dense(1, 1.5)), (40, 7)),
        "cnn packed": (wn.serial(*conv, *conv, wn.Flatten(), wn.Dense(1)), (20, 2, 6, 6)),
        "cnn full": (wn.serial(*conv, wn.GlobalAvgPool(), wn.Dense(1)), (7, 2, 4, 4)),
    }


@pytest.mark.parametrize("name", list(_nets()))
@pytest.mark.parametrize("two_sets", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_any_executor_gives_the_same_bits(name, two_sets, dtype, monkeypatch):
    net, shape = _nets()[name]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x[1] = x[0] + 1e-6  # a near duplicate: in float32 it is recomputed in float64
    x2 = torch.randn(*shape, generator=g, dtype=torch.float64) if two_sets else None
    for name_ in ("TILE_NUMEL", "PACKED_NUMEL", "WIDE_NUMEL"):
        monkeypatch.setattr(compute, name_, 1 << 8)  # several tiles
    monkeypatch.setattr(compute, "TILE_NUMEL_FULL", 1 << 11)
    monkeypatch.setattr(compute, "MIN_PAIRS_FULL", 1)
    ref = compute.evaluate_kernel(net, x, x2, dtype=dtype, executor=LocalExecutor(1))
    other = ShuffledExecutor()
    got = compute.evaluate_kernel(net, x, x2, dtype=dtype, executor=other)
    assert other.tiles > 1
    for field in ("nngp", "ntk", "cov1", "cov2"):
        assert torch.equal(getattr(got, field), getattr(ref, field)), field


@pytest.mark.parametrize("method", ["jacobian", "ntk_vector", "structured", "loop"])
def test_empirical_ntk_any_executor_gives_the_same_bits(method):
    """The empirical NTK's tiles run by another executor (blocks and tiles in reverse
    order, each tile from a freshly computed left factor) give the default's bits."""
    from widenets.empirical.ntk import _ntk

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    net, shape = net.double(), (4,)
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    for two_sets, trace in ((False, False), (True, True)):
        b = x2 if two_sets else None
        kw = dict(method=method, trace_outputs=trace, batch_size=2, progress=False)
        ref = _ntk(net, x1, b, **kw)
        other = ShuffledExecutor()
        got = _ntk(net, x1, b, executor=other, **kw)
        assert other.tiles == 6  # 3 bands of rows by 2 tiles; or 3 + 2 + 1
        assert torch.equal(got, ref)
        if not two_sets:  # a set with itself: exactly symmetric (output axes swapped too)
            assert torch.equal(got, got.permute(1, 0, 3, 2))


@pytest.mark.parametrize("full_spatial", [False, True])
def test_symmetrize_diagonal_blocks_copies_each_upper_triangle_below(full_spatial):
    """Each diagonal (b x b) block's lower triangle becomes its upper one transposed
    (positions swapped too in the full layout), every other entry unchanged."""
    from widenets.executors import swap_pairs, symmetrize_diagonal_blocks

    g = torch.Generator().manual_seed(0)
    shape = (11, 11, 2, 2) if full_spatial else (11, 11)
    out = torch.randn(shape, dtype=torch.float64, generator=g)
    want = out.clone()
    for i0 in range(0, 11, 4):
        i1 = min(i0 + 4, 11)
        swapped = swap_pairs(out[i0:i1, i0:i1], full_spatial)
        for r in range(i1 - i0):
            for c in range(r):
                want[i0 + r, i0 + c] = swapped[r, c]
    symmetrize_diagonal_blocks(out, 4, full_spatial)
    assert torch.equal(out, want)
    assert not torch.equal(out, out.transpose(0, 1))  # off the diagonal blocks: untouched
