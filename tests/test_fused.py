"""The fused loops (torch.compile: the ABRelu map; numba: the ABRelu map and the 3x3 window
sums) equal the eager path, in every layout and both dtypes, and the eager path is taken
where the fused one does not apply (autograd, CUDA, failure, numba missing)."""

import math
import os
import subprocess
import sys

import pytest
import torch

import widenets as wn
from widenets import _conv_chain, _fused, _gap_chain, _numba
from widenets.executors import LocalExecutor
from widenets.layers.activations import ABRelu


@pytest.fixture
def switch():
    """Restore the switch and the failure state after a test."""
    before = _fused.FUSED, _fused._failed, _fused.BACKEND
    yield
    _fused.FUSED, _fused._failed, _fused.BACKEND = before


HAVE_NUMBA = _numba.loops() is not None
NEEDS_NUMBA = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
# the compiled loops of each backend; numba's compile once per dtype (about 2 s, then cached)
BACKENDS = [pytest.param("compile"), pytest.param("numba", marks=NEEDS_NUMBA)]


def _images(n, size, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, size, size, generator=g, dtype=dtype)


def _net(readout):
    layers = []
    for act in (wn.Relu(), wn.LeakyRelu(0.2), wn.Abs()):
        layers += [wn.Conv(2, (3, 3), w_std=1.4, b_std=0.1), act]
    ro = wn.GlobalAvgPool() if readout == "gap" else wn.Flatten()
    return wn.serial(*layers, ro, wn.Dense(1, w_std=1.2, b_std=0.1))


# full (pixel pairs, GAP), packed (a set with itself, Flatten), diagonal (two sets, Flatten)
LAYOUTS = {"full": ("gap", False), "packed": ("vec", False), "diagonal": ("vec", True)}


# each signature compiles once (seconds, cached on disk): the fast suite keeps one of each
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "layout, backend",
    [
        pytest.param(k, b, marks=() if k == "packed" or b == "numba" else SLOW)
        for k in LAYOUTS
        for b in ("compile", "numba")
    ],
)
def test_network_kernels_equal_eager(layout, backend, switch):
    if backend == "numba" and not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    readout, cross = LAYOUTS[layout]
    x1 = _images(5, 5, 0)
    x2 = _images(4, 5, 1) if cross else None
    net = _net(readout)
    _fused.FUSED = False
    eager = net.kernel(x1, x2)
    _fused.FUSED, _fused.BACKEND = True, backend
    fused = net.kernel(x1, x2)
    assert _fused._failed is None
    for name in ("nngp", "ntk"):
        a, b = getattr(fused, name), getattr(eager, name)
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0.0)
    if backend == "numba":  # the loops ran (not the eager fallback): not bit-equal to eager
        assert not torch.equal(fused.ntk, eager.ntk)


@NEEDS_NUMBA
@pytest.mark.parametrize("readout", ["gap", "vec"])
@pytest.mark.parametrize("cross", [False, True])
def test_numba_float32_network_within_ulps(readout, cross, switch):
    """float32 kernels by the numba loops: within a few float32 ulp of the eager float32 ones
    (both are a few ulp from the float64 kernel)."""
    x1 = _images(5, 5, 0)
    x2 = _images(4, 5, 1) if cross else None
    net = _net(readout)
    _fused.FUSED = False
    eager = net.kernel(x1, x2, dtype=torch.float32)
    _fused.FUSED, _fused.BACKEND = True, "numba"
    fused = net.kernel(x1, x2, dtype=torch.float32)
    assert fused.nngp.dtype == torch.float32 and _fused._failed is None
    for name in ("nngp", "ntk"):
        a, b = getattr(fused, name), getattr(eager, name)
        torch.testing.assert_close(a, b, rtol=64 * torch.finfo(torch.float32).eps, atol=0.0)


