"""Kernels against closed forms written out independently here, in NumPy."""

import math

import numpy as np
import pytest
import torch

import widenets as wn

W, B = 1.5, 0.1


def _input_gram(x):
    x = x.numpy()
    return x @ x.T / x.shape[1]


def _arccos1(k, q):
    """Cho & Saul's first arc-cosine kernel for ReLU, and the step kernel, in NumPy."""
    s = np.sqrt(np.outer(q, q))
    c = np.clip(k / s, -1, 1)
    th = np.arccos(c)
    return s * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi), (np.pi - th) / (2 * np.pi)


def test_relu_two_layers_against_arccos_kernel_by_hand(inputs):
    net = wn.serial(wn.Dense(8, w_std=W, b_std=B), wn.Relu(), wn.Dense(1, w_std=W, b_std=B))
    k = net.kernel(inputs)
    k1 = W**2 * _input_gram(inputs) + B**2  # first Dense
    theta1 = k1.copy()  # NTK after the first Dense (NTK parameterisation)
    relu, step = _arccos1(k1, np.diag(k1))
    k2 = W**2 * relu + B**2
    theta2 = k2 + W**2 * theta1 * step
    np.testing.assert_allclose(k.nngp.numpy(), k2, rtol=1e-13, atol=0)
    np.testing.assert_allclose(k.ntk.numpy(), theta2, rtol=1e-13, atol=0)
    np.testing.assert_allclose(k.cov1.numpy(), np.diag(k2), rtol=1e-13)


def test_relu_diagonal_is_exact(inputs):
    """An input with itself has c = 1 exactly: the NTK step factor is exactly 1/2."""
    net = wn.serial(wn.Dense(8, w_std=W), wn.Relu(), wn.Dense(1, w_std=W))
    k = net.kernel(inputs)
    q1 = W**2 * (inputs**2).mean(1)
    np.testing.assert_allclose(torch.diagonal(k.nngp).numpy(), (W**2 * q1 / 2).numpy(), rtol=1e-15)
    np.testing.assert_allclose(
        torch.diagonal(k.ntk).numpy(), (W**2 * q1 / 2 + W**2 * q1 / 2).numpy(), rtol=1e-15
    )


def test_relu_of_opposite_inputs_is_exactly_zero(inputs):
    """x and -x have c = -1: E[relu(u) relu(-u)] = 0 and the step factor is 0, so with no
    biases both kernels of the pair vanish exactly."""
    x = torch.cat([inputs, -inputs])
    net = wn.serial(wn.Dense(8, w_std=W), wn.Relu(), wn.Dense(1, w_std=W))
    k = net.kernel(x)
    n = len(inputs)
    for t in (k.nngp, k.ntk):
        assert torch.equal(torch.diagonal(t[:n, n:]), torch.zeros(n, dtype=t.dtype))
        assert (torch.diagonal(t[:n, :n]) > 0).all()


def test_erf_against_arcsine_kernel(inputs):
    net = wn.serial(wn.Dense(8, w_std=W, b_std=B), wn.Erf(), wn.Dense(1, w_std=W, b_std=B))
    k = net.kernel(inputs)
    k1 = W**2 * _input_gram(inputs) + B**2
    q = np.diag(k1)
    d = np.sqrt(np.outer(1 + 2 * q, 1 + 2 * q))
    erf = 2 / np.pi * np.arcsin(2 * k1 / d)
    dot = 4 / np.pi / np.sqrt(np.outer(1 + 2 * q, 1 + 2 * q) - 4 * k1**2)
    np.testing.assert_allclose(k.nngp.numpy(), W**2 * erf + B**2, rtol=1e-13)
    np.testing.assert_allclose(k.ntk.numpy(), W**2 * erf + B**2 + W**2 * k1 * dot, rtol=1e-12)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_linear_network_exactly(inputs, parameterization):
    widths = (6, 9, 3)
    net = wn.serial(
        *[wn.Dense(n, w_std=W, b_std=B, parameterization=parameterization) for n in widths]
    )
    k = net.kernel(inputs)
    g = _input_gram(inputs)
    nngp, ntk, width_in = g, np.zeros_like(g), inputs.shape[1]
    for n in widths:
        new = W**2 * nngp + B**2
        if parameterization == "ntk":
            ntk = new + W**2 * ntk
        else:  # gradients of W (fan_in * K) and of the bias (1)
            ntk = width_in * nngp + 1.0 + W**2 * ntk
        nngp, width_in = new, n
    np.testing.assert_allclose(k.nngp.numpy(), nngp, rtol=1e-13)
    np.testing.assert_allclose(k.ntk.numpy(), ntk, rtol=1e-13)


def test_identity_activation_is_linear(inputs):
    a = wn.serial(wn.Dense(5, w_std=W, b_std=B), wn.Identity(), wn.Dense(1, w_std=W)).kernel(inputs)
    b = wn.serial(wn.Dense(5, w_std=W, b_std=B), wn.Dense(1, w_std=W)).kernel(inputs)
    torch.testing.assert_close(a.ntk, b.ntk, rtol=0, atol=0)


def _two_layer(act):
    return wn.serial(wn.Dense(8, w_std=1.5, b_std=0.1), act, wn.Dense(1, w_std=1.1, b_std=0.1))


@pytest.fixture
def unit_inputs(inputs):
    """Inputs of mean-square 1 per example: pre-activation variances about 2.3 below."""
    return inputs / inputs.pow(2).mean(1, keepdim=True).sqrt()


