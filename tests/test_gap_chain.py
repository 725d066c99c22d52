"""The pixel-pair chain (``widenets._gap_chain``: a run of 3x3 "same" Conv / ABRelu layers
read out by GlobalAvgPool, folded pair by pair on the full layout in one numba pass)
equals the eager path to 1e-13 relative in float64 (NNGP, NTK and the variances) whatever
the tiles (the pairs below the diagonal of a set with itself copied from their mirror
images); computes each group of inputs' variances once per evaluation; obeys the fused
switch; leaves float32, masks and runs not read out by a global average pool to the other
paths; and falls back to the eager path when the loop fails."""

import numpy as np
import pytest
import torch
from tests._chain_checks import ACTS, FIELDS, conv_body, conv_net, fused_on, images, spy_runs
from tests._chain_checks import eager as _eager
from tests._chain_checks import rel as _rel

import widenets as wn
from widenets import _fused, _gap_chain, _numba, compute
from widenets._chain_runs import encode

HAVE_NUMBA = _numba.loops() is not None
pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
switch = pytest.fixture(name="switch")(fused_on)


@pytest.fixture
def runs(monkeypatch):
    """The layer runs the chain evaluated (``Runs``; ``dtypes``: of each record folded)."""
    return spy_runs(monkeypatch, _gap_chain)


_body = conv_body


def _net(depth, act="relu", bias=True):
    return conv_net(wn.GlobalAvgPool(), depth, act, bias)


def _inputs(n, seed, dtype=torch.float64, c=1, h=4, w=5):
    return images(n, seed, dtype, c, h, w)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("same", [True, False])
def test_chain_equals_eager_float64(switch, runs, act, depth, bias, same):
    net = _net(depth, act, bias)
    x1 = _inputs(6, 1)
    x2 = None if same else _inputs(4, 2)
    out = net.kernel(x1, x2, progress=False)
    ref = _eager(net, x1, x2)
    assert runs and all(r == 2 * depth for r in runs)
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name
    if same:
        assert torch.equal(out.nngp, out.nngp.T) and torch.equal(out.ntk, out.ntk.T)


@pytest.mark.parametrize("batch_size", [(2, 2), (3, 5), (5, 3), (4, 7), (7, 7)])
def test_tiles_and_mirrored_pairs(switch, runs, batch_size):
    """Tiles of every shape across the diagonal of a set with itself (the pairs below it
    copied from their mirror images in the tile): every entry equals eager's; the
    diagonal equals the variances."""
    net = _net(2, "abrelu")
    x = _inputs(7, 3, c=2, h=3, w=4)
    out = net.kernel(x, progress=False, batch_size=batch_size)
    ref = _eager(net, x)
    assert runs
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name
    d = torch.arange(7)
    assert torch.equal(out.nngp, out.nngp.T)
    assert _rel(out.nngp[d, d], ref.cov1) < 1e-13


def test_mirrored_pairs_equal_computed_ones(switch):
    """``_numba_gap.pairs`` on a tile across the diagonal: with ``same`` the pairs below it
    are copied from their mirror images; without, all are computed; the two agree to
    1e-15 and the pairs on and above the diagonal are the same bits."""
    from widenets import _numba_gap
    from widenets.kernel import input_kernel

    net = _net(2)
    run = list(net.layers[:4])
    x = _inputs(6, 4, c=2)
    k = input_kernel(x[1:6], x[0:6], diagonal_offset=1, full_spatial=True)
    kinds, params = encode(run, wn.Conv, 1.0 / 9)
    tol = float(np.sqrt(2 * 64 * np.finfo(np.float64).eps))
    tiny = float(np.finfo(np.float64).tiny)
    f1, _ = _gap_chain._variances(_numba_gap, k.cov1, 1, kinds, params, 4, 5, tiny, tol)
    f2, _ = _gap_chain._variances(_numba_gap, k.cov2, 2, kinds, params, 4, 5, tiny, tol)
    src = k.nngp.numpy()
    outs = []
    for same in (True, False):
        ko, to = np.full((5, 6), np.nan), np.full((5, 6), np.nan)
        _numba_gap.pairs(
            src, np.empty((0,) * 6), 1, same, 1, kinds, params, 4, 5, f1, f2, tol, ko, to
        )
        outs.append((ko, to))
    upper = np.triu(np.ones((5, 6), bool), 1)  # column b holds input b, row a input a + 1
    for mirrored, computed in zip(*outs, strict=True):
        assert np.isfinite(mirrored).all()
        assert np.array_equal(mirrored[upper], computed[upper])
        assert np.abs(mirrored - computed).max() <= 1e-15 * np.abs(computed).max()