@NEEDS_NUMBA
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_numba_window_sum_is_the_eager_conv(full, dtype, switch):
    """The 3x3 window sum with bias and NTK update against an independent computation:
    torch's conv2d on the pixel-pair (or diagonal) planes, zero padded."""
    g = torch.Generator().manual_seed(5)
    if full:  # (n1, n2, H, H', W, W') laid out as widenets' tiles: (n1, H, W, n2, H', W')
        t, add = (torch.randn(3, 5, 4, 2, 5, 4, generator=g, dtype=torch.float64) for _ in "ta")
        t, add = t.permute(0, 3, 1, 4, 2, 5), add.permute(0, 3, 1, 4, 2, 5)
        ref = torch.zeros_like(t)  # the taps move (h, h') and (w, w') together
        for dh in (-1, 0, 1):
            for dw in (-1, 0, 1):
                h0, h1, w0, w1 = max(0, -dh), min(5, 5 - dh), max(0, -dw), min(4, 4 - dw)
                hs, ws = slice(h0 + dh, h1 + dh), slice(w0 + dw, w1 + dw)
                ref[:, :, h0:h1, h0:h1, w0:w1, w0:w1] += t[:, :, hs, hs, ws, ws]
    else:
        shape = (3, 2, 5, 4)
        t, add = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in "ta")
        ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
        ref = torch.nn.functional.conv2d(t.reshape(-1, 1, 5, 4), ones, padding=1).reshape(shape)
    ref = 0.3 * ref + 0.01 + add
    _fused.FUSED, _fused.BACKEND = True, "numba"
    got = _fused.window_sum(t.to(dtype), full, 0.3, 0.01, add.to(dtype))
    assert got is not None and got.dtype == dtype and got.stride() == t.stride()
    tol = 1e-14 if dtype == torch.float64 else 8 * torch.finfo(dtype).eps
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@NEEDS_NUMBA
def test_fresh_process_keeps_torch_thread_count():
    """The numba loops are serial (no threading layer: numba's OpenMP one would set the
    OpenMP thread count it shares with torch): a fresh process's torch thread count is the
    same after a fused kernel, the default one and one set by the user."""
    code = (
        "import torch, widenets as wn; from widenets import _fused, _numba_loops\n"
        "_fused.FUSED, _fused.BACKEND = True, 'numba'\n"
        "x = torch.randn(3, 2, 4, 4, dtype=torch.float64)\n"
        "net = wn.serial(wn.Conv(2, (3, 3)), wn.Relu(), wn.GlobalSumPool(), wn.Dense(1))\n"
        "before = torch.get_num_threads(); net.kernel(x); after = torch.get_num_threads()\n"
        "assert _numba_loops.window3.signatures, 'the loops did not run'\n"
        "torch.set_num_threads(2); net.kernel(x, x + 1)\n"
        "print(before, after, torch.get_num_threads())\n"
    )
    # a numba threading layer launched from here would set the count to NUMBA_NUM_THREADS
    env = {**os.environ, "NUMBA_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[-3:] == ["1", "1", "2"], out.stdout + out.stderr


@NEEDS_NUMBA
def test_read_only_numba_cache_compiles_in_process(tmp_path):
    """No writable cache directory for numba (an installed, read-only package; the cache
    directory not creatable): the loops compile uncached in the process and the kernel
    equals the eager one (fresh process)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = (
        "import torch, widenets as wn; from widenets import _fused, _numba_loops\n"
        "x = torch.randn(4, 2, 4, 4, dtype=torch.float64, generator=torch.Generator()"
        ".manual_seed(0))\n"
        "for pool in (wn.GlobalSumPool(), wn.GlobalAvgPool()):  # per-layer loops; GAP chain\n"
        "    net = wn.serial(wn.Conv(2, (3, 3)), wn.Relu(), pool, wn.Dense(1))\n"
        "    _fused.FUSED = False; eager = net.kernel(x)\n"
        "    _fused.FUSED, _fused.BACKEND = True, 'numba'; k = net.kernel(x)\n"
        "    assert _fused._failed is None, _fused._failed\n"
        "    assert not torch.equal(k.ntk, eager.ntk), 'the loops did not run'\n"
        "    torch.testing.assert_close(k.ntk, eager.ntk, rtol=1e-13, atol=0.0)\n"
        "from widenets import _numba_gap\n"
        "for f in (_numba_loops.window3, _numba_gap.pairs):\n"
        "    assert type(f._cache).__name__ == 'NullCache'\n"
        "print('ok')\n"
    )
    env = {
        **os.environ,
        "NUMBA_CACHE_DIR": str(blocker / "cache"),  # under a file: cannot be made
        "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split()[-1] == "ok", out.stdout + out.stderr


def _spy_loops(monkeypatch):
    """Counts of the numba loops' calls (ABRelu maps, window sums)."""
    calls = {"abrelu": 0, "window": 0}
    abrelu, window = _numba.abrelu_pair, _numba.window_sum

    def spy_abrelu(*args):
        calls["abrelu"] += 1
        return abrelu(*args)

    def spy_window(*args):
        calls["window"] += 1
        return window(*args)

    monkeypatch.setattr(_numba, "abrelu_pair", spy_abrelu)
    monkeypatch.setattr(_numba, "window_sum", spy_window)
    return calls


@NEEDS_NUMBA
@pytest.mark.parametrize("layout", ["full", "diagonal", "packed"])
def test_auto_threshold(layout, switch, monkeypatch):
    """Under "auto" (the default) the numba loops take a call of at least AUTO_CALL_NUMEL
    pair-scalars (every tile of it, on the tile pool) and leave a smaller one to the eager
    path (the same bits as eager); in a layout of AUTO_NUMBA_SKIP, and for images in the
    diagonal layout below AUTO_CALL_NUMEL, only the chains fold, from AUTO_CHAIN_CALL_NUMEL
    pair-scalars (a threshold the full layout does not have)."""
    from widenets import compute

    readout, cross = LAYOUTS[layout]
    x1 = _images(5, 5, 0)
    x2 = _images(4, 5, 1) if cross else None
    net = _net(readout)
    _fused.FUSED, _fused.BACKEND = False, "auto"
    eager = net.kernel(x1, x2)
    job = compute.prepare_kernel(net, x1, x2)
    assert job.layout == layout
    numel = job.n1 * job.n2 * job.cost
    monkeypatch.setattr(_fused, "AUTO_NUMBA_SKIP", frozenset({"packed"}))
    _fused.FUSED = "auto"
    calls = _spy_loops(monkeypatch)
    chains = []  # the Conv / ReLU runs: the convolutional chain (the GAP chain: full)
    real_chain, real_gap = _conv_chain._evaluate, _gap_chain._evaluate
    monkeypatch.setattr(
        _conv_chain, "_evaluate", lambda *a: chains.append(len(a[1])) or real_chain(*a)
    )
    monkeypatch.setattr(
        _gap_chain, "_evaluate", lambda *a: chains.append(len(a[1])) or real_gap(*a)
    )
    pools = []
    monkeypatch.setattr(compute, "LocalExecutor", lambda w: pools.append(w) or LocalExecutor(w))
    monkeypatch.setattr(compute, "TILE_WORKERS", None)
    monkeypatch.setattr(compute, "others_running", lambda **kw: 0)  # a quiet machine
    packed = layout == "packed"
    chain_only = layout in ("packed", "diagonal")  # the layouts with the chains' threshold
    # below both thresholds (the full layout: the chains' threshold is not its own)
    monkeypatch.setattr(_fused, "AUTO_CALL_NUMEL", 1 if packed else numel + 1)
    monkeypatch.setattr(_fused, "AUTO_CHAIN_CALL_NUMEL", numel + 1 if chain_only else 1)
    below = net.kernel(x1, x2)
    assert calls == {"abrelu": 0, "window": 0} and pools == [1] and not chains
    assert torch.equal(below.nngp, eager.nngp) and torch.equal(below.ntk, eager.ntk)
    if chain_only:  # at the chains' threshold, below the loops': the chain folds (no pool)
        monkeypatch.setattr(_fused, "AUTO_CHAIN_CALL_NUMEL", numel)
        between = net.kernel(x1, x2)
        assert calls == {"abrelu": 0, "window": 0} and pools[-1] == 1
        assert chains and set(chains) == {6} and _fused._failed is None
        for name in ("nngp", "ntk"):
            torch.testing.assert_close(
                getattr(between, name), getattr(eager, name), rtol=1e-13, atol=0
            )
        if packed:  # the per-layer loops stay off at any size
            return
        chains.clear()
    monkeypatch.setattr(_fused, "AUTO_CALL_NUMEL", numel)
    monkeypatch.setattr(_fused, "AUTO_CHAIN_CALL_NUMEL", numel + 1)
    above = net.kernel(x1, x2)
    # (the full layout's network, read out by GlobalAvgPool: the GAP chain)
    assert chains and set(chains) == {6} and _fused._failed is None
    assert pools[-1] == compute.default_workers()
    assert not torch.equal(above.ntk, eager.ntk)
    for name in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(above, name), getattr(eager, name), rtol=1e-13, atol=0)


