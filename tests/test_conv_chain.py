"""The convolutional chain (``widenets._conv_chain``: a run of 3x3 "same" Conv / ABRelu
layers on a diagonal-layout kernel folded pair by pair in one numba pass) equals the eager
path to 1e-13 relative in float64 (NNGP, NTK and the variances) and the eager float32 path
to 1e-5, flagging the same ill-conditioned pairs; obeys the fused switch; leaves layouts it
does not know to the eager path; folds only runs of the layers it knows; and falls back to
the eager path when the loop fails."""

import pytest
import torch
from tests._chain_checks import (
    ACTS,
    FIELDS,
    conv_body,
    conv_net,
    fails_quietly_under_auto,
    fused_on,
    images,
    small_call_stays_eager,
    spy_runs,
)
from tests._chain_checks import eager as _eager
from tests._chain_checks import rel as _rel

import widenets as wn
from widenets import _conv_chain, _fused, _numba, compute

HAVE_NUMBA = _numba.loops() is not None
pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
switch = pytest.fixture(name="switch")(fused_on)


@pytest.fixture
def runs(monkeypatch):
    """The layer runs the chain evaluated (``Runs``; ``reduced``: whether each also folded
    the Flatten after it)."""
    return spy_runs(monkeypatch, _conv_chain)


_body = conv_body


def _net(depth, act="relu", bias=True):
    return conv_net(wn.Flatten(), depth, act, bias)


_inputs = images


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("same", [True, False])
def test_chain_equals_eager_float64(switch, runs, act, depth, bias, same):
    net = _net(depth, act, bias)
    x1 = _inputs(7, 1)
    x2 = None if same else _inputs(5, 2)
    out = net.kernel(x1, x2, progress=False)
    ref = _eager(net, x1, x2)
    assert runs and sum(runs) == 2 * depth
    assert runs.reduced[-1]  # (the Flatten readout folded into the last run)
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name


@pytest.mark.parametrize("same", [True, False])
def test_chain_maps_equal_eager(switch, runs, same):
    """The per-pixel maps after the run (no readout), 3 input channels, the last layer a
    Conv (a Gaussian record)."""
    layers = _body(3, "abrelu", channels=5)
    net = wn.serial(*layers, wn.Conv(2, 3, w_std=1.1, b_std=0.2))
    x1 = _inputs(6, 3, c=3, h=5, w=7)
    x2 = None if same else _inputs(4, 4, c=3, h=5, w=7)
    out = net.kernel(x1, x2, progress=False)
    ref = _eager(net, x1, x2)
    assert runs and sum(runs) == 7 and not any(runs.reduced)
    assert out.nngp.shape == ref.nngp.shape and out.shape1 == ref.shape1 == (2, 5, 7)
    assert out.is_gaussian and ref.is_gaussian and not out.is_input
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name
    if same:  # the diagonal of a set with itself: the variances
        d = torch.arange(6)
        assert torch.equal(out.nngp[d, d], out.cov1)


def test_chain_nngp_only(switch, runs):
    net = _net(2)
    x1, x2 = _inputs(5, 5), _inputs(3, 6)
    out = net.kernel(x1, x2, get="nngp", progress=False)
    ref = _eager(net, x1, x2, get="nngp")
    assert runs and out.ntk is None
    assert _rel(out.nngp, ref.nngp) < 1e-13


def test_runs_split_where_a_layer_does_not_fold(switch, runs):
    layers = [
        wn.Conv(4, 3, w_std=1.3, b_std=0.1), wn.Relu(),
        wn.Conv(4, (3, 3), stride=2, w_std=1.3),  # stride 2: eager
        wn.Relu(), wn.Conv(4, 3, w_std=1.2, b_std=0.1), wn.Relu(),
        wn.Conv(4, 5, w_std=1.2),  # 5x5: eager
        wn.Erf(), wn.Conv(4, 3, w_std=1.2), wn.Relu(),  # Erf: eager; then Conv, Relu
        wn.Conv(4, 3, padding="circular", w_std=1.1), wn.Relu(),  # circular: eager
        wn.Conv(4, 3, w_std=1.2, parameterization="standard"), wn.Relu(),  # standard: eager
        wn.Flatten(), wn.Dense(1, w_std=1.2),
    ]  # fmt: skip
    net = wn.serial(*layers)
    x1, x2 = _inputs(5, 7, h=9, w=8), _inputs(4, 8, h=9, w=8)
    out = net.kernel(x1, x2, progress=False)
    assert runs == [2, 3, 2]
    ref = _eager(net, x1, x2)
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name


def test_full_layout_not_folded(switch, runs):
    gap = wn.serial(*_body(2), wn.GlobalAvgPool(), wn.Dense(1))  # pixel pairs: eager
    x = _inputs(5, 9)
    assert _rel(gap.kernel(x, progress=False).ntk, _eager(gap, x).ntk) < 1e-13
    assert not runs


@pytest.mark.parametrize("act", ["relu", "abrelu"])
@pytest.mark.parametrize("same", [True, False])
def test_chain_float32_equals_eager(switch, runs, act, same):
    """float32: computed in float64 and rounded once. The eager float32 path rounds every
    layer's operations (eps 6e-8; about 3e-7 relative from float64 after 3 blocks here), so
    the two agree to 1e-5 relative (a margin of 30x), and the chain is at least as close
    to the float64 kernel as eager float32 is (within a few float32 roundings)."""
    net = _net(3, act)
    x1 = _inputs(9, 10)
    x2 = None if same else _inputs(7, 19)
    out = net.kernel(x1, x2, progress=False, dtype=torch.float32)
    ref32 = _eager(net, x1, x2, dtype=torch.float32)
    ref64 = _eager(net, x1, x2)
    assert runs and sum(runs) == 6 and runs.reduced[-1]
    for name in FIELDS:
        got = getattr(out, name)
        assert got.dtype == torch.float32, name
        assert _rel(got, getattr(ref32, name)) < 1e-5, name
        err, err_eager = (
            _rel(got, getattr(ref64, name)),
            _rel(getattr(ref32, name), getattr(ref64, name)),
        )
        assert err <= err_eager + 3e-7, (name, err, err_eager)


