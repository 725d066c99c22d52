"""The scaling job's data: one MNIST-1D pool, generated locally, split into nested training
sets and one fixed test set.

``mnist1d.data.make_dataset`` (never its download path) with its default arguments except
``num_samples`` (the largest N plus ``n_test``, rounded up to a multiple of the 10 classes)
and ``seed``; its shuffled sequences are split into the test set (the last ``n_test``) and
the training pool (the first max N), so the training set of size N is the pool's first N
examples and every N is scored on the same test set. Every position is standardised with
the mean and standard deviation of the smallest training set (contained in all of them).
Targets: centred one-hot rows (1 - 1/10 and -1/10).
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from widenets.data._split import one_hot

N_CLASSES = 10


def generate(n_max: int, n_test: int, seed: int) -> dict:
    """The pool as float64 / int64 tensors: ``x_train`` (n_max, 40), ``y_train``, ``x_test``
    (n_test, 40), ``y_test``. The global random state of Python and NumPy is restored
    (``make_dataset`` reseeds them)."""
    try:
        import mnist1d.data as md
    except ImportError:
        raise ValueError(
            "dataset `data`='mnist1d' needs the mnist1d package: pip install 'widenets[data]'."
        ) from None
    args = md.get_dataset_args()
    total = -(-(n_max + n_test) // N_CLASSES) * N_CLASSES
    args.num_samples, args.train_split, args.seed = total, 1.0, seed
    state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        ds = md.make_dataset(args)
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])  # noqa: NPY002
    x = torch.as_tensor(np.asarray(ds["x"]), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(ds["y"]), dtype=torch.int64)
    return {
        "x_train": x[:n_max].clone(),
        "y_train": y[:n_max].clone(),
        "x_test": x[len(x) - n_test :].clone(),
        "y_test": y[len(y) - n_test :].clone(),
    }


def standardize(pool: dict, n_ref: int) -> dict:
    """Every position of train and test inputs standardised with the statistics of the
    first ``n_ref`` training inputs."""
    ref = pool["x_train"][:n_ref]
    mean, std = ref.mean(0), ref.std(0).clamp_min(1e-12)
    return {
        **pool,
        "x_train": (pool["x_train"] - mean) / std,
        "x_test": (pool["x_test"] - mean) / std,
    }


def targets(labels: torch.Tensor) -> torch.Tensor:
    """Centred one-hot rows (each sums to 0, its argmax is the label), float64."""
    return one_hot(labels, N_CLASSES, center=True)


def fingerprint(pool: dict) -> str:
    """SHA-256 of the pool's tensors (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name in sorted(pool):
        t = pool[name].contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