def test_auto_does_not_import_numba_for_a_small_call(switch, monkeypatch):
    """A small kernel under "auto" neither loads numba nor uses torch.compile."""
    monkeypatch.setattr(_numba, "_state", {})  # as in a fresh process
    _fused.FUSED, _fused.BACKEND = "auto", "auto"

    def boom(*args, **kwargs):
        raise AssertionError("torch.compile called under auto")

    monkeypatch.setattr(torch, "compile", boom)
    _net("gap").kernel(_images(3, 4, 0))
    assert _numba._state == {}
    assert not _fused.takes_loops(_fused.AUTO_CALL_NUMEL - 1, "full")


def test_missing_numba_falls_back_to_eager(switch, monkeypatch):
    """numba not importable: "numba" warns once and computes eagerly (the same bits);
    "auto" picks torch.compile."""
    monkeypatch.setattr(
        _numba, "_state", {"failed": "ModuleNotFoundError: No module named 'numba'"}
    )
    x = _images(3, 4, 0)
    net = _net("vec")
    _fused.FUSED = False
    eager = net.kernel(x)
    _fused.FUSED, _fused.BACKEND = True, "numba"
    with pytest.warns(RuntimeWarning, match="numba is not available"):
        k = net.kernel(x)
    assert torch.equal(k.nngp, eager.nngp) and torch.equal(k.ntk, eager.ntk)
    _fused._failed, _fused.BACKEND = None, "auto"
    assert _fused.backend() == "compile"  # under FUSED True; never under "auto"
    _fused.FUSED = "auto"
    assert not _fused.takes_loops(1 << 40, "full")


