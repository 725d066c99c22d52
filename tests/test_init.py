"""wn.init: per-layer variance, rank and density as requested; NNGP against Monte-Carlo."""

import math

import pytest
import torch
from torch import nn

import widenets as wn
from widenets import init


def _draw(scheme, shape=(200, 300), seed=0):
    g = torch.Generator().manual_seed(seed)
    return scheme.weight(shape, math.prod(shape[1:]), g, torch.float64)


ALL = [
    init.Gaussian(),
    init.Uniform(),
    init.GeneralizedGaussian(1.0),
    init.GeneralizedGaussian(8.0),
    init.Orthogonal(),
    init.LowRank(10),
    init.LowRank(fraction=0.3),
    init.Sparse(0.1),
    init.Sparse(0.25, block=(8, 16)),
]


@pytest.mark.parametrize("scheme", ALL, ids=repr)
def test_unit_variance_and_zero_mean(scheme):
    # 60000 entries: the sample variance of unit-variance entries has SE <~ 0.03 even for
    # the heaviest tails here (sparse 0.1: kurtosis 30); 6 SE bounds below.
    w = _draw(scheme)
    assert w.shape == (200, 300)
    n = w.numel()
    kurt = float((w**4).mean())
    se_var = math.sqrt(max(kurt - 1, 1e-12) / n)
    assert abs(float(w.var()) - 1) < 6 * se_var + 1e-12
    assert abs(float(w.mean())) < 6 / math.sqrt(n)


def test_tails_of_generalized_gaussian():
    # kurtosis Gamma(5/b) Gamma(1/b) / Gamma(3/b)^2: 6 for Laplace (b=1), 9/5 for uniform
    laplace = _draw(init.GeneralizedGaussian(1.0))
    light = _draw(init.GeneralizedGaussian(50.0))
    assert abs(float((laplace**4).mean()) - 6) < 0.6
    assert abs(float((light**4).mean()) - 1.8) < 0.05


@pytest.mark.parametrize("shape", [(50, 80), (80, 50), (60, 60)])
def test_orthogonal_is_scaled_isometry(shape):
    w = _draw(init.Orthogonal(), shape)
    n = max(shape)
    gram = w @ w.T if shape[0] <= shape[1] else w.T @ w
    eye = torch.eye(min(shape), dtype=w.dtype)
    torch.testing.assert_close(gram / n, eye, atol=1e-12, rtol=0)


def test_low_rank_has_requested_rank():
    assert torch.linalg.matrix_rank(_draw(init.LowRank(7))) == 7
    s = init.LowRank(fraction=0.25)
    assert torch.linalg.matrix_rank(_draw(s, (40, 100))) == 10
    assert torch.linalg.matrix_rank(_draw(init.LowRank(500, clip=True), (40, 100))) == 40


def test_sparse_density_unstructured_and_blocks():
    w = _draw(init.Sparse(0.3), (100, 50))
    assert (w != 0).sum() == 1500
    wb = _draw(init.Sparse(0.5, block=(10, 5)), (100, 50))
    blocks = (wb != 0).reshape(10, 10, 10, 5).any(3).any(1)  # (row block, col block)
    assert blocks.sum() == 50
    # every block is all-zero or all-non-zero
    full = (wb != 0).reshape(10, 10, 10, 5).all(3).all(1)
    assert torch.equal(blocks, full)


def test_bad_input():
    for p in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="density"):
            init.Sparse(p)
    with pytest.raises(ValueError, match="rank"):
        _draw(init.LowRank(301), (400, 300))
    with pytest.raises(ValueError, match="rank.*above the width"):
        wn.serial(wn.Dense(16), wn.Relu(), wn.Dense(16)).build((8,), 0, init=init.LowRank(9))
    with pytest.raises(ValueError, match="fraction"):
        init.LowRank(fraction=0.0)
    with pytest.raises(ValueError, match="beta"):
        init.GeneralizedGaussian(-1)
    with pytest.raises(TypeError, match="scheme"):
        init.apply(nn.Linear(3, 3), "orthogonal")
    with pytest.raises(ValueError, match="alpha"):
        init.scaled(nn.Linear(3, 3), 0.0)


