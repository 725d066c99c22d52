"""Finite-width faces of the spatial layers (convolution, pooling, normalisation, attention).

Each is a plain ``torch.nn.Module`` with the parameterisations of Neural Tangents, like
:class:`widenets.modules.DenseLayer`:

- ``"ntk"``: weights and biases drawn N(0, 1), scaled in the forward pass by
  w_std / sqrt(fan_in) and b_std;
- ``"standard"``: weights drawn N(0, w_std^2 / fan_in), biases N(0, b_std^2), unscaled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from widenets.modules import parameterization_scales


def _pad(x: Tensor, pads: tuple[tuple[int, int], ...], circular: bool) -> Tensor:
    """Pad the spatial axes of (N, C, *spatial); ``pads`` is ((lo, hi), ...) per axis."""
    flat = []
    for lo, hi in reversed(pads):  # F.pad starts from the last axis
        flat += [lo, hi]
    if not any(flat):
        return x
    if circular:
        # F.pad's circular mode needs pads <= size; wrapping one axis at a time keeps it simple
        for i, (lo, hi) in enumerate(pads):
            axis = 2 + i
            n = x.shape[axis]
            parts = []
            if lo:
                parts.append(x.narrow(axis, n - lo, lo))
            parts.append(x)
            if hi:
                parts.append(x.narrow(axis, 0, hi))
            x = torch.cat(parts, axis)
        return x
    return F.pad(x, flat)


class ConvLayer(nn.Module):
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
        w_std: float,
        b_std: float | None,
        parameterization: str,
        weight: Tensor,
        bias: Tensor | None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.pads = pads
        self.circular = circular
        self.w_std = w_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.weight_scale, self.bias_scale = parameterization_scales(
            parameterization, w_std, b_std, in_channels * math.prod(kernel_size)
        )
        self._conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel_size)]

    def forward(self, x: Tensor) -> Tensor:
        x = _pad(x, self.pads, self.circular)
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


class AvgPoolModule(nn.Module):
    """Average pooling; padded positions count as zeros (the window size divides)."""

    def __init__(self, window, stride, pads, circular):
        super().__init__()
        self.window, self.stride, self.pads, self.circular = window, stride, pads, circular
        self._pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(window)]

    def forward(self, x):
        return self._pool(_pad(x, self.pads, self.circular), self.window, self.stride)

    def extra_repr(self):
        return f"window={self.window}, stride={self.stride}, pads={self.pads}"


class GlobalAvgPoolModule(nn.Module):
    """Mean over every spatial axis: (N, C, *spatial) -> (N, C)."""

    def forward(self, x):
        return x.flatten(2).mean(-1)


class FlattenModule(nn.Module):
    """(N, C, *spatial) -> (N, C * prod(spatial)), channels first as ``torch.flatten``."""

    def forward(self, x):
        return x.flatten(1)


class LayerNormModule(nn.Module):
    """(x - mean) / sqrt(var + eps) over the channel axis, or channels and space."""

    def __init__(self, spatial: bool, eps: float):
        super().__init__()
        self.spatial, self.eps = spatial, eps

    def forward(self, x):
        dims = tuple(range(1, x.ndim)) if self.spatial else (1,)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self):
        return f"over={'channels+space' if self.spatial else 'channels'}, eps={self.eps}"


class SelfAttentionModule(nn.Module):
    """Multi-head self-attention over all spatial positions of (N, C, *spatial).

    For head h, with X the (P, C) positions-by-channels input:
    Q_h = w_q X Wq_h^T / sqrt(C), K_h = w_k X Wk_h^T / sqrt(C), V_h = w_v X Wv_h^T / sqrt(C),
    A_h = softmax(Q_h K_h^T / n_key) (``linear_scaling``, Wk = Wq tied) or
    softmax(Q_h K_h^T / sqrt(n_key)), out = concat_h(A_h V_h) w_o Wo^T / sqrt(H n_val) + b_std b.
    """

    def __init__(self, wq, wk, wv, wo, bias, stds, linear_scaling, mechanism="softmax"):
        super().__init__()
        self.wq = nn.Parameter(wq)  # (H, n_key, C)
        self.wk = None if wk is None else nn.Parameter(wk)
        self.wv = nn.Parameter(wv)  # (H, n_val, C)
        self.wo = nn.Parameter(wo)  # (C_out, H * n_val)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.q_std, self.k_std, self.v_std, self.o_std, self.b_std = stds
        self.linear_scaling = linear_scaling
        self.mechanism = mechanism

    def forward(self, x):
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        xs = x.flatten(2).transpose(1, 2)  # (N, P, C)
        s = 1.0 / math.sqrt(c)
        q = torch.einsum("npc,hkc->nhpk", xs, self.wq) * (self.q_std * s)
        wk = self.wq if self.wk is None else self.wk
        k = torch.einsum("npc,hkc->nhpk", xs, wk) * (self.k_std * s)
        v = torch.einsum("npc,hvc->nhpv", xs, self.wv) * (self.v_std * s)
        n_key = q.shape[-1]
        scale = 1.0 / n_key if self.linear_scaling else 1.0 / math.sqrt(n_key)
        a = q @ k.transpose(-1, -2) * scale  # (N, H, P, P) logits
        if self.mechanism == "softmax":
            a = torch.softmax(a, dim=-1)
        heads = a @ v  # (N, H, P, n_val)
        heads = heads.permute(0, 2, 1, 3).flatten(2)  # (N, P, H * n_val)
        out = heads @ self.wo.T * (self.o_std / math.sqrt(heads.shape[-1]))
        if self.bias is not None:
            out = out + self.bias * self.b_std
        return out.transpose(1, 2).reshape(n, -1, *spatial)
