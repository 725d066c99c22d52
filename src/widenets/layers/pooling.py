"""Pooling and readouts of spatial networks: AvgPool, SumPool, GlobalAvgPool,
GlobalSumPool, Flatten.

Kernel maps (Novak et al. 2019; Neural Tangents):

- AvgPool (window k, stride s): K'[p, p'] = (1/k^2) sum_{d, d'} K[s p + d, s p' + d'] per
  axis; the two positions move independently, so it needs every pixel pair.
- SumPool: the same sums without the 1/k^2 (the window sum of the activations).
- GlobalAvgPool: K' = (1/P^2) sum_{p, p'} K[p, p'] (every pixel pair).
- GlobalSumPool: K' = sum_{p, p'} K[p, p'] (P^2 times GlobalAvgPool's).
- Flatten: the next Dense sees C * P features, so K' = (1/P) sum_p K[p, p] (only each
  position with itself: the cheap diagonal layout suffices).

Theta follows the same linear maps.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from widenets.kernel import Kernel, spatial_diagonal
from widenets.layers._spatial import (
    as_tuple,
    check_padding,
    expand,
    geometry,
    pad_input,
    pool_window_sum,
    spatial_dims,
)
from widenets.layers.base import BuildContext, Layer, declare, linear_degree
from widenets.layers.masking import check_some_unmasked, keeps, window_masks, zero_masked


@declare
class AvgPool(Layer):
    """Average pooling over windows of ``window`` positions.

    Args:
        window: int (every spatial axis) or a tuple, one entry per spatial axis.
        stride: int or tuple; None for the window (non-overlapping windows).
        padding: "valid" (default: windows must fit), "same" (zeros, counted in the
            mean) or "circular".
    """

    name = "AvgPool"
    mixes_positions = True
    handles_packed_pairs = False  # the full layout only

    window: int | tuple[int, ...] = 2
    stride: int | tuple[int, ...] | None = None  # None: the window
    padding: str = "valid"

    def __post_init__(self):
        self.window = as_tuple(self.window, None, "window")
        n = len(self.window) if isinstance(self.window, tuple) else None
        if self.stride is not None:
            self.stride = as_tuple(self.stride, n, "stride")
        if n is None and isinstance(self.stride, tuple):
            n = len(self.stride)
        self.dims = n
        self.padding = check_padding(self.padding)

    def _geometry(self, in_shape):
        d = spatial_dims(self, in_shape, self.dims)
        stride = self.window if self.stride is None else self.stride
        ks, ss = expand(self.window, d), expand(stride, d)
        geoms = tuple(
            geometry(size, k, s, self.padding, f"{self!r}: the pooling window")
            for size, k, s in zip(in_shape[1:], ks, ss, strict=True)
        )
        return ks, ss, geoms

    def out_shape(self, in_shape):
        _, _, geoms = self._geometry(in_shape)
        return (in_shape[0], *(g[0] for g in geoms))

    def kernel_fn(self, k: Kernel) -> Kernel:
        ks, ss, geoms = self._geometry(k.shape1)
        if not k.full_spatial:
            raise ValueError(f"{self!r} needs the full pixel-pair kernel (got the diagonal one).")
        inv = self._scale(ks)
        circular = self.padding == "circular"
        k = zero_masked(k)

        def pool(t, n_batch):
            return pool_window_sum(t, n_batch, geoms, ks, ss, circular) * inv

        out = (k.shape1[0], *(g[0] for g in geoms))
        masks = window_masks(k, geoms, ks, ss, circular)
        return k.map(pool, shape1=out, shape2=out, **masks)

    def _scale(self, ks) -> float:  # of the window sums of the kernel
        return 1.0 / math.prod(ks) ** 2

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    def make_module(self, in_shape, ctx: BuildContext):
        ks, ss, geoms = self._geometry(in_shape)
        pads = tuple((lo, hi) for _, lo, hi in geoms)
        return AvgPoolModule(ks, ss, pads, self.padding == "circular")


@declare
class SumPool(AvgPool):
    """Sum pooling over windows of ``window`` positions: AvgPool times the window size.

    K'[p, p'] = sum_{d, d'} K[s p + d, s p' + d'] (Neural Tangents' ``stax.SumPool``).
    Arguments as :class:`AvgPool`; unlike Neural Tangents, whose stride defaults to 1,
    ``stride=None`` is the window (as AvgPool here): pass ``stride=1`` for theirs. Padded
    positions ("same") are zeros in the sum.
    """

    name = "SumPool"
    handles_packed_pairs = False  # the full layout only

    def _scale(self, ks) -> float:
        return 1.0

    def make_module(self, in_shape, ctx: BuildContext):
        ks, ss, geoms = self._geometry(in_shape)
        pads = tuple((lo, hi) for _, lo, hi in geoms)
        return SumPoolModule(ks, ss, pads, self.padding == "circular")


@declare
class GlobalAvgPool(Layer):
    """Mean over all spatial positions: (C, *spatial) -> (C,)."""

    name = "GlobalAvgPool"
    mixes_positions = True
    handles_packed_pairs = False  # the full layout only

    def out_shape(self, in_shape):
        spatial_dims(self, in_shape, None)
        return (in_shape[0],)

    def kernel_fn(self, k: Kernel) -> Kernel:
        spatial_dims(self, k.shape1, None)
        if not k.full_spatial:
            raise ValueError(f"{self!r} needs the full pixel-pair kernel (got the diagonal one).")

        out = (k.shape1[0],)
        if k.mask1 is not None:  # over unmasked positions
            return self._masked(k, out)
        return k.map(self._reduce, shape1=out, shape2=out, full_spatial=False)

    def _reduce(self, t, n_batch):  # over every pixel pair
        return t.flatten(n_batch).mean(-1)

    def _masked(self, k: Kernel, out) -> Kernel:
        return _masked_mean(self, k, out)

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    def make_module(self, in_shape, ctx: BuildContext):
        return GlobalAvgPoolModule()


@declare
class GlobalSumPool(GlobalAvgPool):
    """Sum over all spatial positions: (C, *spatial) -> (C,); K' = sum_{p, p'} K[p, p']
    (Neural Tangents' ``stax.GlobalSumPool``)."""

    name = "GlobalSumPool"
    handles_packed_pairs = False  # the full layout only

    def _reduce(self, t, n_batch):
        return t.flatten(n_batch).sum(-1)

    def _masked(self, k: Kernel, out) -> Kernel:  # the sum over unmasked position pairs
        check_some_unmasked(self, k)
        k = zero_masked(k)
        return k.map(
            self._reduce, shape1=out, shape2=out, full_spatial=False, mask1=None, mask2=None
        )

    def make_module(self, in_shape, ctx: BuildContext):
        return GlobalSumPoolModule()


@declare
class Flatten(Layer):
    """(C, *spatial) -> (C * prod(spatial),), channels first as ``torch.flatten``.

    The readout of a CNN without pooling (CNN-VEC): only each position's covariance with
    itself enters, so a network ending in Flatten is computed in the diagonal layout.
    """

    name = "Flatten"

    def out_shape(self, in_shape):
        if not isinstance(in_shape, tuple):
            raise ValueError(f"Flatten takes a single input, got {len(in_shape)} branches.")
        return (math.prod(in_shape),)

    def kernel_fn(self, k: Kernel) -> Kernel:
        if len(k.shape1) == 1:
            return k
        full = k.full_spatial

        def mean_diag(t, n_batch):
            if full:
                t = spatial_diagonal(t, n_batch)
            return t.flatten(n_batch).mean(-1)

        out = (math.prod(k.shape1),)
        k = zero_masked(k)  # masked positions are zero features
        return k.map(mean_diag, shape1=out, shape2=out, full_spatial=False, mask1=None, mask2=None)

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    def make_module(self, in_shape, ctx: BuildContext):
        return FlattenModule()


def _masked_mean(layer, k: Kernel, out) -> Kernel:
    """GlobalAvgPool of a masked full-layout kernel: sum over unmasked position pairs
    divided by n1 n2 (n_i: unmasked positions of each input)."""
    check_some_unmasked(layer, k)
    keep1, keep2 = keeps(k)
    k = zero_masked(k)
    n1 = keep1.flatten(1).sum(1)
    n2 = n1 if keep2 is keep1 else keep2.flatten(1).sum(1)
    a, b = k.gather_pairs(n1, n2)
    pair = a * b

    def total(t, n_batch):
        return t.flatten(n_batch).sum(-1)

    def cov(t, which):
        n = n1 if which == 1 else n2
        return total(t, 1) / (n * n)

    return k.map(
        lambda t, n: total(t, n) / pair,
        cov=cov,
        shape1=out,
        shape2=out,
        full_spatial=False,
        mask1=None,
        mask2=None,
    )


class AvgPoolModule(nn.Module):
    """Average pooling; padded positions count as zeros (the window size divides)."""

    def __init__(self, window, stride, pads, circular):
        super().__init__()
        self.window, self.stride, self.pads, self.circular = window, stride, pads, circular
        self._pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(window)]

    def forward(self, x):
        return self._pool(pad_input(x, self.pads, self.circular), self.window, self.stride)

    def extra_repr(self):
        return f"window={self.window}, stride={self.stride}, pads={self.pads}"


class SumPoolModule(AvgPoolModule):
    """Sum pooling: the window mean times the window size (padded positions are zeros)."""

    def __init__(self, window, stride, pads, circular):
        super().__init__(window, stride, pads, circular)
        self.size = math.prod(window)

    def forward(self, x):
        return super().forward(x) * self.size


class GlobalAvgPoolModule(nn.Module):
    """Mean over every spatial axis: (N, C, *spatial) -> (N, C)."""

    def forward(self, x):
        return x.flatten(2).mean(-1)


class GlobalSumPoolModule(nn.Module):
    """Sum over every spatial axis: (N, C, *spatial) -> (N, C)."""

    def forward(self, x):
        return x.flatten(2).sum(-1)


class FlattenModule(nn.Module):
    """(N, C, *spatial) -> (N, C * prod(spatial)), channels first as ``torch.flatten``."""

    def forward(self, x):
        return x.flatten(1)


__all__ = ["AvgPool", "Flatten", "GlobalAvgPool", "GlobalSumPool", "SumPool"]
