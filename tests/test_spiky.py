"""Spiky-smooth activation and kernel ("Mind the spikes", Haas et al. 2023).

The activation's kernel is exact (arc-cosine + Gaussian integrals + a Dawson-function cross
term). Gauss-Hermite quadrature (``Elementwise``) converges only algebraically across the
ReLU kink (about 3e-4 at degree 256), so the 1e-8 comparison is made term by term: the
sine-sine term against ``Elementwise`` on the (smooth) sine, and the ReLU-sine cross terms
against an adaptive quadrature split at the kink (scipy ``quad`` on z1 > 0, Gauss-Hermite
in the smooth direction). The whole kernel is also checked against ``Elementwise`` at its
own accuracy, and against Monte-Carlo of finite networks.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import widenets as wn

CASES = [(0.3, 3.0, math.pi / 4), (0.1, 7.0, 0.3), (0.5, 1.5, -1.0)]


def _grid():
    q1 = torch.tensor([[1.2], [0.4]], dtype=torch.float64)
    q2 = torch.tensor([[1.0, 2.1, 0.7]], dtype=torch.float64)
    c = torch.tensor([[0.3, -0.5, 0.9], [0.99, -0.2, 0.0]], dtype=torch.float64)
    return c * (q1 * q2).sqrt(), q1, q2


def _cross_quad(k, qa, qb, a, w, p):
    """E[relu(u) a sin(w v + p)] and E[1{u>0} a w cos(w v + p)] by split quadrature."""
    z, wts = np.polynomial.hermite_e.hermegauss(200)
    wts = wts / wts.sum()
    c = k / math.sqrt(qa * qb)
    s = math.sqrt(max(1 - c * c, 0.0))

    def inner(z1, g):
        return float(np.sum(wts * g(math.sqrt(qb) * (c * z1 + s * z))))

    def dens(z1):
        return math.exp(-z1 * z1 / 2) / math.sqrt(2 * math.pi)

    def f(z1):
        return dens(z1) * math.sqrt(qa) * z1 * inner(z1, lambda v: a * np.sin(w * v + p))

    def fd(z1):
        return dens(z1) * inner(z1, lambda v: a * w * np.cos(w * v + p))

    opts = dict(epsabs=1e-14, epsrel=1e-13, limit=400)
    return integrate.quad(f, 0, np.inf, **opts)[0], integrate.quad(fd, 0, np.inf, **opts)[0]


@pytest.mark.parametrize("a,w,p", CASES)
def test_terms_against_quadrature_to_1e8(a, w, p):
    k, q1, q2 = _grid()
    act = wn.SpikySmooth(a, w, p)
    # sine-sine: Elementwise on the smooth sine is spectrally accurate
    sin_q = wn.Elementwise(lambda x: a * torch.sin(w * x + p), degree=160)
    ss, sdot = act._sin.pair(k, q1, q2, True)
    qs, qdot = sin_q.pair(k, q1, q2, True)
    torch.testing.assert_close(ss, qs, rtol=0, atol=1e-8)
    torch.testing.assert_close(sdot, qdot, rtol=0, atol=1e-8)
    # cross terms: split quadrature at the kink
    c12, d12 = act._cross(k, q1, q2, True)
    c21, d21 = act._cross(k, q2, q1, True)
    for i in range(2):
        for j in range(3):
            v, dv = _cross_quad(float(k[i, j]), float(q1[i, 0]), float(q2[0, j]), a, w, p)
            assert abs(float(c12[i, j]) - v) < 1e-8 and abs(float(d12[i, j]) - dv) < 1e-8
            v, dv = _cross_quad(float(k[i, j]), float(q2[0, j]), float(q1[i, 0]), a, w, p)
            assert abs(float(c21[i, j]) - v) < 1e-8 and abs(float(d21[i, j]) - dv) < 1e-8
    # the whole kernel = relu closed form + these terms
    out, dot = act.pair(k, q1, q2, True)
    rr, rdot = wn.Relu().pair(k, q1, q2, True)
    torch.testing.assert_close(out, rr + ss + c12 + c21, rtol=0, atol=1e-14)
    torch.testing.assert_close(dot, rdot + sdot + d12 + d21, rtol=0, atol=1e-14)


def test_whole_kernel_against_elementwise_converges():
    k, q1, q2 = _grid()
    act = wn.SpikySmooth(0.3, 3.0)
    out, dot = act.pair(k, q1, q2, True)
    errs = []
    for degree in (32, 128):
        qo, qd = wn.Elementwise(act.fn, degree=degree).pair(k, q1, q2, True)
        errs.append(max((qo - out).abs().max().item(), (qd - dot).abs().max().item()))
    assert errs[1] < errs[0] / 2.5 and errs[1] < 5e-3, errs


def test_spike_part_is_a_gaussian_kernel_of_the_preactivations():
    """With phase pi/4 the sine part is (a^2 / 2) exp(-w^2 E(u - v)^2 / 2)."""
    k, q1, q2 = _grid()
    a, w = 0.2, 5.0
    ss, _ = wn.SpikySmooth(a, w)._sin.pair(k, q1, q2, False)
    torch.testing.assert_close(ss, a * a / 2 * torch.exp(-(w * w) / 2 * (q1 + q2 - 2 * k)))


def test_against_monte_carlo_of_finite_networks(inputs):
    x = inputs[:4]
    x = x / x.pow(2).mean(1, keepdim=True).sqrt()
    errs = {}
    for width in (64, 512):  # the standard error shrinks ~2.8x (see test_monte_carlo.py)
        net = wn.serial(
            wn.Dense(width, w_std=1.2, b_std=0.1),
            wn.SpikySmooth(0.3, 3.0),
            wn.Dense(width, w_std=1.1, b_std=0.2),
        )
        k = net.kernel(x)
        mc = wn.empirical.monte_carlo(net, x, n_samples=24, seed=3)
        for name in ("nngp", "ntk"):
            exact, est, se = getattr(k, name), getattr(mc, name), getattr(mc, name + "_se")
            assert ((est - exact).abs() / se).max() < 5.0, (name, width)
            errs[(name, width)] = (se.mean() / exact.abs().mean()).item()
    for name in ("nngp", "ntk"):
        assert errs[(name, 512)] < errs[(name, 64)] / 1.6, errs


def test_spiky_smooth_kernel():
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(5, 2, generator=g, dtype=torch.float64)
    x2 = torch.rand(3, 2, generator=g, dtype=torch.float64)
    net = wn.serial(wn.Dense(8, b_std=0.1), wn.Relu(), wn.Dense(1))
    k = net.kernel(x1, x2)
    out = wn.spiky_smooth_kernel(k, x1, x2, rho=0.5, gamma=0.1)
    d = torch.cdist(x1, x2)
    torch.testing.assert_close(out.ntk, k.ntk + 0.5 * torch.exp(-(d**2) / 0.01))
    torch.testing.assert_close(out.nngp, k.nngp + 0.5 * torch.exp(-(d**2) / 0.01))
    lap = wn.spiky_smooth_kernel(k.ntk, x1, x2, rho=0.5, gamma=0.1, spike="laplace")
    torch.testing.assert_close(lap, k.ntk + 0.5 * torch.exp(-d / 0.1))
    # on the training set with itself the spike adds rho to the diagonal
    kk = wn.spiky_smooth_kernel(net.kernel(x1), x1, rho=0.5, gamma=1e-4)
    torch.testing.assert_close(kk.ntk.diagonal(), net.kernel(x1).ntk.diagonal() + 0.5)
    with pytest.raises(ValueError, match="gamma"):
        wn.spiky_smooth_kernel(k.ntk, x1, x2, rho=0.5, gamma=0.0)
    with pytest.raises(ValueError, match="rho"):
        wn.spiky_smooth_kernel(k.ntk, x1, x2, rho=-1.0, gamma=0.1)
    with pytest.raises(ValueError, match="spike"):
        wn.spiky_smooth_kernel(k.ntk, x1, x2, rho=1.0, gamma=0.1, spike="cauchy")
    with pytest.raises(ValueError, match="smooth"):
        wn.spiky_smooth_kernel(k.ntk.T, x1, x2, rho=1.0, gamma=0.1)


def test_example_spiky_estimators_overfit_benignly():
    """examples/spiky_smooth.py at a reduced size: all ridgeless estimators interpolate; the
    spiky ones generalise like the ridge reference, the plain ReLU NTK does not."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "spiky_smooth.py"
    spec = importlib.util.spec_from_file_location("spiky_smooth_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(n_train=200, n_test=400, seed=1, verbose=False)
    relu_train, relu_test = res["ReLU NTK, ridgeless"]
    ref_test = res["ReLU NTK, ridge 0.1 (reference)"][1]
    for name in ("spiky-smooth kernel, ridgeless", "spiky-smooth activation NTK, ridgeless"):
        train, test = res[name]
        assert train < 1e-10, (name, train)
        assert test < relu_test / 2.5, (name, test, relu_test)
        assert test < 1.3 * ref_test, (name, test, ref_test)
    assert relu_train < 1e-10
