"""widenets.data: packaged real datasets and synthetic tasks, all offline."""

import random

import numpy as np
import pytest
import torch

from widenets import data
from widenets.data import real

UCI = {
    "iris": ("classification", 150, 4, 3),
    "wine": ("classification", 178, 13, 3),
    "breast_cancer": ("classification", 569, 30, 2),
    "diabetes": ("regression", 442, 10, None),
}


@pytest.fixture(scope="module")
def mnist():
    return data.mnist5k(n_train=4000, n_test=1000, seed=0)


def _check_standardized(ds, raw):
    """``ds`` is ``raw`` standardised per feature with the statistics of raw's training set."""
    xr, xt = raw.x_train.reshape(raw.n_train, -1), raw.x_test.reshape(raw.n_test, -1)
    mean, std = xr.mean(0), xr.std(0, correction=0)
    varying = std > 1e-9
    assert varying.sum() > 0
    x = ds.x_train.reshape(ds.n_train, -1)
    torch.testing.assert_close(x.mean(0), torch.zeros_like(mean), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        x.std(0, correction=0)[varying], torch.ones(int(varying.sum()), dtype=torch.float64)
    )
    # the test split is transformed with the *training* statistics, not its own
    scale = torch.where(varying, std, torch.ones_like(std))
    torch.testing.assert_close(ds.x_test.reshape(ds.n_test, -1), (xt - mean) / scale)
    assert xt.shape[0] < 2 or not torch.allclose(
        ds.x_test.reshape(ds.n_test, -1).mean(0), torch.zeros_like(mean), atol=1e-8
    )


# ------------------------------------------------------------------------------- mnist5k


def test_mnist5k_shapes_labels_shuffled(mnist):
    assert mnist.name == "mnist5k" and mnist.task == "classification" and mnist.n_classes == 10
    assert mnist.input_shape == (784,)
    assert mnist.x_train.shape == (4000, 784) and mnist.x_test.shape == (1000, 784)
    assert mnist.x_train.dtype == torch.float64 and mnist.y_train.dtype == torch.int64
    assert mnist.y_train.shape == (4000,) and mnist.y_test.shape == (1000,)
    for y in (mnist.y_train, mnist.y_test):
        assert int(y.min()) == 0 and int(y.max()) == 9
        assert torch.bincount(y, minlength=10).min() > 0  # all 10 classes present
        assert (y[1:] < y[:-1]).any()  # shuffled, not sorted by class


def test_mnist5k_per_example_normalisation(mnist):
    for x in (mnist.x_train, mnist.x_test):
        torch.testing.assert_close(x.mean(1), torch.zeros(len(x), dtype=torch.float64))
        torch.testing.assert_close((x**2).mean(1), torch.ones(len(x), dtype=torch.float64))


def test_mnist5k_train_test_disjoint(mnist):
    train_rows = {row.tobytes() for row in mnist.x_train.numpy()}
    assert len(train_rows) == 4000
    assert not any(row.tobytes() in train_rows for row in mnist.x_test.numpy())


