"""Named architectures the study can run: a registry of builders ``(cfg, width, out_dim)``.

"fc" is always there (``depth`` hidden Dense(width) + activation layers and a Dense
readout, NTK parameterisation). The CNNs of :mod:`widenets.architectures` ("cnn-gap",
"cnn-vec", "myrtle5/7/10"; width = channels) are added when that module is present.
"""

from __future__ import annotations

import importlib

import widenets as wn

ACTIVATIONS = {
    "relu": lambda: wn.Relu(),
    "erf": lambda: wn.Erf(),
    "gelu": lambda: wn.Gelu(),
    "abs": lambda: wn.Abs(),
    "leaky_relu": lambda: wn.LeakyRelu(),
}


def fully_connected(cfg, width: int, out_dim: int):
    """Dense(width) + activation, ``cfg.depth`` times, then Dense(out_dim)."""
    layers = []
    for _ in range(cfg.depth):
        layers += [wn.Dense(width, w_std=cfg.w_std, b_std=cfg.b_std), ACTIVATIONS[cfg.activation]()]
    return wn.serial(*layers, wn.Dense(out_dim, w_std=cfg.w_std, b_std=cfg.b_std))


def _architectures_module():
    try:
        return importlib.import_module("widenets.architectures")
    except ImportError:
        return None


def _from_module(fn_name: str, depth=None):
    def build(cfg, width, out_dim):
        fn = getattr(_architectures_module(), fn_name)
        d = cfg.depth if depth is None else depth
        return fn(depth=d, channels=width, out_dim=out_dim, w_std=cfg.w_std, b_std=cfg.b_std)

    build.__doc__ = f"widenets.architectures.{fn_name} with channels = width."
    return build


def registry() -> dict:
    """Name -> builder(cfg, width, out_dim), with the CNNs when :mod:`widenets.architectures`
    exists (image datasets need ``data_options = {flatten = false}`` for those)."""
    reg = {"fc": fully_connected}
    mod = _architectures_module()
    if mod is not None:
        for name, fn_name in (("cnn-gap", "cnn_gap"), ("cnn-vec", "cnn_vec")):
            if hasattr(mod, fn_name):
                reg[name] = _from_module(fn_name)
        if hasattr(mod, "myrtle"):
            for d in (5, 7, 10):
                reg[f"myrtle{d}"] = _from_module("myrtle", depth=d)
    return reg


def available_architectures() -> list[str]:
    return list(registry())


def build_description(cfg, width: int, out_dim: int):
    """The network description (a widenets Layer) of ``cfg.arch`` at hidden width ``width``."""
    return registry()[cfg.arch](cfg, width, out_dim)


def is_convolutional(name: str) -> bool:
    return name != "fc"
