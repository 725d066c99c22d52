"""Neural Tangents' remaining activations: each closed-form kernel against the library's
independent quadrature of the same function (``Elementwise(fn)``), exact special cases, and
bad arguments."""

import math

import pytest
import torch

import widenets as wn
from widenets.layers.nt_activations import (
    Exp,
    ExpNormalized,
    Gabor,
    Hermite,
    Polynomial,
    Rbf,
    RectifiedMonomial,
    Sigmoid_like,
)

torch.manual_seed(0)
X = torch.randn(5, 6, dtype=torch.float64)
X = X / X.norm(dim=1, keepdim=True) * math.sqrt(6)  # unit pre-activation variance, w_std=1


def _net(act, b_std=0.0):
    return wn.serial(wn.Dense(32, w_std=1.0, b_std=b_std), act, wn.Dense(1, w_std=1.0))


@pytest.mark.parametrize(
    "act",
    [
        Exp(0.7, 0.5),
        Gabor(),
        Rbf(0.8),
        Sigmoid_like(),
        Polynomial((0.3, -1.0, 0.5, 0.25)),
        Hermite(3),
        RectifiedMonomial(3),
    ],
    ids=repr,
)
def test_closed_form_equals_quadrature_of_the_same_function(act):
    """K' = E[phi(u) phi(v)] and the NTK through Kdot = E[phi'(u) phi'(v)]: the closed form
    against Gauss-Legendre quadrature of ``act.fn`` (1e-7 relative; 1e-5 for the rectified
    monomial, whose third derivative jumps at 0)."""
    exact = _net(act).kernel(X)
    quad = _net(wn.Elementwise(act.fn)).kernel(X)
    tol = 1e-5 if isinstance(act, RectifiedMonomial) else 1e-7
    for name in ("nngp", "ntk"):
        a, b = getattr(exact, name), getattr(quad, name)
        assert torch.isfinite(a).all()
        assert ((a - b).abs().max() / b.abs().max()).item() < tol, name


def test_rectified_monomial_of_degree_one_is_relu():
    a = _net(RectifiedMonomial(1), b_std=0.1).kernel(X[:, :4] * 1.3)
    b = _net(wn.Relu(), b_std=0.1).kernel(X[:, :4] * 1.3)
    torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-12, atol=0)


def test_hermite_kernel_is_a_power_of_the_correlation_at_unit_variance():
    k0 = wn.Dense(1, w_std=1.0).kernel(X).nngp
    k = wn.serial(wn.Dense(1, w_std=1.0), Hermite(3)).kernel(X).nngp
    torch.testing.assert_close(k, k0**3, rtol=1e-12, atol=1e-14)


def test_exp_normalized_closed_form():
    """sqrt(q1 q2) exp(gamma (c + shift)), c = K / sqrt(q1 q2), by hand."""
    x = X * torch.linspace(0.5, 1.5, 5, dtype=torch.float64)[:, None]
    k0 = wn.Dense(1, w_std=1.0).kernel(x).nngp
    k = wn.serial(wn.Dense(1, w_std=1.0), ExpNormalized(0.7, -1.0)).kernel(x).nngp
    q = k0.diagonal()
    s = (q[:, None] * q[None, :]).sqrt()
    torch.testing.assert_close(k, s * torch.exp(0.7 * (k0 / s - 1.0)), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RectifiedMonomial(-1), "`degree`"),
        (lambda: Hermite(1.5), "`degree`"),
        (lambda: Rbf(0.0), "`gamma`"),
        (lambda: Polynomial(()), "`coef`"),
        (lambda: Exp(float("nan"), 1.0), "`a`"),
    ],
)
def test_bad_arguments_are_one_line_errors(make, match):
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_hermite_rejects_non_unit_variance():
    with pytest.raises(ValueError) as err:
        wn.serial(wn.Dense(1, w_std=2.0), Hermite(2)).kernel(X)
    assert "\n" not in str(err.value)
