"""Transposed convolution (Neural Tangents' ``stax.ConvTranspose``), both faces.

As ``jax.lax.conv_transpose``: the input is dilated by the stride (s - 1 zeros between
positions), padded by (a, b) per axis, and convolved with stride 1, where for a k-tap filter

- "valid": a = k - 1, b = s - 1 + max(k - s, 0)   (output size n s + max(k - s, 0)),
- "same":  a + b = k + s - 2, a = k - 1 if s > k - 1 else ceil((k + s - 2) / 2)  (n s).

The kernel follows the same steps: dilation puts zeros at the inserted positions of the
kernel (both positions of every pair in the full layout), padding adds zeros, and the
stride-1 filter gives Conv's map with fan_in = C prod(k) (Neural Tangents' convention, kept
although each output sees only about prod(k) / prod(s) taps):

- NTK parameterisation:  K' = w^2 M[K] + b^2,   Theta' = K' + w^2 M[Theta];
- standard:              K' = w^2 M[K] + b^2,   Theta' = fan_in M[K] + [1 if bias] + w^2 M[Theta],

M the mean over the filter taps of the dilated, padded kernel. Circular padding is not
offered (Neural Tangents' circular transpose is a different construction).
"""

from __future__ import annotations

import math
from dataclasses import field

import torch
import torch.nn.functional as F
from torch import Tensor

from widenets.errors import check_positive_int
from widenets.kernel import Kernel
from widenets.layers._spatial import as_tuple, conv_window_mean, expand, spatial_dims
from widenets.layers.base import WIDTH, BuildContext, Layer, declare, linear_degree
from widenets.layers.dense import (
    AffineModule,
    _scale,
    check_parameterization,
    draw_affine,
    has_bias,
)
from widenets.layers.masking import zero_masked

TRANSPOSE_PADDINGS = ("same", "valid")


def transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """(a, b): zeros before and after the dilated input (``jax.lax.conv_transpose``)."""
    if padding == "same":
        total = k + s - 2
        a = k - 1 if s > k - 1 else math.ceil(total / 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        a = k - 1
    return a, total - a


def dilate(t: Tensor, axes: tuple[int, ...], s: int) -> Tensor:
    """``s - 1`` zeros between consecutive entries along each of ``axes``."""
    if s == 1:
        return t
    shape = list(t.shape)
    for a in axes:
        shape[a] = (shape[a] - 1) * s + 1
    out = t.new_zeros(shape)
    idx = [slice(None)] * t.ndim
    for a in axes:
        idx[a] = slice(None, None, s)
    out[tuple(idx)] = t
    return out


def transpose_mask(mask: Tensor, strides, pads, taps) -> Tensor:
    """The mask (N, *spatial) after a transposed convolution, Neural Tangents' rule: an
    output position is masked when any input position its window reads is (the mask as 0/1
    through dilate, pad and a window sum of ones)."""
    m = mask.to(torch.float64)
    for i, s in enumerate(strides):
        m = dilate(m, (1 + i,), s)
    flat = []
    for a, b in reversed(tuple(pads)):
        flat += [a, b]
    m = F.pad(m, flat).unsqueeze(1)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(taps)]
    ones = torch.ones((1, 1, *taps), dtype=m.dtype, device=m.device)
    return conv(m, ones).squeeze(1) > 0


