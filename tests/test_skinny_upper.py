"""K V from the upper triangle of a symmetric K (widenets.predict._skinny_upper) against
torch's k @ v, and PCG's float32 pass taking it only for a kernel that looks symmetric."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from widenets.predict import _skinny_upper, gp_mean_pcg, pcg

needs_numba = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed"
)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def sym(n, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n + 3, generator=gen, dtype=torch.float64)
    k = a @ a.T / n
    return ((k + k.T) / 2).to(dtype)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [1, 3, 5, 263, 1030])
@pytest.mark.parametrize("r", [1, 3, 10])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_upper_product_equals_torch_and_reads_the_upper_triangle_only(dtype, n, r, threads):
    k = sym(n, dtype)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(n, r, generator=gen, dtype=torch.float64)
    ref = k.to(torch.float64) @ v
    garbage = k.clone()  # the lower triangle replaced by NaN: never read
    garbage[torch.tril(torch.ones(n, n, dtype=torch.bool), -1)] = float("nan")
    for sums, bound in ((torch.float64, 1e-13), (torch.float32, 1e-5)):
        cast = torch.full((n, n), float("nan"), dtype=torch.float32)
        out = _skinny_upper.matmul(garbage, v, threads, sums=sums, cast=cast)
        assert out is not None and out.shape == (n, r) and out.dtype == torch.float64
        assert rel(out, ref) < bound
        upper = torch.triu(torch.ones(n, n, dtype=torch.bool))
        assert torch.equal(cast[upper], k.float()[upper])
        assert bool(cast[~upper].isnan().all())  # the lower triangle never written


@needs_numba
def test_width_and_splits_do_not_change_the_product(monkeypatch):
    k, v = sym(517), torch.randn(517, 4, dtype=torch.float64)
    for width in (8, 100, 4096):
        monkeypatch.setattr(_skinny_upper, "WIDTH", width)
        assert rel(_skinny_upper.matmul(k, v, 2), k @ v) < 1e-13
    for n, parts in ((8000, 4), (517, 3), (10, 8), (1, 2)):
        b = _skinny_upper.splits(n, parts)
        assert b[0] == 0 and b[-1] == n and b == sorted(set(b)) and len(b) <= parts + 1
        assert all(x % 4 == 0 for x in b[1:-1])
    b = _skinny_upper.splits(8000, 4)
    areas = [sum(8000 - i for i in range(s, e)) for s, e in zip(b[:-1], b[1:], strict=True)]
    assert max(areas) / min(areas) < 1.01


@needs_numba
def test_declines_what_it_cannot_read():
    k = sym(40)
    v = torch.randn(40, 3, dtype=torch.float64)
    assert _skinny_upper.matmul(k[:, :30], v[:30], 2) is None  # not square
    assert _skinny_upper.matmul(k.T[::2, ::2].T, v[:20], 2) is None  # strided columns
    assert _skinny_upper.matmul(k, v, 2, cast=torch.empty(40, 40, dtype=torch.float64)) is None
    assert _skinny_upper.matmul(k.half(), v, 2) is None


def test_symmetry_check():
    k = sym(300)
    assert _skinny_upper.looks_symmetric(k)
    bumped = k.clone()
    bumped[5, 200] += 1e-3  # in a sampled row
    assert not _skinny_upper.looks_symmetric(bumped)
    assert not _skinny_upper.looks_symmetric(k + 1e-3 * torch.randn(300, 300))
    assert _skinny_upper.looks_symmetric(torch.ones(1, 1))
    assert not _skinny_upper.looks_symmetric(torch.ones(3, 4))


def _problem(n=1200):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n + 100, 12, generator=gen, dtype=torch.float64)
    full = torch.exp(-(torch.cdist(x, x) ** 2) / 24)
    y = torch.nn.functional.one_hot(torch.arange(n) % 5, 5).double() - 0.2
    return full[:n, :n].contiguous(), y, full[n:, :n].contiguous()


def _dense(k, y, kt, reg):
    mu = reg * float(k.diagonal().mean())
    return kt @ torch.linalg.solve(k + mu * torch.eye(k.shape[0], dtype=k.dtype), y)


@needs_numba
def test_float32_pass_takes_the_triangle_for_a_symmetric_kernel_only(monkeypatch):
    calls = []
    real = _skinny_upper.matmul

    def counted(*args, **kwargs):
        calls.append(kwargs.get("sums", torch.float64))
        return real(*args, **kwargs)

    monkeypatch.setattr(_skinny_upper, "matmul", counted)
    k, y, kt = _problem()
    res = gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=100, tol=1e-3)
    # the first product from K (float64 sums), the others from the copy (float32 sums)
    assert len(calls) == res.iterations and calls[0] == torch.float64
    assert all(s == torch.float32 for s in calls[1:])
    assert res.solve.converged and res.residual <= 1e-3
    assert rel(res.prediction, _dense(k, y, kt, 1e-2)) < 3e-3
    calls.clear()
    monkeypatch.setattr(pcg._Float32Copy, "UPPER", False)
    off = gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=100, tol=1e-3)
    # float32 sums on the triangle against float64 sums on the whole copy: the iterations
    # may differ by rounding (43 against 46 seen on this problem under pytest-xdist)
    assert not calls and abs(off.iterations - res.iterations) <= max(1, res.iterations // 8)
    assert rel(off.prediction, res.prediction) < 3e-3
    monkeypatch.setattr(pcg._Float32Copy, "UPPER", True)
    # a non-symmetric kernel: the whole matrix, never the triangle
    gen = torch.Generator().manual_seed(4)
    skew = k + 1e-4 * torch.randn(k.shape, generator=gen, dtype=torch.float64)
    gp_mean_pcg(skew, y, kt, diag_reg=1e-2, rank=100, tol=1e-3, on_no_convergence="warn")
    assert not calls


@needs_numba
def test_float32_triangle_pass_below_its_accuracy_is_refined_with_k(monkeypatch):
    monkeypatch.setattr(pcg, "FLOAT32_TOL", 0.0)
    k, y, kt = _problem()
    res = gp_mean_pcg(k, y, kt, diag_reg=1e-3, rank=200, tol=1e-10, max_iter=2000)
    assert res.solve.converged and res.residual <= 1e-10
    assert rel(res.prediction, _dense(k, y, kt, 1e-3)) < 1e-8
