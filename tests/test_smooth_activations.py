"""Smooth activations (Tanh, Sigmoid, Swish/SiLU, Softplus, Mish): quadrature kernels against
an independent reference, nested adaptive quadrature (scipy ``quad``, split where the
integrand is steep) of functions written here with ``math``, to 1e-8 at pre-activation
variances up to 10 and correlations up to +-1."""

import math
import warnings

import pytest
import torch
from scipy.integrate import quad

import widenets as wn

L = 12.0
SQ = 1.0 / math.sqrt(2.0 * math.pi)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _sp(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


# (layer, phi, phi') with phi' differentiated by hand
CASES = {
    "Tanh": (wn.Tanh(), math.tanh, lambda x: 1.0 / math.cosh(x) ** 2),
    "Sigmoid": (wn.Sigmoid(), _sig, lambda x: _sig(x) * _sig(-x)),
    "Silu": (wn.Silu(), lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * _sig(-x))),
    "Swish": (
        wn.Swish(beta=2.0),
        lambda x: x * _sig(2 * x),
        lambda x: _sig(2 * x) * (1 + 2 * x * _sig(-2 * x)),
    ),
    "Softplus": (wn.Softplus(beta=0.5), lambda x: 2 * _sp(x / 2), lambda x: _sig(x / 2)),
    "Mish": (
        wn.Mish(),
        lambda x: x * math.tanh(_sp(x)),
        lambda x: math.tanh(_sp(x)) + x * _sig(x) / math.cosh(_sp(x)) ** 2,
    ),
}


def _gauss(f, lo, hi):
    with warnings.catch_warnings():  # quad's round-off notice near 1e-15 absolute error
        warnings.simplefilter("ignore")
        return quad(
            lambda z: f(z) * math.exp(-z * z / 2) * SQ,
            lo,
            hi,
            epsabs=1e-15,
            epsrel=1e-13,
            limit=200,
        )[0]


def reference(f, q1, q2, c):
    """E[f(u) f(v)], u = sqrt(q1) z1, v = sqrt(q2)(c z1 + s z2), nested adaptive quadrature
    split at z1 = 0 and where v = 0 (the activations change fastest near 0)."""
    s, a, b = math.sqrt(max(1 - c * c, 0.0)), math.sqrt(q1), math.sqrt(q2)

    def inner(z1):
        if s == 0.0:
            return f(b * c * z1)
        t = min(max(-c * z1 / s, -L), L)
        g = lambda z2: f(b * (c * z1 + s * z2))  # noqa: E731
        return _gauss(g, -L, t) + _gauss(g, t, L)

    h = lambda z1: f(a * z1) * inner(z1)  # noqa: E731
    return _gauss(h, -L, 0.0) + _gauss(h, 0.0, L)


def _pair(layer, q1, q2, c):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    out, dot = layer.pair(t(c * math.sqrt(q1 * q2)), t(q1), t(q2), True)
    return out.item(), dot.item()


FAST_POINTS = [(10.0, 10.0, -0.9999), (10.0, 10.0, 1.0), (10.0, 2.0, 0.6)]
SLOW_POINTS = [
    (10.0, 10.0, -1.0),
    (10.0, 10.0, 0.999),
    (0.3, 10.0, -0.5),
    (1.0, 1.0, 0.0),
    (5.0, 7.0, 0.99999),
]


def _check(name, points):
    layer, f, df = CASES[name]
    for q1, q2, c in points:
        out, dot = _pair(layer, q1, q2, c)
        assert abs(out - reference(f, q1, q2, c)) < 1e-8, (name, q1, q2, c)
        assert abs(dot - reference(df, q1, q2, c)) < 1e-8, (name, q1, q2, c)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_adaptive_quadrature_to_1e8(name):
    _check(name, FAST_POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_adaptive_quadrature_to_1e8_more_points(name):
    _check(name, SLOW_POINTS)


@pytest.mark.parametrize("name", list(CASES))
def test_finite_face_and_derivative_are_the_functions(name):
    layer, f, df = CASES[name]
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    module = wn.serial(wn.Dense(3), layer).build((2,), seed=0)[1]
    assert torch.allclose(
        module(x),
        torch.tensor([f(v) for v in x.tolist()], dtype=torch.float64),
        rtol=1e-13,
        atol=1e-14,
    )
    assert torch.allclose(
        layer.derivative(x),
        torch.tensor([df(v) for v in x.tolist()], dtype=torch.float64),
        rtol=1e-12,
        atol=1e-14,
    )


def test_panels_converge_and_the_default_is_converged():
    """Fewer panels are visibly worse at q = 10 (the rule is not exact), the default is not."""
    layer, f, _ = CASES["Tanh"]
    ref = reference(f, 10.0, 10.0, 0.999)
    coarse = abs(_pair(wn.Tanh(panels=4), 10.0, 10.0, 0.999)[0] - ref)
    fine = abs(_pair(layer, 10.0, 10.0, 0.999)[0] - ref)
    assert coarse > 1e-6 and fine < 1e-10


def test_declared_hyperparameters_and_errors():
    assert wn.Swish(beta=1.5) == wn.Swish(beta=1.5) and wn.Swish() != wn.Swish(beta=2.0)
    assert hash(wn.Tanh()) == hash(wn.Tanh())
    assert repr(wn.Softplus(beta=2.0)) == "Softplus(beta=2.0)"
    with pytest.raises(ValueError, match="`panels`"):
        wn.Tanh(panels=0)
    with pytest.raises(ValueError, match="`beta`"):
        wn.Softplus(beta=-1.0)


def test_network_kernel_diagonal_and_symmetry():
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    net = wn.serial(wn.Dense(8, w_std=2.0, b_std=0.3), wn.Mish(), wn.Dense(1))
    k = net.kernel(x)
    assert torch.equal(k.nngp, k.nngp.T)
    assert torch.isfinite(k.ntk).all()


def test_elementwise_panels_rule_converges_where_gauss_hermite_stalls():
    """Elementwise(fn, panels=...) uses the same composite rule: at q = 10 on tanh it meets
    the reference to 1e-8 where the default 128-point Gauss-Hermite rule is off by > 1e-5;
    on ReLU (kink at 0) it is closer to the arc-cosine kernel than the Hermite rule."""
    _, f, _ = CASES["Tanh"]
    ref = reference(f, 10.0, 10.0, 0.999)
    assert abs(_pair(wn.Elementwise(torch.tanh, panels=16), 10.0, 10.0, 0.999)[0] - ref) < 1e-8
    assert abs(_pair(wn.Elementwise(torch.tanh), 10.0, 10.0, 0.999)[0] - ref) > 1e-5
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def err(act):
        net = wn.serial(wn.Dense(4, w_std=1.5, b_std=0.1), act, wn.Dense(1, w_std=1.5))
        exact, approx = wn.serial(net.layers[0], wn.Relu(), net.layers[2]).kernel(x), net.kernel(x)
        return (exact.nngp - approx.nngp).abs().max() / exact.nngp.abs().max()

    assert err(wn.Elementwise(torch.relu, panels=16)) < err(wn.Elementwise(torch.relu)) / 10


def test_elementwise_degree_is_capped_where_hermite_weights_overflow():
    with pytest.raises(ValueError, match="`degree` must be at most 360"):
        wn.Elementwise(torch.tanh, degree=400)
    assert repr(wn.Elementwise(torch.tanh, panels=4)) == "Elementwise(tanh, panels=4)"
