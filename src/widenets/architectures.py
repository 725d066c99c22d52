"""Ready-made architectures, each a function returning a ``serial`` network.

- :func:`fully_connected`: Dense + activation, any depth; the one builder that
  ``widenets.sklearn`` and ``widenets study`` use too.
- :data:`ACTIVATIONS` and :func:`get_activation`: the activation names shared by the CLI, the
  study configuration and the scikit-learn estimators.
- :func:`cnn_vec`, :func:`cnn_gap`: the CNNs of Lee et al. 2020 ("Finite Versus Infinite
  Neural Networks: an Empirical Study"): ``depth`` same-padded 3x3 convolutions with ReLU,
  read out by Flatten (VEC: only each pixel with itself) or GlobalAvgPool (GAP: every
  pixel pair), then a Dense readout.
- :func:`myrtle`: the Myrtle-5/7/10 CNNs of Shankar et al. 2020 ("Neural Kernels Without
  Tangents"): groups of 3x3 conv + ReLU separated by 2x2 average pooling, a global
  average pool and a Dense readout.
- :func:`wide_resnet`: a stack of WideResNet blocks (Zagoruyko & Komodakis 2016) in
  groups of increasing width with stride-2 transitions, global average pool, Dense.
"""

from __future__ import annotations

import numpy as np

from widenets.errors import check_positive_int
from widenets.layers.activations import (
    Abs,
    Cos,
    Erf,
    Gelu,
    LeakyRelu,
    Relu,
    Sign,
    Sin,
)
from widenets.layers.base import Layer
from widenets.layers.combinators import Identity, residual, serial
from widenets.layers.conv import Conv
from widenets.layers.dense import Dense
from widenets.layers.pooling import AvgPool, Flatten, GlobalAvgPool

