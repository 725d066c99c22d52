"""Locally connected layer (Neural Tangents' ``stax.ConvLocal``): a convolution whose filter
and bias are drawn independently at every output position (untied weights), both faces.

Outputs at distinct positions have independent weights, so they are uncorrelated: in the
full layout K'[p, p'] = 0 for p != p', and each position with itself is Conv's map,

    K'[p, p] = w^2 M[K](p, p) + b^2,   Theta'[p, p] = K'[p, p] + w^2 M[Theta](p, p)  ("ntk"),

(standard parameterisation as Conv: fan_in M[K] + [1 if bias] + w^2 M[Theta]), M the mean
over the filter taps. In the diagonal layout (each position with itself only) the map is
exactly Conv's, so a network ending in Flatten has the kernel of its convolutional twin.
Arguments, padding and parameterisations are Conv's; fan_in = C prod(k).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from widenets.init.schemes import draw_bias, draw_weight
from widenets.kernel import Kernel, spatial_diagonal
from widenets.layers._spatial import pad_input
from widenets.layers.base import BuildContext, declare
from widenets.layers.conv import Conv
from widenets.layers.dense import AffineModule


def _embed_diagonal(d: Tensor, n_batch: int) -> Tensor:
    """(B..., S1, ..., Sd) -> (B..., S1, S1', ..., Sd, Sd') zero off the spatial diagonal."""
    shape = list(d.shape[:n_batch])
    for s in d.shape[n_batch:]:
        shape += [s, s]
    out = d.new_zeros(shape)
    spatial_diagonal(out, n_batch).copy_(d)
    return out


@declare
class ConvLocal(Conv):
    """Locally connected layer: Conv with untied weights and biases per output position.

    Arguments as :class:`Conv` (``padding`` "same", "valid" or "circular"; Neural Tangents'
    default is "valid", Conv's here is "same").
    """

    name = "ConvLocal"

    def kernel_fn(self, k: Kernel) -> Kernel:
        if not k.full_spatial:
            return Conv.kernel_fn(self, k)
        same = k.cov2 is k.cov1
        diag = k.replace(
            nngp=None if k.nngp is None else spatial_diagonal(k.nngp, 2),
            ntk=None if k.ntk is None else spatial_diagonal(k.ntk, 2),
            cov1=spatial_diagonal(k.cov1, 1),
            cov2=None,
            full_spatial=False,
        )
        diag = diag.replace(cov2=diag.cov1 if same else spatial_diagonal(k.cov2, 1))
        out = Conv.kernel_fn(self, diag)
        cov1 = _embed_diagonal(out.cov1, 1)
        return out.replace(
            nngp=None if out.nngp is None else _embed_diagonal(out.nngp, 2),
            ntk=None if out.ntk is None else _embed_diagonal(out.ntk, 2),
            cov1=cov1,
            cov2=cov1 if same else _embed_diagonal(out.cov2, 1),
            full_spatial=True,
        )

    def make_module(self, in_shape, ctx: BuildContext) -> ConvLocalModule:
        ks, ss, geoms = self._geometry(in_shape)
        c = in_shape[0]
        outs = tuple(g[0] for g in geoms)
        w, b = _draw_local(
            ctx.init, ctx.generator, (self.out_channels, c, *ks, *outs), c * math.prod(ks),
            self.w_std, self.b_std, self.parameterization, ctx.dtype,
        )  # fmt: skip
        return ConvLocalModule(
            c * math.prod(ks),
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


def _draw_local(scheme, generator, shape, fan_in, w_std, b_std, parameterization, dtype,
                device=None):  # fmt: skip
    """Weight (out, in, *taps, *positions) and bias (out, *positions), in that order: unit
    variance (standard parameterisation: w_std^2 / fan_in and b_std^2)."""
    d = (len(shape) - 2) // 2
    w = draw_weight(scheme, shape, fan_in, generator, dtype)
    b = None if b_std is None else draw_bias((shape[0], *shape[2 + d :]), generator, dtype)
    if parameterization == "standard":
        w = w * (w_std / fan_in**0.5)
        b = None if b is None else b * b_std
    if device is not None:
        w = w.to(device)
        b = None if b is None else b.to(device)
    return w, b


class ConvLocalModule(AffineModule):
    """y[o, p] = sum_{c, d} s_w W[o, c, d, p] x_pad[c, s p + d] + s_b b[o, p]: a filter per
    output position p. (Its geometry attributes are not Conv's names, so the structured
    empirical NTK does not take it for a Conv.)"""

    def __init__(self, fan_in, taps, strides, pads, circular, w_std, b_std, parameterization,
                 weight, bias):  # fmt: skip
        super().__init__(fan_in, w_std, b_std, parameterization, weight, bias)
        self.taps, self.strides, self.pad_pairs, self.circular = taps, strides, pads, circular
        d = len(taps)
        letters = "pqr"[:d]
        taps_l = "xyz"[:d]
        self._spec = f"nc{letters}{taps_l},oc{taps_l}{letters}->no{letters}"

    def forward(self, x: Tensor) -> Tensor:
        x = pad_input(x, self.pad_pairs, self.circular)
        for i, (k, s) in enumerate(zip(self.taps, self.strides, strict=True)):
            x = x.unfold(2 + i, k, s)  # (N, C, O1, .., Od, k1, .., kd)
        w = self.weight * self.weight_scale if self.weight_scale != 1.0 else self.weight
        y = torch.einsum(self._spec, x, w)
        if self.bias is not None:
            b = self.bias * self.bias_scale if self.bias_scale != 1.0 else self.bias
            y = y + b
        return y

    @torch.no_grad()
    def reset_parameters(self, scheme=None, generator: torch.Generator | None = None) -> None:
        w, b = _draw_local(
            scheme, generator, tuple(self.weight.shape), self.fan_in, self.w_std,
            None if self.bias is None else self.b_std, self.parameterization,
            self.weight.dtype, self.weight.device,
        )  # fmt: skip
        self.weight.copy_(w)
        if b is not None:
            self.bias.copy_(b)

    def extra_repr(self) -> str:
        return (
            f"taps={self.taps}, strides={self.strides}, pads={self.pad_pairs}, "
            f"circular={self.circular}, w_std={self.w_std}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r}"
        )


__all__ = ["ConvLocal"]
