"""Full-layout tiles take their inputs' mapped variances from the call's memo
(``widenets._variance_memo``): the kernels equal those of tiles that map their own, bit for
bit, and later tiles do reuse them."""

import pytest
import torch

import widenets as wn
from widenets import _fused, _variance_memo, compute


def _net():
    return wn.serial(
        wn.Conv(3, (3, 3), w_std=1.4, b_std=0.1),
        wn.Relu(),
        wn.Conv(3, (3, 3)),
        wn.Erf(),
        wn.AvgPool((2, 2)),
        wn.Conv(2, (3, 3), parameterization="standard", b_std=0.2),
        wn.Gelu(),
        wn.GlobalAvgPool(),
        wn.Dense(1),
    )


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_memo_equals_own_variances(fused, cross, dtype, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 2, 6, 6, generator=g, dtype=torch.float64)
    x2 = torch.randn(7, 2, 6, 6, generator=g, dtype=torch.float64) if cross else None
    net = _net()
    monkeypatch.setattr(_fused, "FUSED", fused)
    memos = []
    real = compute.VarianceMemo

    def spy(*args):
        memos.append(real(*args))
        return memos[-1]

    monkeypatch.setattr(compute, "VarianceMemo", spy)
    monkeypatch.setattr(_variance_memo, "MAX_BYTES", 0)  # every tile maps its own
    own = net.kernel(x, x2, dtype=dtype, batch_size=(3, 4))
    assert memos[-1].hits == 0
    monkeypatch.setattr(_variance_memo, "MAX_BYTES", 1 << 30)
    shared = net.kernel(x, x2, dtype=dtype, batch_size=(3, 4))
    assert memos[-1].hits > 0
    for name in ("nngp", "ntk", "cov1", "cov2"):
        assert torch.equal(getattr(own, name), getattr(shared, name)), name


def test_no_memo_outside_a_tile():
    """Outside a tile's fold (a layer called directly) the variances are mapped as ever."""
    assert _variance_memo.map_variances(None, None) is None
    memo = _variance_memo.VarianceMemo()
    with memo.tile((1, 0, 2), (1, 0, 2)):
        assert _variance_memo._local.state[0] is memo
    assert _variance_memo.map_variances(None, None) is None


def test_memo_only_for_the_library_layers():
    """A layer defined elsewhere, or the DEQ (data-dependent iterations), may map the
    variances a different number of times per tile: no memo then."""
    assert compute._memo_safe(_net())
    deq = wn.DEQ(4, wn.Relu())
    assert not compute._memo_safe(wn.serial(wn.Dense(4), deq, wn.Dense(1)))

    class Mine(wn.Relu):
        pass

    assert not compute._memo_safe(wn.serial(wn.Conv(2, (3, 3)), Mine(), wn.GlobalAvgPool()))