MYRTLE_GROUPS = {5: (1, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}

#: activation names understood wherever an activation is given by name (CLI, study
#: configuration, scikit-learn estimators), each with its default parameters
ACTIVATIONS = {
    "relu": Relu,
    "erf": Erf,
    "gelu": Gelu,
    "abs": Abs,
    "leaky_relu": LeakyRelu,
    "sin": Sin,
    "cos": Cos,
    "sign": Sign,
}


def get_activation(spec: str | Layer | None, name: str = "activation") -> Layer:
    """The activation layer named by ``spec`` (a key of :data:`ACTIVATIONS`, any case), or
    ``spec`` itself when it is a widenets activation layer; None means ReLU."""
    if spec is None:
        return Relu()
    if isinstance(spec, str):
        key = spec.lower()
        if key not in ACTIVATIONS:
            raise ValueError(
                f"`{name}` must be one of {sorted(ACTIVATIONS)} or a widenets activation layer, "
                f"got {spec!r}."
            )
        return ACTIVATIONS[key]()
    if isinstance(spec, Layer):
        return spec
    raise ValueError(
        f"`{name}` must be an activation name or a widenets activation layer, got {spec!r}."
    )


def fully_connected(
    depth: int,
    width: int = 512,
    out_dim: int = 1,
    w_std: float = 2**0.5,
    b_std: float | None = 0.0,
    activation: str | Layer | None = None,
    parameterization: str = "ntk",
):
    """``depth`` hidden layers Dense(width) + activation (ReLU by default), then Dense(out_dim).

    ``depth = 0`` is the linear model Dense(out_dim). ``activation`` is a name in
    :data:`ACTIVATIONS` or a widenets activation layer (layers are immutable, so one instance
    is shared by every hidden layer).
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"`depth` must be a non-negative integer, got {depth!r}.")
    get_activation(activation)  # a bad name fails before anything is built
    layers = []
    for _ in range(int(depth)):
        layers += [Dense(width, w_std, b_std, parameterization), get_activation(activation)]
    return serial(*layers, Dense(out_dim, w_std, b_std, parameterization))


def _cnn(depth, channels, out_dim, w_std, b_std, kernel_size, readout, parameterization):
    check_positive_int(depth, "depth")
    layers = []
    for _ in range(depth):
        layers += [Conv(channels, kernel_size, 1, "same", w_std, b_std, parameterization), Relu()]
    return serial(*layers, readout, Dense(out_dim, w_std, b_std, parameterization))


def cnn_vec(
    depth: int = 8,
    channels: int = 256,
    out_dim: int = 10,
    w_std: float = 2**0.5,
    b_std: float | None = 0.0,
    kernel_size=3,
    parameterization: str = "ntk",
):
    """CNN-VEC: ``depth`` x [Conv(3x3, same) + ReLU], Flatten, Dense (diagonal kernel path)."""
    return _cnn(depth, channels, out_dim, w_std, b_std, kernel_size, Flatten(), parameterization)


def cnn_gap(
    depth: int = 8,
    channels: int = 256,
    out_dim: int = 10,
    w_std: float = 2**0.5,
    b_std: float | None = 0.0,
    kernel_size=3,
    parameterization: str = "ntk",
):
    """CNN-GAP: ``depth`` x [Conv(3x3, same) + ReLU], GlobalAvgPool, Dense (full path)."""
    return _cnn(
        depth, channels, out_dim, w_std, b_std, kernel_size, GlobalAvgPool(), parameterization
    )


def myrtle(
    depth: int = 5,
    channels: int = 256,
    out_dim: int = 10,
    w_std: float = 2**0.5,
    b_std: float | None = 0.0,
):
    """Myrtle-5/7/10: Conv+ReLU, then three groups of Conv+ReLU (1/2/3 per group for depth
    5/7/10) with AvgPool(2) after the first two, then GlobalAvgPool and Dense. On 32x32
    inputs the final global pool equals Shankar et al.'s three further 2x2 pools."""
    if depth not in MYRTLE_GROUPS:
        raise ValueError(f"`depth` must be one of {sorted(MYRTLE_GROUPS)}, got {depth!r}.")

    def block():
        return [Conv(channels, (3, 3), 1, "same", w_std, b_std), Relu()]

    layers = block()
    for i, n in enumerate(MYRTLE_GROUPS[depth]):
        for _ in range(n):
            layers += block()
        if i < 2:
            layers.append(AvgPool((2, 2)))
    return serial(*layers, GlobalAvgPool(), Dense(out_dim, w_std, b_std))


def wide_resnet_block(channels: int, stride: int = 1, channel_mismatch: bool = False, **kw):
    """Pre-activation WideResNet block: x + [ReLU, Conv3x3(stride), ReLU, Conv3x3](x); the
    shortcut is a Conv3x3(stride) when the stride or the channel count changes."""
    w_std, b_std = kw.get("w_std", 1.0), kw.get("b_std", 0.0)
    branch = serial(
        Relu(),
        Conv(channels, (3, 3), stride, "same", w_std, b_std),
        Relu(),
        Conv(channels, (3, 3), 1, "same", w_std, b_std),
    )
    if stride != 1 or channel_mismatch:
        shortcut = Conv(channels, (3, 3), stride, "same", w_std, b_std)
    else:
        shortcut = Identity()
    return residual(branch, shortcut=shortcut)


def wide_resnet(
    block_size: int = 1,
    k: int = 1,
    out_dim: int = 10,
    base_channels: int = 16,
    n_groups: int = 3,
    w_std: float = 1.0,
    b_std: float | None = 0.0,
):
    """WideResNet: Conv(base) then ``n_groups`` groups of ``block_size`` blocks of width
    base * k * 2^g (stride 2 entering every group after the first), ReLU, GlobalAvgPool,
    Dense."""
    check_positive_int(block_size, "block_size")
    check_positive_int(k, "k")
    check_positive_int(n_groups, "n_groups")
    kw = dict(w_std=w_std, b_std=b_std)
    layers = [Conv(base_channels, (3, 3), 1, "same", w_std, b_std)]
    in_ch = base_channels
    for g in range(n_groups):
        ch = base_channels * k * 2**g
        stride = 1 if g == 0 else 2
        layers.append(wide_resnet_block(ch, stride, ch != in_ch, **kw))
        for _ in range(block_size - 1):
            layers.append(wide_resnet_block(ch, 1, False, **kw))
        in_ch = ch
    return serial(*layers, Relu(), GlobalAvgPool(), Dense(out_dim, w_std, b_std))


__all__ = [
    "ACTIVATIONS",
    "cnn_gap",
    "cnn_vec",
    "fully_connected",
    "get_activation",
    "myrtle",
    "wide_resnet",
    "wide_resnet_block",
]
