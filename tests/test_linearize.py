"""wn.linearize / wn.taylor: equal to the model at theta0, error of the right order in the
parameter step, trainable, and gradient descent on MSE follows the NTK prediction."""

import copy

import pytest
import torch
from torch import nn

import widenets as wn

DT = torch.float64


def _x(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def mlp(out=1):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, out)
    ).to(DT)


def cnn_bn():
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(64, 2)
    ).to(DT)
    m[1].running_mean.normal_(generator=torch.Generator().manual_seed(2))
    m[1].running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
    return m


def _set(module, theta):
    with torch.no_grad():
        for p, t in zip(module.theta, theta, strict=True):
            p.copy_(t)


def _step(model, eps, seed=5):
    """theta0 + eps * d with a fixed random direction d: the stepped model and theta."""
    g = torch.Generator().manual_seed(seed)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(eps * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return moved, [p.detach().clone() for p in moved.parameters()]


@pytest.mark.parametrize("make,shape", [(mlp, (6, 3)), (cnn_bn, (4, 2, 4, 4))])
def test_equal_at_theta0_and_error_order(make, shape):
    model, x = make(), _x(shape, 7)
    model.train()  # expansions use eval mode (running statistics)
    lin, quad = wn.linearize(model), wn.taylor(model, order=2)
    with torch.no_grad():
        ref = copy.deepcopy(model).eval()(x)
        torch.testing.assert_close(lin(x), ref, atol=1e-14, rtol=0)
        torch.testing.assert_close(quad(x), ref, atol=1e-14, rtol=0)
    errs1, errs2 = [], []
    for eps in (1e-2, 1e-3):
        moved, theta = _step(model, eps)
        _set(lin, theta)
        _set(quad, theta)
        with torch.no_grad():
            f = moved.eval()(x)
            errs1.append((lin(x) - f).abs().max().item())
            errs2.append((quad(x) - f).abs().max().item())
    # first order: error ~ eps^2 (ratio 100 for a 10x smaller step); second order: eps^3
    assert 60 < errs1[0] / errs1[1] < 160, errs1
    assert 600 < errs2[0] / errs2[1] < 1600, errs2
    assert errs2[0] < errs1[0] / 5


def test_only_theta_is_trainable_and_gradients_flow():
    model = mlp()
    lin = wn.linearize(model)
    assert [p.shape for p in lin.parameters()] == [p.shape for p in model.parameters()]
    x = _x((5, 3), 8)
    lin(x).pow(2).sum().backward()
    # d/dtheta of f0 + J (theta - theta0) at theta0 is J^T: equals the model's gradient
    model.zero_grad()
    model(x).pow(2).sum().backward()
    for p, q in zip(lin.theta, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=0)
    sub = wn.linearize(model, params="readout")
    assert [p.shape for p in sub.parameters()] == [(1, 32), (1,)]


def test_gradient_descent_matches_ntk_prediction():
    """Linear model + MSE: discrete GD gives f_t - y = (I - lr Theta / n)^t (f_0 - y) exactly,
    and gradient flow (wn.predict) within O(lr) of it."""
    model = mlp()
    x_train, x_test = _x((10, 3), 9), _x((4, 3), 10)
    y = torch.sin(2 * x_train[:, :1])
    lin = wn.linearize(model)
    k_tt = wn.empirical.ntk(model, x_train)
    k_st = wn.empirical.ntk(model, x_test, x_train)
    with torch.no_grad():
        f0_train, f0_test = lin(x_train), lin(x_test)
    n = y.numel()
    lr = 0.01 * n / torch.linalg.eigvalsh(k_tt).max().item()  # lr * lambda_max / n = 0.01
    steps = 300
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((lin(x_train) - y) ** 2).sum() / (2 * n)
        loss.backward()
        opt.step()
    with torch.no_grad():
        f_train, f_test = lin(x_train), lin(x_test)
    # exact discrete dynamics, from the empirical NTK
    step = torch.eye(10, dtype=DT) - lr * k_tt / n
    r = torch.linalg.matrix_power(step, steps) @ (f0_train - y)
    torch.testing.assert_close(f_train, y + r, atol=1e-9, rtol=0)
    # continuous gradient flow from widenets.predict
    pred = wn.predict.gradient_descent_mse(k_tt, y, learning_rate=lr)
    p_train = pred(steps, fx_train_0=f0_train)
    p_test = pred(steps, k_st, fx_train_0=f0_train, fx_test_0=f0_test)
    moved = (f_test - f0_test).norm().item()
    assert moved > 0.05
    assert (p_test - f_test).norm().item() < 0.02 * moved
    assert (p_train - f_train).norm().item() < 0.02 * (f_train - f0_train).norm().item()


def test_bad_input():
    with pytest.raises(ValueError, match="no trainable parameters"):
        wn.linearize(nn.ReLU())
    with pytest.raises(ValueError, match="`order` must be a positive integer"):
        wn.taylor(mlp(), order=0)
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        wn.linearize(lambda x: x)
    with pytest.raises(ValueError, match="selected no trainable parameter"):
        wn.linearize(mlp(), params=lambda n, p: False)
