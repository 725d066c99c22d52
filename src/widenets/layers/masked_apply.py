"""Finite networks on padded inputs: ``apply_masked(model, x, mask_constant)`` runs a built
network (``net.build``) on a batch whose padded positions hold ``mask_constant``, with the
rules by which the kernel face reads ``net.kernel(x, mask_constant=...)``
(``widenets.layers.masking``), so that its outputs are draws of the process whose kernel
that is (Neural Tangents' ``apply_fn(params, x, mask_constant=...)``).

A position is masked when every channel there equals the constant (``isnan`` for NaN);
its values are set to 0 and the mask m (N, *spatial), True where masked, follows the
modules:

- per-position modules (activations, Dense, LayerNorm over channels, Dropout, Scale,
  Identity) keep it;
- Conv, ConvLocal, AvgPool, SumPool zero their input at masked positions; an output position is
  masked when its window's centre is (``window_mask``);
- GlobalAvgPool: the mean over unmasked positions; GlobalSumPool: their sum; Flatten: masked
  positions are zeros; no mask after them;
- GlobalSelfAttention: masked positions are no keys;
- Aggregate zeroes masked positions and keeps the mask; DotGeneral and ImageResize ("linear")
  zero them, and mask an output that reads no unmasked input with a nonzero weight;
- FanOut copies the mask; FanInSum, FanInConcat, FanInProd keep the first branch's (as
  ``Kernel.merge``);
- the spatial output is 0 at masked positions.

- Index indexes the mask as the positions; ConvTranspose zeroes its input at masked
  positions and masks an output when any input its window reads is (Neural Tangents' rule);

Any other module (LayerNorm over space, DEQ, a plain
``nn.Module``) is a ValueError naming it. A module can take masks by defining
``forward_masked(x, mask) -> (y, mask)``. So end-padded sequences through "same"
convolutions and a global pool or attention give the outputs of each sequence alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from widenets.layers.activations import ActivationModule
from widenets.layers.attention import GlobalSelfAttentionModule
from widenets.layers.combinators import (
    FanInConcatModule,
    FanInSumModule,
    FanOutModule,
    IdentityModule,
    ParallelModule,
    ScaleModule,
    SerialModule,
)
from widenets.layers.conv import ConvModule
from widenets.layers.conv_local import ConvLocalModule
from widenets.layers.conv_transpose import ConvTransposeModule, transpose_mask
from widenets.layers.dense import DenseModule
from widenets.layers.dot_general import DotGeneralModule
from widenets.layers.graph import AggregateModule
from widenets.layers.image_resize import ImageResize, ImageResizeModule
from widenets.layers.indexing import IndexModule, index_mask
from widenets.layers.masking import window_mask
from widenets.layers.normalization import LayerNormModule
from widenets.layers.nt_activations import ExpNormalizedModule
from widenets.layers.pooling import (
    AvgPoolModule,
    FlattenModule,
    GlobalAvgPoolModule,
    GlobalSumPoolModule,
)
from widenets.layers.products import FanInProdModule
from widenets.layers.scaled import ScaledModule
from widenets.side_inputs import position_mask

#: modules that act on each position alone: the mask passes through
PER_POSITION = (
    ActivationModule,
    DenseModule,
    ExpNormalizedModule,
    IdentityModule,
    ScaleModule,
    nn.Dropout,
    nn.Identity,
)


def apply_masked(model: nn.Module, x, mask_constant, return_mask: bool = False):
    """``model(x)`` with the positions of ``x`` whose every channel equals ``mask_constant``
    treated as padding, as ``net.kernel(x, mask_constant=...)`` treats them.

    Args:
        model: a network built by ``net.build`` (or any composition of widenets modules).
        x: (N, C, *spatial) inputs, at least one spatial axis.
        mask_constant: a number (NaN allowed): the padding value.
        return_mask: also return the output's mask ((N, *spatial), True where masked), None
            when the output has no spatial axes.

    Returns:
        the outputs (0 at masked positions), or (outputs, mask) with ``return_mask``.
    """
    if isinstance(mask_constant, bool) or not isinstance(mask_constant, (int, float)):
        raise ValueError(f"`mask_constant` must be a number (NaN allowed), got {mask_constant!r}.")
    x = torch.as_tensor(x)
    if x.ndim < 3:
        raise ValueError(
            "apply_masked masks positions: `x` must be (N, C, *spatial) with at least one "
            f"spatial axis, got shape {tuple(x.shape)}."
        )
    mask = position_mask(x, mask_constant)
    x = torch.where(mask.unsqueeze(1), torch.zeros((), dtype=x.dtype, device=x.device), x)
    y, mask = _run(model, x, mask)
    if mask is not None and isinstance(y, Tensor) and y.ndim >= 3:
        y = _zero(y, mask)
    if isinstance(y, Tensor) and y.ndim < 3:
        mask = None
    return (y, mask) if return_mask else y


def _zero(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x`` (N, C, *spatial) with every channel of a masked position set to 0."""
    if mask is None:
        return x
    return x * (~mask).unsqueeze(1).to(x.dtype)


