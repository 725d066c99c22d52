"""ImageResize: a fixed linear resize of the spatial axes (Neural Tangents'
``stax.ImageResize``, which mimics ``jax.image.resize``), both faces.

Per resized axis the finite layer multiplies by a fixed matrix W (in x out), the same for
every channel: y[c, o] = sum_s W[s, o] x[c, s], with ``jax.image.resize``'s weights:

- "linear" (also "bilinear", "trilinear", "triangle"): the triangle filter
  max(0, 1 - |(o + 1/2) m / n - 1/2 - s| / k), k = max(m / n, 1) when ``antialias`` and
  downsampling (else 1), each output's weights normalised to sum 1, outputs whose sample
  lies outside the input zero (m input, n output positions);
- "nearest": output o copies input floor((o + 1/2) m / n) (computed in float32, as JAX).

Without parameters, at infinite width the kernels map exactly as (Neural Tangents)

    K'[o, o'] = sum_{s, s'} W[s, o] K[s, s'] W[s', o'] per axis,   Theta' likewise,

which needs every pixel pair for "linear"; "nearest" is an indexing, K'[o] = K[s(o)], and
works in the cheap diagonal layout too (Neural Tangents asks for the full one). An axis
whose size does not change is left alone (as JAX). Cubic and Lanczos resizing have no
kernel in Neural Tangents and are not offered.

Differences from Neural Tangents: ``shape`` lists the whole output (N, C, *spatial), channels
first, with -1 for an axis kept; the batch and channel entries must be -1 (Neural Tangents
also refuses to resize channels in its kernel); ``batch_axis`` / ``channel_axis`` are
accepted for Neural Tangents code but must be 0 and 1; ``precision`` is not offered.
Masks (``mask_constant``): an output position is masked when every input position it reads
with a nonzero weight is (as Neural Tangents' ``mask_fn``). Neural Tangents 0.6.5's kernel
ignores its ``Kernel.is_reversed`` (spatial axes stored reversed after an odd number of
convolutions), so after one Conv it resizes H by W's rule and the reverse (widenets
agrees with it after zero or two Convs; ``bench/nt_layer_cases.py`` resizes there).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from widenets.errors import shape_str
from widenets.kernel import Kernel
from widenets.layers.base import BuildContext, Layer, declare, linear_degree
from widenets.layers.masking import zero_masked

LINEAR_NAMES = ("linear", "bilinear", "trilinear", "triangle")
METHODS = (*LINEAR_NAMES, "nearest")


def linear_weights(m: int, n: int, antialias: bool) -> Tensor:
    """(m, n) float64 weights of ``jax.image.resize(method="linear")`` from m to n positions
    (``jax._src.image.scale.compute_weight_mat`` with no translation)."""
    inv_scale = 1.0 / (n / m)
    kernel_scale = max(inv_scale, 1.0) if antialias else 1.0
    sample = (np.arange(n, dtype=np.float64) + 0.5) * inv_scale - 0.0 * inv_scale - 0.5
    x = np.abs(sample[None, :] - np.arange(m, dtype=np.float64)[:, None]) / kernel_scale
    w = np.maximum(0.0, 1.0 - np.abs(x))
    total = w.sum(axis=0, keepdims=True)
    eps = 1000.0 * float(np.finfo(np.float32).eps)
    w = np.where(np.abs(total) > eps, w / np.where(total != 0, total, 1.0), 0.0)
    inside = (sample >= -0.5) & (sample <= m - 0.5)
    return torch.from_numpy(np.where(inside[None, :], w, 0.0))


def nearest_indices(m: int, n: int) -> Tensor:
    """(n,) input positions read by ``jax.image.resize(method="nearest")`` from m to n
    positions: floor((o + 1/2) m / n) in float32, as JAX computes it."""
    offsets = (torch.arange(n, dtype=torch.float32) + 0.5) * m / n
    return torch.floor(offsets).to(torch.long)


def _along(t: Tensor, axis: int, op) -> Tensor:
    """``t`` resized along ``axis`` by ``op``: a LongTensor of positions or a weight matrix."""
    if op.dtype == torch.long:
        return t.index_select(axis, op.to(t.device))
    w = op.to(dtype=t.dtype, device=t.device)
    return torch.movedim(torch.tensordot(t, w, dims=([axis], [0])), -1, axis)


@declare
class ImageResize(Layer):
    """Resize of the spatial axes by ``jax.image.resize``'s linear or nearest rule.

    Args:
        shape: the output shape (N, C, *spatial), -1 for an axis kept (the batch and channel
            entries must be -1), e.g. ``(-1, -1, 12, -1)`` doubles the height of 6 x 5 images.
        method: "linear" (or "bilinear", "trilinear", "triangle") or "nearest".
        antialias: with "linear", widen the triangle filter when downsampling (as JAX).
        batch_axis, channel_axis: 0 and 1 (accepted for Neural Tangents code).
    """

    name = "ImageResize"

    shape: tuple
    method: str
    antialias: bool = True
    batch_axis: int = 0
    channel_axis: int = 1

    def __post_init__(self):
        for name, want in (("batch_axis", 0), ("channel_axis", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v != want:
                raise ValueError(
                    f"`{name}` must be {want}: widenets' inputs are (N, C, *spatial), batch "
                    f"first and channels second, got {v!r}."
                )
        shape = self.shape
        if (
            not isinstance(shape, (tuple, list))
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in shape)
            or any(s != -1 and s < 1 for s in shape)
        ):
            raise ValueError(
                "`shape` must be a tuple of positive ints or -1 (axis kept), one per axis of "
                f"the input (N, C, *spatial), got {shape!r}."
            )
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) < 3:
            raise ValueError(
                f"`shape` lists the whole output (N, C, *spatial): at least 3 entries, got "
                f"{shape!r}."
            )
        if self.shape[0] != -1:
            raise ValueError(
                f"`shape[0]` (the batch axis) must be -1: examples are not resized, got {shape!r}."
            )
        if self.shape[1] != -1:
            raise ValueError(
                f"`shape[1]` (the channel axis) must be -1: resizing channels is not defined in "
                f"the infinite-width limit (as in Neural Tangents), got {shape!r}."
            )
        method = self.method
        if not isinstance(method, str) or method.lower() not in METHODS:
            raise ValueError(
                f"`method` of ImageResize must be one of {METHODS}, got {method!r} (cubic and "
                "Lanczos resizing have no kernel, as in Neural Tangents)."
            )
        self.method = "linear" if method.lower() in LINEAR_NAMES else "nearest"
        if not isinstance(self.antialias, bool):
            raise ValueError(f"`antialias` must be True or False, got {self.antialias!r}.")

    def needs_pixel_pairs(self) -> bool:
        return self.method == "linear" and any(s != -1 for s in self.shape[2:])

    def _ops(self, in_shape) -> list:
        """One entry per spatial axis: None (kept) or the index / weight matrix."""
        if not isinstance(in_shape, tuple):
            raise ValueError(f"{self!r} takes a single input, got {len(in_shape)} branches.")
        if len(self.shape) != len(in_shape) + 1:
            raise ValueError(
                f"{self!r}: `shape` has {len(self.shape)} entries for inputs (N, C, *spatial) "
                f"of {len(in_shape) + 1} axes (per-example shape {shape_str(in_shape)})."
            )
        ops = []
        for m, n in zip(in_shape[1:], self.shape[2:], strict=True):
            if n == -1 or n == m:
                ops.append(None)
            elif self.method == "nearest":
                ops.append(nearest_indices(m, n))
            else:
                ops.append(linear_weights(m, n, self.antialias))
        return ops

    def out_shape(self, in_shape):
        self._ops(in_shape)
        return tuple(m if n == -1 else n for m, n in zip(in_shape, self.shape[1:], strict=True))

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    def kernel_fn(self, k: Kernel) -> Kernel:
        ops = self._ops(k.shape1)
        full = k.full_spatial
        linear = any(op is not None and op.dtype != torch.long for op in ops)
        if linear and not full:
            raise ValueError(
                f"{self!r} mixes positions: it needs the full pixel-pair kernel (got the "
                "diagonal one)."
            )
        if linear:
            k = zero_masked(k)  # masked positions hold zeros (``widenets.layers.masking``)

        def resize(t, n_batch):
            for i, op in enumerate(ops):
                if op is None:
                    continue
                axes = (n_batch + 2 * i, n_batch + 2 * i + 1) if full else (n_batch + i,)
                for a in axes:
                    t = _along(t, a, op)
            return t

        masks = {}
        if k.mask1 is not None:
            m1 = self._mask(k.mask1, ops)
            m2 = m1 if k.mask2 is k.mask1 else self._mask(k.mask2, ops)
            masks = {"mask1": m1, "mask2": m2}
        shape = self.out_shape(k.shape1)
        return k.map(resize, shape1=shape, shape2=shape, **masks)

    @staticmethod
    def _mask(mask: Tensor, ops) -> Tensor:
        """Masked outputs: those that read no unmasked input with a nonzero weight."""
        keep = (~mask).to(torch.float64)
        for i, op in enumerate(ops):
            if op is not None:
                keep = _along(keep, 1 + i, op)
        return keep == 0

    def make_module(self, in_shape, ctx: BuildContext) -> nn.Module:
        return ImageResizeModule(self._ops(in_shape)).to(device=ctx.device)


class ImageResizeModule(nn.Module):
    """Each spatial axis i of a batch (N, C, *spatial) indexed by ``idx_i`` (nearest) or
    multiplied by ``weight_i`` (linear, (in, out)); buffers, so they follow ``.to``."""

    def __init__(self, ops: list):
        super().__init__()
        self.axes = []
        for i, op in enumerate(ops):
            if op is None:
                continue
            name = f"idx_{i}" if op.dtype == torch.long else f"weight_{i}"
            self.register_buffer(name, op.clone())
            self.axes.append((i, name))

    def forward(self, x: Tensor) -> Tensor:
        for i, name in self.axes:
            x = _along(x, 2 + i, getattr(self, name))
        return x

    def extra_repr(self) -> str:
        return ", ".join(f"axis {i + 2}: {tuple(getattr(self, n).shape)} {n}" for i, n in self.axes)


__all__ = ["ImageResize"]
