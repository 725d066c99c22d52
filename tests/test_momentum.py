"""Heavy-ball momentum in ``wn.predict`` and ``max_learning_rate``: against discrete heavy-ball
iterations of the linearised model written here, Neural Tangents' stored values
(``tests/data/nt_predict.json``, from ``bench/nt_predict.py``), mpmath, and each other (the
MSE closed form against the ODE)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import widenets as wn
from widenets.predict import (
    cross_entropy,
    gradient_descent,
    gradient_descent_mse,
    max_learning_rate,
)
from widenets.predict._momentum import oscillator_growth_over_e

REFS = json.loads((Path(__file__).parent / "data" / "nt_predict.json").read_text())


def mse(f, t):
    return 0.5 * ((f - t) ** 2).mean()


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, dtype=torch.float64, generator=g)
    net = wn.serial(wn.Dense(16, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=1.5))
    k = net.kernel(x, get="ntk").ntk
    y = torch.nn.functional.one_hot(torch.arange(7) % 3, 3).to(torch.float64)
    f0 = 0.1 * torch.randn(7, 3, dtype=torch.float64, generator=g)
    ft0 = 0.1 * torch.randn(3, 3, dtype=torch.float64, generator=g)
    return k[:7, :7], k[7:, :7], y, f0, ft0


def heavy_ball(loss, k, kt, y, f0, ft0, lr, m, steps):
    """v <- m v - lr dL/dtheta, theta <- theta + v for the linearised model, in function
    space: f_{k+1} = f_k + m (f_k - f_{k-1}) - lr Theta dL/df(f_k), from rest."""
    f, ft = f0.clone(), ft0.clone()
    df, dft = torch.zeros_like(f), torch.zeros_like(ft)
    for _ in range(steps):
        fx = f.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(fx, y), fx)
        df, dft = m * df - lr * k @ g, m * dft - lr * kt @ g
        f, ft = f + df, ft + dft
    return f, ft


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_is_the_limit_of_discrete_heavy_ball(problem, loss):
    """With lr = h^2 and m = 1 - c h (fixed friction c) heavy ball is a first-order scheme
    for f'' + c f' = -Theta dL/df in tau = h * steps: halving h halves the gap to the
    prediction at t = steps (so the prediction is the limit, in Neural Tangents' units)."""
    k, kt, y, f0, ft0 = problem
    fn = mse if loss == "mse" else cross_entropy
    c, tau, gaps = 1.0, 4.0, []
    for h in (0.02, 0.01):
        lr, m, steps = h * h, 1.0 - c * h, round(tau / h)
        if loss == "mse":  # the closed form
            pred = gradient_descent_mse(k, y, learning_rate=lr, momentum=m)
            train = pred(steps, fx_train_0=f0)
            test = pred(steps, kt, fx_train_0=f0, fx_test_0=ft0)
        else:  # the ODE
            pred = gradient_descent(fn, k, y, lr, momentum=m)
            train, test = pred(steps, kt, fx_train_0=f0, fx_test_0=ft0)
        hb_train, hb_test = heavy_ball(fn, k, kt, y, f0, ft0, lr, m, steps)
        gaps.append(max((hb_train - train).abs().max(), (hb_test - test).abs().max()).item())
    assert gaps[1] < 3e-3  # measured 5.9e-4 (mse), 2.7e-3 (cross-entropy)
    assert 1.9 < gaps[0] / gaps[1] < 2.1  # measured 2.007, 1.998
    assert not torch.allclose(train, f0, atol=0.5)  # it did train


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99])
def test_mse_closed_form_matches_the_ode(problem, momentum):
    """Over- and underdamped directions (c^2 / 4 against e / n) in one spectrum."""
    k, kt, y, f0, ft0 = problem
    times = torch.tensor([0.0, 0.7, 5.0, 60.0, 400.0], dtype=torch.float64)
    closed = gradient_descent_mse(k, y, learning_rate=0.3, momentum=momentum)
    train, test = gradient_descent(mse, k, y, 0.3, momentum=momentum)(
        times, kt, fx_train_0=f0, fx_test_0=ft0
    )
    assert torch.allclose(closed(times, fx_train_0=f0), train, atol=1e-8, rtol=0)
    assert torch.allclose(closed(times, kt, fx_train_0=f0, fx_test_0=ft0), test, atol=1e-8, rtol=0)


