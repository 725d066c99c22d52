"""Masks of variable-length inputs: padded positions that the kernel must ignore.

Neural Tangents' convention (``mask_constant=``), kept here with one difference: a
position of an input is masked when *every* channel there equals the constant (Neural
Tangents also zeroes single entries equal to it); the masked positions' values are set to
0 (``widenets.side_inputs``) and the mask m (N, *spatial), True where masked, travels in
the kernel record (``Kernel.mask1`` / ``mask2``). Layers that act on each position alone
(Dense, activations, LayerNorm over channels) leave it unchanged. The layers that mix
positions read it:

- Conv, AvgPool, Aggregate, Flatten: their input is 0 at masked positions (the finite
  network's padding carries no signal), K[s, s'] = 0 when s or s' is masked
  (:func:`zero_masked`); a window's output position is masked when the window's centre is
  (:func:`window_mask`, Neural Tangents' ``_pool_mask``), so "same" padding keeps the mask;
- GlobalAvgPool: the mean over unmasked positions only, K' = sum_{s, s' unmasked}
  K[s, s'] / (n1 n2) with n_i the unmasked count of each input;
- GlobalSelfAttention: masked positions are no keys (their logits -inf before the
  softmax, 0 for the identity mechanism);
- Index indexes the mask; ConvTranspose zeroes masked inputs and masks an output that reads
  any masked input (Neural Tangents' rule); DotGeneral and ImageResize mask an output that
  reads no unmasked input with a nonzero weight.

The finite face: ``widenets.layers.masked_apply.apply_masked``.

A network's spatial output is 0 at masked positions. So a batch of sequences padded at
the end gives, position for position, the kernel of each sequence alone when the
convolutions pad with zeros ("same") and end in a global pool or attention.
"""

from __future__ import annotations

import torch
from torch import Tensor

from widenets.kernel import Kernel, interleave


def keeps(k: Kernel, dtype=None) -> tuple[Tensor, Tensor]:
    """(N1, S...) and (N2, S...) ones at unmasked positions, zeros at masked ones."""
    dtype = k.cov1.dtype if dtype is None else dtype
    keep1 = (~k.mask1).to(dtype)
    keep2 = keep1 if k.mask2 is k.mask1 else (~k.mask2).to(dtype)
    return keep1, keep2


def zero_masked(k: Kernel) -> Kernel:
    """``k`` with every entry of a masked position set to 0 (``k`` itself without masks or
    without spatial axes): the kernel of inputs that are 0 there."""
    if k.mask1 is None or k.cov1.ndim == 1:
        return k
    keep1, keep2 = keeps(k)
    if k.full_spatial:
        pair = interleave(keep1, 0).unsqueeze(1) * interleave(keep2, 1).unsqueeze(0)

        def cov(t, which):
            keep = keep1 if which == 1 else keep2
            return t * (interleave(keep, 0) * interleave(keep, 1))
    else:
        a, b = k.gather_pairs(keep1, keep2)
        pair = a * b

        def cov(t, which):
            return t * (keep1 if which == 1 else keep2)

    return k.map(lambda t, _: t * pair, cov=cov)


def window_mask(mask: Tensor, geoms, ks, ss, circular: bool) -> Tensor:
    """The mask after a window op (convolution, pooling) of taps ``ks``, strides ``ss`` and
    padding ``geoms`` ((out, before, after) per axis): output position o is masked when
    the input at its window's centre, o s - before + (k - 1) // 2, is (a centre in the
    padding counts as masked, except with circular padding, where it wraps)."""
    for axis, ((out, lo, _), k, s) in enumerate(zip(geoms, ks, ss, strict=True), start=1):
        size = mask.shape[axis]
        centre = torch.arange(out, device=mask.device) * s - lo + (k - 1) // 2
        if circular:
            mask = mask.index_select(axis, centre % size)
            continue
        inside = (centre >= 0) & (centre < size)
        picked = mask.index_select(axis, centre.clamp(0, size - 1))
        shape = [1] * mask.ndim
        shape[axis] = out
        mask = picked | ~inside.reshape(shape)
    return mask


def masked_counts(k: Kernel) -> tuple[Tensor, Tensor]:
    """Unmasked positions of each input of x1 (N1,) and x2 (N2,), as the kernel's dtype."""
    keep1, keep2 = keeps(k)
    n1 = keep1.flatten(1).sum(1)
    return n1, n1 if keep2 is keep1 else keep2.flatten(1).sum(1)


def check_some_unmasked(layer, k: Kernel) -> None:
    """A ValueError when an input has every position masked (its mean is undefined)."""
    for which, m in ((1, k.mask1), (2, k.mask2)):
        gone = m.flatten(1).all(1)
        if bool(gone.any()):
            i = int(gone.nonzero()[0, 0])
            raise ValueError(
                f"{layer!r}: every position of x{which}[{i}] is masked (all its values equal "
                "`mask_constant`), so it has no mean."
            )


def key_mask(mask: Tensor) -> Tensor:
    """(N, P) masked keys of (N, *spatial) masks, positions flattened as the attention's."""
    return mask.flatten(1)


def window_masks(k: Kernel, geoms, ks, ss, circular: bool) -> dict:
    """``Kernel`` fields: both masks after a window op (:func:`window_mask`); {} unmasked."""
    if k.mask1 is None:
        return {}
    m1 = window_mask(k.mask1, geoms, ks, ss, circular)
    m2 = m1 if k.mask2 is k.mask1 else window_mask(k.mask2, geoms, ks, ss, circular)
    return {"mask1": m1, "mask2": m2}
