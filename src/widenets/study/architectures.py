"""Named architectures the study can run: a registry of builders ``(cfg, width, out_dim)``.

"fc" is always there (``depth`` hidden Dense(width) + activation layers and a Dense
readout, NTK parameterisation), then the CNNs of :mod:`widenets.architectures` ("cnn-gap",
"cnn-vec", "myrtle5/7/10"; width = channels). Activation names are those of
:data:`widenets.architectures.ACTIVATIONS`.
"""

from __future__ import annotations

from widenets import architectures as A
from widenets.architectures import ACTIVATIONS  # noqa: F401 - the names the config accepts


def fully_connected(cfg, width: int, out_dim: int):
    """Dense(width) + activation, ``cfg.depth`` times, then Dense(out_dim): the library's one
    fully-connected builder, :func:`widenets.architectures.fully_connected`."""
    return A.fully_connected(cfg.depth, width, out_dim, cfg.w_std, cfg.b_std, cfg.activation)


def _from_module(fn_name: str, depth=None):
    def build(cfg, width, out_dim):
        fn = getattr(A, fn_name)
        d = cfg.depth if depth is None else depth
        return fn(depth=d, channels=width, out_dim=out_dim, w_std=cfg.w_std, b_std=cfg.b_std)

    build.__doc__ = f"widenets.architectures.{fn_name} with channels = width."
    return build


def registry() -> dict:
    """Name -> builder(cfg, width, out_dim) (image datasets need
    ``data_options = {flatten = false}`` for the CNNs)."""
    reg = {"fc": fully_connected, "cnn-gap": _from_module("cnn_gap")}
    reg["cnn-vec"] = _from_module("cnn_vec")
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
