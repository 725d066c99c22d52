"""What the fused chains (``widenets._fc_chain``, ``widenets._conv_chain``,
``widenets._gap_chain``) share: which layers of a ``serial`` they fold, how a run is
handed to the loops, and the variances written on the diagonal of a set with itself.

A run is the longest one, from a given layer on, of the chain's linear layers (Dense; 3x3
"same" Conv) and ReLU-family layers (Relu, LeakyRelu, Abs, ABRelu), each ReLU-family layer
on a Gaussian input (after a linear layer, or first on a Gaussian record: elsewhere the
eager layer raises its error). The linear layers a chain folds are its own predicate,
passed in (:func:`conv_out` for both convolutional chains); the rule of the run is the same
for every chain."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from widenets.layers.activations import ABRelu
from widenets.layers.conv import Conv


def relu_ok(layer) -> bool:
    """Whether ``layer`` is an ABRelu-family layer with ABRelu's own kernel map (a subclass
    that overrides it is not folded)."""
    cls = type(layer)
    return (
        isinstance(layer, ABRelu)
        and cls.kernel_fn is ABRelu.kernel_fn
        and cls.pair is ABRelu.pair
        and cls._pair_from_roots is ABRelu._pair_from_roots
    )


def run_end(layers, i: int, gaussian: bool, linear: Callable, shape=()) -> int:
    """The end j of the longest foldable run layers[i:j] (i when none). ``linear(layer,
    shape)``: the per-example shape after ``layer`` when it is a linear layer the chain
    folds on inputs of ``shape`` (its output is Gaussian), else None; ``shape``: the
    per-example shape before layers[i]; ``gaussian``: whether the record before layers[i]
    is Gaussian."""
    j = i
    while j < len(layers):
        layer = layers[j]
        after = linear(layer, shape)
        if after is not None:
            gaussian, shape = True, after
        elif gaussian and relu_ok(layer):
            gaussian = False
        else:
            break
        j += 1
    return j


def conv_ok(layer, shape) -> bool:
    """Whether ``layer`` is a Conv the convolutional loops fold on inputs of per-example
    ``shape`` (C, H, W): 3x3, "same", stride 1, NTK parameterisation, float scales."""
    if type(layer) is not Conv or layer.parameterization != "ntk" or len(shape) != 3:
        return False
    if isinstance(layer.w_std, torch.Tensor) or isinstance(layer.b_std, torch.Tensor):
        return False
    if layer.padding != "same":
        return False
    try:
        ks, ss, geoms = layer._geometry(shape)
    except Exception:  # noqa: BLE001 - a shape error: raised by the eager layer
        return False
    return (
        tuple(ks) == (3, 3)
        and tuple(ss) == (1, 1)
        and all(g[1] == 1 and g[0] == n for g, n in zip(geoms, shape[1:], strict=True))
    )


def conv_out(layer, shape):
    """The per-example shape after ``layer`` when it is a Conv the convolutional chains
    fold on inputs of ``shape``, else None."""
    return (layer.out_channels, *shape[1:]) if conv_ok(layer, shape) else None


def conv_run_end(layers, i: int, gaussian: bool, is_input: bool, shape) -> int:
    """The end j of the longest foldable run layers[i:j] of Conv and ABRelu layers (i
    when none; :func:`run_end`); on the input kernel, a run starts with a Conv (the input
    kernel's NTK is only known to a Conv)."""
    if is_input and (i >= len(layers) or type(layers[i]) is not Conv):
        return i
    return run_end(layers, i, gaussian, conv_out, shape)


def encode(run, linear: type, w_scale: float = 1.0):
    """(kinds (L,) int64, params (L, 4) float64) of a run for the loops: a ``linear``
    layer is kind 0 with (w^2 w_scale, b^2, 0, 0) (w_scale 1/9: the mean over a 3x3
    window), an ABRelu-family layer kind 1 with (a b, (b - a)^2 / (2 pi), 0, 0)."""
    kinds = np.empty(len(run), np.int64)
    params = np.zeros((len(run), 4), np.float64)
    for n, layer in enumerate(run):
        if isinstance(layer, linear):
            kinds[n] = 0
            params[n, 0] = layer.w_std**2 * w_scale
            params[n, 1] = 0.0 if layer.b_std is None else layer.b_std**2
        else:
            kinds[n] = 1
            params[n, 0] = layer.a * layer.b
            params[n, 1] = (layer.b - layer.a) ** 2 / (2 * math.pi)
    return kinds, params


def own_variances(ko: torch.Tensor, cov1: torch.Tensor, off, n1: int, n2: int) -> None:
    """For a set with itself (``off``: the record's ``diagonal_offset``, None otherwise),
    the entries ko[r, r + off] of an input with itself set to its variance cov1[r], as the
    eager loops give: the same numbers, whatever the compiler made of the pair loop (FMA
    contraction may round the pair and the variance loops differently)."""
    if off is None:
        return
    lo, hi = max(0, -off), min(n1, n2 - off)
    if hi > lo:
        r = torch.arange(lo, hi)
        ko[r, r + off] = cov1[r]