@pytest.mark.parametrize(
    "exact, fn",
    [
        (wn.Erf(), torch.erf),
        (wn.Erf(a=0.7, b=0.8, c=0.2), lambda x: 0.7 * torch.erf(0.8 * x) + 0.2),
        (wn.Gelu(), torch.nn.functional.gelu),
        (wn.Sin(), torch.sin),
        (wn.Sin(amplitude=0.8, frequency=1.7, phase=0.3), lambda x: 0.8 * torch.sin(1.7 * x + 0.3)),
        (wn.Cos(), torch.cos),
        (wn.Gaussian(a=1.0, b=-0.5), lambda x: torch.exp(-0.5 * x * x)),
        (wn.Monomial(2), lambda x: x**2),
        (wn.Monomial(3), lambda x: x**3),
    ],
    ids=["erf", "erf-abc", "gelu", "sin", "sin-afp", "cos", "gaussian", "x^2", "x^3"],
)
def test_default_quadrature_matches_smooth_closed_forms_to_1e8(unit_inputs, exact, fn):
    """Gauss-Hermite at its default degree agrees with the exact kernels of smooth functions
    (pre-activation variance about 2.3; the error grows with the variance)."""
    k_exact = _two_layer(exact).kernel(unit_inputs)
    k_quad = _two_layer(wn.Elementwise(fn)).kernel(unit_inputs)
    for name in ("nngp", "ntk"):
        a, b = getattr(k_exact, name), getattr(k_quad, name)
        err = ((a - b).abs() / a.abs().max()).max().item()
        assert err < 1e-8, (name, err)


def test_gelu_derivative_kernel_matches_finite_difference_of_nngp():
    """Kdot = dK'/dK (Price's theorem), checked by central differences of the closed form."""
    act = wn.Gelu()
    q1, q2 = torch.tensor([[1.3]], dtype=torch.float64), torch.tensor([[0.7]], dtype=torch.float64)
    k = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64).view(1, -1)
    h = 1e-6
    _, dot = act.pair(k, q1, q2, True)
    fd = (act.pair(k + h, q1, q2, False)[0] - act.pair(k - h, q1, q2, False)[0]) / (2 * h)
    torch.testing.assert_close(dot, fd, rtol=1e-7, atol=0)


def test_relu_quadrature_accuracy_is_what_readme_states(unit_inputs):
    """README: default quadrature on ReLU (a kink) is within 2e-3 (NNGP) and 2e-2 (NTK) of
    the exact kernels, relative to the largest entry; more points help only slowly."""
    a = _two_layer(wn.Relu()).kernel(unit_inputs)
    b = _two_layer(wn.Elementwise(torch.relu)).kernel(unit_inputs)
    errs = {}
    for name in ("nngp", "ntk"):
        x, y = getattr(a, name), getattr(b, name)
        errs[name] = ((x - y).abs() / x.abs().max()).max().item()
    assert errs["nngp"] < 2e-3 and errs["ntk"] < 2e-2, errs
    c = _two_layer(wn.Elementwise(torch.relu, degree=32)).kernel(unit_inputs)
    assert ((a.ntk - c.ntk).abs() / a.ntk.abs().max()).max().item() > errs["ntk"]


def test_abrelu_family_against_each_other(inputs):
    """LeakyRelu(a) = ABRelu(a, 1), Abs = ABRelu(-1, 1), and ABRelu(a, b) by linearity."""
    pairs = [(wn.LeakyRelu(0.2), wn.ABRelu(0.2, 1.0)), (wn.Abs(), wn.ABRelu(-1.0, 1.0))]
    for a, b in pairs:
        torch.testing.assert_close(
            _two_layer(a).kernel(inputs).ntk, _two_layer(b).kernel(inputs).ntk
        )
    # phi = a x + (b - a) relu(x): E[phi phi] = ab K + (b - a)^2 E[relu relu]
    a_, b_ = -0.3, 0.8
    k_ab = wn.serial(wn.Dense(8, w_std=1.2, b_std=0.2), wn.ABRelu(a_, b_)).kernel(inputs)
    k_lin = wn.serial(wn.Dense(8, w_std=1.2, b_std=0.2)).kernel(inputs)
    k_relu = wn.serial(wn.Dense(8, w_std=1.2, b_std=0.2), wn.Relu()).kernel(inputs)
    torch.testing.assert_close(k_ab.nngp, a_ * b_ * k_lin.nngp + (b_ - a_) ** 2 * k_relu.nngp)


def test_sign_kernel_is_arcsine_of_correlation(inputs):
    k = wn.serial(wn.Dense(8, w_std=W, b_std=B), wn.Sign()).kernel(inputs)
    k1 = W**2 * _input_gram(inputs) + B**2
    c = k1 / np.sqrt(np.outer(np.diag(k1), np.diag(k1)))
    np.testing.assert_allclose(k.nngp.numpy(), 2 / np.pi * np.arcsin(np.clip(c, -1, 1)), atol=1e-12)
    assert torch.all(k.ntk == 0)  # zero derivative almost everywhere


def test_monomial_kernel_by_isserlis():
    """E[u^2 v^2] = q1 q2 + 2 K^2 and E[u^3 v^3] = 9 q1 q2 K + 6 K^3 (Wick/Isserlis)."""
    q1, q2 = torch.tensor([[1.7]], dtype=torch.float64), torch.tensor([[0.4]], dtype=torch.float64)
    k = torch.tensor([[0.3, -0.5]], dtype=torch.float64)
    out2, dot2 = wn.Monomial(2).pair(k, q1, q2, True)
    torch.testing.assert_close(out2, q1 * q2 + 2 * k**2)
    torch.testing.assert_close(dot2, 4 * k)  # 2^2 E[u v]
    out3, _ = wn.Monomial(3).pair(k, q1, q2, False)
    torch.testing.assert_close(out3, 9 * q1 * q2 * k + 6 * k**3)
    assert math.isclose(wn.Monomial(0).pair(k, q1, q2, True)[0][0, 0].item(), 1.0)