def test_converged_limit_does_not_depend_on_momentum(problem):
    k, kt, y, f0, ft0 = problem
    plain = gradient_descent_mse(k, y, learning_rate=0.3)(None, kt, fx_train_0=f0)
    for m in (0.0, 0.9):
        pred = gradient_descent_mse(k, y, learning_rate=0.3, momentum=m)
        assert torch.equal(pred(None, kt, fx_train_0=f0), plain)
        late = pred(1e5, kt, fx_train_0=f0)  # a long but finite time, by the eigenbasis
        assert torch.allclose(late, plain, atol=1e-8, rtol=0)


def test_momentum_none_is_plain_gradient_flow_bit_for_bit(problem):
    k, kt, y, f0, _ = problem
    times = torch.tensor([0.5, 3.0], dtype=torch.float64)
    a = gradient_descent_mse(k, y, learning_rate=0.3)
    b = gradient_descent_mse(k, y, learning_rate=0.3, momentum=None)
    assert torch.equal(a(times, kt, fx_train_0=f0), b(times, kt, fx_train_0=f0))


def test_oscillator_against_mpmath():
    """(1 - x(tau)) / e for x'' + c x' + (e / n) x = 0 from rest, in 50 digits: overdamped,
    critically damped and nearby, underdamped, e = 0 and tiny, tiny and long times."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    n, worst = 3, 0.0
    for c in (0.05, 1.0, 100.0):
        crit = 3 * c * c / 4
        for e in (0.0, 1e-14, 1e-3, crit * (1 - 1e-9), crit, crit * (1 + 1e-9), 1.0, 1e4):
            for tau in (1e-8, 0.5, 3.0, 40.0, 1e5):
                got = oscillator_growth_over_e(
                    torch.tensor([e], dtype=torch.float64),
                    torch.tensor([[tau]], dtype=torch.float64),
                    c,
                    n,
                )[0, 0].item()
                ee, tt, cc = mp.mpf(e), mp.mpf(tau), mp.mpf(c)
                a, w = cc / 2, ee / n
                if e == 0:
                    ref = (cc * tt - 1 + mp.exp(-cc * tt)) / (n * cc * cc)
                else:
                    s = mp.sqrt(mp.mpc(a * a - w))  # cosh(i x) = cos x, sinh(i x) / i = sin x
                    x = mp.exp(-a * tt) * (
                        mp.cosh(s * tt) + (a * tt if s == 0 else a * mp.sinh(s * tt) / s)
                    )
                    ref = (1 - mp.re(x)) / ee
                worst = max(worst, abs(got - float(ref)) / abs(float(ref)))
    assert worst < 1e-12  # measured 2.5e-14 (underdamped, c tau = 2, sin of a large angle)


def test_matches_neural_tangents():
    """Neural Tangents integrates with odeint at rtol = atol = 1.4e-8 (its default), so the
    stored values carry about 1e-7 of error; the conventions (time units, friction) would
    show as differences of order one."""
    ref = REFS
    a = {key: torch.tensor(v, dtype=torch.float64) for key, v in ref["inputs"].items()}
    nt = {key: np.asarray(v) for key, v in ref["nt"].items()}
    lr = ref["learning_rate"]
    for name, case in ref["cases"].items():
        fn, y = (mse, a["y"]) if case["loss"] == "mse" else (cross_entropy, a["yc"])
        m = case["momentum"]
        kw = dict(fx_train_0=a["f0"], fx_test_0=a["ft0"])
        train, test = gradient_descent(fn, a["k"], y, lr, momentum=m)(a["t"], a["kt"], **kw)
        outs = [(train, test)]
        if case["loss"] == "mse":
            closed = gradient_descent_mse(a["k"], y, learning_rate=lr, momentum=m)
            outs.append((closed(a["t"], fx_train_0=a["f0"]), closed(a["t"], a["kt"], **kw)))
        for tr, te in outs:
            assert np.abs(tr.numpy() - nt[name + "_train"]).max() < 5e-7, name  # max 1.4e-7
            assert np.abs(te.numpy() - nt[name + "_test"]).max() < 5e-7, name
    plain = gradient_descent_mse(a["k"], a["y"], learning_rate=lr)
    kw = dict(fx_train_0=a["f0"], fx_test_0=a["ft0"])
    assert np.abs(plain(a["t"], fx_train_0=a["f0"]).numpy() - nt["mse_plain_train"]).max() < 1e-12
    assert np.abs(plain(a["t"], a["kt"], **kw).numpy() - nt["mse_plain_test"]).max() < 1e-12
    assert max_learning_rate(a["k"]) == pytest.approx(float(nt["max_lr"]), rel=1e-12)
    n = a["y"].numel()
    assert max_learning_rate(a["k"], n, 0.9) == pytest.approx(float(nt["max_lr_size_m"]), rel=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_max_learning_rate_separates_convergence_from_divergence(problem, momentum):
    """Discrete (heavy-ball) gradient descent on ||f - y||^2 / (2n), n = y.numel(), converges
    at 0.99 times the rate and diverges at 1.01 times it."""
    k, _, y, f0, _ = problem
    n = y.numel()
    lr_max = max_learning_rate(k, n, momentum)

    def residual(lr, steps=3000):
        f, df = f0.clone(), torch.zeros_like(f0)
        for _ in range(steps):
            df = momentum * df - (lr / n) * k @ (f - y)
            f = f + df
        return float((f - y).norm())

    r0 = float((f0 - y).norm())
    assert residual(0.99 * lr_max) < r0
    assert residual(1.01 * lr_max) > 1e6 * r0


def test_max_learning_rate_default_size_is_n_train(problem):
    k, _, y, _, _ = problem
    lam = float(np.linalg.eigvalsh(k.numpy())[-1])  # an independent eigensolver
    assert max_learning_rate(k) == pytest.approx(2 * 7 / lam, rel=1e-12)
    assert max_learning_rate(k.numpy(), 21, 0.5) == pytest.approx(2 * 1.5 * 21 / lam, rel=1e-12)


def test_bad_arguments_are_named(problem):
    k, kt, y, _, _ = problem
    for bad in (-0.1, 1.0, 1.5, math.nan):
        with pytest.raises(ValueError, match="`momentum` must be in \\[0, 1\\)"):
            gradient_descent_mse(k, y, momentum=bad)
        with pytest.raises(ValueError, match="`momentum`"):
            gradient_descent(cross_entropy, k, y, momentum=bad)
        with pytest.raises(ValueError, match="`momentum`"):
            max_learning_rate(k, momentum=bad)
    for bad in ("0.9", True, [0.9]):
        with pytest.raises(TypeError, match="`momentum`"):
            gradient_descent_mse(k, y, momentum=bad)
    with pytest.raises(TypeError, match="`momentum`"):
        max_learning_rate(k, momentum=None)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="`y_train_size`"):
            max_learning_rate(k, bad)
    with pytest.raises(TypeError, match="`y_train_size`"):
        max_learning_rate(k, 7.0)
    with pytest.raises(ValueError, match="`ntk_train_train`"):
        max_learning_rate(kt)
    with pytest.raises(ValueError, match="`t` must be finite"):
        gradient_descent(cross_entropy, k, y, momentum=0.5)(math.inf)
