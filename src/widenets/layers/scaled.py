"""The overall output scale alpha: the lazy / rich knob.

Chizat, Oyallon & Bach 2019 ("On lazy training in differentiable programming") and
Geiger et al. 2020 / Sclocchi et al. 2023 ("Dissecting the effects of SGD noise in distinct
regimes of deep learning") train the model

    f_alpha(x) = alpha (f(x; w) - f(x; w0))        (centred), or  alpha f(x; w)

with a learning rate scaled as lr / alpha^2 (for the square loss), so that the function
moves at a speed independent of alpha at initialisation. Large alpha is the lazy (kernel)
regime: the weights move by O(1/alpha) and the NTK stays fixed; small alpha is the rich
(feature-learning) regime. Centring removes the random initial function, so that
f_alpha = 0 at initialisation whatever alpha.
"""

from __future__ import annotations

import copy
from dataclasses import field

import torch
from torch import nn

from widenets.errors import check_finite_real
from widenets.kernel import Kernel
from widenets.layers.base import SEQUENCE, BuildContext, Layer, WeightedModule, declare


class ScaledModule(WeightedModule):
    """alpha (model(x) - reference(x)), the reference a frozen copy of the initial model."""

    def __init__(self, model: nn.Module, alpha: float, center: bool = True):
        super().__init__()
        self.model = model
        self.alpha = float(alpha)
        self.center = bool(center)
        if center:
            ref = copy.deepcopy(model)
            for p in ref.parameters():
                p.requires_grad_(False)
            self.reference = ref
        else:
            self.reference = None
        if hasattr(model, "input_shape"):
            self.input_shape = model.input_shape

    def forward(self, x):
        out = self.model(x)
        if self.reference is not None:
            out = out - self.reference(x)
        return out * self.alpha

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, center={self.center}"

    @torch.no_grad()
    def reset_parameters(self, scheme=None, generator: torch.Generator | None = None) -> None:
        """Redraw the model's weights (``widenets.init.apply``); the reference copies them, so
        a centred output stays zero at the new initialisation."""
        from widenets.init.apply import redraw

        redraw(self.model, scheme, generator)
        if self.reference is not None:
            self.reference.load_state_dict(self.model.state_dict())


@declare
class Scaled(Layer):
    """A widenets network whose output is multiplied by alpha (and centred if asked).

    Kernel face: NNGP = alpha^2 K (0 when centred: the centred output is exactly zero at
    initialisation), NTK = alpha^2 Theta (the reference copy is frozen, so it has no
    gradient).
    """

    name = "Scaled"

    net: Layer = field(metadata=SEQUENCE)
    alpha: float
    center: bool = True

    def __post_init__(self):
        self.alpha = _check_alpha(self.alpha)
        self.center = bool(self.center)

    def children(self):
        return (self.net,)

    def out_shape(self, in_shape):
        return self.net.out_shape(in_shape)

    def pair_cost(self, in_shape):
        return self.net.pair_cost(in_shape)

    def kernel_fn(self, k: Kernel) -> Kernel:
        k = self.net.kernel_fn(k)
        a2 = self.alpha**2
        if self.center:
            nngp = None if k.nngp is None else k.nngp * 0.0
            cov1, cov2 = k.cov1 * 0.0, k.cov2 * 0.0
        else:
            nngp = None if k.nngp is None else k.nngp * a2
            cov1, cov2 = k.cov1 * a2, k.cov2 * a2
        ntk = None if k.ntk is None else k.ntk * a2
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2)

    def make_module(self, in_shape, ctx: BuildContext):
        return ScaledModule(self.net.make_module(in_shape, ctx), self.alpha, self.center)


def _check_alpha(alpha) -> float:
    alpha = check_finite_real(alpha, "alpha")
    if alpha <= 0:
        raise ValueError(f"`alpha` (the output scale) must be > 0, got {alpha!r}.")
    return alpha


def scaled(model_or_net, alpha: float, *, center: bool = True):
    """Multiply a network's output by ``alpha``, centred at initialisation by default.

    Args:
        model_or_net: a ``torch.nn.Module`` (the current parameters are the initial ones)
            or a widenets network (then ``build`` makes the scaled module).
        alpha: the output scale (> 0). Train with learning rate lr / alpha^2 to compare
            regimes at equal initial function-space speed.
        center: subtract the output of a frozen copy of the initial network.

    Returns:
        a :class:`ScaledModule` for a module, a :class:`Scaled` layer for a widenets network.
    """
    alpha = _check_alpha(alpha)
    if isinstance(model_or_net, Layer):
        return Scaled(model_or_net, alpha, center)
    if isinstance(model_or_net, nn.Module):
        return ScaledModule(model_or_net, alpha, center)
    raise TypeError(
        "`model_or_net` must be a torch.nn.Module or a widenets network, got "
        f"{type(model_or_net).__name__}."
    )
