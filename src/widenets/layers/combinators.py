"""Combinators: networks built from layers, with both faces composed at once.

Kernel rules (Neural Tangents' stax): ``serial`` folds kernels through its layers;
``fan_out`` copies a kernel; ``parallel`` maps branches over a list of kernels;
``fan_in_sum`` adds independent branches (K = sum K_i, Theta = sum Theta_i); and
``fan_in_concat`` concatenates channels, so K = sum_i n_i K_i / sum_i n_i with n_i the
finite channel counts (likewise Theta).
"""

from __future__ import annotations

from dataclasses import field

import torch
from torch import nn

from widenets.errors import check_finite_real, check_positive_int, shape_str
from widenets.kernel import Kernel
from widenets.layers.base import (
    BRANCHES,
    SEQUENCE,
    VARIADIC,
    BuildContext,
    Layer,
    declare,
    linear_degree,
)


def _check_layer(obj, where: str) -> Layer:
    if not isinstance(obj, Layer):
        raise TypeError(f"{where} must be widenets layers, got {type(obj).__name__}: {obj!r}.")
    return obj


@declare
class Serial(Layer):
    """Layers applied in sequence: ``serial(a, b, c)`` computes c(b(a(x)))."""

    name = "serial"
    takes_branches = True

    layers: tuple[Layer, ...] = field(metadata={**SEQUENCE, **VARIADIC})

    def __init__(self, *layers: Layer):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        self.layers = layers
        self.__post_init__()

    def __post_init__(self):
        if not self.layers:
            raise ValueError("`serial` needs at least one layer.")
        self.layers = tuple(_check_layer(layer, "`serial` arguments") for layer in self.layers)

    def children(self):
        return self.layers

    def out_shape(self, in_shape):
        shape = in_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.out_shape(shape)
            except ValueError as e:
                name = " ".join(repr(layer).split())  # an error message stays on one line
                raise ValueError(f"layer {i} ({name}) of serial: {e}") from None
        return shape

    def kernel_fn(self, k):
        # (these import the layers: not at module level)
        from widenets import _conv_chain, _fc_chain, _gap_chain

        layers, i = self.layers, 0
        while i < len(layers):
            # a run of Dense / ABRelu layers on a fully-connected kernel: one compiled pass
            folded = _fc_chain.fold(layers, i, k, owner=self)
            if folded is None:  # a run of 3x3 Conv / ABRelu layers, one pair at a time
                folded = _conv_chain.fold(layers, i, k)
            if folded is None:  # the same on the pixel-pair layout, read out by a global pool
                folded = _gap_chain.fold(layers, i, k)
            if folded is not None:
                k, i = folded
                continue
            k = layers[i].kernel_fn(k)
            i += 1
        return k

    def scaling_degree(self, degree):
        for layer in self.layers:
            degree = layer.scaling_degree(degree)
            if degree is None:
                return None
        return degree

    def pair_cost(self, in_shape) -> int:
        cost, shape = 1, in_shape
        for layer in self.layers:
            cost = max(cost, layer.pair_cost(shape))
            shape = layer.out_shape(shape)
        return cost

    def make_module(self, in_shape, ctx: BuildContext):
        modules, shape = [], in_shape
        for layer in self.layers:
            modules.append(layer.make_module(shape, ctx))
            shape = layer.out_shape(shape)
        return SerialModule(*modules)