@NEEDS_NUMBA
def test_failing_numba_loop_falls_back_to_eager(switch, monkeypatch):
    """An error inside a numba loop (say, a compiler failure) warns once and the kernel is
    the eager one, bit for bit."""
    from widenets import _numba_gap, _numba_loops

    def broken(*args):
        raise RuntimeError("LLVM ERROR: broken")

    monkeypatch.setattr(_numba_loops, "window3", broken)
    monkeypatch.setattr(_numba_gap, "pairs", broken)  # (the GAP chain's loop, tried first)
    x = _images(3, 4, 0)
    net = _net("gap")
    _fused.FUSED = False
    eager = net.kernel(x)
    _fused.FUSED, _fused.BACKEND = True, "numba"
    with pytest.warns(RuntimeWarning, match="LLVM ERROR: broken"):
        k = net.kernel(x)
    assert not _fused.enabled()
    assert torch.equal(k.nngp, eager.nngp) and torch.equal(k.ntk, eager.ntk)


@NEEDS_NUMBA
@pytest.mark.parametrize("readout", ["gap", "vec"])
def test_numba_on_the_tile_pool_equals_one_thread(readout, switch, monkeypatch):
    """Tiles on a pool of three threads call the numba loops concurrently (numba's count
    per calling thread, a threadsafe layer or serialised calls): the same bits as one."""
    from widenets import compute

    _fused.FUSED, _fused.BACKEND = True, "numba"
    x = _images(12, 5, 4)
    net = _net(readout)
    monkeypatch.setattr(compute, "TILE_WORKERS", 1)
    ref = net.kernel(x)
    monkeypatch.setattr(compute, "TILE_WORKERS", 3)
    monkeypatch.setattr(compute, "MIN_TASK_NUMEL", 1)  # many small tiles
    got = net.kernel(x, batch_size=(3, 3))
    assert _fused._failed is None
    assert torch.equal(got.nngp, ref.nngp) and torch.equal(got.ntk, ref.ntk)


