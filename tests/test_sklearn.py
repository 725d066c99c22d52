"""scikit-learn estimators: the estimator contract, model selection, predictions, bad input."""

import copy
import gc
import math
import pickle
import weakref

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_iris, make_regression
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import widenets as wn
import widenets.kernel_cache as kc
from widenets.sklearn import (
    KernelCache,
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


def test_finite_t_interpolates_between_prior_and_kernel_regression():
    x, y = make_regression(n_samples=25, n_features=3, random_state=1)
    # t = 0: nothing learned, the prediction is the prior mean
    m0 = NTKRegressor(depth=1, t=0.0).fit(x[:20], y[:20])
    np.testing.assert_allclose(m0.predict(x[20:]), y[:20].mean())
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


# ----- input_shape: structured networks on flat feature rows ------------------------------------


def _sequences(n=60, length=12, seed=0):
    """Three classes of noisy 1-D bumps at random positions (flat rows (n, length))."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    pos = np.arange(length)
    x = np.empty((n, length))
    for i in range(n):
        c = rng.integers(2, length - 2)
        bump = np.exp(-0.5 * (pos - c) ** 2)
        x[i] = [bump, np.sin(pos - c) * bump, -bump][y[i]] + 0.3 * rng.normal(size=length)
    return x, y


def _cnn(kernel_size=3):
    return wn.serial(
        wn.Conv(8, kernel_size, w_std=1.5, b_std=0.1),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, 1.5, 0.1),
    )


def test_input_shape_reshapes_rows_for_a_convolutional_network():
    x, y = _sequences()
    xt, yt, xs = x[:45], y[:45], x[45:]
    net, reg = _cnn(), 1e-2
    clf = NTKClassifier(architecture=net, input_shape=(1, 12), diag_reg=reg).fit(xt, yt)
    k = net.kernel(torch.tensor(xt).reshape(45, 1, 12)).ntk.numpy()
    ks = net.kernel(torch.tensor(xs).reshape(15, 1, 12), torch.tensor(xt).reshape(45, 1, 12))
    targets = np.eye(3)[yt] - 1.0 / 3
    lam = reg * np.trace(k) / len(k)
    expected = ks.ntk.numpy() @ np.linalg.solve(k + lam * np.eye(len(k)), targets)
    np.testing.assert_allclose(clf.decision_function(xs), expected, rtol=1e-9, atol=1e-12)
    # channel-major C order: (2, 6) reads the first 6 features as channel 0, a different kernel
    two = NTKClassifier(architecture=net, input_shape=(2, 6), diag_reg=reg).fit(xt, yt)
    assert not np.allclose(two.decision_function(xs), expected)
    # a list is accepted like a tuple; on bumps at random positions the translation-invariant
    # kernel beats the fully-connected one (measured: 0.91 against 0.80 on 45 test rows)
    x, y = _sequences(n=90)
    cnn = NNGPClassifier(architecture=net, input_shape=[1, 12], diag_reg=0.1).fit(x[:45], y[:45])
    fc = NNGPClassifier(diag_reg=0.1).fit(x[:45], y[:45])
    assert cnn.score(x[45:], y[45:]) > fc.score(x[45:], y[45:]) + 0.05


def test_input_shape_and_network_errors():
    x, y = _sequences(n=30)
    net = _cnn()
    with pytest.raises(ValueError, match=r"set|`input_shape`.*e\.g\. \(1, 12\)"):
        NTKClassifier(architecture=net).fit(x, y)  # flat rows into a Conv: the hint names it
    with pytest.raises(ValueError, match=r"`input_shape` \(1, 11\) holds 11 values .* 12 features"):
        NTKClassifier(architecture=net, input_shape=(1, 11)).fit(x, y)
    for bad in ("ab", (1, 0), (1.5, 8), (), (True, 12)):
        with pytest.raises(ValueError, match="`input_shape` must be None or a tuple"):
            NTKClassifier(architecture=net, input_shape=bad).fit(x, y)
    no_readout = wn.serial(wn.Conv(4, 3, w_std=1.5), wn.Relu())
    with pytest.raises(ValueError, match=r"must be \(N1, N2\).*readout"):
        NNGPRegressor(architecture=no_readout, input_shape=(1, 12)).fit(x, y.astype(float))
    with pytest.raises(ValueError, match="`kernel_cache` must be None or a widenets"):
        NTKClassifier(kernel_cache={}).fit(x, y)
    model = NTKClassifier(architecture=net, input_shape=(1, 12)).fit(x, y)
    with pytest.raises(ValueError, match="features"):
        model.predict(x[:, :6])


# ----- KernelCache: shared kernels across clones, folds and settings ----------------------------


def test_kernel_cache_grid_search_equals_uncached_and_computes_each_pair_once():
    x, y = _sequences(n=48)
    grid = {
        "m__architecture": [_cnn(3), _cnn(5)],
        "m__diag_reg": [1e-3, 1e-1, 1.0],
    }
    cv = StratifiedKFold(3, shuffle=True, random_state=0)

    def search(cache):
        est = NTKClassifier(input_shape=(1, 12), kernel_cache=cache)
        # a stateless step: the rows reaching the estimator are the same in every fold
        pipe = Pipeline([("s", FunctionTransformer()), ("m", est)])
        return GridSearchCV(pipe, grid, cv=cv).fit(x[:36], y[:36])

    cache = KernelCache()
    cached, plain = search(cache), search(None)
    np.testing.assert_allclose(
        cached.cv_results_["mean_test_score"], plain.cv_results_["mean_test_score"]
    )
    np.testing.assert_allclose(
        cached.decision_function(x[36:]), plain.decision_function(x[36:]), rtol=1e-10, atol=1e-13
    )
    np.testing.assert_allclose(
        cached.predict_proba(x[36:]), plain.predict_proba(x[36:]), rtol=1e-8, atol=1e-12
    )
    # 2 networks: each computed at most the kernel of its 36 training rows with themselves
    # plus the 12 test rows against them, although 6 settings x 3 folds + refit asked for more
    assert cache.pairs_computed <= 2 * (36 * 36 + 12 * 36)
    assert cache.pairs_served > 5 * cache.pairs_computed
    # the cache now answers a repeated search without computing anything
    before = cache.pairs_computed
    search(cache)
    assert cache.pairs_computed == before


def test_kernel_cache_keys_networks_by_configuration_and_rows_by_bytes():
    x, _ = _sequences(n=20)
    cache = KernelCache()
    a = cache.kernels(_cnn(3), x, input_shape=(1, 12))
    b = cache.kernels(_cnn(5), x, input_shape=(1, 12))  # another network: computed, not looked up
    assert not torch.allclose(a.ntk, b.ntk)
    d3 = wn.serial(wn.Conv(8, 3, w_std=1.6, b_std=0.1), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    assert not torch.allclose(cache.kernels(d3, x, input_shape=(1, 12)).nngp, a.nngp)
    assert not torch.allclose(cache.kernels(_cnn(3), x, input_shape=(2, 6)).nngp, a.nngp)
    # an equal configuration (a new object, e.g. a clone's deep copy) is a hit
    n = cache.pairs_computed
    again = cache.kernels(_cnn(3), x[::-1].copy(), input_shape=(1, 12))
    assert cache.pairs_computed == n
    torch.testing.assert_close(again.ntk, a.ntk.flip(0, 1), rtol=0, atol=0)
    # Elementwise functions are compared by identity: two different functions never collide
    f = wn.serial(wn.Dense(4, 1.5, 0.1), wn.Elementwise(torch.tanh), wn.Dense(1, 1.5, 0.1))
    g = wn.serial(wn.Dense(4, 1.5, 0.1), wn.Elementwise(torch.sin), wn.Dense(1, 1.5, 0.1))
    assert not torch.allclose(cache.kernels(f, x).nngp, cache.kernels(g, x).nngp)


def test_kernel_cache_never_gives_one_function_the_entry_of_another():
    """Functions inside Elementwise are keyed by identity; the key keeps each function alive,
    so a function collected after its entry was stored cannot hand its id (and that entry)
    to a new one. Each new lambda here is dropped and collected before the next is made,
    which in CPython usually reuses the same address."""
    x, _ = _sequences(n=6)
    cache = KernelCache()
    for i in range(6):
        fn = lambda z, a=1.0 + 0.25 * i: torch.tanh(a * z)  # noqa: E731
        net = wn.serial(wn.Dense(4, 1.5, 0.1), wn.Elementwise(fn, degree=8), wn.Dense(1, 1.5))
        direct = net.kernel(torch.tensor(x))
        got = cache.kernels(net, x)
        torch.testing.assert_close(got.nngp, direct.nngp, rtol=1e-12, atol=0)
        del fn, net, got
        gc.collect()
    assert len(cache._stores) == 6


def test_kernel_cache_blocks_match_direct_kernels():
    x, _ = _sequences(n=40)
    net = _cnn()
    direct = net.kernel(torch.tensor(x).reshape(40, 1, 12))
    cache = KernelCache()
    # fit on rows 0-19, predict 20-29 against them, fit on 10-34 (a mix of known and new
    # pairs), then predict rows 5-39 (some of them training rows) against rows 0-29
    cache.kernels(net, x[:20], input_shape=(1, 12))
    cache.kernels(net, x[20:30], x[:20], input_shape=(1, 12))
    cache.kernels(net, x[10:35], input_shape=(1, 12))
    k = cache.kernels(net, x[5:40], x[:30], input_shape=(1, 12))
    for name in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(k, name), getattr(direct, name)[5:40, :30])
    torch.testing.assert_close(k.cov1, direct.cov1[5:40])
    torch.testing.assert_close(k.cov2, direct.cov1[:30])
    full = cache.kernels(net, x, input_shape=(1, 12))
    torch.testing.assert_close(full.ntk, direct.ntk)
    assert torch.equal(full.ntk, full.ntk.T) and torch.equal(full.nngp, full.nngp.T)


def test_kernel_cache_keeps_rows_never_asked_together_apart():
    """Folds whose rows a per-fold scaler moved share no row: each is its own group, so the
    memory is that of the groups, not of every pair of rows ever seen; a request that joins
    groups merges them, and every entry it returns equals the direct kernel."""
    x, _ = _sequences(n=40)
    net = _cnn()
    direct = net.kernel(torch.tensor(x).reshape(40, 1, 12))
    cache = KernelCache()
    cache.reused = True  # as after a first reuse: computed blocks are held, not weakly referenced
    for g in range(4):
        cache.kernels(net, x[10 * g : 10 * g + 10], input_shape=(1, 12))
    ten = 10 * 10 * 16 + 10 * (8 * 12 + 8)  # bytes of the kernels and rows of 10 rows
    assert cache.nbytes == 4 * ten  # one store of all 40 rows: 40 * 40 * 17 + ... bytes
    k = cache.kernels(net, x[::2], x, input_shape=(1, 12))  # joins the four groups
    for name in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(k, name), getattr(direct, name)[::2])
    torch.testing.assert_close(k.cov2, direct.cov1)
    n = cache.pairs_computed
    full = cache.kernels(net, x, input_shape=(1, 12))
    assert torch.equal(full.ntk, full.ntk.T)
    torch.testing.assert_close(full.ntk, direct.ntk)
    assert cache.pairs_computed - n < 40 * 40  # the pairs known before were not recomputed


def test_kernel_cache_memory_bound_eviction_and_bypass():
    x, _ = _sequences(n=30)
    one = 30 * 30 * 17 + 30 * (8 * 12 + 9)  # bytes of one network's store of 30 rows
    cache = KernelCache(max_bytes=one)
    cache.reused = True  # computed blocks are held (see the test of weak references below)
    cache.kernels(_cnn(3), x, input_shape=(1, 12))
    assert cache.nbytes <= one
    cache.kernels(_cnn(5), x, input_shape=(1, 12))  # evicts the first network
    assert cache.nbytes <= one and len(cache._stores) == 1
    n = cache.pairs_computed
    cache.kernels(_cnn(3), x, input_shape=(1, 12))
    assert cache.pairs_computed == n + 900  # recomputed after eviction
    tiny = KernelCache(max_bytes=1000)  # too small for anything: computed directly, correct
    k = tiny.kernels(_cnn(3), x, input_shape=(1, 12))
    direct = _cnn(3).kernel(torch.tensor(x).reshape(30, 1, 12))
    torch.testing.assert_close(k.ntk, direct.ntk)
    assert tiny.nbytes == 0
    for bad in (0, -5, 1.5, "1GB", True):
        with pytest.raises(ValueError, match="`max_bytes` must be a positive integer"):
            KernelCache(max_bytes=bad)

    # before any reuse: the latest results held by the cache count against the bound too
    weak = KernelCache(max_bytes=one)
    held = [weak.kernels(_cnn(3), x[i : i + 10] + i, input_shape=(1, 12)) for i in range(6)]
    assert weak.nbytes <= one and len(held) == 6
    # joined groups: the merged store of 30 rows fits the bound, 40 rows would not
    big = KernelCache(max_bytes=one)
    big.reused = True
    big.kernels(_cnn(3), x[:15], input_shape=(1, 12))
    big.kernels(_cnn(3), x[15:], input_shape=(1, 12))
    joined = big.kernels(_cnn(3), x, input_shape=(1, 12))  # all 30 rows in one store
    assert big.nbytes <= one
    torch.testing.assert_close(joined.ntk, direct.ntk, rtol=1e-12, atol=1e-14)
    x40, _ = _sequences(n=40)
    k40 = big.kernels(_cnn(3), x40, input_shape=(1, 12))  # needs more than the bound: direct
    assert big.nbytes <= one
    torch.testing.assert_close(
        k40.ntk, _cnn(3).kernel(torch.tensor(x40).reshape(40, 1, 12)).ntk, rtol=1e-12, atol=1e-14
    )


def test_kernel_cache_holds_nothing_until_a_request_reuses_something():
    """Until a request reuses an entry, a computed block is referenced weakly: a search where
    nothing is shared keeps no kernel memory alive; the first reuse of a block still held by
    its caller costs no computation, and from then on blocks are held by the cache."""
    x, _ = _sequences(n=30)
    cache = KernelCache()
    net = _cnn(3)
    k = cache.kernels(net, x[:20], input_shape=(1, 12))
    ref = weakref.ref(k.ntk)
    for i in range(4):  # more results, none reusing anything
        cache.kernels(net, x[20:] + i + 1, input_shape=(1, 12))
    del k
    gc.collect()
    assert ref() is None  # the cache did not keep the kernel alive
    # the 60 rows and their variances only (8 bytes per feature and per variance), no kernel
    assert not cache.reused and cache.nbytes == (20 + 4 * 10) * (8 * 12 + 8)
    n = cache.pairs_computed
    again = cache.kernels(net, x[:20], input_shape=(1, 12))  # a reuse, but its block was freed
    assert cache.pairs_computed == n + 400 and cache.reused
    # a new block, now held by the cache: served again without computing, the same tensors
    t = cache.kernels(net, x[20:], x[:20], input_shape=(1, 12))
    ident = id(t.ntk)
    del t
    gc.collect()
    n = cache.pairs_computed
    t = cache.kernels(net, x[20:], x[:20], input_shape=(1, 12))
    assert cache.pairs_computed == n and id(t.ntk) == ident
    direct = net.kernel(torch.tensor(x).reshape(30, 1, 12))
    torch.testing.assert_close(t.ntk, direct.ntk[20:, :20], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(again.nngp, direct.nngp[:20, :20], rtol=1e-12, atol=1e-14)
    # a block alive with its caller is promoted on its first reuse without computing
    fresh = KernelCache()
    held = fresh.kernels(net, x, input_shape=(1, 12))
    m = fresh.pairs_computed
    assert fresh.kernels(net, x, input_shape=(1, 12)).ntk is held.ntk
    assert fresh.pairs_computed == m and fresh.nbytes >= 30 * 30 * 16


def test_kernel_cache_tensors_changed_in_place_are_an_error_not_a_wrong_kernel():
    x, _ = _sequences(n=20)
    net = _cnn(3)
    for reused in (False, True):  # a weakly referenced block and a held one
        cache = KernelCache()
        cache.reused = reused
        k = cache.kernels(net, x, input_shape=(1, 12))
        k.ntk.mul_(2.0)
        with pytest.raises(RuntimeError, match="modified in place"):
            cache.kernels(net, x, input_shape=(1, 12))  # the same request
        with pytest.raises(RuntimeError, match="modified in place"):
            cache.kernels(net, x[:5], x[5:], input_shape=(1, 12))  # some of its entries
        cache.clear()
        k2 = cache.kernels(net, x, input_shape=(1, 12))  # after clear: computed afresh
        torch.testing.assert_close(k2.ntk, k.ntk / 2.0)


@pytest.mark.parametrize("scaler", [False, True], ids=["no-scaler", "scaler"])
def test_kernel_cache_grid_search_with_and_without_scaler_equals_uncached(scaler):
    """Every cache path (weak blocks, held blocks, joined stores, exact repeats) against no
    cache, on a search whose folds share rows (no scaler) or do not (a per-fold scaler)."""
    g = np.random.default_rng(1)
    x = g.standard_normal((45, 4))
    y = x[:, 0] - 0.5 * x[:, 1] ** 2 + 0.1 * g.standard_normal(45)
    grid = {"m__diag_reg": [1e-3, 1e-1], "m__depth": [1, 2], "m__w_std": [1.0, 1.5]}

    def search(cache):
        steps = [("s", StandardScaler())] if scaler else [("s", FunctionTransformer())]
        pipe = Pipeline(steps + [("m", NTKRegressor(kernel_cache=cache))])
        cv = KFold(3, shuffle=True, random_state=0)
        return GridSearchCV(pipe, grid, cv=cv).fit(x[:36], y[:36])

    cache = KernelCache()
    cached, plain = search(cache), search(None)
    np.testing.assert_allclose(
        cached.cv_results_["mean_test_score"], plain.cv_results_["mean_test_score"], rtol=1e-12
    )
    mean_c, std_c = cached.best_estimator_.predict(x[36:], return_std=True)
    mean_p, std_p = plain.best_estimator_.predict(x[36:], return_std=True)
    np.testing.assert_allclose(mean_c, mean_p, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std_c, std_p, rtol=1e-12, atol=1e-12)
    assert cache.reused  # each network is tried at two diag_reg values
    # fewer entries computed than asked for (8 settings x 3 folds, fit + score, + refit): with
    # a scaler, the two networks tried before the first reuse are computed twice, the other
    # two once (3/4 of the asks); without one, the folds also share rows
    assert cache.pairs_computed < (0.8 if scaler else 0.5) * cache.pairs_served


def test_kernel_cache_is_shared_by_clones_and_pickles_empty():
    cache = KernelCache(max_bytes=10**8)
    est = NTKClassifier(kernel_cache=cache)
    assert clone(est).kernel_cache is cache
    assert copy.deepcopy(cache) is cache
    x, y = load_iris(return_X_y=True)
    est.fit(x, y)
    assert cache.nbytes > 0
    restored = pickle.loads(pickle.dumps(est))
    assert restored.kernel_cache is not cache
    assert restored.kernel_cache.max_bytes == 10**8 and restored.kernel_cache.nbytes == 0
    np.testing.assert_array_equal(restored.predict(x), est.predict(x))


@pytest.mark.parametrize("cls", [NNGPRegressor, NTKClassifier], ids=lambda c: c.__name__)
def test_check_estimator_passes_with_a_kernel_cache(cls):
    results = check_estimator(cls(kernel_cache=KernelCache()), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed, failed


def test_errors_name_what_the_user_passed_not_internal_arguments():
    """Inputs whose kernel overflows: the estimator's error names `X`, never k_train_train
    or x1 (arguments the user of an estimator never passed)."""
    g = np.random.default_rng(0)
    X, y = g.standard_normal((6, 3)), g.standard_normal(6)
    for est in (NTKRegressor(), NNGPRegressor()):
        with pytest.raises(ValueError) as err:
            est.fit(X * 1e200, y)
        msg = str(err.value)
        assert "`X`" in msg, msg
        assert "k_train_train" not in msg and "`x1`" not in msg and "\n" not in msg


@pytest.mark.parametrize("rows", ["run", "scattered"])
@pytest.mark.parametrize("cols", ["run", "scattered"])
def test_kernel_cache_take_equals_numpy_block_indexing(rows, cols):
    """The store's gather (slices where the indices are runs) equals ``a[np.ix_(i1, i2)]``
    and never returns a view of the store."""
    from widenets.kernel_cache import _take

    a = np.arange(90.0).reshape(9, 10)
    idx = {"run": np.arange(2, 6), "scattered": np.array([0, 3, 4, 8])}
    i1, i2 = idx[rows], idx[cols]
    out = _take(a, i1, i2)
    assert np.array_equal(out, a[np.ix_(i1, i2)])
    out[...] = -1
    assert (a >= 0).all()


def test_kernel_cache_folds_compute_only_the_new_pairs_and_match_direct_kernels():
    """Three folds A, B, C of a search on fixed rows: fit A+B, predict C against A+B, then fit
    A+C computes only C x C (A x C is known from the prediction) and every kernel returned
    equals the direct one; the rows of the kept results become runs of the store, so all
    writes take the slice path."""
    import widenets.kernel_cache as kc

    x, _ = _sequences(n=30)
    net = _cnn()
    direct = net.kernel(torch.tensor(x).reshape(30, 1, 12))
    a, b, c = np.arange(0, 30, 3), np.arange(1, 30, 3), np.arange(2, 30, 3)
    ab, ac = np.sort(np.r_[a, b]), np.sort(np.r_[a, c])
    cache = KernelCache()
    k_ab = cache.kernels(net, x[ab], input_shape=(1, 12))
    k_c = cache.kernels(net, x[c], x[ab], input_shape=(1, 12))
    before = cache.pairs_computed
    writes = []
    general = kc.KernelCache._write

    def spy(self, store, r, cl, *args):
        writes.append(kc._span(r) is not None and kc._span(cl) is not None)
        return general(self, store, r, cl, *args)

    kc.KernelCache._write = spy
    try:
        k_ac = cache.kernels(net, x[ac], input_shape=(1, 12))
    finally:
        kc.KernelCache._write = general
    assert cache.pairs_computed - before == len(c) * len(c)
    assert writes and all(writes)
    for k, i1, i2 in ((k_ab, ab, ab), (k_c, c, ab), (k_ac, ac, ac)):
        for name in ("nngp", "ntk"):
            torch.testing.assert_close(
                getattr(k, name), getattr(direct, name)[np.ix_(i1, i2)], rtol=1e-12, atol=0
            )
    assert torch.equal(k_ac.ntk, k_ac.ntk.T)


def test_kernel_cache_key_computed_once_serves_the_same_entries():
    x, _ = _sequences(n=12)
    net = _cnn()
    cache = KernelCache()
    key = KernelCache.key(net, (1, 12), 12)
    assert key == KernelCache.key(_cnn(), (1, 12), 12)  # equal networks, equal keys
    k1 = cache.kernels(net, x, input_shape=(1, 12), key=key)
    k2 = cache.kernels(net, x, input_shape=(1, 12))
    assert k1.ntk is k2.ntk
    with pytest.raises(ValueError, match="`key` was made for rows of 11 features"):
        cache.kernels(net, x, key=KernelCache.key(net, None, 11))


def _fc():
    return wn.serial(wn.Dense(16, 1.5, 0.1), wn.Relu(), wn.Dense(1, 1.5, 0.1))


@pytest.mark.parametrize("weak_hashes", [False, True])
def test_kernel_cache_computed_and_repeated_results_equal_direct_bit_for_bit(
    weak_hashes, monkeypatch
):
    """A result computed with nothing known, and its exact repeat (passed as other array
    objects with the same bits), are bit for bit those of a direct call; with every row
    hashing alike and every array probing alike (as colliding hashes would), the same."""
    if weak_hashes:
        monkeypatch.setattr(kc, "_row_hashes", lambda x: np.zeros(len(x), dtype=np.uint64))
        monkeypatch.setattr(kc, "_probe", lambda x: ())
    g = np.random.default_rng(3)
    net = _fc()
    cache = KernelCache()
    folds = [(g.standard_normal((20, 5)), g.standard_normal((9, 5))) for _ in range(3)]
    held = []  # the first pass's results, alive as an estimator keeps them
    for n_pass in range(2):  # the second pass repeats every request (with new array objects)
        for tr, te in folds:
            for x1, x2 in ((tr, None), (te, tr)):
                got = cache.kernels(net, x1.copy(), None if x2 is None else x2.copy())
                want = kc.direct_kernels(net, x1, x2, None)
                for name in ("nngp", "ntk", "cov1", "cov2"):
                    assert torch.equal(getattr(got, name), getattr(want, name)), name
                if n_pass == 0:
                    held.append(got)
                else:  # served from the kept block: the very tensors returned before
                    assert got.ntk is held.pop(0).ntk
        if n_pass == 0:
            computed = cache.pairs_computed
            assert computed == 3 * (20 * 20 + 9 * 20) and not cache.reused
    assert cache.reused and cache.pairs_computed == computed


def test_kernel_cache_no_false_hit_between_arrays_that_probe_and_hash_alike(monkeypatch):
    """Arrays that differ in one middle row (same shape, same first, middle and last rows: the
    same probe), or only in the sign of a zero, are different requests; so are rows whose
    hashes all collide (forced): each result is that of a direct call."""
    monkeypatch.setattr(kc, "_row_hashes", lambda x: np.zeros(len(x), dtype=np.uint64))
    g = np.random.default_rng(4)
    net = _fc()
    a = g.standard_normal((7, 5))
    b = a.copy()
    b[2] += 1.0  # not a probed row (0, 3, 6)
    c = a.copy()
    c[4, 1] = 0.0
    d = c.copy()
    d[4, 1] = -0.0  # equal as floats, different bits: its own entry, as bytes keys have
    assert kc._probe(a) == kc._probe(b)
    cache = KernelCache()
    for x1, x2 in ((a, None), (b, None), (c, None), (d, None), (b, a), (a, b), (a, None)):
        got = cache.kernels(net, x1, x2)
        want = kc.direct_kernels(net, x1, x2, None)
        torch.testing.assert_close(got.nngp, want.nngp, rtol=1e-12, atol=0)
        torch.testing.assert_close(got.ntk, want.ntk, rtol=1e-12, atol=0)
        torch.testing.assert_close(got.cov2, want.cov2, rtol=1e-12, atol=0)
    assert cache._rows(b) is not cache._rows(a)
    assert cache._rows(d) is not cache._rows(c) and cache._rows(a.copy()) is cache._rows(a)