@declare
class Parallel(Layer):
    """Branch i applied to input i of a list (after ``fan_out``)."""

    name = "parallel"
    takes_branches = True

    branches: tuple[Layer, ...] = field(metadata={**BRANCHES, **VARIADIC})

    def __init__(self, *branches: Layer):
        self.branches = branches
        self.__post_init__()

    def __post_init__(self):
        if not self.branches:
            raise ValueError("`parallel` needs at least one branch.")
        self.branches = tuple(_check_layer(b, "`parallel` arguments") for b in self.branches)

    def children(self):
        return self.branches

    def _check_list(self, xs, what):
        if not isinstance(xs, list) or len(xs) != len(self.branches):
            n = 1 if not isinstance(xs, list) else len(xs)
            raise ValueError(
                f"parallel has {len(self.branches)} branches but receives {n} {what}; "
                f"put fan_out({len(self.branches)}) before it."
            )

    def out_shape(self, in_shape):
        self._check_list(in_shape, "inputs")
        return [b.out_shape(s) for b, s in zip(self.branches, in_shape, strict=True)]

    def kernel_fn(self, ks):
        self._check_list(ks, "kernels")
        return [b.kernel_fn(k) for b, k in zip(self.branches, ks, strict=True)]

    def pair_cost(self, in_shape) -> int:
        return max(b.pair_cost(s) for b, s in zip(self.branches, in_shape, strict=True))

    def scaling_degree(self, degree):
        if not isinstance(degree, list) or len(degree) != len(self.branches):
            return None
        out = [b.scaling_degree(d) for b, d in zip(self.branches, degree, strict=True)]
        return None if any(d is None for d in out) else out

    def make_module(self, in_shape, ctx):
        return ParallelModule(
            [b.make_module(s, ctx) for b, s in zip(self.branches, in_shape, strict=True)]
        )


@declare
class FanOut(Layer):
    """One input to a list of ``n`` identical ones."""

    name = "fan_out"

    n: int

    def __post_init__(self):
        self.n = check_positive_int(self.n, "n")

    def out_shape(self, in_shape):
        if isinstance(in_shape, list):
            raise ValueError("fan_out takes a single input, got a list of branches.")
        return [in_shape] * self.n

    def kernel_fn(self, k):
        return [k] * self.n

    def scaling_degree(self, degree):
        if degree is None or isinstance(degree, list):
            return None
        return [degree] * self.n

    def make_module(self, in_shape, ctx):
        return FanOutModule(self.n)


def _merged_degree(degree):
    """Scaling degree of a sum or concatenation of branches: that of every branch when
    they agree, else None (branches scaling differently do not scale as one power)."""
    if not isinstance(degree, list) or not degree or any(d is None for d in degree):
        return None
    if any(isinstance(d, list) for d in degree) or len(set(degree)) != 1:
        return None
    return degree[0]


def _merge_flags(ks: list[Kernel]) -> dict:
    return dict(
        is_gaussian=all(k.is_gaussian for k in ks),
        is_input=all(k.is_input for k in ks),
    )


@declare
class FanInSum(Layer):
    """Sum of branches: K = sum_i K_i, Theta = sum_i Theta_i (independent branches)."""

    name = "fan_in_sum"
    takes_branches = True

    def out_shape(self, in_shape):
        if not isinstance(in_shape, list):
            raise ValueError("fan_in_sum needs a list of branches (use fan_out first).")
        if any(s != in_shape[0] for s in in_shape):
            raise ValueError(
                "fan_in_sum needs branches of equal shape, got "
                + ", ".join(shape_str(s) for s in in_shape)
            )
        return in_shape[0]

    def kernel_fn(self, ks):
        def total(ts):
            out = ts[0]
            for t in ts[1:]:
                out = out + t
            return out

        return Kernel.merge(ks, total, **_merge_flags(ks))

    def scaling_degree(self, degree):
        return _merged_degree(degree)

    def make_module(self, in_shape, ctx):
        return FanInSumModule()


@declare
class FanInConcat(Layer):
    """Concatenation over channels: K = sum_i n_i K_i / sum_i n_i (n_i finite channels)."""

    name = "fan_in_concat"
    takes_branches = True

    def out_shape(self, in_shape):
        if not isinstance(in_shape, list):
            raise ValueError("fan_in_concat needs a list of branches (use fan_out first).")
        rest = {tuple(s[1:]) for s in in_shape}
        if len(rest) != 1:
            raise ValueError(
                "fan_in_concat needs branches that differ only in channels, got "
                + ", ".join(shape_str(s) for s in in_shape)
            )
        return (sum(s[0] for s in in_shape), *in_shape[0][1:])

    def kernel_fn(self, ks):
        widths = [k.shape1[0] for k in ks]
        total = float(sum(widths))

        def mix(ts):
            out = ts[0] * (widths[0] / total)
            for t, n in zip(ts[1:], widths[1:], strict=True):
                out.add_(t, alpha=n / total)
            return out

        k0 = ks[0]
        return Kernel.merge(
            ks,
            mix,
            shape1=(int(total), *k0.shape1[1:]),
            shape2=(int(total), *k0.shape2[1:]),
            **_merge_flags(ks),
        )

    def scaling_degree(self, degree):
        return _merged_degree(degree)

    def make_module(self, in_shape, ctx):
        return FanInConcatModule()


