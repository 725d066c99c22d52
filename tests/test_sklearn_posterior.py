"""Predictive std and covariance of the scikit-learn regressors: in the units of y, equal to
the documented GP formulas computed independently, and calibrated on real data."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from sklearn.datasets import load_diabetes, make_regression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from widenets.sklearn import KernelCache, NNGPRegressor, NTKRegressor, fc_network

REGRESSORS = {"nngp": NNGPRegressor, "ntk": NTKRegressor}


def _data(n_out=1, seed=0):
    x, y = make_regression(
        n_samples=38, n_features=4, n_targets=n_out, noise=3.0, random_state=seed
    )
    if n_out > 1:
        y[:, 1] = 1000 * y[:, 1] + 5e4  # outputs on very different scales
    return x[:30], y[:30], x[30:]


def _by_hand(kind, depth, reg, t, xt, yt, xs):
    """Mean and covariance (N, N, O) of the documented model, with numpy/scipy only.

    A = Theta + lam I, lam = reg * mean(diag Theta); amplitude s2_o = y_o^T A^{-1} y_o / n;
    M = A^{-1} (I - expm(-A tau)), tau = t / y.size (M = A^{-1} at t = inf);
    cov_o = s2_o (Theta_ss - 2 Theta_s M Theta_s^T + Theta_s M A M Theta_s^T + lam I).
    """
    net = fc_network(depth)
    k = getattr(net.kernel(torch.tensor(xt)), kind).numpy()
    ks = getattr(net.kernel(torch.tensor(xs), torch.tensor(xt)), kind).numpy()
    kss = getattr(net.kernel(torch.tensor(xs)), kind).numpy()
    y = yt.reshape(len(yt), -1)
    yc = y - y.mean(0)
    n = len(k)
    lam = reg * np.trace(k) / n
    a = k + lam * np.eye(n)
    s2 = np.einsum("no,no->o", yc, np.linalg.solve(a, yc)) / n
    if math.isinf(t):
        m = np.linalg.inv(a)
    else:
        m = np.linalg.solve(a, np.eye(n) - scipy.linalg.expm(-a * t / yc.size))
    c = kss - 2 * ks @ m @ ks.T + ks @ m @ a @ m @ ks.T + lam * np.eye(len(xs))
    return y.mean(0) + ks @ m @ yc, c[:, :, None] * s2, s2, lam


@pytest.mark.parametrize("kind", ["nngp", "ntk"])
@pytest.mark.parametrize("t", [math.inf, 40.0])
def test_std_and_cov_equal_the_documented_formula_by_hand(kind, t):
    reg = 1e-2
    for n_out in (1, 2):
        xt, yt, xs = _data(n_out)
        model = REGRESSORS[kind](depth=2, diag_reg=reg, t=t).fit(xt, yt)
        mean, cov, s2, lam = _by_hand(kind, 2, reg, t, xt, yt, xs)
        pred, std = model.predict(xs, return_std=True)
        _, pcov = model.predict(xs, return_cov=True)
        if n_out == 1:
            mean, cov = mean[:, 0], cov[:, :, 0]
            assert std.shape == (8,) and pcov.shape == (8, 8)
        else:
            assert std.shape == (8, 2) and pcov.shape == (8, 8, 2)
        np.testing.assert_allclose(model.amplitude_, s2, rtol=1e-9)
        np.testing.assert_allclose(model.noise_variance_, s2 * lam, rtol=1e-9)
        np.testing.assert_allclose(pred, mean, rtol=1e-8, atol=1e-8 * np.abs(mean).max())
        diag = np.diagonal(cov).T if n_out == 1 else np.diagonal(cov, 0, 0, 1).T
        np.testing.assert_allclose(std, np.sqrt(diag), rtol=1e-7)
        np.testing.assert_allclose(pcov, cov, rtol=1e-7, atol=1e-9 * np.abs(cov).max())


def test_std_is_in_the_units_of_y():
    xt, yt, xs = _data()
    for cls in REGRESSORS.values():
        _, std = cls(diag_reg=1e-2).fit(xt, yt).predict(xs, return_std=True)
        _, std1000 = cls(diag_reg=1e-2).fit(xt, 1000 * yt).predict(xs, return_std=True)
        _, shifted = cls(diag_reg=1e-2).fit(xt, yt + 1e4).predict(xs, return_std=True)
        np.testing.assert_allclose(std1000, 1000 * std, rtol=1e-12)
        np.testing.assert_allclose(shifted, std, rtol=1e-9)  # the mean is removed first


def test_cov_diagonal_is_std_squared_and_cov_is_psd():
    xt, yt, xs = _data(n_out=2)
    for cls in REGRESSORS.values():
        for t in (math.inf, 10.0):
            model = cls(diag_reg=1e-3, t=t).fit(xt, yt)
            _, std = model.predict(xs, return_std=True)
            _, cov = model.predict(xs, return_cov=True)
            for o in range(2):
                c = cov[:, :, o]
                np.testing.assert_allclose(np.diag(c), std[:, o] ** 2, rtol=1e-10)
                np.testing.assert_array_equal(c, c.T)
                assert np.linalg.eigvalsh(c).min() > -1e-10 * np.abs(c).max()
            with pytest.raises(ValueError, match="`return_std` and `return_cov` cannot both"):
                model.predict(xs, return_std=True, return_cov=True)


def test_std_is_the_spread_of_sample_then_optimise_ensembles():
    """The documented meaning at finite t: f_t = f_0 + Theta_x M (y - f_0(X) - eps) with
    f_0 ~ GP(0, s2 Theta), eps ~ N(0, s2 lam I), plus new noise N(0, s2 lam) (Monte Carlo)."""
    xt, yt, xs = _data()
    t, reg, draws = 30.0, 1e-2, 40_000
    model = NTKRegressor(depth=2, diag_reg=reg, t=t).fit(xt, yt)
    _, std = model.predict(xs, return_std=True)
    net = fc_network(2)
    xa = torch.tensor(np.concatenate([xt, xs]))
    theta = net.kernel(xa).ntk.numpy()
    n = len(xt)
    lam = reg * np.trace(theta[:n, :n]) / n
    a = theta[:n, :n] + lam * np.eye(n)
    m = np.linalg.solve(a, np.eye(n) - scipy.linalg.expm(-a * t / n))
    s2 = model.amplitude_[0]
    rng = np.random.default_rng(0)
    f0 = rng.multivariate_normal(np.zeros(len(xa)), s2 * theta, size=draws, method="eigh")
    eps = rng.normal(scale=np.sqrt(s2 * lam), size=(draws, n))
    new = rng.normal(scale=np.sqrt(s2 * lam), size=(draws, len(xs)))
    ft = f0[:, n:] - (f0[:, :n] + eps) @ (theta[n:, :n] @ m).T + new
    # the sample variance of Gaussian draws has relative standard error sqrt(2 / draws) = 0.7%
    np.testing.assert_allclose(ft.var(0), std**2, rtol=5 * math.sqrt(2 / draws))


def test_log_marginal_likelihood_equals_the_gaussian_density():
    xt, yt, _ = _data(n_out=2)
    for kind, cls in REGRESSORS.items():
        model = cls(depth=2, diag_reg=0.1).fit(xt, yt)
        k = getattr(fc_network(2).kernel(torch.tensor(xt)), kind).numpy()
        a = k + 0.1 * np.trace(k) / len(k) * np.eye(len(k))
        yc = yt - yt.mean(0)
        expected = sum(
            scipy.stats.multivariate_normal(cov=s2 * a).logpdf(yc[:, o])
            for o, s2 in enumerate(model.amplitude_)
        )
        assert model.log_marginal_likelihood() == pytest.approx(expected, rel=1e-10)
    dup = np.concatenate([xt, xt])
    singular = NNGPRegressor(diag_reg=0.0).fit(dup, np.concatenate([yt[:, 0], yt[:, 0]]))
    with pytest.raises(ValueError, match="singular or the targets are constant.*`diag_reg`"):
        singular.log_marginal_likelihood()


def _diabetes_coverage(cls, splits=5, regs=(1e-2, 1e-1, 1.0, 10.0)):
    """Pooled fraction of test targets inside mean +- 1.96 std over ``splits`` random 70/30
    splits, diag_reg chosen on each training part by the marginal likelihood."""
    x, y = load_diabetes(return_X_y=True)
    inside = []
    for seed in range(splits):
        xt, xs, yt, ys = train_test_split(x, y, test_size=0.3, random_state=seed)
        scaler = StandardScaler().fit(xt)
        xt, xs = scaler.transform(xt), scaler.transform(xs)
        cache = KernelCache()
        fits = [cls(depth=2, diag_reg=r, kernel_cache=cache).fit(xt, yt) for r in regs]
        best = max(fits, key=lambda m: m.log_marginal_likelihood())
        mean, std = best.predict(xs, return_std=True)
        inside.append(np.abs(ys - mean) <= scipy.stats.norm.ppf(0.975) * std)
    return np.concatenate(inside).mean()


@pytest.mark.parametrize("cls", [NNGPRegressor, NTKRegressor], ids=lambda c: c.__name__)
def test_95_percent_intervals_cover_95_percent_of_diabetes_test_targets(cls):
    # 5 splits x 133 test targets = 665: for calibrated intervals the binomial standard error
    # of the coverage is sqrt(0.95 * 0.05 / 665) = 0.0085; the splits overlap, so the points
    # are not independent and the true spread is larger: 0.03 is 3.5 binomial standard errors.
    # The uncalibrated std (before the amplitude was fitted) covered a few percent. The
    # coverages and GaussianProcessRegressor's on the same splits: bench/sklearn_calibration.py
    assert abs(_diabetes_coverage(cls) - 0.95) < 0.03
