"""The packed pair layout (a spatial set with itself in the diagonal layout: only the pairs
i <= j are computed) gives the tiled path's kernels bit for bit, in one chunk or many."""

import pytest
import torch

import widenets as wn
import widenets.compute as compute
from widenets.layers.base import Layer
from widenets.tiling import packed_chunks, packed_tiles


def _images(n=23, channels=3, size=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, *size, generator=g, dtype=torch.float64)


def _block(act):
    return wn.serial(wn.Conv(4, (3, 3), w_std=1.4, b_std=0.1), act)


NETWORKS = {
    "cnn-vec relu": lambda: wn.serial(
        _block(wn.Relu()), _block(wn.Relu()), wn.Flatten(), wn.Dense(1, w_std=1.2, b_std=0.1)
    ),
    "leaky, erf, standard": lambda: wn.serial(
        wn.Conv(3, (2, 3), w_std=1.3, b_std=0.2, parameterization="standard"),
        wn.LeakyRelu(0.1),
        wn.Conv(3, (3, 1), padding="circular", w_std=1.1),
        wn.Erf(),
        wn.Flatten(),
        wn.Dense(2, w_std=1.0, b_std=0.3),
    ),
    "residual, concat": lambda: wn.serial(
        wn.Conv(4, (3, 3), w_std=1.2),
        wn.fan_out(2),
        wn.parallel(wn.Identity(), _block(wn.Gelu())),
        wn.fan_in_sum(),
        wn.fan_out(2),
        wn.parallel(_block(wn.Relu()), wn.serial(wn.Scale(0.5), wn.Conv(2, 1))),
        wn.fan_in_concat(),
        wn.Flatten(),
        wn.Dense(1),
    ),
    "layernorm, dropout": lambda: wn.serial(
        wn.Conv(4, (3, 3), w_std=1.3, b_std=0.2),
        wn.LayerNorm(over="channels"),
        wn.Relu(),
        wn.Dropout(0.2),
        wn.Conv(3, (3, 3), w_std=1.2),
        wn.LayerNorm(over="channels+space"),
        wn.Erf(),
        wn.Flatten(),
        wn.Dropout(0.1),
        wn.Dense(1),
    ),
    "spatial output": lambda: wn.serial(_block(wn.Abs()), wn.Conv(2, (3, 3), stride=2)),
    "1-D": lambda: wn.serial(
        wn.Conv(3, 3, w_std=1.5, b_std=0.1), wn.Relu(), wn.Flatten(), wn.Dense(1)
    ),
}


def _tiled_and_packed(net, x, get=("nngp", "ntk")):
    assert net.packs_pairs()
    return net.kernel(x, batch_size=(4, 6), get=get), net.kernel(x, get=get)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_packed_equals_tiled_bit_for_bit(name):
    net = NETWORKS[name]()
    x = _images(size=(7,)) if name == "1-D" else _images()
    tiled, packed = _tiled_and_packed(net, x)
    for field in ("nngp", "ntk", "cov1", "cov2"):
        a, b = getattr(tiled, field), getattr(packed, field)
        assert a.shape == b.shape and torch.equal(a, b), field
    assert torch.equal(packed.ntk, packed.ntk.transpose(0, 1))
    # the diagonal of a set with itself is the variances, bit for bit
    diagonal = torch.diagonal(packed.nngp, 0, 0, 1)
    assert torch.equal(diagonal.movedim(-1, 0) if diagonal.ndim > 1 else diagonal, packed.cov1)


def test_packed_in_many_chunks_equals_one_chunk(monkeypatch):
    net = NETWORKS["cnn-vec relu"]()
    x = _images(n=31)
    one = net.kernel(x)
    monkeypatch.setattr(compute, "PACKED_NUMEL", 1)  # a row a chunk
    many = net.kernel(x, progress=True)
    assert torch.equal(one.nngp, many.nngp) and torch.equal(one.ntk, many.ntk)
    assert torch.equal(torch.diagonal(many.nngp), many.cov1)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_packed_in_square_blocks_equals_tiled(name, monkeypatch):
    """Beyond MIN_WIDE_ROWS whole rows a tile, the triangle is cut into square blocks (the
    diagonal ones listed, the others plain rectangles): the same bits again."""
    net = NETWORKS[name]()
    x = _images(n=31, size=(7,)) if name == "1-D" else _images(n=31)
    tiled = net.kernel(x, batch_size=(4, 6))
    cost = net.pair_cost(tuple(x.shape[1:])) * x[0, 0].numel()
    monkeypatch.setattr(compute, "PACKED_NUMEL", 25 * cost)  # blocks of 5 inputs
    tiles = packed_tiles(31, 25, compute.budgets())
    assert len(tiles) > 1 and any(c0 > r0 for r0, _, c0, _ in tiles)
    packed = net.kernel(x)
    for field in ("nngp", "ntk", "cov1"):
        assert torch.equal(getattr(tiled, field), getattr(packed, field)), field


