"""The `Dataset` record and the preprocessing shared by every loader.

Shuffling and splitting, per-feature standardisation from training statistics, per-example
normalisation, average-pool downsampling of images and (centred) one-hot targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

TASKS = ("classification", "regression")
NORMALIZE = ("per_example", "standardize", None)

#: Features whose training standard deviation is below this are only centred, never scaled
#: (e.g. MNIST border pixels that are 0 in every training image).
STD_FLOOR = 1e-12


@dataclass(frozen=True, eq=False)
class Dataset:
    """A small train/test dataset held as torch tensors.

    ``x_train`` and ``x_test`` are float64 of shape ``(N, *input_shape)``; ``y_train`` and
    ``y_test`` are int64 class indices of shape ``(N,)`` for ``task="classification"`` and
    float64 values of shape ``(N,)`` for ``task="regression"``. ``input_shape`` is the
    per-example shape, channels first for images (``(1, 28, 28)``) or flat (``(784,)``).
    ``source`` says where the data came from and how it was preprocessed.
    """

    name: str
    task: str
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    n_classes: int | None
    input_shape: tuple[int, ...]
    source: str = field(default="", repr=False)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}, got {self.task!r}.")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        y_dtype = torch.int64 if self.task == "classification" else torch.float64
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.float64 or tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"`x_{split}` must be float64 of shape (N, *{self.input_shape}), "
                    f"got {x.dtype} of shape {tuple(x.shape)}."
                )
            if y.dtype != y_dtype or y.shape != (x.shape[0],):
                raise ValueError(
                    f"`y_{split}` must be {y_dtype} of shape ({x.shape[0]},), "
                    f"got {y.dtype} of shape {tuple(y.shape)}."
                )
        if self.task == "classification":
            if self.n_classes is None or self.n_classes < 2:
                raise ValueError(f"`n_classes` must be >= 2, got {self.n_classes!r}.")
            for split in ("train", "test"):
                y = getattr(self, f"y_{split}")
                if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
                    raise ValueError(f"`y_{split}` has labels outside 0..{self.n_classes - 1}.")
        elif self.n_classes is not None:
            raise ValueError("`n_classes` must be None for a regression dataset.")

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    def targets(self, kind: str = "onehot", center: bool = True) -> tuple[Tensor, Tensor]:
        """Float64 regression targets ``(t_train, t_test)`` for kernel regression.

        Classification, ``kind="onehot"``: one-hot rows of shape ``(N, n_classes)``; with
        ``center=True`` each entry has ``1 / n_classes`` subtracted (targets ``1 - 1/C`` and
        ``-1/C``, as in Lee et al. 2018, 2020), so each row sums to 0 and its argmax is the
        label.

        Regression: the values as an ``(N, 1)`` column (``kind`` may be ``"onehot"``, the
        default, or ``"value"``; both mean the dataset's own targets); with ``center=True``
        the training mean is subtracted from both splits.
        """
        if kind not in ("onehot", "value"):
            raise ValueError(f"`kind` must be 'onehot' or 'value', got {kind!r}.")
        if self.task == "classification":
            if kind != "onehot":
                raise ValueError(
                    f"`kind={kind!r}` is for regression datasets; {self.name!r} is a "
                    "classification dataset: use kind='onehot'."
                )
            return (
                one_hot(self.y_train, self.n_classes, center=center),
                one_hot(self.y_test, self.n_classes, center=center),
            )
        t_train, t_test = self.y_train[:, None].clone(), self.y_test[:, None].clone()
        if center and t_train.numel():
            mean = t_train.mean()
            t_train, t_test = t_train - mean, t_test - mean
        return t_train, t_test


# --------------------------------------------------------------------------------------------
# argument checks


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    return int(seed)


def check_flag(value, name: str) -> bool:
    """A bool (or numpy bool); anything else, such as the string "no", is an error."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def check_count(value, name: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {what}, got {value!r}.")
    return int(value)