def test_mnist5k_deterministic_per_seed(mnist):
    a = data.mnist5k(n_train=300, n_test=100, seed=0)
    b = data.mnist5k(n_train=300, n_test=100, seed=0)
    c = data.mnist5k(n_train=300, n_test=100, seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    # one permutation per seed: the smaller training set is a prefix of the larger one
    assert torch.equal(a.x_train, mnist.x_train[:300])


def test_mnist5k_images_pooling_and_other_normalisations():
    raw = data.mnist5k(n_train=50, n_test=10, flatten=False, normalize=None)
    assert raw.input_shape == (1, 28, 28) and raw.x_train.shape == (50, 1, 28, 28)
    assert float(raw.x_train.min()) >= 0 and float(raw.x_train.max()) <= 1
    assert float(raw.x_train.max()) > 0.9
    small = data.mnist5k(n_train=50, n_test=10, flatten=False, normalize=None, size=14)
    assert small.input_shape == (1, 14, 14) and small.x_test.shape == (10, 1, 14, 14)
    blocks = raw.x_train.reshape(50, 1, 14, 2, 14, 2).mean((3, 5))
    torch.testing.assert_close(small.x_train, blocks)
    eight = data.mnist5k(n_train=50, n_test=10, size=8)
    assert eight.input_shape == (64,) and eight.x_train.shape == (50, 64)
    torch.testing.assert_close((eight.x_train**2).mean(1), torch.ones(50, dtype=torch.float64))
    std = data.mnist5k(n_train=400, n_test=100, normalize="standardize")
    _check_standardized(std, data.mnist5k(n_train=400, n_test=100, normalize=None))


# ------------------------------------------------------------------------ digits, uci, 1d


def test_digits():
    ds = data.digits(seed=3)
    assert ds.name == "digits" and ds.n_classes == 10 and ds.input_shape == (64,)
    assert ds.x_train.shape == (1797 - 360, 64) and ds.x_test.shape == (360, 64)
    assert ds.x_train.dtype == torch.float64 and ds.y_test.dtype == torch.int64
    assert set(ds.y_train.tolist()) == set(range(10))
    img = data.digits(n_train=100, n_test=20, flatten=False)
    assert img.input_shape == (1, 8, 8) and img.x_train.shape == (100, 1, 8, 8)
    raw = data.digits(n_train=500, n_test=200, seed=3, normalize=None)
    assert float(raw.x_train.min()) == 0 and float(raw.x_train.max()) == 1
    _check_standardized(data.digits(n_train=500, n_test=200, seed=3, normalize="standardize"), raw)


@pytest.mark.parametrize("name", list(UCI))
def test_uci(name):
    task, n, d, n_classes = UCI[name]
    ds = data.uci(name, seed=2)
    assert ds.name == name and ds.task == task and ds.n_classes == n_classes
    assert ds.input_shape == (d,) and ds.x_train.dtype == torch.float64
    assert ds.n_test == round(0.2 * n) and ds.n_train + ds.n_test == n
    y_dtype = torch.int64 if task == "classification" else torch.float64
    assert ds.y_train.dtype == y_dtype and ds.y_test.dtype == y_dtype
    if n_classes:
        assert set(ds.y_train.tolist()) == set(range(n_classes))
    _check_standardized(ds, data.uci(name, seed=2, standardize=False))
    loaded = data.load(name, n_train=40, n_test=20, seed=5)
    assert torch.equal(loaded.x_test, data.uci(name, n_train=40, n_test=20, seed=5).x_test)


def test_mnist1d_offline_and_global_rng_untouched():
    real._mnist1d_raw.cache_clear()  # really regenerate: make_dataset reseeds global RNGs
    np_before = np.random.get_state()[1].copy()  # noqa: NPY002
    py_before = random.getstate()
    ds = data.mnist1d(n_train=400, n_test=100, seed=0)
    assert np.array_equal(np.random.get_state()[1], np_before)  # noqa: NPY002
    assert random.getstate() == py_before
    assert ds.name == "mnist1d" and ds.n_classes == 10 and ds.input_shape == (40,)
    assert ds.x_train.shape == (400, 40) and ds.x_test.shape == (100, 40)
    assert ds.x_train.dtype == torch.float64 and ds.y_train.dtype == torch.int64
    assert set(ds.y_train.tolist()) == set(range(10))
    _check_standardized(ds, data.mnist1d(n_train=400, n_test=100, seed=0, standardize=False))
    seq = data.mnist1d(n_train=400, n_test=100, seed=0, flatten=False)
    assert seq.input_shape == (1, 40) and seq.x_train.shape == (400, 1, 40)
    torch.testing.assert_close(seq.x_train[:, 0], ds.x_train)
    other = data.mnist1d(n_train=400, n_test=100, seed=1)
    assert not torch.equal(other.x_train, ds.x_train)


# ------------------------------------------------------------------------------ synthetic


def test_teacher():
    ds = data.teacher(n_train=100, n_test=50, dim=6, seed=0, width=64, depth=2)
    assert ds.task == "regression" and ds.n_classes is None and ds.input_shape == (6,)
    assert ds.x_train.shape == (100, 6) and ds.y_train.shape == (100,)
    assert ds.x_test.shape == (50, 6) and ds.y_test.dtype == torch.float64
    assert float(ds.y_train.std()) > 0.1  # targets actually vary
    same = data.teacher(n_train=100, n_test=50, dim=6, seed=0, width=64, depth=2)
    assert torch.equal(ds.x_train, same.x_train) and torch.equal(ds.y_test, same.y_test)
    other = data.teacher(n_train=100, n_test=50, dim=6, seed=1, width=64, depth=2)
    assert not torch.equal(ds.y_train, other.y_train)
    # training data do not depend on n_test, test data not on n_train
    fewer = data.teacher(n_train=100, n_test=7, dim=6, seed=0, width=64, depth=2)
    assert torch.equal(fewer.x_train, ds.x_train) and torch.equal(fewer.y_train, ds.y_train)
    more = data.teacher(n_train=30, n_test=50, dim=6, seed=0, width=64, depth=2)
    assert torch.equal(more.y_test, ds.y_test)
    # noise goes to the training targets only
    noisy = data.teacher(n_train=100, n_test=50, dim=6, seed=0, width=64, depth=2, noise=0.5)
    assert torch.equal(noisy.x_train, ds.x_train) and torch.equal(noisy.y_test, ds.y_test)
    resid = noisy.y_train - ds.y_train
    assert 0.3 < float(resid.std()) < 0.7


def test_xor_clusters():
    ds = data.xor_clusters(n_train=202, n_test=100, dim=5, seed=0, noise=0.1)
    assert ds.n_classes == 2 and ds.input_shape == (5,) and ds.x_train.shape == (202, 5)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        counts = torch.bincount(y, minlength=2)
        assert abs(int(counts[0]) - int(counts[1])) <= 1
        xor = (x[:, 0] > 0) != (x[:, 1] > 0)
        assert torch.equal(xor.to(torch.int64), y)  # noise 0.1 never crosses an axis
        assert (y[1:] != y[:-1]).any() and not torch.equal(y, torch.arange(len(y)) % 2)
    again = data.xor_clusters(n_train=202, n_test=100, dim=5, seed=0, noise=0.1)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    assert not torch.equal(data.xor_clusters(202, 100, 5, seed=1, noise=0.1).x_train, ds.x_train)


def test_modular_addition():
    p = 11
    ds = data.modular_addition(p=p, train_fraction=0.3, seed=0)
    assert ds.n_classes == p and ds.input_shape == (2 * p,)
    assert ds.n_train == round(0.3 * p * p) and ds.n_train + ds.n_test == p * p
    x = torch.cat([ds.x_train, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_test])
    assert torch.equal(x.sum(1), torch.full((p * p,), 2.0, dtype=torch.float64))
    a, b = x[:, :p].argmax(1), x[:, p:].argmax(1)
    assert torch.equal(y, (a + b) % p)
    assert len(set(zip(a.tolist(), b.tolist(), strict=True))) == p * p  # every pair once
    same = data.modular_addition(p=p, train_fraction=0.3, seed=0)
    assert torch.equal(same.x_train, ds.x_train)
    assert not torch.equal(
        data.modular_addition(p=p, train_fraction=0.3, seed=1).y_train, ds.y_train
    )


# ------------------------------------------------------------------------- targets, load


def test_targets_onehot():
    ds = data.modular_addition(p=5, train_fraction=0.6, seed=0)
    t_train, t_test = ds.targets()
    assert t_train.shape == (ds.n_train, 5) and t_test.shape == (ds.n_test, 5)
    assert t_train.dtype == torch.float64
    torch.testing.assert_close(t_train.sum(1), torch.zeros(ds.n_train, dtype=torch.float64))
    assert torch.equal(t_train.argmax(1), ds.y_train) and torch.equal(t_test.argmax(1), ds.y_test)
    assert set(t_train.unique().tolist()) == {-0.2, 0.8}
    raw_train, _ = ds.targets(center=False)
    assert torch.equal(raw_train, torch.nn.functional.one_hot(ds.y_train, 5).double())


def test_targets_regression_column():
    ds = data.uci("diabetes", n_train=300, n_test=100)
    t_train, t_test = ds.targets()
    assert t_train.shape == (300, 1) and t_test.shape == (100, 1)
    torch.testing.assert_close(t_train.mean(), torch.tensor(0.0, dtype=torch.float64))
    mean = ds.y_train.mean()
    torch.testing.assert_close(t_test[:, 0], ds.y_test - mean)  # centred by the train mean
    raw_train, _ = ds.targets(kind="value", center=False)
    assert torch.equal(raw_train[:, 0], ds.y_train)


def test_available_and_load():
    names = data.available()
    expected = {"mnist5k", "digits", "mnist1d", "teacher", "xor_clusters", "modular_addition"}
    assert expected | set(UCI) == set(names)
    ds = data.load("xor_clusters", n_train=10, n_test=4, seed=3)
    assert torch.equal(ds.x_train, data.xor_clusters(n_train=10, n_test=4, seed=3).x_train)


# ------------------------------------------------------------------------------ bad input


def test_unknown_names_list_known_ones():
    with pytest.raises(ValueError, match="known names") as err:
        data.load("cifar10")
    for name in data.available():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="`name`.*iris.*diabetes"):
        data.uci("boston")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: data.mnist5k(n_train=4500, n_test=1000), "n_train.*5000"),
        (lambda: data.uci("iris", n_train=200), "n_train.*150"),
        (lambda: data.uci("wine", n_test=178), "n_test"),
        (lambda: data.digits(n_train=-1), "n_train"),
        (lambda: data.mnist1d(n_test=-5), "n_test"),
        (lambda: data.teacher(n_train=-3), "n_train"),
        (lambda: data.teacher(n_train=0), "n_train"),
        (lambda: data.xor_clusters(n_test=-1), "n_test"),
        (lambda: data.xor_clusters(dim=1), "dim"),
        (lambda: data.xor_clusters(noise=-0.1), "noise"),
        (lambda: data.teacher(n_train=True), "n_train"),
        (lambda: data.uci("iris", seed=-1), "seed"),
        (lambda: data.mnist5k(n_train=10, n_test=10, normalize="l2"), "normalize"),
        (lambda: data.mnist5k(n_train=10, n_test=10, size=40), "size"),
        (lambda: data.modular_addition(train_fraction=0.0), "train_fraction"),
        (lambda: data.modular_addition(p=1), "`p`"),
        (lambda: data.uci("iris").targets(kind="value"), "kind"),
        (lambda: data.uci("iris").targets(kind="sign"), "kind"),
        (lambda: data.load("digits", flatten="no"), r"`flatten` must be True or False.*'no'"),
        (lambda: data.mnist5k(n_train=10, n_test=10, flatten=0), r"`flatten`.*got 0"),
        (lambda: data.mnist1d(flatten="false"), r"`flatten`.*'false'"),
        (lambda: data.uci("iris", standardize="yes"), r"`standardize`.*'yes'"),
        (lambda: data.mnist1d(standardize=None), r"`standardize`.*None"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_dataset_validates_its_fields():
    x = torch.zeros(4, 3, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.int64)
    kw = dict(name="t", task="classification", n_classes=2, input_shape=(3,))
    data.Dataset(x_train=x, y_train=y, x_test=x, y_test=y, **kw)
    with pytest.raises(ValueError, match="x_test"):
        data.Dataset(x_train=x, y_train=y, x_test=x.float(), y_test=y, **kw)
    with pytest.raises(ValueError, match="y_train"):
        data.Dataset(x_train=x, y_train=y[:3], x_test=x, y_test=y, **kw)
    with pytest.raises(ValueError, match="labels outside"):
        data.Dataset(x_train=x, y_train=y + 2, x_test=x, y_test=y, **kw)


def test_missing_optional_package_says_what_to_install():
    with pytest.raises(ImportError, match="pip install no-such-pkg"):
        real._require("widenets_no_such_module", "no-such-pkg", "thing")


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        (
            "modular_addition",
            {"n_train": 100},
            r"'modular_addition' takes no argument 'n_train'.*'p'",
        ),
        ("iris", {"flatten": False}, r"'iris' takes no argument 'flatten'.*'n_train'"),
        ("digits", {"n_trian": 10}, r"'digits' takes no argument 'n_trian'.*'n_train'"),
    ],
)
def test_load_names_an_argument_the_dataset_does_not_take(name, kwargs, match):
    with pytest.raises(TypeError, match=match):
        data.load(name, **kwargs)