def test_bad_backend(switch):
    _fused.FUSED, _fused.BACKEND = True, "cuda"
    with pytest.raises(ValueError, match="auto, numba or compile; got 'cuda'"):
        _fused.backend()


def _factors(shape1, shape2, shape, dtype, seed):
    """Random variances broadcasting like a layout, an nngp within Cauchy-Schwarz (with
    exact +-1 correlations sprinkled in) and an NTK; the eager map's four root factors."""
    g = torch.Generator().manual_seed(seed)
    q1 = torch.rand(shape1, generator=g, dtype=torch.float64) + 0.5
    q2 = torch.rand(shape2, generator=g, dtype=torch.float64) + 0.5
    s = (q1 * q2).sqrt().expand(shape)
    c = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    c.view(-1)[::7] = 1.0
    c.view(-1)[3::11] = -1.0
    nngp = (c * s).to(dtype)
    ntk = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    q1, q2 = q1.to(dtype), q2.to(dtype)
    return nngp, ntk, q1, q2, s.to(dtype)


SHAPES = {
    "diagonal": ((6, 1, 4, 3), (1, 5, 4, 3), (6, 5, 4, 3)),
    "packed": ((7, 1, 4, 3), (7, 1, 4, 3), (7, 1, 4, 3)),
    "full": ((3, 1, 4, 1, 2, 1), (1, 2, 1, 4, 1, 2), (3, 2, 4, 4, 2, 2)),
    "dense": ((9, 1), (1, 8), (9, 8)),
}


FAST_MAPS = {("full", torch.float64, (0.0, 1.0)), ("diagonal", torch.float32, (-0.3, 1.2))}


