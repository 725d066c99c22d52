"""Skinny products K V by the numba loop (widenets.predict._skinny) against torch's, and
PCG with and without them."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import widenets as wn
from widenets.predict import DenseKernel, RowFunctionKernel, _skinny, gp_mean_pcg
from widenets.predict.preconditioners import LowRankPreconditioner

# the loop's tests; the others also check the torch fallback where numba is missing
needs_numba = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed"
)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def spd(n, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n + 3, generator=gen, dtype=torch.float64)
    return (a @ a.T / n).to(dtype)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (517, 301), (1030, 1030), (2053, 197)])
@pytest.mark.parametrize("r", [1, 3, 4, 10])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_products_equal_torch(dtype, shape, r, threads):
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(shape[1], r, generator=gen, dtype=torch.float64)
    out = _skinny.matmul(k, v, threads)
    assert out is not None and out.dtype == torch.float64 and out.shape == (shape[0], r)
    ref = k.to(torch.float64) @ v
    assert rel(out, ref) < 1e-13


@needs_numba
def test_non_contiguous_inputs_and_out():
    gen = torch.Generator().manual_seed(2)
    big = torch.randn(1200, 900, generator=gen, dtype=torch.float64)
    k = big[100:1100:2, 50:850]  # rows with gaps between them, unit column stride
    v = torch.randn(10, 800, generator=gen, dtype=torch.float64).T  # a transposed view
    out = torch.full((500, 10), float("nan"), dtype=torch.float64)
    assert _skinny.matmul(k, v, 2, out=out) is out
    assert rel(out, k @ v) < 1e-13
    assert _skinny.matmul(big.T, v[:900], 2) is None  # columns not contiguous: torch's
    assert _skinny.matmul(k.to(torch.float16), v, 2) is None


@needs_numba
def test_nan_reaches_the_product():
    k = spd(600)
    k[5, 7] = float("nan")
    out = _skinny.matmul(k, torch.ones(600, 3, dtype=torch.float64), 2)
    assert bool(out[5].isnan().all()) and bool(out[:5].isfinite().all())


def test_switched_off_by_the_environment(monkeypatch):
    k = spd(300)
    v = torch.randn(300, 4, dtype=torch.float64)
    monkeypatch.setenv(_skinny.ENV, "off")
    assert not _skinny.enabled() and _skinny.matmul(k, v) is None
    assert not DenseKernel(k).skinny_products()
    pre = LowRankPreconditioner(k[:, :20], 0.1)
    assert not pre._skinny
    assert torch.equal(DenseKernel(k).matmul(v), k @ v)  # torch's product, the same bits
    assert torch.equal(pre(v), LowRankPreconditioner(k[:, :20], 0.1)(v))


@needs_numba
def test_switched_on_by_default(monkeypatch):
    monkeypatch.delenv(_skinny.ENV, raising=False)
    assert _skinny.enabled() and DenseKernel(spd(10)).skinny_products()


@needs_numba
def test_operators_and_preconditioner_use_it_and_agree_with_torch():
    k = spd(900)
    v = torch.randn(900, 10, dtype=torch.float64)
    assert rel(DenseKernel(k).matmul(v), k @ v) < 1e-13
    assert rel(DenseKernel(k).matmul(v[:, 0]), k @ v[:, 0]) < 1e-13
    assert rel(DenseKernel(k.float()).matmul(v), k.float().double() @ v) < 1e-13
    rows = RowFunctionKernel(lambda s, e: k[s:e], k.shape, block_rows=128)
    assert rel(rows.matmul(v), k @ v) < 1e-13
    assert rel(rows.matmul(v, workers=2), k @ v) < 1e-13
    f = k[:, :40]
    pre = LowRankPreconditioner(f, 0.3)
    assert pre._skinny
    dense = torch.linalg.solve(f @ f.T + 0.3 * torch.eye(900, dtype=torch.float64), v)
    assert rel(pre(v), dense) < 1e-10


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("r", "n", "cols", "threads"),
    [(750, 3000, 10, 2), (13, 1030, 1, 2), (5, 7, 3, 1), (0, 9, 2, 2)],
)
def test_t_matmul_agrees_with_torch(dtype, r, n, cols, threads):
    gen = torch.Generator().manual_seed(r + n)
    ft = torch.randn(r, n, generator=gen, dtype=torch.float64).to(dtype)
    c = torch.randn(r, cols, generator=gen, dtype=torch.float64)
    out = _skinny.t_matmul(ft, c, threads)
    assert out.shape == (n, cols) and out.dtype == torch.float64
    ref = ft.double().T @ c
    assert float((out - ref).norm()) <= 1e-13 * max(float(ref.norm()), 1.0)


@needs_numba
def test_t_matmul_declines_what_it_cannot_read():
    c = torch.ones(4, 2, dtype=torch.float64)
    assert _skinny.t_matmul(torch.ones(6, 4, dtype=torch.float64).T, c) is None  # strided rows
    assert _skinny.t_matmul(torch.ones(3, 6, dtype=torch.float64), c) is None  # shapes
    assert _skinny.t_matmul(torch.ones(4, 6, dtype=torch.int64), c) is None


def _problem(n=1500):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n + 200, 8, generator=gen, dtype=torch.float64)
    net = wn.architectures.fully_connected(depth=2, b_std=0.1)
    k = net.kernel(x, get="nngp", progress=False).nngp
    y = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).double() - 0.1
    return k[:n, :n].contiguous(), y, k[n:, :n].contiguous()


def test_pcg_predictions_are_the_same_with_and_without_the_loop(monkeypatch):
    k, y, kt = _problem()
    on = gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=200, tol=1e-10)
    monkeypatch.setenv(_skinny.ENV, "off")
    off = gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=200, tol=1e-10)
    assert on.solve.converged and off.solve.converged
    assert abs(on.iterations - off.iterations) <= 1
    # both solves stop at a relative residual of 1e-10: they agree to about that (block
    # CG's directions differ by rounding between the two products)
    assert rel(on.prediction, off.prediction) < 1e-9


@needs_numba
def test_the_solve_takes_the_loop(monkeypatch):
    k, y, kt = _problem(800)
    calls, t_calls = [], []

    def counted(real, log):
        def call(*args, **kwargs):
            out = real(*args, **kwargs)
            log.append(out is not None)
            return out

        return call

    monkeypatch.setattr(_skinny, "matmul", counted(_skinny.matmul, calls))
    monkeypatch.setattr(_skinny, "t_matmul", counted(_skinny.t_matmul, t_calls))
    res = gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=100, tol=1e-6)
    # per iteration: K p and the preconditioner's F^T v; then the residual check and the
    # test product; the preconditioner's F c by t_matmul
    assert all(calls) and len(calls) >= 2 * res.iterations + 2
    assert all(t_calls) and len(t_calls) >= res.iterations


def test_torch_threads_are_restored_after_a_solve():
    k, y, kt = _problem(800)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=100, tol=1e-6)
        assert torch.get_num_threads() == 2
        with _skinny.torch_serial():
            outer = min(2, len(os.sched_getaffinity(0)))
            assert torch.get_num_threads() == 1 and _skinny.threads() == outer
            with _skinny.torch_serial():  # nested: the outer count is kept
                assert _skinny.threads() == outer and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_falls_back_to_torch_when_numba_fails(monkeypatch):
    monkeypatch.setattr(_skinny, "_state", {"failed": "ImportError: no numba"})
    assert not _skinny.enabled() and _skinny.failure() == "ImportError: no numba"
    k, y, kt = _problem(600)
    assert _skinny.matmul(k, y) is None and not DenseKernel(k).skinny_products()
    res = gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=100, tol=1e-8)
    dense = kt @ torch.linalg.solve(k + 1e-2 * k.diagonal().mean() * torch.eye(600), y)
    assert res.solve.converged and rel(res.prediction, dense) < 1e-6


def _dense_mean(k, y, kt, reg):
    n = k.shape[0]
    mu = reg * float(k.diagonal().mean())
    return kt @ torch.linalg.solve(k + mu * torch.eye(n, dtype=k.dtype), y)


@needs_numba
def test_loose_tol_multiplies_by_a_float32_copy_and_checks_with_k(monkeypatch):
    from widenets.predict import pcg

    k, y, kt = _problem()
    calls = []
    real = pcg._Float32Copy.__call__

    def counted(self, p, workers):
        calls.append(self.k32 is None)
        return real(self, p, workers)

    monkeypatch.setattr(pcg._Float32Copy, "__call__", counted)
    res = gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=100, tol=1e-3)
    assert calls and calls[0] and not any(calls[1:])  # the copy made by the first product
    assert len(calls) == res.iterations
    # the residual is recomputed with K itself: the prediction is as close as its tol
    assert res.solve.converged and res.residual <= 1e-3
    assert rel(res.prediction, _dense_mean(k, y, kt, 1e-2)) < 3e-3
    calls.clear()
    gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=100, tol=pcg.FLOAT32_TOL / 2)
    assert not calls  # tighter tol: K itself throughout
    monkeypatch.setattr(pcg, "FLOAT32_TOL", 1.0)
    gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=100, tol=1e-3)
    assert not calls


@needs_numba
def test_float32_pass_below_its_accuracy_is_refined_with_k(monkeypatch):
    """With the copy forced for a tol that float32 cannot reach, the restart with K itself
    still reaches it (the final residual is never the float32 one)."""
    from widenets.predict import pcg

    k, y, kt = _problem()
    monkeypatch.setattr(pcg, "FLOAT32_TOL", 0.0)
    res = gp_mean_pcg(k, y, kt, diag_reg=1e-3, rank=200, tol=1e-10, max_iter=2000)
    assert res.solve.converged and res.residual <= 1e-10
    assert rel(res.prediction, _dense_mean(k, y, kt, 1e-3)) < 1e-8
