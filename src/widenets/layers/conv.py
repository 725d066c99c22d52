"""Convolution over 1-D or 2-D (or 3-D) channels-first inputs, both faces.

With fan_in = C * prod(k) and the window mean M[K](p, p') = (1/prod k) sum_d K(s p + d,
s p' + d) over the filter taps d (Novak et al. 2019, "Bayesian Deep CNNs with Many
Channels are Gaussian Processes"; the definitions of Neural Tangents):

- NTK parameterisation:  K' = w^2 M[K] + b^2,   Theta' = K' + w^2 M[Theta];
- standard:              K' = w^2 M[K] + b^2,   Theta' = fan_in M[K] + [1 if bias] + w^2 M[Theta].

Padded positions are zeros ("same") or wrap around ("circular"); the mean always divides
by the full filter size, as the finite layer's fan_in does.
"""

from __future__ import annotations

import math
from dataclasses import field

import torch.nn.functional as F
from torch import Tensor

from widenets import _fused
from widenets.errors import check_positive_int
from widenets.kernel import Kernel
from widenets.layers._spatial import (
    as_tuple,
    check_padding,
    conv_window_mean,
    expand,
    geometry,
    pad_input,
    scaled_copy,
    spatial_dims,
)
from widenets.layers.base import WIDTH, BuildContext, Layer, declare, linear_degree
from widenets.layers.dense import (
    AffineModule,
    _scale,
    check_parameterization,
    draw_affine,
    has_bias,
)
from widenets.layers.masking import window_masks, zero_masked


def any_tensor(*values) -> bool:
    """Whether a hyperparameter is a tensor (e.g. a learnable w_std): then the scale is
    applied out of place, since the folded path takes Python numbers."""
    return any(isinstance(v, Tensor) for v in values)


