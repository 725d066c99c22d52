"""The fully-connected chain (``widenets._fc_chain``: a run of Dense / ABRelu layers folded in
one numba pass) equals the eager path, layer by layer, to 1e-13 relative in float64; falls
back to it when numba is missing, the switch is off or the loop fails; and folds only runs
of the layers it knows."""

import pytest
import torch
from tests._chain_checks import (
    ACTS,
    FIELDS,
    fails_quietly_under_auto,
    fused_on,
    small_call_stays_eager,
    spy_runs,
)
from tests._chain_checks import eager as _eager
from tests._chain_checks import rel as _rel

import widenets as wn
from widenets import _fc_chain, _fused, _numba, compute

HAVE_NUMBA = _numba.loops() is not None
pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
switch = pytest.fixture(name="switch")(fused_on)


@pytest.fixture
def runs(monkeypatch):
    """The layer runs the chain evaluated, in order (``Runs``)."""
    return spy_runs(monkeypatch, _fc_chain)


def _net(depth, act, bias=True):
    b = 0.05 if bias else None
    layers = []
    for _ in range(depth):
        layers += [wn.Dense(64, w_std=1.5, b_std=b), ACTS[act]()]
    return wn.serial(*layers, wn.Dense(1, w_std=1.5, b_std=b))


def _inputs(n, seed, dtype=torch.float64, dim=20):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("same", [True, False])
def test_chain_equals_eager_float64(switch, runs, act, depth, bias, same):
    net = _net(depth, act, bias)
    x = _inputs(70, 0)
    args = (x,) if same else (_inputs(50, 1), x)
    ref = _eager(net, *args)
    out = net.kernel(*args, progress=False)
    assert runs and all(n == 2 * depth + 1 for n in runs)  # the whole network, one run
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name
    if same:  # the diagonal of a set with itself is the variances, bit for bit
        assert torch.equal(out.nngp.diagonal(), out.cov1)
        assert torch.equal(out.nngp, out.nngp.T)


@pytest.mark.parametrize("same", [True, False])
def test_chain_nngp_only_and_tiles(switch, runs, same):
    """get="nngp" (no NTK carried); other tiles agree (the Gram's bits depend on the
    block's shape, on the eager path too)."""
    net = _net(2, "relu")
    x = _inputs(90, 2)
    args = (x,) if same else (_inputs(40, 3), x)
    ref = _eager(net, *args, get="nngp")
    out = net.kernel(*args, get="nngp", progress=False)
    assert runs
    assert _rel(out.nngp, ref.nngp) < 1e-13
    tiled = net.kernel(*args, get="nngp", progress=False, batch_size=16)
    assert _rel(tiled.nngp, out.nngp) < 1e-13
    assert torch.equal(tiled.nngp.diagonal(), tiled.cov1) if same else True


def test_chain_float32_flags_pairs(switch, runs):
    """float32: computed in float64 and rounded once; near-parallel pairs flagged and
    recomputed in float64 as on the eager path."""
    net = _net(2, "relu")
    x = _inputs(60, 4)
    x = torch.cat([x, x[:10] * 1.5 + 1e-4 * _inputs(10, 5)])  # nearly parallel pairs
    ref64 = _eager(net, x)
    ref32 = _eager(net, x, dtype=torch.float32)
    out = net.kernel(x, dtype=torch.float32, progress=False)
    assert runs and out.nngp.dtype == torch.float32
    for name in FIELDS:
        got, want = getattr(out, name), getattr(ref64, name)
        err, err_eager = _rel(got, want), _rel(getattr(ref32, name), want)
        assert err < 2e-6 and err <= 2 * err_eager + 1e-7, (name, err, err_eager)
    assert torch.equal(out.nngp.diagonal(), out.cov1)


def test_chain_float32_refines_flagged(switch, runs, monkeypatch):
    """the flagged pairs of a float32 tile are recomputed in float64 (the refiner is
    called with them)."""
    net = _net(1, "relu")
    x = _inputs(30, 6)
    x = torch.cat([x, x[:5] * 2.0])  # parallel pairs: sin(theta) = 0
    counts = []
    real = compute._Refiner.__call__

    def spy(self, k, gi, gj, where):
        counts.append(len(gi))
        return real(self, k, gi, gj, where)

    monkeypatch.setattr(compute._Refiner, "__call__", spy)
    out = net.kernel(x, dtype=torch.float32, progress=False)
    assert runs and sum(counts) >= 5
    ref = _eager(net, x)
    assert _rel(out.nngp[:5, 30:], ref.nngp[:5, 30:]) < 1e-6