def resolve_sizes(n_train, n_test, n_total: int, dataset: str) -> tuple[int, int]:
    """Check ``n_train``/``n_test`` against a pool of ``n_total`` examples.

    ``n_test=None`` means 20% of the pool (rounded); ``n_train=None`` means all the rest.
    """
    if n_test is None:
        n_test = round(0.2 * n_total)
    n_test = check_count(n_test, "n_test", minimum=0)
    if n_train is None:
        n_train = n_total - n_test
        if n_train < 1:
            raise ValueError(
                f"`n_test`={n_test} leaves no training examples: {dataset} has {n_total}."
            )
    n_train = check_count(n_train, "n_train", minimum=1)
    if n_train + n_test > n_total:
        raise ValueError(
            f"`n_train` + `n_test` = {n_train} + {n_test} = {n_train + n_test} exceeds the "
            f"{n_total} examples of {dataset}."
        )
    return n_train, n_test


def check_normalize(normalize):
    if normalize not in NORMALIZE:
        raise ValueError(f"`normalize` must be one of {NORMALIZE}, got {normalize!r}.")
    return normalize


# --------------------------------------------------------------------------------------------
# splitting and preprocessing


def shuffle_split(x, y, n_train: int, n_test: int, seed: int):
    """Shuffle ``(x, y)`` (numpy arrays) with ``seed``; return ``x_tr, y_tr, x_te, y_te``.

    The permutation is drawn once for the whole pool, so for a fixed seed the training set is
    the same whatever ``n_test`` is, and the test set the same whatever ``n_train`` is.
    """
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, te = perm[:n_train], perm[len(x) - n_test :]
    return x[tr], y[tr], x[te], y[te]


def as_float(x) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float64)).clone()


def as_labels(y) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(y, dtype=np.int64)).clone()


def standardize(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature standardisation with the training mean and (population) std.

    Features that are constant over the training set are only centred.
    """
    mean = x_train.mean(0, keepdim=True)
    std = x_train.std(0, correction=0, keepdim=True)
    std = torch.where(std > STD_FLOOR, std, torch.ones_like(std))
    return (x_train - mean) / std, (x_test - mean) / std


def normalize_per_example(x: Tensor) -> Tensor:
    """Centre each example and rescale it to norm ``sqrt(dim)``.

    Afterwards every example has mean 0 and mean-square 1 over its features (the usual NNGP
    preprocessing); a constant example becomes all zeros.
    """
    flat = x.reshape(x.shape[0], -1)
    flat = flat - flat.mean(1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    scale = math.sqrt(flat.shape[1]) / torch.where(norm > 0, norm, torch.ones_like(norm))
    return (flat * scale).reshape(x.shape)


def apply_normalize(x_train: Tensor, x_test: Tensor, normalize) -> tuple[Tensor, Tensor]:
    if normalize == "per_example":
        return normalize_per_example(x_train), normalize_per_example(x_test)
    if normalize == "standardize":
        return standardize(x_train, x_test)
    return x_train, x_test


def pool_images(images: Tensor, size) -> Tensor:
    """Downsample ``(N, C, H, W)`` images to ``(N, C, size, size)`` by average pooling.

    Uses adaptive average pooling, so ``size`` need not divide the side (28 -> 8 averages
    windows of 3 or 4 pixels); ``size`` equal to the side is a no-op.
    """
    side = images.shape[-1]
    size = check_count(size, "size", minimum=1)
    if size > side:
        raise ValueError(f"`size` must be at most the image side {side}, got {size}.")
    if size == side:
        return images
    return torch.nn.functional.adaptive_avg_pool2d(images, size)


def one_hot(labels: Tensor, n_classes: int, center: bool = True) -> Tensor:
    """Float64 one-hot rows; with ``center`` every entry minus ``1 / n_classes``."""
    out = torch.nn.functional.one_hot(labels.to(torch.int64), n_classes).to(torch.float64)
    return out - 1.0 / n_classes if center else out