@declare
class Conv(Layer):
    """Convolution with ``out_channels`` output channels (channels first).

    Args:
        out_channels: finite channel count (the kernel is that of infinitely many).
        kernel_size: int (the same on every spatial axis; the number of axes follows the
            input) or a tuple with one entry per spatial axis, e.g. (3, 3) for images.
        stride: int or tuple.
        padding: "same" (zeros; output size ceil(size / stride)), "valid" (none) or
            "circular" (wrap around, as for a torus).
        w_std: weight standard deviation (times 1/sqrt(fan_in), fan_in = C * prod(kernel));
            a float, or a 0-dim float tensor for a kernel differentiable in it (as Dense).
        b_std: bias standard deviation (float or 0-dim tensor); None for no bias.
        parameterization: "ntk" (default) or "standard".
    """

    name = "Conv"

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
        self.padding = check_padding(self.padding)
        self.w_std = _scale(self.w_std, "w_std", allow_none=False)  # a 0-dim tensor stays one
        self.b_std = _scale(self.b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization)
        if self.parameterization not in ("ntk", "standard"):
            raise ValueError(
                f"`parameterization` of Conv must be 'ntk' or 'standard', got {parameterization!r}"
                " (the mean-field parameterisation is for the Dense readout)."
            )

    def _geometry(self, in_shape):
        d = spatial_dims(self, in_shape, self.dims)
        ks, ss = expand(self.kernel_size, d), expand(self.stride, d)
        geoms = tuple(
            geometry(size, k, s, self.padding, f"{self!r}: the kernel")
            for size, k, s in zip(in_shape[1:], ks, ss, strict=True)
        )
        return ks, ss, geoms

    def out_shape(self, in_shape):
        _, _, geoms = self._geometry(in_shape)
        return (self.out_channels, *(g[0] for g in geoms))

    def kernel_fn(self, k: Kernel) -> Kernel:
        ks, ss, geoms = self._geometry(k.shape1)
        circular = self.padding == "circular"
        k = zero_masked(k)  # masked positions hold zeros (``widenets.layers.masking``)
        w_var = self.w_std**2
        b_var = 0.0 if self.b_std is None else self.b_std**2
        inv = 1.0 / math.prod(ks)

        def window_mean(t, n_batch, scale=None):  # the window sum, times scale if given
            out = conv_window_mean(t, n_batch, k.full_spatial, geoms, ks, ss, circular, scale)
            return out if out is not t else scaled_copy(out, None)

        def affine(m):  # w^2 M + b^2 with M the window sum (not yet divided)
            out = m * (w_var * inv)
            if b_var:
                out += b_var
            return out

        folded = self.parameterization == "ntk" and not any_tensor(w_var, b_var)
        scale = w_var * inv
        sums = []  # the window sum of the input NNGP, which the standard NTK needs

        # the 3x3 "same" stride-1 case has a fused loop (``widenets._fused.window_sum``)
        loop = (
            folded
            and len(ks) == 2
            and tuple(ks) == (3, 3)
            and tuple(ss) == (1, 1)
            and not circular
            and k.mask1 is None
            and k.mask2 is None
            and all(g[1] == 1 and g[0] == n for g, n in zip(geoms, k.shape1[1:], strict=True))
        )

        def affine_sum(t, n_batch):  # w^2 M + b^2, the same passes for nngp and variances
            if loop:  # the variances (n_batch 1) by the same loop as the tile: the diagonal
                # of a set with itself equals them bit for bit
                one = n_batch == 1
                out = _fused.window_sum(t.unsqueeze(1) if one else t, k.full_spatial, scale, b_var)
                if out is not None:
                    return out.squeeze(1) if one else out
            if not folded:  # (the diagonal of a set with itself then equals cov1 exactly)
                m = window_mean(t, n_batch)
                if n_batch == 2:  # the nngp (the NTK has its own map)
                    sums.append(m)
                return affine(m)
            out = window_mean(t, n_batch, scale)  # w^2 / prod(k) folded into the sum's passes
            if b_var:
                out += b_var
            return out

        def ntk_map(ntk, nngp):  # Theta' = w^2 M[Theta] + K' (standard: + fan_in M[K] + 1)
            if folded:  # the input NTK is zero: Theta' = K'
                if k.is_input:
                    return scaled_copy(nngp, None)
                out = _fused.window_sum(ntk, k.full_spatial, scale, 0.0, nngp) if loop else None
                return window_mean(ntk, 2, scale).add_(nngp) if out is None else out
            m_ntk = window_mean(ntk, 2)
            if self.parameterization == "ntk":
                return m_ntk.mul_(w_var * inv).add_(nngp)
            fan_in = k.shape1[0] * math.prod(ks)
            ntk = m_ntk.mul_(w_var * inv).add_(sums[0], alpha=fan_in * inv)
            if self.b_std is not None:
                ntk += 1.0
            return ntk

        out = (self.out_channels, *(g[0] for g in geoms))
        return k.map(
            affine_sum,
            ntk=ntk_map,
            shape1=out,
            shape2=out,
            is_gaussian=True,
            is_input=False,
            **window_masks(k, geoms, ks, ss, circular),
        )

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias(self.b_std, self.parameterization))

    def make_module(self, in_shape, ctx: BuildContext) -> ConvModule:
        ks, ss, geoms = self._geometry(in_shape)
        c = in_shape[0]
        fan_in = c * math.prod(ks)
        w, b = draw_affine(
            ctx.init, ctx.generator, (self.out_channels, c, *ks), fan_in, self.w_std,
            self.b_std, self.parameterization, ctx.dtype,
        )  # fmt: skip
        return ConvModule(
            c,
            self.out_channels,
            ks,
            ss,
            tuple((lo, hi) for _, lo, hi in geoms),
            self.padding == "circular",
            self.w_std,
            self.b_std,
            self.parameterization,
            w,
            b,
        ).to(device=ctx.device)


class ConvModule(AffineModule):
    """Convolution over the spatial axes of (N, C, L) or (N, C, H, W) inputs.

    Computes what ``torch.nn.Conv1d/2d`` does (``weight`` has their (out, in, *kernel)
    layout), with the padding done first ("same"/"circular") and the parameterisation scale
    applied to the weight: y = conv(x, s_w W) + s_b b, fan_in = in_channels * prod(kernel).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        pads: tuple[tuple[int, int], ...],
        circular: bool,
        w_std,
        b_std,
        parameterization: str,
        weight: Tensor,
        bias: Tensor | None,
    ):
        fan_in = in_channels * math.prod(kernel_size)
        super().__init__(fan_in, w_std, b_std, parameterization, weight, bias)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.pads = pads
        self.circular = circular
        self._conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel_size)]

    def forward(self, x: Tensor) -> Tensor:
        x = pad_input(x, self.pads, self.circular)
        w = self.weight * self.weight_scale if self.weight_scale != 1.0 else self.weight
        b = self.bias
        if b is not None and self.bias_scale != 1.0:
            b = b * self.bias_scale
        return self._conv(x, w, b, stride=self.stride)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, pads={self.pads}, circular={self.circular}, "
            f"w_std={self.w_std}, b_std={self.b_std}, parameterization={self.parameterization!r}"
        )
