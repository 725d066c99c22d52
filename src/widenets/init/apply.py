"""Apply an initialiser to any module: widenets Dense layers, nn.Linear, nn.Conv*.

Each weight is redrawn as ``scale * scheme.weight(shape, fan_in, ...)`` where the scale is
the one of the layer's parameterisation: 1 for widenets Dense layers in the NTK and
mean-field parameterisations (their multiplier is applied in ``forward``), w_std / sqrt(fan_in)
for widenets "standard" layers and for torch layers (``w_std`` argument, default 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from widenets.errors import check_nonnegative
from widenets.init_default import draw_weight
from widenets.modules import DenseLayer

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
        model: any module; its widenets ``DenseLayer``, ``nn.Linear`` and ``nn.Conv1d/2d/3d``
            submodules are re-initialised, others are left alone.
        scheme: a :mod:`widenets.init` scheme (or None for Gaussian IID).
        w_std: for torch layers, the weight scale: W = w_std / sqrt(fan_in) * draw.
            (widenets Dense layers keep their own ``w_std``.)
        b_std: for torch layers, redraw biases as N(0, b_std^2); None leaves them alone.
            widenets Dense biases are redrawn as N(0, 1) (their multiplier is b_std).
        seed, generator: source of randomness (a fresh seed when both are None).
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
    found = False
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DenseLayer):
                found = True
                w = module.weight
                fan_in = w.shape[1]
                new = draw_weight(scheme, w.shape, fan_in, generator, w.dtype, w.device)
                if module.parameterization == "standard":
                    new = new * (module.w_std / math.sqrt(fan_in))
                w.copy_(new)
                if module.bias is not None:
                    b = torch.randn(module.bias.shape, generator=generator, dtype=w.dtype).to(
                        w.device
                    )
                    if module.parameterization == "standard":
                        b = b * module.b_std
                    module.bias.copy_(b)
            elif isinstance(module, _TORCH_LAYERS):
                found = True
                w = module.weight
                fan_in = math.prod(w.shape[1:])
                new = draw_weight(scheme, w.shape, fan_in, generator, w.dtype, w.device)
                w.copy_(new * (w_std / math.sqrt(fan_in)))
                if b_std is not None and module.bias is not None:
                    b = torch.randn(module.bias.shape, generator=generator, dtype=w.dtype).to(
                        w.device
                    )
                    module.bias.copy_(b * b_std)
    if not found:
        raise ValueError(
            "`model` has no layer that an initialiser applies to (widenets Dense, nn.Linear, "
            "nn.Conv1d/2d/3d)."
        )
    return model