@declare
class Identity(Layer):
    """The identity: both faces pass their input through."""

    name = "Identity"
    takes_branches = True

    def kernel_fn(self, k):
        return k

    def scaling_degree(self, degree):
        return degree

    def make_module(self, in_shape, ctx):
        return IdentityModule()


@declare
class Scale(Layer):
    """Multiplication by a constant c: K' = c^2 K, Theta' = c^2 Theta."""

    name = "Scale"

    factor: float

    def __post_init__(self):
        self.factor = check_finite_real(self.factor, "factor")

    def kernel_fn(self, k):
        c2 = self.factor**2
        return k.map(lambda t, _: t * c2)

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    def make_module(self, in_shape, ctx):
        return ScaleModule(self.factor)


# ----- the finite faces: branching networks pass tuples of tensors between modules ---------


class SerialModule(nn.Sequential):
    """Layers applied one after the other (an ``nn.Sequential`` that passes tuples too)."""


class ParallelModule(nn.Module):
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


class FanOutModule(nn.Module):
    """One input copied into a tuple of ``n``."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return (x,) * self.n

    def extra_repr(self) -> str:
        return f"n={self.n}"


class FanInSumModule(nn.Module):
    """Sum of a tuple of tensors of equal shape."""

    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class FanInConcatModule(nn.Module):
    """Concatenation of a tuple of tensors along the channel axis (1)."""

    def forward(self, xs):
        return torch.cat(list(xs), dim=1)


class IdentityModule(nn.Module):
    def forward(self, x):
        return x


class ScaleModule(nn.Module):
    """Multiplication by a constant."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def serial(*layers: Layer) -> Serial:
    """Layers in sequence."""
    return Serial(*layers)


def parallel(*branches: Layer) -> Parallel:
    """Branch i applied to input i of a list."""
    return Parallel(*branches)


def fan_out(n: int) -> FanOut:
    """Copy one input into ``n`` branches."""
    return FanOut(n)


def fan_in_sum() -> FanInSum:
    """Sum the branches."""
    return FanInSum()


def fan_in_concat() -> FanInConcat:
    """Concatenate the branches along channels."""
    return FanInConcat()


def residual(
    *branch: Layer,
    shortcut: Layer | None = None,
    branch_scale: float = 1.0,
    shortcut_scale: float = 1.0,
) -> Serial:
    """A residual block: ``shortcut_scale * shortcut(x) + branch_scale * branch(x)``.

    Built as ``fan_out(2)``, ``parallel(branch, shortcut)``, ``fan_in_sum()``, so the kernel
    is K' = branch_scale^2 K_branch + shortcut_scale^2 K_shortcut (likewise Theta). The
    shortcut is the identity unless given (for example a 1x1 Conv or Dense when the branch
    changes the channel count). ``branch_scale = shortcut_scale = 1/sqrt(2)`` keeps the
    variance of a deep stack constant.
    """
    if not branch:
        raise ValueError("`residual` needs at least one branch layer.")
    body = serial(*branch) if len(branch) != 1 else branch[0]
    branch_scale = check_finite_real(branch_scale, "branch_scale")
    shortcut_scale = check_finite_real(shortcut_scale, "shortcut_scale")
    if branch_scale != 1.0:
        body = serial(body, Scale(branch_scale))
    short = shortcut or Identity()
    if shortcut_scale != 1.0:
        short = serial(short, Scale(shortcut_scale))
    return serial(fan_out(2), parallel(body, short), fan_in_sum())
