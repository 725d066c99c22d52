"""Apply an initialiser to any module: widenets' own modules, nn.Linear, nn.Conv*.

widenets modules with weights (``layers.base.WeightedModule``: Dense, Conv, attention,
DEQ, ...) redraw themselves with ``reset_parameters(scheme, generator)``, exactly as
``build`` draws them in their parameterisation. Plain torch layers are redrawn as
W = w_std / sqrt(fan_in) * ``scheme.weight(shape, fan_in, ...)``.

A pruned weight (a :class:`widenets.prune.Mask` parametrisation) is redrawn in its trainable
original, so the weight becomes ``new draw * mask * scale``: the mask is kept.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from widenets.errors import check_nonnegative
from widenets.init.schemes import draw_weight
from widenets.layers.base import WeightedModule

_TORCH_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def apply(
    model: nn.Module,
    scheme,
    *,
    w_std: float = 1.0,
    b_std: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Redraw every weight of ``model`` from ``scheme`` in place; returns ``model``.

    Args:
        model: any module; its widenets modules with weights, ``nn.Linear`` and
            ``nn.Conv1d/2d/3d`` submodules are re-initialised, others are left alone.
        scheme: a :mod:`widenets.init` scheme (or None for Gaussian IID).
        w_std: for torch layers, the weight scale: W = w_std / sqrt(fan_in) * draw.
            (widenets layers keep their own ``w_std`` and parameterisation.)
        b_std: for torch layers, redraw biases as N(0, b_std^2); None leaves them alone.
            widenets biases are redrawn as ``build`` draws them.
        seed, generator: source of randomness (a fresh seed when both are None). A model
            made by ``net.build(..., seed=s, init=scheme)`` and one redrawn with
            ``apply(model, scheme, seed=s)`` have the same parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if scheme is not None and not callable(getattr(scheme, "weight", None)):
        raise TypeError(
            f"`scheme` must have a weight(shape, fan_in, generator, dtype) method, got {scheme!r}."
        )
    w_std = check_nonnegative(w_std, "w_std")
    b_std = check_nonnegative(b_std, "b_std", allow_none=True)
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
    with _originals_exposed(model):
        found = redraw(model, scheme, generator, w_std, b_std)
    if not found:
        raise ValueError(
            "`model` has no layer that an initialiser applies to (a widenets layer with "
            "weights, nn.Linear, nn.Conv1d/2d/3d)."
        )
    return model


@contextlib.contextmanager
def _originals_exposed(model: nn.Module):
    """While inside, each mask-parametrised tensor of ``model`` is its trainable original as
    a plain parameter (the module's own class, ``_parameters`` holding the original), so that
    writing ``module.weight`` writes the original; everything is restored on exit. Writing
    the computed weight instead would change a temporary and leave the model as it was."""
    from widenets.prune.targets import Mask  # lazy: widenets.prune imports the layers

    found = [m for m in model.modules() if parametrize.is_parametrized(m)]
    for m in found:
        for name, plist in m.parametrizations.items():
            other = [type(p).__name__ for p in plist if not isinstance(p, Mask)]
            if other:
                raise ValueError(
                    f"`model`: the {name!r} of a {type(m).__bases__[0].__name__} is "
                    f"parametrised by {other}; init.apply redraws plain or mask-pruned "
                    "tensors only (remove the parametrisation first)."
                )
    swapped = []
    try:
        for m in found:
            cls = type(m)
            m.__class__ = cls.__bases__[0]  # parametrize made cls as a subclass of it
            swapped.append((m, cls))
            for name, plist in m.parametrizations.items():
                m._parameters[name] = plist.original
        yield
    finally:
        for m, cls in swapped:
            for name in m.parametrizations:
                m._parameters.pop(name, None)
            m.__class__ = cls


@torch.no_grad()
def redraw(module: nn.Module, scheme, generator, w_std: float = 1.0, b_std=None) -> bool:
    """Redraw the weights of ``module`` and its submodules in order (a widenets module
    redraws its own submodules); whether any weight was found."""
    if isinstance(module, WeightedModule):
        module.reset_parameters(scheme, generator)
        return True
    if isinstance(module, _TORCH_LAYERS):
        w = module.weight
        fan_in = math.prod(w.shape[1:])
        new = draw_weight(scheme, w.shape, fan_in, generator, w.dtype, w.device)
        w.copy_(new * (w_std / math.sqrt(fan_in)))
        if b_std is not None and module.bias is not None:
            b = torch.randn(module.bias.shape, generator=generator, dtype=w.dtype).to(w.device)
            module.bias.copy_(b * b_std)
        return True
    found = False
    for child in module.children():
        found = redraw(child, scheme, generator, w_std, b_std) or found
    return found
