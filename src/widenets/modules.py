"""Finite-width faces of widenets layers: plain ``torch.nn.Module`` subclasses.

Branching networks pass tuples of tensors between these modules: ``FanOut`` makes one,
``Parallel`` maps branches over it, ``FanInSum`` / ``FanInConcat`` merge it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


class Serial(nn.Sequential):
    """Layers applied one after the other (an ``nn.Sequential`` that passes tuples too)."""


class Parallel(nn.Module):
    """Branch i applied to input i of a tuple."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, xs):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(self.branches):
            raise ValueError(
                f"Parallel with {len(self.branches)} branches needs a tuple of as many inputs."
            )
        return tuple(b(x) for b, x in zip(self.branches, xs, strict=True))


class FanOut(nn.Module):
    """One input copied into a tuple of ``n``."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return (x,) * self.n

    def extra_repr(self) -> str:
        return f"n={self.n}"


class FanInSum(nn.Module):
    """Sum of a tuple of tensors of equal shape."""

    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class FanInConcat(nn.Module):
    """Concatenation of a tuple of tensors along the channel axis (1)."""

    def forward(self, xs):
        return torch.cat(list(xs), dim=1)


class IdentityModule(nn.Module):
    def forward(self, x):
        return x


class Scale(nn.Module):
    """Multiplication by a constant."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class Elementwise(nn.Module):
    """An elementwise nonlinearity ``fn``."""

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str):
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def parameterization_scales(
    parameterization: str, w_std: float, b_std: float | None, fan_in: int
) -> tuple[float, float]:
    """(weight scale, bias scale) applied in the forward pass of an affine layer.

    "ntk": w_std / sqrt(fan_in) and b_std (parameters drawn N(0, 1)); "mean_field":
    w_std / fan_in and b_std; "standard": 1 and 1 (the scales are in the drawn parameters).
    """
    bias_scale = 0.0 if b_std is None else b_std
    if parameterization == "ntk":
        return w_std / math.sqrt(fan_in), bias_scale
    if parameterization == "mean_field":
        return w_std / fan_in, bias_scale
    if parameterization == "standard":
        return 1.0, 1.0
    raise ValueError(f"unknown parameterization {parameterization!r}")


class DenseLayer(nn.Module):
    """Affine map over the channel axis (1) with Neural Tangents' parameterisations.

    - ``"ntk"``: W_ij ~ N(0, 1), b ~ N(0, 1); y = (w_std / sqrt(fan_in)) W x + b_std b.
    - ``"standard"``: W_ij ~ N(0, w_std^2 / fan_in), b ~ N(0, b_std^2); y = W x + b.
    - ``"mean_field"``: W_ij ~ N(0, 1), b ~ N(0, 1); y = (w_std / fan_in) W x + b_std b
      (the mean-field / maximal-update readout).

    ``weight`` has shape (out, in) as in ``nn.Linear``; ``bias`` is None when b_std is None.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        w_std: float,
        b_std: float | None,
        parameterization: str,
        weight: Tensor,
        bias: Tensor | None,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.w_std = w_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.weight_scale, self.bias_scale = parameterization_scales(
            parameterization, w_std, b_std, in_features
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            y = x @ self.weight.T
        else:
            y = torch.einsum("nc...,oc->no...", x, self.weight)
        if self.weight_scale != 1.0:
            y = y * self.weight_scale
        if self.bias is not None:
            b = self.bias.view(1, -1, *([1] * (x.ndim - 2)))
            y = y + (b * self.bias_scale if self.bias_scale != 1.0 else b)
        return y

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, w_std={self.w_std}, "
            f"b_std={self.b_std}, parameterization={self.parameterization!r}"
        )
