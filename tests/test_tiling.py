"""The kernel does not depend on the tile size (to 1e-12), and x2=None mirrors exactly."""

import pytest
import torch

import widenets as wn


def _net():
    return wn.serial(
        wn.Dense(16, w_std=1.5, b_std=0.05),
        wn.Relu(),
        wn.Dense(16, w_std=1.5, b_std=0.05),
        wn.Erf(),
        wn.Dense(1, w_std=1.5, b_std=0.05),
    )


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(37, 6, generator=g, dtype=torch.float64), torch.randn(
        23, 6, generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("batch_size", [1, 5, 16, (7, 11), 100])
def test_result_independent_of_tile_size(data, batch_size):
    x1, x2 = data
    net = _net()
    for a, b in ((x1, None), (x1, x2)):
        ref = net.kernel(a, b)
        k = net.kernel(a, b, batch_size=batch_size)
        for name in ("nngp", "ntk"):
            torch.testing.assert_close(getattr(k, name), getattr(ref, name), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(k.cov1, ref.cov1, rtol=1e-12, atol=0)
        torch.testing.assert_close(k.cov2, ref.cov2, rtol=1e-12, atol=0)


def test_quadrature_kernel_independent_of_tile_size(data):
    x1, _ = data
    net = wn.serial(wn.Dense(4, w_std=1.2), wn.Elementwise(torch.tanh, degree=24), wn.Dense(1))
    torch.testing.assert_close(
        net.kernel(x1[:9], batch_size=2).ntk, net.kernel(x1[:9]).ntk, rtol=1e-12, atol=1e-12
    )


def test_self_kernel_is_symmetric_and_matches_cross_kernel(data):
    x1, _ = data
    net = _net()
    k = net.kernel(x1, batch_size=6)
    assert torch.equal(k.nngp, k.nngp.T) and torch.equal(k.ntk, k.ntk.T)
    cross = net.kernel(x1, x1.clone(), batch_size=6)
    torch.testing.assert_close(cross.ntk, k.ntk, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(k.nngp), k.cov1, rtol=0, atol=0)


def test_get_selects_kernels_and_dtype_is_respected(data):
    x1, x2 = data
    net = _net()
    k = net.kernel(x1, x2, get="nngp")
    assert k.ntk is None and k.nngp.shape == (37, 23) and k.nngp.dtype == torch.float64
    k32 = net.kernel(x1, x2, get="ntk", dtype=torch.float32)
    assert k32.nngp is None and k32.ntk.dtype == torch.float32
    torch.testing.assert_close(k32.ntk.double(), net.kernel(x1, x2).ntk, rtol=1e-4, atol=1e-5)


def test_progress_bar_runs(data, capsys):
    x1, x2 = data
    net = _net()
    k = net.kernel(x1, x2, batch_size=4, progress=True)
    torch.testing.assert_close(k.ntk, net.kernel(x1, x2).ntk, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n1, n2", [(100, 100), (400, 400), (1000, 30), (30, 5000), (7, 3)])
def test_wide_row_tiles_of_two_spatial_sets(n1, n2):
    """Two sets in the diagonal layout: tiles of whole rows, MIN_WIDE_ROWS of them at least
    before the tiles are evened out (more than half that after), about equal in size."""
    import math

    import widenets.compute as compute
    from widenets.tiling import tile_sizes

    cost = 64
    pairs = compute.WIDE_NUMEL // cost
    b1, b2 = tile_sizes(
        n1, n2, cost, None, compute.WIDE_NUMEL, compute.budgets(), square=True, wide_rows=True
    )
    assert 2 * b1 > min(n1, compute.MIN_WIDE_ROWS) and b2 <= n2
    assert b1 * b2 <= 2 * pairs
    for n, b in ((n1, b1), (n2, b2)):  # equal tiles: the last is not a sliver
        tiles = math.ceil(n / b)
        assert n - (tiles - 1) * b >= b - tiles