@pytest.mark.parametrize("n, budget", [(1, 1), (31, 25), (100, 64), (40, 4096)])
def test_packed_tiles_cover_the_upper_triangle_once(n, budget):
    covered = torch.zeros(n, n, dtype=torch.int64)
    for r0, r1, c0, c1 in packed_tiles(n, budget, compute.budgets()):
        for i in range(r0, r1):
            for j in range(max(i, c0), c1):
                covered[i, j] += 1
        # the budget holds unless whole rows are taken (fewer than MIN_WIDE_ROWS fit then
        # only at n <= budget // MIN_WIDE_ROWS, where a row has at most budget/16 pairs)
        assert (r1 - r0) * (c1 - c0) <= 2 * budget or c1 == n
    assert torch.equal(covered, torch.triu(torch.ones(n, n, dtype=torch.int64)))


def test_packed_nngp_only():
    net = NETWORKS["cnn-vec relu"]()
    tiled, packed = _tiled_and_packed(net, _images(), get="nngp")
    assert packed.ntk is None and torch.equal(tiled.nngp, packed.nngp)


def test_packed_path_is_taken_only_where_every_layer_handles_it(monkeypatch):
    calls = []
    real = compute.plan_tiles

    def spy(*args, **kwargs):
        plan = real(*args, **kwargs)
        if plan.layout == "packed":
            calls.append(1)
        return plan

    monkeypatch.setattr(compute, "plan_tiles", spy)
    x = _images(n=9)
    cnn = NETWORKS["cnn-vec relu"]()
    cnn.kernel(x)
    assert calls == [1]
    cnn.kernel(x, x + 1)  # two sets: no symmetry to use
    cnn.kernel(x, batch_size=3)  # tiles asked for
    wn.serial(wn.Conv(2, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1)).kernel(x)  # full
    wn.serial(wn.Dense(3), wn.Relu(), wn.Dense(1)).kernel(x[:, :, 0, 0])  # not spatial

    class Own(Layer):  # a layer of the user's that says it cannot take packed pairs
        handles_packed_pairs = False

        def kernel_fn(self, k):
            return k

    own = wn.serial(wn.Conv(2, 3), Own(), wn.Relu(), wn.Flatten(), wn.Dense(1))
    assert not own.packs_pairs()
    ref = own.kernel(x)  # tiled
    assert calls == [1]
    torch.testing.assert_close(ref.ntk, own.kernel(x, batch_size=2).ntk, rtol=1e-13, atol=0)


@pytest.mark.parametrize("n, budget", [(1, 1), (2, 1), (10, 10), (100, 4096), (57, 333)])
def test_packed_chunks_cover_every_row_once(n, budget):
    chunks = packed_chunks(n, budget)
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
    sizes = [sum(n - i for i in range(r0, r1)) for r0, r1 in chunks]
    # no chunk passes the budget by a row or more, unless it is a single row
    assert all(s < budget + n or r1 - r0 == 1 for s, (r0, r1) in zip(sizes, chunks, strict=True))
    assert len(chunks) <= -(-(n * (n + 1) // 2) // budget) + 1


@pytest.mark.parametrize("name", ["layernorm, dropout", "residual, concat", "dense, dropout"])
def test_a_set_passed_twice_is_recognised_by_value(name):
    """net.kernel(x) and net.kernel(x, x.clone()) are the same kernel: Dropout's added
    diagonal (a set with itself) must not depend on how the set was passed. Before, only
    x2=None counted as "the same inputs" and the Dropout kernels differed on the diagonal."""
    dense = wn.serial(wn.Dense(8, w_std=1.4, b_std=0.1), wn.Relu(), wn.Dropout(0.3), wn.Dense(1))
    net = dense if name == "dense, dropout" else NETWORKS[name]()
    g = torch.Generator().manual_seed(4)
    shape = (9, 7) if name == "dense, dropout" else (9, 3, 6, 5)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    k1 = net.kernel(x)
    for x2 in (x, x.clone(), x.numpy()):
        k2 = net.kernel(x, x2)
        torch.testing.assert_close(k2.nngp, k1.nngp, rtol=0, atol=0)
        torch.testing.assert_close(k2.ntk, k1.ntk, rtol=0, atol=0)
    other = x.clone()
    other[3] += 1e-3  # one input differs: a cross-set kernel (no Dropout diagonal)
    k3 = net.kernel(x, other)
    off = ~torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close(k3.nngp[:3, :3][off], k1.nngp[:3, :3][off], rtol=1e-12, atol=0)
    if "dropout" in name:
        assert (k3.nngp.diagonal()[:3] < k1.nngp.diagonal()[:3]).all()
