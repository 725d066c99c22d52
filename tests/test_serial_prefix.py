"""KernelCache's reuse of Serial networks' prefix kernels (widenets.serial_prefix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from widenets.kernel_cache import KernelCache, _fingerprint
from widenets.serial_prefix import Key, PrefixStore, prefix_kernels, stages_of
from widenets.sklearn import fc_network


def _rows(n, d=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def _same(k, ref) -> bool:
    return all(
        torch.equal(a, b)
        for a, b in ((k.nngp, ref.nngp), (k.ntk, ref.ntk), (k.cov1, ref.cov1), (k.cov2, ref.cov2))
    )


def _direct(net, x1, x2=None):
    t2 = None if x2 is None else torch.from_numpy(x2)
    return net.kernel(torch.from_numpy(x1), t2, progress=False)


def test_deeper_networks_reuse_the_prefix_bit_identically():
    x, y = _rows(40), _rows(25, seed=1)
    cache = KernelCache()
    for depth in (1, 2, 3, 4):
        net = fc_network(depth, "relu", 1.3, 0.1)
        key = cache.key(net, None, x.shape[1])
        assert _same(cache.kernels(net, x, key=key), _direct(net, x))
        assert _same(cache.kernels(net, y, x, key=key), _direct(net, y, x))
    # depth 2 finds depth 1's prefix not kept (nothing is kept until a deeper network asks);
    # depths 3 and 4 start from the kept kernel of the shallower one, fit and prediction
    assert cache.prefix_reused == 4


def test_counters_count_one_reuse_per_evaluation():
    x = _rows(30)
    cache = KernelCache()
    nets = [fc_network(d, "erf", 1.1, 0.2) for d in (1, 2, 3)]
    cache.kernels(nets[0], x)
    cache.kernels(nets[1], x)
    assert cache.prefix_reused == 0
    k = cache.kernels(nets[2], x)
    assert cache.prefix_reused == 1
    assert _same(k, _direct(nets[2], x))
    assert cache.pairs_computed == 3 * 30 * 30


@pytest.mark.parametrize("change", ["w_std", "b_std", "activation", "rows"])
def test_different_prefixes_do_not_share(change):
    x = _rows(30)
    cache = KernelCache()
    cache.kernels(fc_network(1, "relu", 1.0, 0.1), x)
    cache.kernels(fc_network(2, "relu", 1.0, 0.1), x)  # from now on prefixes are kept
    kw = {"activation": "relu", "w_std": 1.0, "b_std": 0.1}
    rows = x
    if change == "rows":
        rows = x.copy()
        rows[3, 2] += 1e-9
    elif change == "activation":
        kw["activation"] = "erf"
    else:
        kw[change] = 1.5
    net = fc_network(3, kw["activation"], kw["w_std"], kw["b_std"])
    k = cache.kernels(net, rows)
    assert cache.prefix_reused == 0
    assert _same(k, _direct(net, rows))


def test_a_grid_that_never_deepens_keeps_nothing():
    x = _rows(30)
    cache = KernelCache()
    for w in (1.0, 1.5):
        for b in (0.0, 0.3):
            for rows in (x, x + 1.0):
                cache.kernels(fc_network(2, "relu", w, b), rows)
    assert not cache._prefix.learned
    assert cache._prefix.nbytes == 0 and not cache._prefix.entries


def test_structured_inputs_are_computed_directly():
    from widenets.layers import Conv, Dense, Flatten, Relu, serial

    x = _rows(12, d=8)

    def net(depth):
        return serial(*[Conv(4, 3, 1, "same", 1.2, 0.1), Relu()] * depth, Flatten(), Dense(1))

    cache = KernelCache()
    for depth in (1, 2, 3):
        k = cache.kernels(net(depth), x, input_shape=(1, 8))
        ref = net(depth).kernel(torch.from_numpy(x).reshape(12, 1, 8), progress=False)
        assert torch.equal(k.nngp, ref.nngp) and torch.equal(k.ntk, ref.ntk)
    assert cache.prefix_reused == 0


def test_prefix_store_drops_the_least_recently_used_and_keeps_a_running_total():
    net = fc_network(2, "relu", 1.0, 0.0)
    stages = stages_of(net, _fingerprint)
    x = torch.from_numpy(_rows(20))
    store = PrefixStore(max_bytes=3 * 20 * 20 * 8 * 2 + 3 * 20 * 8)  # room for about three
    store.learned = True
    for i in range(5):
        k = prefix_kernels(net, stages, x, None, store, (i, None))
        assert _same(k, _direct(net, x.numpy()))
    assert 0 < len(store.entries) < 5
    assert store.nbytes == sum(e[2] for e in store.entries.values())
    assert (stages.keys[stages.record], (4, None)) in store.entries


def test_a_kept_prefix_changed_in_place_is_not_used():
    net = fc_network(2, "relu", 1.0, 0.0)
    deeper = fc_network(3, "relu", 1.0, 0.0)
    stages = stages_of(net, _fingerprint)
    x = torch.from_numpy(_rows(20))
    store = PrefixStore(1 << 30)
    store.learned = True
    prefix_kernels(net, stages, x, None, store, (0, None))
    (kept,) = [e[0] for e in store.entries.values()]
    kept.nngp.add_(1.0)
    k = prefix_kernels(deeper, stages_of(deeper, _fingerprint), x, None, store, (0, None))
    assert store.reused == 0
    assert _same(k, _direct(deeper, x.numpy()))


def test_key_hashes_once_and_compares_by_value():
    a, b = Key(("x", (1, 2))), Key(("x", (1, 2)))
    assert a == b and hash(a) == hash(b) and a != Key(("x", (1, 3)))
    assert stages_of(fc_network(0), _fingerprint) is None  # one layer: nothing to cut


def test_grid_search_with_a_scaler_scores_exactly_as_without_a_cache():
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from widenets.sklearn import NTKRegressor

    x, y = load_diabetes(return_X_y=True)
    x, y = x[:120], y[:120]
    grid = {"m__depth": [1, 2, 3], "m__w_std": [1.0, 1.5]}
    scores = []
    cache = KernelCache()
    for c in (None, cache):
        pipe = Pipeline([("s", StandardScaler()), ("m", NTKRegressor(kernel_cache=c))])
        search = GridSearchCV(pipe, grid, cv=KFold(3, shuffle=True, random_state=0)).fit(x, y)
        scores.append(search.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(scores[0], scores[1])
    assert cache.prefix_reused > 0


def test_networks_on_the_same_rows_share_the_input_kernel_bit_identically():
    x, y = _rows(40), _rows(23, seed=1)
    cache = KernelCache()
    for w in (1.0, 1.5, 2.0):
        for b in (0.0, 0.1):
            for act in ("relu", "erf"):
                net = fc_network(2, act, w, b)
                assert _same(cache.kernels(net, x), _direct(net, x))
                assert _same(cache.kernels(net, y, x), _direct(net, y, x))
    assert len(cache._prefix.inputs) == 2  # one per distinct (x1, x2): the fit, the prediction
    assert cache.prefix_reused == 0  # no deeper network: no prefix of layers reused


def test_networks_with_branches_between_stages():
    from widenets.layers import Dense, Relu, fan_in_sum, fan_out, parallel, serial

    def net(depth):
        pair = parallel(Dense(8, 1.2, 0.1), Dense(8, 0.7))
        block = [Dense(8, 1.2, 0.1), Relu(), fan_out(2), pair, fan_in_sum()]
        return serial(*block * depth, Relu(), Dense(1, 1.1))

    x = _rows(20)
    cache = KernelCache()
    for depth in (1, 2, 3):
        assert _same(cache.kernels(net(depth), x), _direct(net(depth), x))
