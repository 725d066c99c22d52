"""Tests of widenets.predict against independent formulas (direct solves, matrix
exponentials, ODE integration); none of the expected values come from the code under test."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.linalg
import torch

from widenets.predict import ensemble, ensemble_from_kernels, gp_inference, gradient_descent_mse

INF = float("inf")


# ---------------------------------------------------------------- fixtures and helpers


def rbf(x1, x2, lengthscale=1.5):
    d2 = ((x1[:, None, :] - x2[None, :, :]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * lengthscale**2))


def ntk_like(x1, x2):
    """A PD kernel that does not commute with rbf: rbf + 2 * (linear + 1)."""
    return rbf(x1, x2) + 2.0 * (x1 @ x2.T / x1.shape[1] + 1.0)


@dataclass
class Kern:
    nngp: torch.Tensor | None
    ntk: torch.Tensor | None


class ToyNet:
    """Stand-in for a network: closed-form kernels, and a log of the calls made."""

    def __init__(self):
        self.calls = []

    def kernel(self, x1, x2=None, get=("nngp", "ntk"), **kwargs):
        self.calls.append((x1, x2, tuple(get), kwargs))
        x2_ = x1 if x2 is None else x2
        return Kern(nngp=rbf(x1, x2_), ntk=ntk_like(x1, x2_))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x_train = torch.randn(10, 3, generator=g, dtype=torch.float64)
    x_test = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y_train = torch.randn(10, 2, generator=g, dtype=torch.float64)
    return x_train, x_test, y_train


def joint_rbf(data):
    x_train, x_test, _ = data
    return rbf(x_train, x_train), rbf(x_test, x_train), rbf(x_test, x_test)


def regularised(k, diag_reg, absolute=False):
    scale = 1.0 if absolute else torch.diagonal(k).mean()
    return k + diag_reg * scale * torch.eye(k.shape[0], dtype=k.dtype)


def assert_close(actual, expected, rtol=1e-9, atol=1e-10):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def rk4(deriv, state, t, steps):
    h = t / steps
    for _ in range(steps):
        k1 = deriv(state)
        k2 = deriv([s + h / 2 * k for s, k in zip(state, k1, strict=True)])
        k3 = deriv([s + h / 2 * k for s, k in zip(state, k2, strict=True)])
        k4 = deriv([s + h * k for s, k in zip(state, k3, strict=True)])
        state = [
            s + h / 6 * (a + 2 * b + 2 * c + d)
            for s, a, b, c, d in zip(state, k1, k2, k3, k4, strict=True)
        ]
    return state


def expm_flow(theta, rate_t):
    """I - exp(-theta * rate_t), via scipy's matrix exponential."""
    e = scipy.linalg.expm(-theta.numpy() * rate_t)
    return torch.eye(theta.shape[0], dtype=theta.dtype) - torch.from_numpy(e)


# ---------------------------------------------------------------- gp_inference


@pytest.mark.parametrize("diag_reg, absolute", [(0.0, False), (1e-3, False), (0.05, True)])
@pytest.mark.parametrize("one_d", [False, True])
def test_gp_inference_matches_direct_solve(data, diag_reg, absolute, one_d):
    k_dd, k_td, k_tt = joint_rbf(data)
    y = data[2][:, 0] if one_d else data[2]
    mean, cov = gp_inference(
        k_dd, y, k_td, k_tt, diag_reg=diag_reg, diag_reg_absolute_scale=absolute
    )
    k_reg = regularised(k_dd, diag_reg, absolute)
    expected_mean = k_td @ torch.linalg.solve(k_reg, y)
    expected_cov = k_tt - k_td @ torch.linalg.solve(k_reg, k_td.T)
    assert mean.shape == expected_mean.shape
    assert_close(mean, expected_mean, rtol=1e-7, atol=1e-8)
    assert_close(cov, expected_cov, rtol=1e-7, atol=1e-8)


def test_gp_inference_cov_none_without_test_test(data):
    k_dd, k_td, _ = joint_rbf(data)
    _, cov = gp_inference(k_dd, data[2], k_td)
    assert cov is None