def test_build_uses_scheme_and_keeps_per_layer_variance():
    net = wn.serial(wn.Dense(256, w_std=1.5), wn.Relu(), wn.Dense(128, w_std=1.5))
    model = net.build((64,), seed=0, dtype=torch.float64, init=init.Orthogonal())
    w = model[0].weight
    torch.testing.assert_close(w.T @ w / 256, torch.eye(64, dtype=w.dtype), atol=1e-12, rtol=0)
    sparse = net.build((64,), seed=0, init=init.Sparse(0.25))
    assert abs(float((sparse[2].weight != 0).float().mean()) - 0.25) < 1e-3


def test_apply_to_torch_modules():
    m = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Conv1d(4, 6, 3))
    init.apply(m, init.Orthogonal(), w_std=2.0, b_std=0.0, seed=0)
    w = m[0].weight.detach().double()
    # W = 2 / sqrt(100) * sqrt(200) Q, Q with orthonormal columns
    torch.testing.assert_close(
        w.T @ w, torch.eye(100, dtype=w.dtype) * 4 * 200 / 100, atol=1e-4, rtol=1e-4
    )
    assert float(m[0].bias.detach().abs().max()) == 0.0
    init.apply(m, init.Sparse(0.5), seed=1)
    assert (m[2].weight != 0).sum() == round(0.5 * 6 * 12)
    with pytest.raises(ValueError, match="no layer"):
        init.apply(nn.ReLU(), init.Gaussian())


def test_apply_to_widenets_model_reproduces_build():
    net = wn.serial(wn.Dense(32, 1.3, 0.2), wn.Erf(), wn.Dense(8, 1.3, 0.2))
    a = net.build((5,), dtype=torch.float64, init=init.LowRank(3))
    b = net.build((5,), dtype=torch.float64)
    init.apply(b, init.LowRank(3), seed=0)
    assert torch.linalg.matrix_rank(b[0].weight) == 3
    assert torch.linalg.matrix_rank(a[2].weight) == 3


# ----- Monte-Carlo NNGP of pseudo-IID networks against the analytic NNGP ------------------

PSEUDO = {
    "orthogonal": init.Orthogonal(),
    "lowrank": init.LowRank(fraction=0.25),
    "sparse": init.Sparse(0.2),
    "block": init.Sparse(0.2, block=(4, 4)),
}


@pytest.mark.parametrize("name", list(PSEUDO))
def test_pseudo_iid_nngp_matches_analytic_at_growing_width(name):
    # Nait Saada et al. 2024: these networks converge to the Gaussian-IID NNGP. The wide
    # readout Dense(64) averages 64 output channels per network; 24 networks per width.
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    net = wn.serial(
        wn.Dense(64, 1.5, 0.1), wn.Relu(), wn.Dense(64, 1.5, 0.1), wn.Relu(), wn.Dense(64, 1.5, 0.1)
    )
    exact = net.kernel(x, get="nngp").nngp
    errs = []
    for width in (16, 256):
        mc = wn.empirical.monte_carlo(
            net, x, n_samples=24, width=width, get="nngp", init=PSEUDO[name], seed=1
        )
        errs.append(float((mc.nngp - exact).norm() / exact.norm()))
        if width == 256:
            z = (mc.nngp - exact).abs() / mc.nngp_se
            assert float(z.max()) < 5.0, z  # 16 entries (10 distinct): 5 SE
    assert errs[1] < errs[0]


def test_mean_field_readout_kernel_against_monte_carlo():
    # Readout y = (w / n) W h: NNGP w^2 K / n + b^2 and NTK K' + w^2 Theta / n at fan-in n.
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net = wn.serial(
        wn.Dense(64, 1.4, 0.1), wn.Relu(), wn.Dense(32, 1.2, 0.3, parameterization="mup")
    )
    assert net.layers[2].parameterization == "mean_field"
    k = net.kernel(x)
    ntk_net = wn.serial(wn.Dense(64, 1.4, 0.1), wn.Relu(), wn.Dense(32, 1.2 / 8, 0.3))
    k_ref = ntk_net.kernel(x)  # same maths with w_std / sqrt(64)
    torch.testing.assert_close(k.nngp, k_ref.nngp, rtol=1e-14, atol=0)
    torch.testing.assert_close(k.ntk, k_ref.ntk, rtol=1e-14, atol=0)
    mc = wn.empirical.monte_carlo(net, x, n_samples=48, seed=2)
    for name in ("nngp", "ntk"):
        z = (getattr(mc, name) - getattr(k, name)).abs() / getattr(mc, name + "_se")
        assert float(z.max()) < 5.0, (name, z)
    model = net.build((5,), seed=0)
    assert model[2].weight_scale == pytest.approx(1.2 / 64)
