"""Which layers of a ``serial`` the fused chains fold (``widenets._fc_chain``,
``widenets._conv_chain``): the longest run, from a given layer on, of the chain's linear
layers (Dense; 3x3 "same" Conv) and ReLU-family layers (Relu, LeakyRelu, Abs, ABRelu),
each ReLU-family layer on a Gaussian input (after a linear layer, or first on a Gaussian
record: elsewhere the eager layer raises its error). The linear layers a chain folds are
its own predicate, passed in; the rule of the run is the same for both chains."""

from __future__ import annotations

from collections.abc import Callable

from widenets.layers.activations import ABRelu


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