def test_gp_posterior_cov_is_symmetric_psd(data):
    k_dd, k_td, k_tt = joint_rbf(data)
    _, cov = gp_inference(k_dd, data[2], k_td, k_tt, diag_reg=1e-4)
    assert torch.equal(cov, cov.T)
    evals = torch.linalg.eigvalsh(cov)
    assert evals.min() >= -1e-10 * evals.abs().max()
    # Conditioning on data never increases the variance.
    assert (torch.diagonal(cov) <= torch.diagonal(k_tt) + 1e-12).all()


@pytest.mark.parametrize("explicit", [True, False])
def test_gp_mean_interpolates_training_targets(data, explicit):
    k_dd, _, _ = joint_rbf(data)
    y = data[2]
    k_td = k_dd if explicit else None
    mean, cov = gp_inference(k_dd, y, k_td, k_dd, diag_reg=1e-12)
    assert_close(mean, y, rtol=1e-5, atol=1e-5)
    assert cov.abs().max() < 1e-5


def test_gp_inference_not_pd_raises_and_regularisation_fixes(data):
    x = data[0]
    k_low_rank = x @ x.T  # rank 3 < 10: PSD but singular
    k_indef = k_low_rank - 0.1 * torch.eye(10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"k_train_train.*diag_reg|diag_reg.*k_train_train"):
        gp_inference(k_indef, data[2])
    mean, _ = gp_inference(k_low_rank, data[2], diag_reg=1e-3)
    assert torch.isfinite(mean).all()


