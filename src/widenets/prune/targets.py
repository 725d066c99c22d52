"""Which weights are prunable, and reading/writing them through the mask parametrisation.

Prunable by default: the ``weight`` of every ``nn.Linear``, ``nn.Conv1d/2d/3d`` and widenets
``DenseModule`` / ``ConvModule``; biases and normalisation parameters are not pruned.
A mask is a :class:`Mask` registered with ``torch.nn.utils.parametrize`` on ``weight``:
the trainable tensor is ``parametrizations.weight.original`` and the weight the module
uses is ``original * mask * scale``, so a masked weight is zero whatever the optimiser does
to the original (momentum, Adam, weight decay).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from widenets.layers.conv import ConvModule
from widenets.layers.dense import DenseModule

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, DenseModule, ConvModule)


class LayerCollapseWarning(UserWarning):
    """A layer was pruned to nothing: the network's output no longer depends on its input."""


class Mask(nn.Module):
    """weight = original * mask * scale (mask a 0/1 buffer in the weight's dtype)."""

    def __init__(self, mask: Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("mask", mask)
        self.scale = float(scale)

    def forward(self, w: Tensor) -> Tensor:
        out = w * self.mask
        return out * self.scale if self.scale != 1.0 else out

    def extra_repr(self) -> str:
        return f"density={float(self.mask.mean()):.4g}, scale={self.scale:.4g}"


def mask_module(module: nn.Module) -> Mask | None:
    """The :class:`Mask` parametrising ``module.weight``, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, Mask):
            return p
    return None


def prunable(model: nn.Module, layers=None) -> dict[str, nn.Module]:
    """Modules whose ``weight`` is pruned, by name (in ``named_modules`` order).

    Args:
        model: any ``torch.nn.Module``.
        layers: None (every Linear/Conv/DenseModule/ConvModule with a weight) or an iterable
            of module names to restrict to.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    found = {}
    for name, m in model.named_modules():
        if not isinstance(m, PRUNABLE_TYPES):
            continue
        if isinstance(m.weight, nn.Parameter) or parametrize.is_parametrized(m, "weight"):
            found[name] = m
    if layers is not None:
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        missing = [n for n in layers if n not in found]
        if missing:
            raise ValueError(
                f"`layers`: {missing} are not prunable modules of `model`; prunable: {list(found)}."
            )
        found = {n: found[n] for n in layers}
    if not found:
        raise ValueError(
            "`model` has no prunable weights (the weight of an nn.Linear, nn.Conv1d/2d/3d, "
            "or widenets DenseModule/ConvModule)."
        )
    return found


def original(module: nn.Module) -> Tensor:
    """The trainable tensor behind ``module.weight`` (the weight itself when unmasked)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def current_mask(module: nn.Module) -> Tensor:
    """Boolean mask of ``module.weight`` (all True when unmasked)."""
    pm = mask_module(module)
    w = original(module)
    if pm is None:
        return torch.ones(w.shape, dtype=torch.bool, device=w.device)
    return pm.mask != 0


def masks(model: nn.Module, layers=None) -> dict[str, Tensor]:
    """The current boolean masks of the prunable weights of ``model``."""
    return {n: current_mask(m) for n, m in prunable(model, layers).items()}


def density(model: nn.Module, layers=None) -> float:
    """Fraction of prunable weights that are kept."""
    ms = masks(model, layers)
    return sum(int(m.sum()) for m in ms.values()) / sum(m.numel() for m in ms.values())


def apply_masks(model: nn.Module, new_masks: dict, *, rescale: bool = False) -> nn.Module:
    """Mask the weights of ``model`` in place (returns ``model``).

    Args:
        new_masks: module name -> boolean tensor of the weight's shape (True: kept).
        rescale: multiply each layer's kept weights by 1 / sqrt(p), p the layer's kept
            fraction, so each weight keeps its variance (a random mask then gives a
            pseudo-IID network with the Gaussian-process limit of the dense one). Each call
            sets the scale anew: re-masking with ``rescale=False`` resets it to 1.

    A layer whose mask keeps nothing raises a :class:`LayerCollapseWarning` naming it.
    """
    mods = prunable(model, list(new_masks))
    collapsed = []
    with torch.no_grad():
        for name, m in mods.items():
            if not _apply_one(name, m, new_masks[name], rescale):
                collapsed.append(name)
    for name in collapsed:
        n = original(mods[name]).numel()
        warnings.warn(
            f"layer collapse: layer {name!r} is pruned to nothing (0 of {n} weights kept).",
            LayerCollapseWarning,
            stacklevel=2,
        )
    return model


def _apply_one(name: str, m: nn.Module, mask, rescale: bool) -> int:
    """Mask one module's weight; the number of weights kept."""
    mask = torch.as_tensor(mask)
    w = original(m)
    if tuple(mask.shape) != tuple(w.shape):
        raise ValueError(
            f"`masks`[{name!r}] has shape {tuple(mask.shape)}, expected the weight's "
            f"{tuple(w.shape)}."
        )
    mask = mask.to(device=w.device) != 0
    kept = int(mask.sum())
    scale = (mask.numel() / kept) ** 0.5 if rescale and kept else 1.0
    pm = mask_module(m)
    if pm is None:
        parametrize.register_parametrization(m, "weight", Mask(mask.to(w.dtype), scale))
    else:
        pm.mask.copy_(mask.to(pm.mask.dtype))
        pm.scale = scale
    return kept


def remove(model: nn.Module) -> nn.Module:
    """Make the masks permanent: each masked weight becomes a plain parameter equal to
    ``original * mask * scale`` (returns ``model``)."""
    for m in model.modules():
        if mask_module(m) is not None:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model
