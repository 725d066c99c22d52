"""``wn.predict.gradient_descent``: gradient flow on any loss by the function-space ODE, against
the MSE closed form and against explicit Euler steps of the linearised model (gradient
descent with a small step) written here."""

import math

import pytest
import torch

import widenets as wn
from widenets.predict import cross_entropy, gradient_descent, gradient_descent_mse


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, dtype=torch.float64, generator=g)
    net = wn.serial(wn.Dense(16, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=1.5))
    k = net.kernel(x, get="ntk").ntk
    y = torch.nn.functional.one_hot(torch.arange(7) % 3, 3).to(torch.float64)
    return k[:7, :7], k[7:, :7], y


def _euler(loss, k, kt, y, lr, steps, f0, ft0):
    """Discrete gradient descent of the linearised model in function space."""
    f, ft = f0.clone(), ft0.clone()
    for _ in range(steps):
        fx = f.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(fx, y), fx)
        f, ft = f - lr * k @ g, ft - lr * kt @ g
    return f, ft


def test_module_is_renamed_and_the_name_is_callable():
    assert callable(wn.predict.gradient_descent)


def test_mse_matches_the_closed_form(problem):
    k, kt, y = problem
    f0 = torch.full_like(y, 0.3)
    mse = lambda f, t: 0.5 * ((f - t) ** 2).mean()  # noqa: E731
    times = torch.tensor([0.0, 1.0, 5.0, 40.0], dtype=torch.float64)
    train, test = gradient_descent(mse, k, y, learning_rate=0.7)(times, kt, fx_train_0=f0)
    pred = gradient_descent_mse(k, y, learning_rate=0.7)
    assert torch.allclose(train, pred(times, fx_train_0=f0), atol=1e-8, rtol=0)
    assert torch.allclose(test, pred(times, kt, fx_train_0=f0), atol=1e-8, rtol=0)


def test_cross_entropy_matches_small_step_gradient_descent(problem):
    """Euler with step h has O(h) error: at steps of 1/200 of t = 2 the gap is small, and
    halving h halves it (so the ODE solution is the limit, not a neighbour)."""
    k, kt, y = problem
    lr, t = 0.5, 2.0
    g = torch.Generator().manual_seed(1)
    f0 = 0.1 * torch.randn(y.shape, dtype=torch.float64, generator=g)
    ft0 = 0.1 * torch.randn(kt.shape[0], 3, dtype=torch.float64, generator=g)
    train, test = gradient_descent(cross_entropy, k, y, lr)(t, kt, fx_train_0=f0, fx_test_0=ft0)
    gaps = []
    for steps in (100, 200):
        h = t / steps
        e_train, e_test = _euler(cross_entropy, k, kt, y, lr * h, steps, f0, ft0)
        gaps.append(max((e_train - train).abs().max(), (e_test - test).abs().max()).item())
    assert gaps[1] < 1e-3
    assert 1.8 < gaps[0] / gaps[1] < 2.2
    assert not torch.allclose(train, f0, atol=1e-2)  # it did train


def test_time_zero_and_order_of_times(problem):
    k, kt, y = problem
    pred = gradient_descent(cross_entropy, k, y)
    out = pred(torch.tensor([1.0, 0.0, 0.5]), fx_train_0=0.2)
    assert torch.equal(out[1], torch.full_like(y, 0.2))
    assert torch.allclose(out[2], pred(0.5, fx_train_0=0.2), atol=1e-9)


def test_bad_arguments_are_named(problem):
    k, _, y = problem
    with pytest.raises(TypeError, match="`loss`"):
        gradient_descent(3.0, k, y)
    with pytest.raises(ValueError, match="`learning_rate`"):
        gradient_descent(cross_entropy, k, y, learning_rate=-1.0)
    with pytest.raises(ValueError, match="`t` must be finite"):
        gradient_descent(cross_entropy, k, y)(math.inf)
    with pytest.raises(ValueError, match="`y_train`"):
        gradient_descent(cross_entropy, k, y[:3])