def test_variances_once_per_group(switch, monkeypatch):
    """Within one evaluation each group of inputs' variances is folded once, shared by the
    tiles of those inputs (``_variance_memo.memo_get``)."""
    from widenets import _numba_gap

    calls = []
    real = _numba_gap.variances

    def spy(cov, *args):
        calls.append(len(cov))
        return real(cov, *args)

    monkeypatch.setattr(_numba_gap, "variances", spy)
    monkeypatch.setattr(compute, "TILE_WORKERS", 1)  # (two threads may both miss at first)
    net = _net(2)
    x = _inputs(9, 5)
    out = net.kernel(x, progress=False, batch_size=3)
    assert sorted(calls) == [3, 3, 3]  # three groups of rows, each once
    assert _rel(out.ntk, _eager(net, x).ntk) < 1e-13


def test_nngp_only_and_not_input(switch, runs):
    """NNGP alone; and a run that starts after a layer the chain leaves (an NTK given)."""
    net = _net(2)
    x1, x2 = _inputs(5, 6), _inputs(3, 7)
    out = net.kernel(x1, x2, get="nngp", progress=False)
    assert runs and out.ntk is None
    assert _rel(out.nngp, _eager(net, x1, x2, get="nngp").nngp) < 1e-13
    runs.clear()
    layers = [wn.Conv(3, 3, w_std=1.2), wn.Erf(), *_body(2, "leaky"), wn.GlobalAvgPool()]
    net = wn.serial(*layers, wn.Dense(1))
    out = net.kernel(x1, x2, progress=False)
    assert runs == [4]
    ref = _eager(net, x1, x2)
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name


def test_other_readouts_float32_and_masks_not_folded(switch, runs):
    x = _inputs(5, 8)
    for readout in (wn.GlobalSumPool(), wn.AvgPool((2, 2)), wn.Flatten()):
        net = wn.serial(*_body(2), readout, wn.Dense(1))
        assert _rel(net.kernel(x, progress=False).ntk, _eager(net, x).ntk) < 1e-13
    assert not runs
    net = _net(2)
    out = net.kernel(x, progress=False, dtype=torch.float32)
    # (only the pairs flagged for recomputation, in float64, may take the chain)
    assert out.ntk.dtype == torch.float32 and set(runs.dtypes) <= {torch.float64}
    runs.clear()
    assert _rel(out.ntk, _eager(net, x).ntk) < 1e-5
    xm = x.clone()
    xm[:, :, -1] = 0.0  # the last row of positions masked out
    out = net.kernel(xm, progress=False, mask_constant=0.0)
    assert not runs
    assert _rel(out.ntk, _eager(net, xm, mask_constant=0.0).ntk) < 1e-13


def test_switched_off_and_small_auto_call(switch, runs):
    net = _net(2)
    x = _inputs(5, 9)
    _fused.FUSED = False
    net.kernel(x, progress=False)
    _fused.FUSED = "auto"  # a small call: nothing compiled
    out = net.kernel(x, progress=False)
    assert not runs
    assert torch.equal(out.nngp, _eager(net, x).nngp)


def test_failure_falls_back_to_eager(switch, monkeypatch):
    from widenets import _numba_gap

    def broken(*args):
        raise RuntimeError("LLVM failed")

    monkeypatch.setattr(_numba_gap, "pairs", broken)
    net = _net(2)
    x = _inputs(5, 10)
    with pytest.warns(RuntimeWarning, match="LLVM failed"):
        out = net.kernel(x, progress=False)
    assert _fused._failed and "LLVM failed" in _fused._failed
    _fused._failed = None
    assert torch.equal(out.ntk, _eager(net, x).ntk)
