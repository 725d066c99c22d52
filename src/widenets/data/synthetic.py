"""Synthetic tasks generated with torch from a seed: a ReLU teacher, XOR clusters, modular sums.

Every task is a deterministic function of its arguments. Each uses independent random streams
(derived from ``seed`` with ``numpy.random.SeedSequence``) for its parts, so for a fixed seed
the training set does not change when only ``n_test`` changes, and vice versa.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from widenets.data._split import Dataset, check_count, check_seed, one_hot


def _generators(seed: int, n: int) -> list[torch.Generator]:
    children = np.random.SeedSequence(seed).spawn(n)
    return [
        torch.Generator().manual_seed(int(c.generate_state(1, np.uint64)[0] >> 1)) for c in children
    ]


def _check_noise(noise) -> float:
    try:
        v = float(noise)
    except (TypeError, ValueError):
        raise ValueError(f"`noise` must be a non-negative number, got {noise!r}.") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"`noise` must be a finite non-negative number, got {noise!r}.")
    return v


def teacher(
    n_train: int = 200,
    n_test: int = 200,
    dim: int = 10,
    seed: int = 0,
    noise: float = 0.0,
    width: int = 512,
    depth: int = 2,
) -> Dataset:
    """Regression on the outputs of a random ReLU network (teacher-student).

    Inputs are i.i.d. standard normal in ``dim`` dimensions (mean 0, mean-square 1 per
    feature). The teacher has ``depth`` hidden ReLU layers of ``width`` units and a scalar
    readout; all weights are standard normal, scaled by ``sqrt(2 / fan_in)`` (He scaling, no
    biases), so its outputs have variance about 1. Gaussian noise of std ``noise`` is added
    to the *training* targets only: test targets are the teacher's exact outputs, so the test
    error measures how well the teacher function is recovered.
    """
    n_train = check_count(n_train, "n_train", minimum=1)
    n_test = check_count(n_test, "n_test", minimum=0)
    dim = check_count(dim, "dim", minimum=1)
    width = check_count(width, "width", minimum=1)
    depth = check_count(depth, "depth", minimum=1)
    seed = check_seed(seed)
    noise = _check_noise(noise)
    g_net, g_train, g_test, g_noise = _generators(seed, 4)

    fan_ins = [dim] + [width] * depth
    fan_outs = [width] * depth + [1]
    weights = [
        torch.randn(i, o, generator=g_net, dtype=torch.float64) * math.sqrt(2.0 / i)
        for i, o in zip(fan_ins, fan_outs, strict=True)
    ]

    def net(x):
        for w in weights[:-1]:
            x = torch.relu(x @ w)
        return (x @ weights[-1])[:, 0]

    x_tr = torch.randn(n_train, dim, generator=g_train, dtype=torch.float64)
    x_te = torch.randn(n_test, dim, generator=g_test, dtype=torch.float64)
    y_tr, y_te = net(x_tr), net(x_te)
    if noise > 0:
        y_tr = y_tr + noise * torch.randn(n_train, generator=g_noise, dtype=torch.float64)
    return Dataset(
        name="teacher",
        task="regression",
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        n_classes=None,
        input_shape=(dim,),
        source=f"random ReLU teacher: width={width}, depth={depth}, noise={noise}, seed={seed}",
    )


# Cluster centres in the first two coordinates, ordered so that the label is index % 2.
_XOR_CENTRES = torch.tensor(
    [[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64
)


def _xor_split(n: int, dim: int, noise: float, g: torch.Generator):
    cluster = torch.arange(n)[torch.randperm(n, generator=g)] % 4
    x = noise * torch.randn(n, dim, generator=g, dtype=torch.float64)
    x[:, :2] += _XOR_CENTRES[cluster]
    return x, cluster % 2


def xor_clusters(
    n_train: int = 200,
    n_test: int = 200,
    dim: int = 2,
    seed: int = 0,
    noise: float = 0.25,
) -> Dataset:
    """Two-class XOR of four Gaussian clusters.

    The clusters are centred at ``(+-1, +-1, 0, ..., 0)`` in ``dim >= 2`` dimensions, with
    isotropic Gaussian spread of std ``noise``; the label is 1 where the first two signs
    differ (XOR) and 0 where they agree. Each split cycles through the four clusters, so the
    two classes are balanced (counts differ by at most 1), then is shuffled. Not linearly
    separable.
    """
    n_train = check_count(n_train, "n_train", minimum=1)
    n_test = check_count(n_test, "n_test", minimum=0)
    dim = check_count(dim, "dim", minimum=2)
    seed = check_seed(seed)
    noise = _check_noise(noise)
    g_train, g_test = _generators(seed, 2)
    x_tr, y_tr = _xor_split(n_train, dim, noise, g_train)
    x_te, y_te = _xor_split(n_test, dim, noise, g_test)
    return Dataset(
        name="xor_clusters",
        task="classification",
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        n_classes=2,
        input_shape=(dim,),
        source=f"XOR of 4 Gaussian clusters: noise={noise}, seed={seed}",
    )


def modular_addition(p: int = 23, train_fraction: float = 0.5, seed: int = 0) -> Dataset:
    """Modular addition ``(a, b) -> (a + b) mod p``, the "grokking" task.

    All ``p**2`` pairs, each input the concatenation of the one-hot codes of ``a`` and ``b``
    (float64, shape ``(2 p,)``), label ``(a + b) mod p`` (``p`` classes). The pairs are
    shuffled with ``seed``; the first ``round(train_fraction * p**2)`` (at least 1) are the
    training set and the rest the test set.
    """
    p = check_count(p, "p", minimum=2)
    seed = check_seed(seed)
    try:
        frac = float(train_fraction)
    except (TypeError, ValueError):
        frac = math.nan
    if not 0 < frac <= 1:
        raise ValueError(f"`train_fraction` must be in (0, 1], got {train_fraction!r}.")
    (g,) = _generators(seed, 1)
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    x = torch.cat([one_hot(a, p, center=False), one_hot(b, p, center=False)], dim=1)
    y = (a + b) % p
    perm = torch.randperm(p * p, generator=g)
    n_train = max(1, round(frac * p * p))
    tr, te = perm[:n_train], perm[n_train:]
    return Dataset(
        name="modular_addition",
        task="classification",
        x_train=x[tr],
        y_train=y[tr],
        x_test=x[te],
        y_test=y[te],
        n_classes=p,
        input_shape=(2 * p,),
        source=f"(a + b) mod {p}, one-hot pairs; train_fraction={frac}, seed={seed}",
    )


__all__ = ["modular_addition", "teacher", "xor_clusters"]