def test_gp_inference_accepts_numpy_and_keeps_dtype(data):
    k_dd, k_td, k_tt = joint_rbf(data)
    y = data[2]
    mean64, _ = gp_inference(k_dd, y, k_td)
    mean_np, cov_np = gp_inference(k_dd.numpy(), y.numpy(), k_td.numpy(), k_tt.numpy())
    assert isinstance(mean_np, torch.Tensor) and mean_np.dtype == torch.float64
    assert_close(mean_np, mean64)
    mean32, cov32 = gp_inference(k_dd.float(), y.float(), k_td.float(), k_tt.float())
    assert mean32.dtype == torch.float32 and cov32.dtype == torch.float32
    assert_close(mean32.double(), mean64, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- gradient_descent_mse


@pytest.mark.parametrize("diag_reg, absolute", [(0.0, False), (1e-2, False), (0.1, True)])
def test_gd_infinite_time_is_kernel_ridge_regression(data, diag_reg, absolute):
    x_train, x_test, y = data
    theta, theta_td = ntk_like(x_train, x_train), ntk_like(x_test, x_train)
    g = torch.Generator().manual_seed(1)
    f0 = torch.randn(y.shape, generator=g, dtype=torch.float64)
    ft0 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    pred = gradient_descent_mse(
        theta, y, learning_rate=0.3, diag_reg=diag_reg, diag_reg_absolute_scale=absolute
    )
    k_reg = regularised(theta, diag_reg, absolute)
    for t in (INF, None):
        expected_test = ft0 + theta_td @ torch.linalg.solve(k_reg, y - f0)
        assert_close(pred.test(t, theta_td, f0, ft0), expected_test, rtol=1e-8, atol=1e-9)
        assert_close(pred(t, theta_td, fx_train_0=f0, fx_test_0=ft0), expected_test)
        # Train dynamics (with the regularised kernel) converge to the targets ...
        assert_close(pred.train(t, f0), y, rtol=1e-8, atol=1e-9)
        assert_close(pred(t, fx_train_0=f0), y, rtol=1e-8, atol=1e-9)
        # ... while the ridge fit on the training inputs is K (K + reg)^{-1} y.
        krr_train = theta @ torch.linalg.solve(k_reg, y)
        assert_close(pred.test(t, theta), krr_train, rtol=1e-8, atol=1e-9)


def test_gd_time_zero_returns_initial_outputs(data):
    x_train, x_test, y = data
    pred = gradient_descent_mse(ntk_like(x_train, x_train), y, diag_reg=1e-3)
    f0 = torch.full(y.shape, 0.7, dtype=torch.float64)
    ft0 = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(4, 2)
    assert_close(pred.train(0.0, f0), f0, rtol=0, atol=1e-13)
    assert_close(pred.test(0.0, ntk_like(x_test, x_train), f0, ft0), ft0, rtol=0, atol=1e-13)
    assert_close(pred.train(0), torch.zeros_like(y), rtol=0, atol=1e-13)


@pytest.mark.parametrize("diag_reg", [0.0, 0.05])
def test_gd_matches_rk4_integration_of_gradient_flow(data, diag_reg):
    x_train, x_test, y = data
    theta, theta_td = ntk_like(x_train, x_train), ntk_like(x_test, x_train)
    eta, t = 0.7, 30.0
    g = torch.Generator().manual_seed(2)
    f0 = torch.randn(y.shape, generator=g, dtype=torch.float64)
    ft0 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    theta_reg = regularised(theta, diag_reg)
    rate = eta / y.numel()

    def deriv(state):
        residual = state[0] - y
        return [-rate * theta_reg @ residual, -rate * theta_td @ residual]

    f_train_ode, f_test_ode = rk4(deriv, [f0, ft0], t, steps=2000)
    pred = gradient_descent_mse(theta, y, learning_rate=eta, diag_reg=diag_reg)
    f_train = pred.train(t, f0)
    f_test = pred.test(t, theta_td, f0, ft0)
    for got, ode in ((f_train, f_train_ode), (f_test, f_test_ode)):
        assert (got - ode).norm() <= 1e-6 * ode.norm()
    # The comparison is not trivial: t is neither close to 0 nor to convergence.
    assert (f_train - f0).norm() > 0.1 * (y - f0).norm()
    assert (f_train - y).norm() > 1e-3 * (y - f0).norm()


def test_gd_vector_t_equals_loop(data):
    x_train, x_test, y = data
    theta, theta_td = ntk_like(x_train, x_train), ntk_like(x_test, x_train)
    pred = gradient_descent_mse(theta, y[:, 0], learning_rate=2.0, diag_reg=1e-4)
    ts = [0.0, 0.5, 3.0, 40.0, INF]
    f0 = torch.linspace(-1, 1, 10, dtype=torch.float64)
    for times in (torch.tensor(ts, dtype=torch.float64), np.array(ts)):
        train = pred.train(times, f0)
        test = pred(times, theta_td, fx_train_0=f0, fx_test_0=0.5)
        assert train.shape == (5, 10) and test.shape == (5, 4)
        for i, t in enumerate(ts):
            assert_close(train[i], pred.train(t, f0), rtol=1e-12, atol=1e-12)
            assert_close(test[i], pred(t, theta_td, fx_train_0=f0, fx_test_0=0.5))


@pytest.mark.parametrize("with_zero_eigenvalue", [False, True])
def test_gd_ill_conditioned_kernel_gives_finite_outputs(with_zero_eigenvalue):
    n = 30
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    evals = torch.logspace(-14, 0, n, dtype=torch.float64)
    if with_zero_eigenvalue:
        evals[:3] = 0.0
    k = q @ torch.diag(evals) @ q.T
    k = (k + k.T) / 2
    y = torch.randn(n, generator=g, dtype=torch.float64)
    f0 = torch.randn(n, generator=g, dtype=torch.float64)
    pred = gradient_descent_mse(k, y)
    ts = torch.tensor([0.0, 1.0, 1e3, 1e8, 1e14, 1e18, 1e30, INF], dtype=torch.float64)
    train = pred.train(ts, f0)
    test = pred.test(ts, k[:5], f0)
    assert torch.isfinite(train).all() and torch.isfinite(test).all()
    # Gradient flow never increases the training residual. (t = inf is compared with t = 0
    # only: the pseudo-inverse drops round-off eigenvalues that huge finite times do fit.)
    residual = (train - y).norm(dim=1)
    assert (residual[1:-1] <= residual[:-2] * (1 + 1e-9) + 1e-12).all()
    assert residual[-1] <= residual[0]
    assert residual[0] == pytest.approx(float((f0 - y).norm()))


def test_gd_infinite_time_uses_pseudo_inverse_for_singular_kernel():
    """Round-off eigenvalues of an exactly singular kernel must not be inverted."""
    n = 20
    g = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    evals = torch.logspace(-4, 0, n, dtype=torch.float64)
    evals[:4] = 0.0
    k = q @ torch.diag(evals) @ q.T
    k = (k + k.T) / 2
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    k_td = torch.randn(3, n, generator=g, dtype=torch.float64) @ k  # in the row space of k
    pred = gradient_descent_mse(k, y)
    expected = k_td @ torch.linalg.pinv(k, hermitian=True) @ y
    got = pred.test(INF, k_td)
    assert (got - expected).norm() <= 1e-8 * expected.norm()
    # Large finite times approach the same limit (null directions never move the outputs).
    assert (pred.test(1e9, k_td) - expected).norm() <= 1e-6 * expected.norm()


# ---------------------------------------------------------------- ensemble


def toy_kernels(data):
    x_train, x_test, _ = data
    return (
        Kern(rbf(x_train, x_train), ntk_like(x_train, x_train)),
        Kern(rbf(x_test, x_train), ntk_like(x_test, x_train)),
        Kern(rbf(x_test, x_test), ntk_like(x_test, x_test)),
    )


@pytest.mark.parametrize("diag_reg", [0.0, 1e-3])
def test_ensemble_nngp_converged_is_gp_posterior(data, diag_reg):
    x_train, x_test, y = data
    k_dd, k_td, k_tt = toy_kernels(data)
    mean, cov = ensemble(
        ToyNet(), x_train, y, x_test, get="nngp", t=None, diag_reg=diag_reg, compute_cov=True
    )
    gp_mean, gp_cov = gp_inference(k_dd.nngp, y, k_td.nngp, k_tt.nngp, diag_reg=diag_reg)
    assert_close(mean, gp_mean, rtol=1e-7, atol=1e-8)
    assert_close(cov, gp_cov, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("diag_reg", [0.0, 1e-2])
def test_ensemble_ntk_mean_equals_gradient_descent(data, diag_reg):
    x_train, x_test, y = data
    _, k_td, _ = toy_kernels(data)
    ts = torch.tensor([0.0, 0.5, 5.0, INF], dtype=torch.float64)
    mean, cov = ensemble(
        ToyNet(), x_train, y, x_test, get="ntk", t=ts, learning_rate=0.5, diag_reg=diag_reg
    )
    assert cov is None
    pred = gradient_descent_mse(ntk_like(x_train, x_train), y, learning_rate=0.5, diag_reg=diag_reg)
    assert_close(mean, pred.test(ts, k_td.ntk))


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_ensemble_at_time_zero_is_the_prior(data, get):
    x_train, x_test, y = data
    _, _, k_tt = toy_kernels(data)
    mean, cov = ensemble(ToyNet(), x_train, y, x_test, get=get, t=0.0, compute_cov=True)
    assert_close(mean, torch.zeros(4, 2, dtype=torch.float64), rtol=0, atol=1e-13)
    assert_close(cov, k_tt.nngp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("diag_reg", [0.0, 1e-2])
def test_ensemble_finite_time_matches_matrix_exponential(data, get, diag_reg):
    """Lee et al. 2019 eqs. 15-16 written out with scipy.linalg.expm and solves."""
    x_train, x_test, y = data
    k_dd, k_td, k_tt = toy_kernels(data)
    eta, t = 0.8, 7.0
    mean, cov = ensemble(
        ToyNet(),
        x_train,
        y,
        x_test,
        get=get,
        t=t,
        learning_rate=eta,
        diag_reg=diag_reg,
        compute_cov=True,
    )
    theta = regularised(getattr(k_dd, get), diag_reg)
    theta_td = getattr(k_td, get)
    # For "nngp" the regularised K is the prior of the train outputs too (noisy GP).
    k = theta if get == "nngp" else k_dd.nngp
    a = torch.linalg.solve(theta, expm_flow(theta, eta * t / y.numel()))
    b = theta_td @ a
    expected_cov = k_tt.nngp + b @ k @ b.T - (b @ k_td.nngp.T + k_td.nngp @ b.T)
    assert_close(mean, b @ y, rtol=1e-8, atol=1e-9)
    assert_close(cov, expected_cov, rtol=1e-8, atol=1e-9)
    assert torch.equal(cov, cov.T)
    if diag_reg == 0.0:
        # cov = M S M^T for the joint prior S of (test, train) outputs: PSD.
        evals = torch.linalg.eigvalsh(cov)
        assert evals.min() >= -1e-10 * evals.abs().max()


def test_ensemble_covariance_is_symmetric_for_vector_t(data):
    x_train, x_test, y = data
    ts = np.array([0.1, 2.0, INF])
    _, covs = ensemble(ToyNet(), x_train, y, x_test, t=ts, compute_cov=True, diag_reg=1e-3)
    for cov in covs.values():
        assert cov.shape == (3, 4, 4)
        assert torch.equal(cov, cov.transpose(1, 2))


def test_ensemble_on_training_inputs(data):
    x_train, _, y = data
    k_dd, _, _ = toy_kernels(data)
    ts = torch.tensor([0.0, 3.0, INF], dtype=torch.float64)
    mean, cov = ensemble(ToyNet(), x_train, y, t=ts, get="ntk", compute_cov=True)
    pred = gradient_descent_mse(k_dd.ntk, y)
    assert_close(mean, pred.train(ts))
    assert_close(cov[0], k_dd.nngp, rtol=1e-12, atol=1e-12)
    # E K E^T with E = exp(-Theta t / n), written with scipy's expm.
    e = torch.eye(10, dtype=torch.float64) - expm_flow(k_dd.ntk, 3.0 / y.numel())
    assert_close(cov[1], e @ k_dd.nngp @ e.T, rtol=1e-8, atol=1e-9)
    assert cov[2].abs().max() < 1e-8


def test_ensemble_returns_dicts_and_calls_kernel_as_documented(data):
    x_train, x_test, y = data
    net = ToyNet()
    means, covs = ensemble(net, x_train, y, x_test, get=("nngp", "ntk"), t=1.0)
    assert set(means) == {"nngp", "ntk"} and covs == {"nngp": None, "ntk": None}
    assert [(c[0] is x_train, c[1]) for c in net.calls[:1]] == [(True, None)]
    assert net.calls[1][0] is x_test and net.calls[1][1] is x_train
    assert len(net.calls) == 2  # no test-test kernel without compute_cov

    net = ToyNet()
    _, covs = ensemble(net, x_train, y, x_test, get="ntk", compute_cov=True, batch_size=3)
    assert len(net.calls) == 3
    assert net.calls[2][0] is x_test and net.calls[2][1] is None
    assert "nngp" in net.calls[0][2]  # the NTK covariance needs the NNGP kernel
    assert all(c[3] == {"batch_size": 3} for c in net.calls)

    k_dd, k_td, k_tt = toy_kernels(data)
    direct = ensemble_from_kernels(k_dd, k_td, k_tt, y, get="ntk")
    assert_close(covs, direct[1])


# ---------------------------------------------------------------- bad input


def _bad_cases():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    k = rbf(x, x)
    k_td = k[:2]
    k_tt = k[:2, :2]
    y = torch.randn(6, generator=g, dtype=torch.float64)

    def nan_at(m):
        m = m.clone()
        m.view(-1)[1] = math.nan
        return m

    def inf_at(m):
        m = m.clone()
        m.view(-1)[0] = INF
        return m

    kern = Kern(k, k)
    kern_td = Kern(k_td, k_td)
    kern_tt = Kern(k_tt, k_tt)
    gd = gradient_descent_mse
    cases = [
        (ValueError, "k_train_train", lambda: gp_inference(k[:, :4], y)),
        (ValueError, "k_train_train", lambda: gd(k[:4], y)),
        (ValueError, "y_train", lambda: gp_inference(k, y[:5])),
        (ValueError, "y_train", lambda: gd(k, y[:5])),
        (ValueError, "y_train", lambda: gp_inference(k, torch.zeros(6, 1, 1))),
        (ValueError, "k_test_train", lambda: gp_inference(k, y, k_td[:, :5])),
        (ValueError, "k_test_test", lambda: gp_inference(k, y, k_td, k_tt[:1])),
        (ValueError, "k_train_train", lambda: gp_inference(nan_at(k), y)),
        (ValueError, "k_train_train", lambda: gd(inf_at(k), y)),
        (ValueError, "y_train", lambda: gp_inference(k, inf_at(y))),
        (ValueError, "y_train", lambda: gd(k, nan_at(y))),
        (ValueError, "k_test_train", lambda: gp_inference(k, y, nan_at(k_td))),
        (ValueError, "k_test_test", lambda: gp_inference(k, y, k_td, inf_at(k_tt))),
        (ValueError, "k_test_train", lambda: gd(k, y).test(1.0, nan_at(k_td))),
        (ValueError, "k_test_train", lambda: gd(k, y).test(1.0, k_td[:, :5])),
        (ValueError, "diag_reg", lambda: gp_inference(k, y, diag_reg=-1e-3)),
        (ValueError, "diag_reg", lambda: gd(k, y, diag_reg=-1.0)),
        (ValueError, "learning_rate", lambda: gd(k, y, learning_rate=0.0)),
        (ValueError, "learning_rate", lambda: gd(k, y, learning_rate=-0.1)),
        (ValueError, "`t`", lambda: gd(k, y).train(-1.0)),
        (ValueError, "`t`", lambda: gd(k, y).test(torch.tensor([1.0, -2.0]), k_td)),
        (ValueError, "`t`", lambda: gd(k, y)(math.nan)),
        (ValueError, "`t`", lambda: gd(k, y)(torch.zeros(2, 2))),
        (ValueError, "fx_train_0", lambda: gd(k, y).train(1.0, torch.zeros(5))),
        (ValueError, "fx_test_0", lambda: gd(k, y).test(1.0, k_td, 0.0, torch.zeros(3))),
        (TypeError, "k_train_train", lambda: gp_inference("not a kernel", y)),
        (TypeError, "learning_rate", lambda: gd(k, y, learning_rate="fast")),
        (ValueError, "get", lambda: ensemble_from_kernels(kern, kern_td, None, y, get="nnpg")),
        (
            ValueError,
            "get",
            lambda: ensemble_from_kernels(kern, kern_td, None, y, get=("ntk", "x")),
        ),
        (TypeError, "get", lambda: ensemble_from_kernels(kern, kern_td, None, y, get=3)),
        (ValueError, "`t`", lambda: ensemble_from_kernels(kern, kern_td, None, y, t=-1.0)),
        (
            ValueError,
            "learning_rate",
            lambda: ensemble_from_kernels(kern, None, None, y, learning_rate=0),
        ),
        (ValueError, "diag_reg", lambda: ensemble_from_kernels(kern, None, None, y, diag_reg=-2)),
        (ValueError, "y_train", lambda: ensemble_from_kernels(kern, kern_td, None, y[:4])),
        (
            ValueError,
            "k_train_train.ntk",
            lambda: ensemble_from_kernels(Kern(k, k[:5, :5]), None, None, y),
        ),
        (
            ValueError,
            "k_train_train.nngp",
            lambda: ensemble_from_kernels(Kern(nan_at(k), k), None, None, y),
        ),
        (
            ValueError,
            "k_test_train.ntk",
            lambda: ensemble_from_kernels(kern, Kern(k_td, k_td[:, :3]), None, y),
        ),
        (
            ValueError,
            "k_test_test.nngp",
            lambda: ensemble_from_kernels(kern, kern_td, Kern(k_tt[:1], None), y),
        ),
        (
            ValueError,
            "k_train_train.ntk",
            lambda: ensemble_from_kernels(Kern(k, None), None, None, y, get="ntk"),
        ),
        (TypeError, "k_train_train", lambda: ensemble_from_kernels(k, None, None, y)),
        (ValueError, "k_test_test.nngp", lambda: ensemble_from_kernels(kern, None, kern_tt, y)),
        (ValueError, "k_train_train", lambda: gp_inference(k + torch.triu(k, 1), y)),
        (TypeError, "net", lambda: ensemble(object(), x, y)),
        (ValueError, "get", lambda: ensemble(ToyNet(), x, y, get="gp")),
        (ValueError, "`t`", lambda: ensemble(ToyNet(), x, y, t=-3.0)),
    ]
    return cases


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_raises_naming_the_argument(case):
    exc, name, call = _bad_cases()[case]
    with pytest.raises(exc) as info:
        call()
    assert name in str(info.value)


def test_converged_prediction_needs_no_eigendecomposition():
    """t = inf on a positive-definite kernel is a Cholesky solve: no eigh is computed."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=g, dtype=torch.float64)
    k = a @ a.T + 30 * torch.eye(30, dtype=torch.float64)
    y = torch.randn(30, 2, generator=g, dtype=torch.float64)
    k_test = torch.randn(5, 30, generator=g, dtype=torch.float64)
    pred = gradient_descent_mse(k, y)
    out = pred(None, k_test)
    assert pred._spectrum is None
    torch.testing.assert_close(out, k_test @ torch.linalg.solve(k, y))
    torch.testing.assert_close(pred(1e12, k_test), out)  # the eigenbasis path agrees


def test_large_finite_times_on_a_singular_kernel_tend_to_the_converged_answer():
    """Duplicate training inputs with different targets, diag_reg = 0: the kernel is exactly
    singular. Eigenvalues below the cut-off are zero at every t, so the outputs at large
    finite t reach the t = inf answer (a pseudo-inverse) and stay there; before, a null
    direction got the factor t and drifted linearly in t (issue 15, item 6)."""
    import widenets as wn

    g = torch.Generator().manual_seed(11)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    x_train = torch.cat([x, x[:3]])  # three inputs twice
    y = torch.randn(11, 2, generator=g, dtype=torch.float64)
    y[8:] = -y[:3]  # with other targets
    x_test = torch.randn(4, 5, generator=g, dtype=torch.float64)
    net = wn.serial(wn.Dense(64, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=1.5))
    k, kt = net.kernel(x_train), net.kernel(x_test, x_train)
    pred = gradient_descent_mse(k.ntk, y)
    f_inf = pred(INF, kt.ntk)
    # the converged answer is the pseudo-inverse solution: duplicates fitted by their mean
    expected = kt.ntk @ torch.linalg.pinv(k.ntk, hermitian=True, rtol=1e-10) @ y
    assert (f_inf - expected).norm() <= 1e-8 * expected.norm()
    ts = torch.tensor([1e6, 1e9, 1e12, 1e15], dtype=torch.float64)
    far = pred(ts, kt.ntk)
    for f in far:
        assert (f - f_inf).norm() <= 1e-6 * f_inf.norm()
    train = pred.train(ts)
    fitted = pred.train(INF)
    for f in train:
        assert (f - fitted).norm() <= 1e-6 * fitted.norm()
    # the mean of the ensemble of networks (same predictor inside) agrees
    mean, _ = ensemble(net, x_train, y, x_test, get="ntk", t=ts)
    mean_inf, _ = ensemble(net, x_train, y, x_test, get="ntk", t=None)
    for m in mean:
        assert (m - mean_inf).norm() <= 1e-6 * mean_inf.norm()


# ------------------------------------------------------- checks and regularisation


@pytest.mark.parametrize("n, block_bytes", [(1, 8), (7, 8), (64, 8 * 64 * 5), (65, 2**20)])
def test_max_asymmetry_by_blocks_equals_the_dense_difference(n, block_bytes):
    from widenets.predict._validation import max_asymmetry

    g = torch.Generator().manual_seed(n)
    k = torch.randn(n, n, generator=g, dtype=torch.float64)
    assert max_asymmetry(k, block_bytes) == float((k - k.T).abs().max())
    sym = k + k.T
    assert max_asymmetry(sym, block_bytes) == 0.0
    if n > 1:  # one entry off, above or below the diagonal
        for i, j in ((n - 1, 0), (0, n - 1)):
            bad = sym.clone()
            bad[i, j] += 0.25
            assert max_asymmetry(bad, block_bytes) == float((bad - bad.T).abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("diag_reg, absolute", [(0.0, False), (1e-3, False), (0.5, True)])
def test_regularize_is_the_textbook_formula_bit_for_bit(dtype, diag_reg, absolute):
    from widenets.predict._linalg import regularize

    g = torch.Generator().manual_seed(3)
    k = torch.randn(40, 40, generator=g, dtype=torch.float64).to(dtype)
    before = k.clone()
    k64 = k.to(torch.float64)
    want = (k64 + k64.T) / 2
    scale = 1.0 if absolute else float(torch.diagonal(want).mean())
    want = want + (diag_reg * scale) * torch.eye(40, dtype=torch.float64)
    got = regularize(k, diag_reg, absolute)
    assert got.dtype == torch.float64 and torch.equal(got, want)
    assert torch.equal(k, before)  # the input is not modified


def test_check_finite_accepts_finite_entries_whose_sum_overflows():
    from widenets.predict._validation import check_finite

    big = torch.full((3, 3), 1e308, dtype=torch.float64)
    check_finite(big, "k")  # the sum is inf, every entry finite
    for bad, where in ((math.inf, (1, 2)), (math.nan, (2, 0)), (-math.inf, (0, 1))):
        t = big.clone()
        t[where] = bad
        msg = f"`k` contains NaN or inf (first at index {where})"
        with pytest.raises(ValueError, match=re.escape(msg)):
            check_finite(t, "k")