def _run(module: nn.Module, x, mask):
    """(output, its mask) of ``module`` on ``x`` with mask ``mask`` (a tuple of each for a
    branching point)."""
    if hasattr(module, "forward_masked"):
        return module.forward_masked(x, mask)
    if isinstance(module, SerialModule):
        for child in module:
            x, mask = _run(child, x, mask)
        return x, mask
    if isinstance(module, FanOutModule):
        return (x,) * module.n, (mask,) * module.n
    if isinstance(module, ParallelModule):
        if not isinstance(x, (tuple, list)) or len(x) != len(module.branches):
            raise ValueError(
                f"Parallel with {len(module.branches)} branches needs a tuple of as many inputs."
            )
        outs = [_run(b, xi, mi) for b, xi, mi in zip(module.branches, x, mask, strict=True)]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)
    if isinstance(module, (FanInSumModule, FanInConcatModule, FanInProdModule)):
        return module(x), mask[0]
    if isinstance(module, ScaledModule):
        out, m = _run(module.model, x, mask)
        if module.reference is not None:
            out = out - _run(module.reference, x, mask)[0]
        return out * module.alpha, m
    if mask is None:  # nothing spatial left to mask
        return module(x), None
    if isinstance(module, PER_POSITION) or (
        isinstance(module, LayerNormModule) and not module.spatial
    ):
        return module(x), mask
    if isinstance(module, (ConvModule, AvgPoolModule)):
        y = module(_zero(x, mask))
        ks = module.kernel_size if isinstance(module, ConvModule) else module.window
        geoms = [(out, lo, hi) for out, (lo, hi) in zip(y.shape[2:], module.pads, strict=True)]
        return y, window_mask(mask, geoms, ks, module.stride, module.circular)
    if isinstance(module, GlobalAvgPoolModule):
        keep = (~mask).to(x.dtype)
        n = keep.flatten(1).sum(1)
        if bool((n == 0).any()):
            i = int((n == 0).nonzero()[0, 0])
            raise ValueError(
                f"{type(module).__name__}: every position of x[{i}] is masked (all its values "
                "equal `mask_constant`), so it has no mean."
            )
        return (x * keep.unsqueeze(1)).flatten(2).sum(-1) / n[:, None], None
    if isinstance(module, (GlobalSumPoolModule, FlattenModule)):
        return module(_zero(x, mask)), None
    if isinstance(module, GlobalSelfAttentionModule):
        if bool(mask.flatten(1).all(1).any()):
            raise ValueError(
                "GlobalSelfAttentionModule: an input has every position masked (all its "
                "values equal `mask_constant`), so it has no keys."
            )
        return module(x, key_mask=mask), mask
    if isinstance(module, ConvLocalModule):
        y = module(_zero(x, mask))
        geoms = [(o, lo, hi) for o, (lo, hi) in zip(y.shape[2:], module.pad_pairs, strict=True)]
        return y, window_mask(mask, geoms, module.taps, module.strides, module.circular)
    if isinstance(module, IndexModule):
        y = module(x)
        return y, (index_mask(mask, module.spatial) if y.ndim > 2 else None)
    if isinstance(module, ConvTransposeModule):
        y = module(_zero(x, mask))
        return y, transpose_mask(mask, module.upsample, module.pad_pairs, module.weight.shape[2:])
    if isinstance(module, AggregateModule):
        return module(_zero(x, mask)), mask
    if isinstance(module, DotGeneralModule):
        return _dot_general(module, x, mask)
    if isinstance(module, ImageResizeModule):
        ops = [None] * (x.ndim - 2)
        for i, name in module.axes:
            ops[i] = getattr(module, name)
        linear = any(op is not None and op.dtype != torch.long for op in ops)
        y = module(_zero(x, mask) if linear else x)
        return y, ImageResize._mask(mask, ops)
    raise ValueError(
        f"{type(module).__name__} does not take masked inputs (`mask_constant`): "
        "apply_masked knows per-position modules, Conv, AvgPool, SumPool, the global pools, "
        "Flatten, GlobalSelfAttention, Aggregate, DotGeneral, ImageResize and the "
        "combinators (a module may define forward_masked(x, mask) -> (y, mask))."
    )


def _dot_general(module: DotGeneralModule, x: Tensor, mask: Tensor):
    """DotGeneral on zeroed padding; an output is masked when every input it reads with a
    nonzero weight is (``DotGeneral._mask``, with the module's einsum ids)."""
    if module.other is None:
        return module(x), mask
    y = module(_zero(x, mask))
    if not module.out_ids:
        return y, None
    c = module.other.abs().to(device=mask.device, dtype=torch.float64)
    ids = [0, *range(2, 2 + module.d)]
    keep = torch.einsum((~mask).to(torch.float64), ids, c, module.other_ids, [0, *module.out_ids])
    return y, keep == 0


__all__ = ["apply_masked"]