@pytest.mark.parametrize(
    "layout, dtype, ab",
    [
        pytest.param(layout, dtype, ab, marks=() if (layout, dtype, ab) in FAST_MAPS else SLOW)
        for layout in SHAPES
        for dtype in (torch.float64, torch.float32)
        for ab in ((0.0, 1.0), (-0.3, 1.2))
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_pair_map_equals_eager(layout, dtype, ab, backend, switch):
    """Relative to the scale sqrt(q1 q2) of each entry (the map's output is of that size;
    near c = -1 both paths cancel sin(phi) - phi cos(phi), so a relative bound per entry
    would measure the cancellation, not the loop): 1e-13 in float64, a few ulp in float32."""
    nngp, ntk, q1, q2, s = _factors(*SHAPES[layout], dtype, seed=3)
    layer = ABRelu(*ab)
    f1, f2 = layer._root_factors(q1), layer._root_factors(q2)
    factors = f1[0], f2[1], f1[2], f2[3]
    _fused.FUSED, _fused.BACKEND = True, backend
    if backend == "numba" and layout == "full":
        # numba takes widenets' memory order of full tiles, (n1, H, W, n2, H', W'), and
        # leaves others (more than three runs of axes) to the eager path
        assert _fused.abrelu_pair(layer.a, layer.b, nngp, ntk, *factors) is None
        nngp, ntk = (t.permute(0, 2, 4, 1, 3, 5).contiguous() for t in (nngp, ntk))
        nngp, ntk = (t.permute(0, 3, 1, 4, 2, 5) for t in (nngp, ntk))
    got = _fused.abrelu_pair(layer.a, layer.b, nngp, ntk, *factors)
    assert got is not None, _fused._failed
    out, dot = layer._pair_from_roots(nngp, *factors, True)
    tol = 1e-13 if dtype == torch.float64 else 8 * torch.finfo(dtype).eps
    assert ((got[0] - out).abs() / s).max().item() <= tol
    assert ((got[1] - ntk * dot).abs() / ntk.abs().clamp_min(1e-3)).max().item() <= tol
    # the NNGP alone (no NTK) takes the same loop
    only = _fused.abrelu_pair(layer.a, layer.b, nngp, None, *factors)
    assert only[1] is None
    assert ((only[0] - out).abs() / s).max().item() <= tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_angles_are_closed_forms(backend, switch):
    """c = 1 gives K' = q/2 and Kdot = 1/2 for ReLU; c = -1 gives 0 and 0 (snapped angles)."""
    q = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    nngp = torch.tensor([[2.0, -3.0]], dtype=torch.float64)
    layer = wn.Relu()
    f = layer._root_factors(q)
    _fused.FUSED, _fused.BACKEND = True, backend
    out, ntk = _fused.abrelu_pair(0.0, 1.0, nngp, torch.ones_like(nngp), f[0], f[1], f[2], f[3])
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(ntk, torch.tensor([[0.5, 0.0]], dtype=torch.float64))


def test_autograd_takes_the_eager_path(switch, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the fused loop was called on tensors autograd records")

    monkeypatch.setattr(_fused, "abrelu_pair", boom)
    _fused.FUSED = True
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    net = wn.serial(wn.Dense(3, w_std=w, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=1.0))
    k = net.kernel(_images(3, 2, 0).reshape(3, -1))
    k.nngp.sum().backward()
    assert w.grad is not None and math.isfinite(w.grad.item())


def test_off_and_cuda_are_not_usable(switch):
    x = torch.ones(2, dtype=torch.float64)
    _fused.FUSED = False
    assert not _fused.usable(x)
    _fused.FUSED = "auto"  # only within calls that take the loops
    big = torch.ones(_fused.AUTO_NUMEL, dtype=torch.float64)
    assert not _fused.usable(x) and not _fused.usable(big)
    with _fused.call(_fused.AUTO_CALL_NUMEL - 1, "full"):
        assert not _fused.usable(big)
    if HAVE_NUMBA:  # numba: every tile of a large call, whatever its size
        with _fused.call(_fused.AUTO_CALL_NUMEL, "full"):
            assert _fused.usable(big) and _fused.usable(x)
        with _fused.call(_fused.AUTO_CALL_NUMEL, "packed"):
            assert not _fused.usable(big)
    _fused.BACKEND = "compile"  # torch.compile under "auto": only when asked, large tiles
    with _fused.call(_fused.AUTO_COMPILE_CALL_NUMEL - 1, "full"):
        assert not _fused.usable(big)
    with _fused.call(_fused.AUTO_COMPILE_CALL_NUMEL, "full"):
        assert _fused.usable(big) and not _fused.usable(x)
    assert not _fused.usable(big)
    _fused.FUSED = True
    assert _fused.usable(x)
    assert not _fused.usable(x.to(torch.float16))
    if torch.cuda.is_available():
        assert not _fused.usable(x.cuda())


def test_failed_compilation_falls_back_to_eager(switch, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(_fused, "_compiled", {})
    monkeypatch.setattr(_fused, "_ready", set())
    x = _images(3, 4, 0)
    net = _net("vec")
    _fused.FUSED = False
    eager = net.kernel(x)
    _fused.FUSED, _fused.BACKEND = True, "compile"
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        k = net.kernel(x)
    assert _fused._failed is not None and not _fused.enabled()
    assert torch.equal(k.nngp, eager.nngp) and torch.equal(k.ntk, eager.ntk)


@pytest.mark.parametrize("value", ["maybe", 2])
def test_bad_switch(value, switch):
    _fused.FUSED = value
    with pytest.raises(ValueError, match="auto, on or off"):
        _fused.enabled()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiles_and_variances_bit_for_bit(backend, switch):
    """Fused: a kernel in small tiles equals it in one, bit for bit, and the diagonal of a
    set with itself is its variances, bit for bit (both by the compiled loop)."""
    _fused.FUSED, _fused.BACKEND = True, backend
    net = wn.serial(wn.Conv(3, (3, 3), w_std=1.4, b_std=0.1), wn.Relu(), wn.Flatten())
    x = _images(9, 5, 2)
    tiled, whole = net.kernel(x, batch_size=(4, 3)), net.kernel(x)
    for name in ("nngp", "ntk", "cov1"):
        assert torch.equal(getattr(tiled, name), getattr(whole, name)), name
    assert torch.equal(torch.diagonal(whole.nngp), whole.cov1)