@declare
class ConvTranspose(Layer):
    """Transposed convolution with ``out_channels`` channels (channels first).

    Args:
        out_channels: finite channel count.
        kernel_size: int (every spatial axis) or a tuple, one entry per spatial axis.
        stride: int or tuple: the upsampling factor.
        padding: "same" (output size n * stride; the default, as Conv here; Neural Tangents'
            default is "valid") or "valid" (n * stride + max(k - stride, 0)).
        w_std, b_std, parameterization: as Conv ("ntk" or "standard"; fan_in = C prod(k)).
    """

    name = "ConvTranspose"

    out_channels: int = field(metadata=WIDTH)
    kernel_size: int | tuple[int, ...] = 3
    stride: int | tuple[int, ...] = 1
    padding: str = "same"
    w_std: float | Tensor = 1.0
    b_std: float | Tensor | None = None
    parameterization: str = "ntk"

    def __post_init__(self):
        parameterization = self.parameterization
        self.out_channels = check_positive_int(self.out_channels, "out_channels")
        self.kernel_size = as_tuple(self.kernel_size, None, "kernel_size")
        n = len(self.kernel_size) if isinstance(self.kernel_size, tuple) else None
        self.stride = as_tuple(self.stride, n, "stride")
        if n is None and isinstance(self.stride, tuple):
            n = len(self.stride)
        self.dims = n
        if not isinstance(self.padding, str) or self.padding.lower() not in TRANSPOSE_PADDINGS:
            raise ValueError(
                f"`padding` of ConvTranspose must be one of {TRANSPOSE_PADDINGS}, got "
                f"{self.padding!r}."
            )
        self.padding = self.padding.lower()
        self.w_std = _scale(self.w_std, "w_std", allow_none=False)
        self.b_std = _scale(self.b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization)
        if self.parameterization not in ("ntk", "standard"):
            raise ValueError(
                "`parameterization` of ConvTranspose must be 'ntk' or 'standard', got "
                f"{parameterization!r}."
            )

    def _geometry(self, in_shape):
        """(taps, strides, pads (a, b), output sizes) per spatial axis."""
        d = spatial_dims(self, in_shape, self.dims)
        ks, ss = expand(self.kernel_size, d), expand(self.stride, d)
        pads = tuple(transpose_padding(k, s, self.padding) for k, s in zip(ks, ss, strict=True))
        outs = tuple(
            (n - 1) * s + 1 + a + b - k + 1
            for n, k, s, (a, b) in zip(in_shape[1:], ks, ss, pads, strict=True)
        )
        return ks, ss, pads, outs

    def out_shape(self, in_shape):
        *_, outs = self._geometry(in_shape)
        return (self.out_channels, *outs)

    def kernel_fn(self, k: Kernel) -> Kernel:
        ks, ss, pads, outs = self._geometry(k.shape1)
        masks = {}
        if k.mask1 is not None:  # masked inputs are zeros; outputs reading one are masked
            k = zero_masked(k)
            m1 = transpose_mask(k.mask1, ss, pads, ks)
            m2 = m1 if k.mask2 is k.mask1 else transpose_mask(k.mask2, ss, pads, ks)
            masks = {"mask1": m1, "mask2": m2}
        full = k.full_spatial
        geoms = tuple((o, a, b) for o, (a, b) in zip(outs, pads, strict=True))
        ones = (1,) * len(ks)
        w_var = self.w_std**2
        b_var = 0.0 if self.b_std is None else self.b_std**2
        inv = 1.0 / math.prod(ks)

        def mean(t, n_batch):  # M[t]: dilate, pad, mean over the taps
            for i, s in enumerate(ss):
                axes = (n_batch + 2 * i, n_batch + 2 * i + 1) if full else (n_batch + i,)
                t = dilate(t, axes, s)
            out = conv_window_mean(t, n_batch, full, geoms, ks, ones, False, inv)
            return out if out is not t else out.clone()

        sums = []

        def nngp_map(t, n_batch):
            m = mean(t, n_batch)
            if n_batch == 2:
                sums.append(m)
            out = m * w_var
            return out if _is_zero(b_var) else out + b_var

        def ntk_map(ntk, nngp):
            out = mean(ntk, 2) * w_var
            if self.parameterization == "ntk":
                return out + nngp
            fan_in = k.shape1[0] * math.prod(ks)
            out = out + sums[0] * fan_in
            return out + 1.0 if self.b_std is not None else out

        shape = (self.out_channels, *outs)
        return k.map(
            nngp_map,
            ntk=ntk_map,
            shape1=shape,
            shape2=shape,
            is_gaussian=True,
            is_input=False,
            **masks,
        )

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias(self.b_std, self.parameterization))

    def make_module(self, in_shape, ctx: BuildContext) -> ConvTransposeModule:
        ks, ss, pads, _ = self._geometry(in_shape)
        c = in_shape[0]
        fan_in = c * math.prod(ks)
        w, b = draw_affine(
            ctx.init, ctx.generator, (self.out_channels, c, *ks), fan_in, self.w_std,
            self.b_std, self.parameterization, ctx.dtype,
        )  # fmt: skip
        return ConvTransposeModule(
            fan_in, ss, pads, self.w_std, self.b_std, self.parameterization, w, b
        ).to(device=ctx.device)


def _is_zero(v) -> bool:
    return not isinstance(v, Tensor) and v == 0.0


class ConvTransposeModule(AffineModule):
    """y = conv(pad(dilate(x, stride), pads), s_w W) + s_b b, stride 1; ``weight`` is
    (out, in, *taps). (The geometry lives in ``upsample`` and ``pad_pairs``, not in
    Conv's attribute names, so the structured empirical NTK does not take it for a Conv.)"""

    def __init__(self, fan_in, stride, pads, w_std, b_std, parameterization, weight, bias):
        super().__init__(fan_in, w_std, b_std, parameterization, weight, bias)
        self.upsample = tuple(stride)
        self.pad_pairs = tuple(pads)
        self._conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(stride)]

    def forward(self, x: Tensor) -> Tensor:
        for i, s in enumerate(self.upsample):
            x = dilate(x, (2 + i,), s)
        flat = []
        for a, b in reversed(self.pad_pairs):
            flat += [a, b]
        x = F.pad(x, flat)
        w = self.weight * self.weight_scale if self.weight_scale != 1.0 else self.weight
        b = self.bias
        if b is not None and self.bias_scale != 1.0:
            b = b * self.bias_scale
        return self._conv(x, w, b)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1]}, {self.weight.shape[0]}, taps={tuple(self.weight.shape[2:])}"
            f", upsample={self.upsample}, pads={self.pad_pairs}, w_std={self.w_std}, "
            f"b_std={self.b_std}, parameterization={self.parameterization!r}"
        )


__all__ = ["ConvTranspose"]