def test_fallback_numba_missing(switch, runs, monkeypatch):
    net = _net(2, "relu")
    x = _inputs(40, 7)
    ref = _eager(net, x)
    monkeypatch.setattr(_numba, "_state", {"failed": "ModuleNotFoundError: numba"})
    _fused.BACKEND = "numba"  # (under "auto" the ABRelu map would go to torch.compile)
    with pytest.warns(RuntimeWarning, match="numba is not available"):
        out = net.kernel(x, progress=False)
    assert not runs
    for name in FIELDS:
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    _fused._failed = None


def test_fallback_switched_off(switch, runs):
    net = _net(2, "relu")
    x = _inputs(40, 8)
    _fused.FUSED = False
    out = net.kernel(x, progress=False)
    assert not runs
    _fused.FUSED = True
    assert runs == [] and _fused.enabled()
    assert _rel(net.kernel(x, progress=False).nngp, out.nngp) < 1e-13
    assert runs


def test_fallback_on_failure(switch, monkeypatch):
    from widenets import _numba_fc

    out, ref = fails_quietly_under_auto(
        monkeypatch, _numba_fc, "chain", _net(2, "relu"), _inputs(40, 9)
    )
    for name in FIELDS:
        assert torch.equal(getattr(out, name), getattr(ref, name)), name


def test_auto_small_call_stays_eager(switch, runs):
    small_call_stays_eager(_net(2, "relu"), _inputs(40, 10), runs)


def test_auto_large_call_folds(switch, runs, monkeypatch):
    _fused.FUSED = "auto"
    monkeypatch.setattr(_fused, "AUTO_CALL_NUMEL", 1)
    monkeypatch.setattr(_fused, "AUTO_NUMEL", 1)
    net = _net(2, "relu")
    x = _inputs(40, 11)
    out = net.kernel(x, progress=False)
    assert runs == [5]
    assert _rel(out.ntk, _eager(net, x).ntk) < 1e-13


def test_runs_split_where_a_layer_does_not_fold(switch, runs):
    """Erf, a standard-parameterisation Dense and a Dense with a tensor scale interrupt the
    runs; the layers between are folded (an ABRelu alone too, on a Gaussian input); the
    result equals the eager one."""
    net = wn.serial(
        wn.Dense(32, w_std=1.3, b_std=0.1), wn.Relu(), wn.Dense(32, w_std=1.2),
        wn.Erf(),
        wn.Dense(32, w_std=1.3, b_std=0.1), wn.Abs(), wn.Dense(32, w_std=1.1),
        wn.Dense(32, w_std=1.2, parameterization="standard"), wn.LeakyRelu(0.1),
        wn.Dense(1, w_std=torch.tensor(1.4)), wn.Relu(),
    )  # fmt: skip
    x = _inputs(50, 12)
    y = _inputs(30, 13)
    ref = _eager(net, y, x)
    out = net.kernel(y, x, progress=False)
    # [Dense Relu Dense] Erf [Dense Abs Dense] Dense(standard) [LeakyRelu] Dense(tensor) [Relu]
    assert runs == [3, 3, 1, 1]
    for name in FIELDS:
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-13, name


def test_relu_after_relu_still_raises(switch, runs):
    net = wn.serial(wn.Dense(8), wn.Relu(), wn.Relu(), wn.Dense(1))
    with pytest.raises(ValueError, match="needs a Gaussian input"):
        net.kernel(_inputs(10, 14), progress=False)


def test_nested_serial_and_spatial_not_folded(switch, runs):
    """a nested serial folds its own runs; a spatial (CNN) kernel is not folded."""
    net = wn.serial(wn.Dense(16, w_std=1.2), wn.serial(wn.Relu(), wn.Dense(16)), wn.Relu())
    x = _inputs(30, 15)
    out = net.kernel(x, progress=False)
    ref = _eager(net, x)
    assert _rel(out.nngp, ref.nngp) < 1e-13
    runs.clear()
    cnn = wn.serial(wn.Conv(4, (3,), w_std=1.3), wn.Relu(), wn.Flatten(), wn.Dense(1))
    xs = torch.randn(6, 2, 5, dtype=torch.float64)
    cnn.kernel(xs, progress=False)
    assert not runs


