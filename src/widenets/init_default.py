"""Default weight draws for ``build``: Gaussian IID (the ``widenets.init`` schemes plug in).

A scheme is any object with ``weight(shape, fan_in, generator, dtype) -> Tensor`` that
returns entries of mean 0 and variance 1 (the layer applies w_std / sqrt(fan_in)).
"""

from __future__ import annotations

import torch


def draw_weight(init, shape, fan_in, generator, dtype, device=None) -> torch.Tensor:
    """Unit-variance weight draw of ``shape`` from the scheme ``init`` (None: Gaussian IID)."""
    if init is None:
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)
    w = init.weight(tuple(shape), fan_in, generator, dtype)
    if tuple(w.shape) != tuple(shape):
        raise ValueError(
            f"`init` {init!r} returned a weight of shape {tuple(w.shape)}, expected {tuple(shape)}."
        )
    return w.to(device=device, dtype=dtype)


def draw_bias(shape, generator, dtype, device=None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)
