"""``repeat(layer, n)``: a layer applied n times in sequence, as Neural Tangents' ``stax.repeat``.

Neural Tangents' ``repeat`` draws each repetition's parameters afresh (its ``init_fn`` splits
the random key once per step of the scan), so it is ``serial(*[layer] * n)`` compiled as a
loop, not a weight-tied layer; the kernel is the n-fold composition of the layer's map. Here
too: the finite face has n independently drawn copies, the kernel folds the map n times. The
layer must keep the activation shape (as Neural Tangents requires).
"""

from __future__ import annotations

from dataclasses import field

from widenets.errors import check_positive_int, shape_str
from widenets.layers.base import SEQUENCE, BuildContext, Layer, declare
from widenets.layers.combinators import SerialModule


@declare
class Repeat(Layer):
    """``layer`` applied ``n`` times, each time with its own parameters (K -> f^n(K)).

    Args:
        layer: a widenets layer (or network) whose output shape equals its input shape.
        n: number of repetitions, >= 1.
    """

    name = "repeat"
    takes_branches = True  # as its layer: the layer's own checks apply

    layer: Layer = field(metadata=SEQUENCE)
    n: int = 1

    def __post_init__(self):
        if not isinstance(self.layer, Layer):
            raise TypeError(
                f"`layer` of repeat must be a widenets layer, got {type(self.layer).__name__}: "
                f"{self.layer!r}."
            )
        self.n = check_positive_int(self.n, "n")

    def children(self):
        return (self.layer,)

    def out_shape(self, in_shape):
        out = self.layer.out_shape(in_shape)
        if out != in_shape:
            raise ValueError(
                f"repeat needs a layer that keeps its input shape: {self.layer!r} maps "
                f"{shape_str(in_shape)} to {shape_str(out)}; use serial(*[layer] * n)."
            )
        return out

    def kernel_fn(self, k):
        for _ in range(self.n):
            k = self.layer.kernel_fn(k)
        return k

    def scaling_degree(self, degree):
        for _ in range(self.n):
            degree = self.layer.scaling_degree(degree)
            if degree is None:
                return None
        return degree

    def pair_cost(self, in_shape) -> int:
        return self.layer.pair_cost(in_shape)

    def make_module(self, in_shape, ctx: BuildContext):
        self.out_shape(in_shape)
        return SerialModule(*[self.layer.make_module(in_shape, ctx) for _ in range(self.n)])


def repeat(layer: Layer, n: int) -> Repeat:
    """``layer`` applied ``n`` times with independently drawn parameters (Neural Tangents'
    ``stax.repeat``; the same kernel as ``serial(*[layer] * n)``)."""
    return Repeat(layer, n)


__all__ = ["Repeat", "repeat"]