def test_threads_and_pool_same_bits(switch, runs, monkeypatch):
    """a tile's rows split across threads, or tiles on the pool: the same bits."""
    net = _net(2, "relu")
    x = _inputs(300, 16)
    y = _inputs(200, 17)
    one = net.kernel(y, x, progress=False)
    monkeypatch.setattr(_fc_chain, "MIN_SPLIT_ROWS", 8)
    monkeypatch.setattr(_fc_chain, "MIN_SPLIT_NUMEL", 64)
    monkeypatch.setattr(_fc_chain, "split_threads", lambda: 3)
    split = net.kernel(y, x, progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(compute, "TILE_WORKERS", 2)
    pool = net.kernel(y, x, progress=False)
    for name in FIELDS:
        assert torch.equal(getattr(split, name), getattr(one, name)), name
        # (the pool's blocks may have other shapes: the Gram's bits differ)
        assert _rel(getattr(pool, name), getattr(one, name)) < 1e-13, name


def test_autograd_takes_eager(switch, runs):
    """a kernel differentiable in a scale (a tensor w_std that requires grad) is not
    folded: autograd goes through the eager layers."""
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    net = wn.serial(wn.Dense(16, w_std=w, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=1.2))
    out = net.kernel(_inputs(10, 18), progress=False)
    assert not runs
    out.ntk.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad)


@pytest.fixture
def claims(monkeypatch):
    """The tiles the chain wrote in place in the result (``executors.Target.claim``)."""
    from widenets import executors

    seen = []
    real = executors.Target.claim

    def spy(self, *args):
        out = real(self, *args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(executors.Target, "claim", spy)
    return seen


@pytest.mark.parametrize("same", [True, False])
def test_in_place_equals_copied(switch, claims, monkeypatch, same):
    """the chain that ends the network writes its tiles (and their mirror images) in place
    in the result: the same bits as through its own buffers; a run that does not end the
    network (Erf after it) or a nested serial's does not."""
    net = _net(2, "relu")
    x = _inputs(120, 19)
    args = (x,) if same else (_inputs(70, 20), x)
    placed = net.kernel(*args, progress=False, batch_size=(32, 48))
    assert claims and all(claims)
    monkeypatch.setattr(_fc_chain, "IN_PLACE", False)
    copied = net.kernel(*args, progress=False, batch_size=(32, 48))
    for name in FIELDS:
        assert torch.equal(getattr(placed, name), getattr(copied, name)), name
    monkeypatch.setattr(_fc_chain, "IN_PLACE", True)
    claims.clear()
    for other in (
        wn.serial(wn.Dense(16, w_std=1.2), wn.Relu(), wn.Dense(16), wn.Erf()),
        wn.serial(wn.serial(wn.Dense(16, w_std=1.2), wn.Relu(), wn.Dense(1))),
    ):
        out = other.kernel(*args, progress=False)
        assert not claims
        assert _rel(out.nngp, _eager(other, *args).nngp) < 1e-13


@pytest.mark.skipif(
    __import__("platform").machine() not in ("x86_64", "AMD64"), reason="x86 instruction names"
)
def test_relu_chunk_loop_vectorises():
    """the ABRelu chunk loop compiles to packed square roots (the loop over a chunk is
    vectorised): a flag store inside it kept LLVM from vectorising it (scalar ``vsqrtsd``
    only, about 3x slower per entry), so the flagged loop is a separate one."""
    numba = pytest.importorskip("numba")
    import numpy as np

    from widenets import _numba_fc

    fresh = numba.njit(fastmath=_numba_fc.FM, nogil=True)(_numba_fc._relu_chunk.py_func)
    a = np.full(64, 0.3)
    fresh(a, a.copy(), np.zeros(64, np.uint8), 64, -1.0, 1.0, a + 1, a + 1, 0.5, 0.2, 1e-7,
          1e-5, True, False)  # fmt: skip
    (asm,) = fresh.inspect_asm().values()
    assert "sqrtpd" in asm
