"""scikit-learn estimators: the estimator contract, model selection, predictions, bad input."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris, make_regression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import widenets as wn
from widenets.sklearn import (
    NNGPClassifier,
    NNGPRegressor,
    NTKClassifier,
    NTKRegressor,
    _argmax_probabilities,
    fc_network,
)

ESTIMATORS = [NNGPRegressor, NTKRegressor, NNGPClassifier, NTKClassifier]


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_check_estimator_passes(cls):
    # every check of scikit-learn's suite passes; none is skipped as an expected failure
    results = check_estimator(cls(), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) >= 50


def test_grid_search_over_depth_and_diag_reg_in_pipeline():
    x, y = load_iris(return_X_y=True)
    pipe = Pipeline([("scale", StandardScaler()), ("ntk", NTKClassifier())])
    grid = {"ntk__depth": [1, 3], "ntk__diag_reg": [1e-4, 1e-1]}
    search = GridSearchCV(pipe, grid, cv=3).fit(x, y)
    assert set(search.best_params_) == {"ntk__depth", "ntk__diag_reg"}
    assert search.cv_results_["mean_test_score"].shape == (4,)
    assert search.best_score_ > 0.85
    scores = cross_val_score(
        Pipeline([("s", StandardScaler()), ("m", NNGPClassifier(depth=2))]), x, y, cv=3
    )
    assert scores.mean() > 0.85


def _kernels(depth, x1, x2=None):
    return fc_network(depth).kernel(
        torch.as_tensor(x1), None if x2 is None else torch.as_tensor(x2)
    )


def test_regressor_mean_is_kernel_ridge_regression():
    x, y = make_regression(n_samples=40, n_features=5, noise=0.5, random_state=0)
    xt, yt = x[:30], y[:30]
    reg = 1e-2
    for cls, kind in [(NNGPRegressor, "nngp"), (NTKRegressor, "ntk")]:
        model = cls(depth=2, diag_reg=reg).fit(xt, yt)
        k = getattr(_kernels(2, xt), kind).numpy()
        ks = getattr(_kernels(2, x[30:], xt), kind).numpy()
        lam = reg * np.trace(k) / len(k)
        expected = yt.mean() + ks @ np.linalg.solve(k + lam * np.eye(len(k)), yt - yt.mean())
        np.testing.assert_allclose(model.predict(x[30:]), expected, rtol=1e-8, atol=1e-8)


def test_nngp_std_is_gp_posterior_and_finite_t_interpolates():
    x, y = make_regression(n_samples=25, n_features=3, random_state=1)
    reg = 1e-3
    model = NNGPRegressor(depth=1, diag_reg=reg).fit(x[:20], y[:20])
    _, std = model.predict(x[20:], return_std=True)
    k = _kernels(1, x[:20]).nngp.numpy()
    ks = _kernels(1, x[20:], x[:20]).nngp.numpy()
    kss = _kernels(1, x[20:]).nngp.numpy()
    a = k + reg * np.trace(k) / len(k) * np.eye(len(k))
    var = np.diag(kss - ks @ np.linalg.solve(a, ks.T))
    np.testing.assert_allclose(std, np.sqrt(var), rtol=1e-6)
    # t = 0: nothing learned, the prediction is the prior mean and the std the prior std
    m0 = NTKRegressor(depth=1, t=0.0).fit(x[:20], y[:20])
    mean0, std0 = m0.predict(x[20:], return_std=True)
    np.testing.assert_allclose(mean0, y[:20].mean())
    np.testing.assert_allclose(std0, np.sqrt(np.diag(kss)), rtol=1e-10)
    # finite t lies between t = 0 and t = inf on the training points
    fit = lambda t: NTKRegressor(depth=1, t=t, diag_reg=0).fit(x[:20], y[:20]).predict(x[:20])  # noqa: E731
    err = [np.abs(fit(t) - y[:20]).mean() for t in (1.0, 100.0, math.inf)]
    assert err[0] > err[1] > err[2]
    assert err[2] < 1e-6 * np.abs(y).mean()


def test_predict_proba_is_argmax_probability_of_gaussian_outputs():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=(4, 3)), np.array([0.3, 1.0, 2.0, 0.0])
    p = _argmax_probabilities(mean, std)
    np.testing.assert_allclose(p.sum(1), 1.0)
    samples = mean[:, None, :] + std[:, None, None] * rng.normal(size=(4, 200_000, 3))
    freq = np.stack([(samples.argmax(2) == c).mean(1) for c in range(3)], 1)
    np.testing.assert_allclose(p, freq, atol=5e-3)  # MC standard error < 1.2e-3
    x, y = load_iris(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    for cls in (NNGPClassifier, NTKClassifier):
        clf = cls(depth=2, diag_reg=1e-2).fit(x[::2], y[::2])
        proba = clf.predict_proba(x[1::2])
        np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(x[1::2]))
        assert clf.score(x[1::2], y[1::2]) > 0.8  # chance: 1/3


def test_network_architecture_and_string_labels():
    x, y = load_iris(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    net = wn.serial(wn.Dense(64, 1.3, 0.1), wn.Erf(), wn.Dense(1, 1.3, 0.1))
    clf = NTKClassifier(architecture=net).fit(x, labels)
    assert clf.predict(x).dtype == labels.dtype
    assert clf.score(x, labels) > 0.95
    # binary: decision_function is f_1 - f_0, positive for classes_[1]
    b = NNGPClassifier().fit(x[y < 2], labels[y < 2])
    d = b.decision_function(x[y < 2])
    assert d.shape == ((y < 2).sum(),)
    np.testing.assert_array_equal(b.predict(x[y < 2]), b.classes_[(d > 0).astype(int)])


def test_bad_input_gives_sklearn_errors():
    x, y = load_iris(return_X_y=True)
    xs = x.astype(object)
    xs[0, 0] = "a"
    with pytest.raises(ValueError, match="could not convert string to float"):
        NTKClassifier().fit(xs, y)
    with pytest.raises(ValueError, match="has to be greater than one; got 1 class"):
        NTKClassifier().fit(x, np.zeros(len(x)))
    xn = x.copy()
    xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        NNGPRegressor().fit(xn, y)
    with pytest.raises(ValueError, match="Unknown label type"):
        NNGPClassifier().fit(x, y + 0.5)
    with pytest.raises(ValueError, match="`architecture` must be one of"):
        NTKRegressor(architecture="cnn").fit(x, y)
    with pytest.raises(ValueError, match="`activation` must be one of"):
        NTKRegressor(activation="swish").fit(x, y)
    with pytest.raises(ValueError, match="`diag_reg` must be"):
        NTKRegressor(diag_reg=-1).fit(x, y)
    with pytest.raises(ValueError, match="`t` must be"):
        NTKRegressor(t=-1).fit(x, y)
    model = NTKRegressor().fit(x, y)
    with pytest.raises(ValueError, match="features"):
        model.predict(x[:, :2])
