"""Helpers shared by the empirical kernels: inputs, parameter selection, forward calls."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from widenets.errors import as_tensor


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def prepare_inputs(model: nn.Module, x1, x2):
    """Inputs as tensors of the model's dtype; x2 None means x1."""
    dtype = model_dtype(model)
    x1 = as_tensor(x1, "x1", dtype, min_ndim=1)
    x2 = None if x2 is None else as_tensor(x2, "x2", dtype, min_ndim=1)
    if x2 is not None and x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"`x1` and `x2` must have the same per-example shape, got {tuple(x1.shape[1:])} "
            f"and {tuple(x2.shape[1:])}."
        )
    return x1, x2


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            "`model` has no trainable parameters: its NTK is zero. Pass a model with "
            "parameters that require grad."
        )
    return params


def forward_flat(model: nn.Module, x: Tensor) -> Tensor:
    """model(x) reshaped to (N, outputs)."""
    try:
        out = model(x)
    except Exception as e:  # noqa: BLE001 - the model rejects the inputs: say which
        raise ValueError(
            f"`model` rejected inputs of shape {tuple(x.shape)}: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(out, Tensor):
        raise TypeError(f"`model` must return a tensor, got {type(out).__name__}.")
    return out.reshape(out.shape[0], -1)