@pytest.mark.parametrize("same", [True, False])
def test_chain_float32_flags_pairs_as_eager(switch, runs, monkeypatch, same):
    """float32: the pairs with sin(theta) < SIN_LIMIT at some pixel of an ABRelu layer (here
    an input and its double: parallel maps) are the ones the eager path flags, and are
    recomputed in float64 (the refiner gets them); those entries then equal float64's."""
    net = _net(2)
    x1 = _inputs(8, 20)
    x1 = torch.cat([x1, 2.0 * x1[:3]])
    x2 = None if same else torch.cat([_inputs(5, 21), 0.5 * x1[:4]])
    flagged = []
    real = compute._Refiner.__call__

    def spy(self, k, gi, gj, where):
        flagged.extend(zip(gi.tolist(), gj.tolist(), strict=True))
        return real(self, k, gi, gj, where)

    monkeypatch.setattr(compute._Refiner, "__call__", spy)
    out = net.kernel(x1, x2, progress=False, dtype=torch.float32)
    assert runs
    chain_pairs, flagged[:] = set(flagged), []
    _eager(net, x1, x2, dtype=torch.float32)
    eager_pairs = set(flagged)
    parallel = {(i, 8 + i) for i in range(3)} if same else {(i, 5 + i) for i in range(4)}
    assert parallel <= eager_pairs and chain_pairs == eager_pairs
    ref64 = _eager(net, x1, x2)
    for i, j in parallel:
        for name in ("nngp", "ntk"):
            a, b = getattr(out, name)[i, j].double(), getattr(ref64, name)[i, j]
            assert abs(a - b) <= 1e-7 * abs(b), (name, i, j)


def test_switched_off(switch, runs):
    _fused.FUSED = False
    net = _net(2)
    x = _inputs(5, 11)
    net.kernel(x, progress=False)
    assert not runs


def test_auto_small_call_stays_eager(switch, runs):
    small_call_stays_eager(_net(2), _inputs(5, 12), runs)


def test_auto_large_call_folds(switch, runs, monkeypatch):
    _fused.FUSED = "auto"
    monkeypatch.setattr(_fused, "AUTO_CALL_NUMEL", 1)
    monkeypatch.setattr(_fused, "AUTO_NUMEL", 1)
    net = _net(2)
    x1, x2 = _inputs(6, 13), _inputs(4, 18)  # (cross-set: "auto" skips the packed layout)
    out = net.kernel(x1, x2, progress=False)
    assert runs and sum(runs) == 4
    assert _rel(out.ntk, _eager(net, x1, x2).ntk) < 1e-13


def test_auto_large_packed_call_folds_only_the_chain(switch, runs, monkeypatch):
    """A set with itself read out by Flatten (the packed layout, where "auto" leaves the
    per-layer loops off): a large call still takes the chain, equal to eager."""
    from widenets import _numba

    _fused.FUSED = "auto"
    monkeypatch.setattr(_fused, "AUTO_CHAIN_CALL_NUMEL", 1)
    monkeypatch.setattr(_fused, "AUTO_CALL_NUMEL", 1 << 40)  # (not the per-layer threshold)
    per_layer = []
    monkeypatch.setattr(_numba, "window_sum", lambda *a, **k: per_layer.append(1))
    net = _net(2)
    x = _inputs(7, 23)
    out = net.kernel(x, progress=False)
    assert runs and sum(runs) == 4
    assert not per_layer
    ref = _eager(net, x)
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name


def test_fallback_on_failure(switch, monkeypatch):
    from widenets import _numba_conv

    out, ref = fails_quietly_under_auto(monkeypatch, _numba_conv, "chain", _net(2), _inputs(6, 14))
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name


def test_threads_and_pool_same_bits(switch, runs, monkeypatch):
    net = _net(2)
    x1, x2 = _inputs(23, 15), _inputs(19, 16)
    one = net.kernel(x1, x2, progress=False)
    monkeypatch.setattr(_conv_chain, "MIN_SPLIT_PAIRS", 8)
    monkeypatch.setattr(_conv_chain, "MIN_SPLIT_NUMEL", 64)
    monkeypatch.setattr(_conv_chain, "split_threads", lambda: 3)
    split = net.kernel(x1, x2, progress=False)
    monkeypatch.setattr(compute, "TILE_WORKERS", 2)
    tiled = net.kernel(x1, x2, progress=False, batch_size=8)
    for name in FIELDS:
        assert torch.equal(getattr(one, name), getattr(split, name)), name
        assert torch.equal(getattr(one, name), getattr(tiled, name)), name


def test_autograd_takes_eager(switch, runs):
    w = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    net = wn.serial(wn.Conv(3, 3, w_std=w), wn.Relu(), wn.Conv(3, 3), wn.Relu(), wn.Flatten())
    x = _inputs(4, 17)
    out = net.kernel(x, progress=False)
    out.nngp.sum().backward()
    assert w.grad is not None
    assert not runs  # (a tensor w_std is not folded; the kernel after it needs autograd)
