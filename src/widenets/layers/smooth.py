"""Smooth activations without closed-form kernels: Tanh, Sigmoid, Swish/SiLU, Softplus, Mish.

K' = E[phi(u) phi(v)] and Kdot = E[phi'(u) phi'(v)] for (u, v) ~ N(0, [[q1, K], [K, q2]])
with u = sqrt(q1) z1, v = sqrt(q2)(c z1 + sqrt(1 - c^2) z2), by Gauss-Legendre in z1 and,
for each z1 node, in z2, split where u = 0, where the inner integral is steepest and where
v = 0 (``pair_by_split``: each activation is steepest at 0), with phi' in closed form.

Accuracy: each function is analytic in a strip about the real axis set by its poles on the
imaginary axis (tanh: i pi / 2; in z the strip shrinks as 1/sqrt(q)); with the pole at an
end of each interval, Gauss-Legendre converges geometrically in the number of points. With
the default one panel of 64 points per interval (128 nodes per direction) NNGP and Kdot
agree with nested adaptive quadrature within 2.4e-12 relative at pre-activation variances
1e-2 to 10, equal and unequal, c from -1 to 1 (``bench/quadrature_accuracy.py``, grid in
``tests/data/smooth_reference.json``; ``tests/test_smooth_activations.py`` asserts 1e-8).
Beyond, raise ``panels`` in proportion to sqrt(q): Tanh at q = 100 is within 2.9e-8 with
one panel, 9.3e-12 with two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from widenets.errors import check_finite_real, check_positive_int
from widenets.layers.activations import Activation, ActivationModule
from widenets.layers.base import BuildContext, declare
from widenets.layers.quadrature import SPLIT_POINTS, pair_by_split, split_cost

DEFAULT_PANELS = 1
#: where each activation is steepest (and its kernels' integrands are split)
CENTRES = (0.0,)


class SmoothActivation(Activation):
    """Base class: ``fn`` and its derivative ``derivative`` in closed form, the kernels by
    Gauss-Legendre split at 0 in each of the two Gaussian directions (``panels`` panels of
    ``SPLIT_POINTS`` points per interval)."""

    panels: int

    def _check_panels(self):
        self.panels = check_positive_int(self.panels, "panels")

    def __post_init__(self):
        self._check_panels()

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def pair_cost(self, in_shape) -> int:
        return split_cost(CENTRES, False, self.panels, SPLIT_POINTS)

    def pair(self, nngp, q1, q2, want_dot):
        return pair_by_split(
            self.fn, self.derivative, nngp, q1, q2, want_dot, CENTRES, self.panels
        )  # fmt: skip

    def make_module(self, in_shape, ctx: BuildContext):
        return SmoothModule(self.fn, repr(self))


class SmoothModule(ActivationModule):
    """The finite face of the smooth activations: ``fn`` applied elementwise."""


@declare
class Tanh(SmoothActivation):
    """tanh(x); tanh' = 1 - tanh^2."""

    name = "Tanh"
    panels: int = DEFAULT_PANELS

    def fn(self, x):
        return torch.tanh(x)

    def derivative(self, x):
        t = torch.tanh(x)
        return 1.0 - t * t


@declare
class Sigmoid(SmoothActivation):
    """The logistic function 1 / (1 + exp(-x)); sigma' = sigma (1 - sigma)."""

    name = "Sigmoid"
    panels: int = DEFAULT_PANELS

    def fn(self, x):
        return torch.sigmoid(x)

    def derivative(self, x):
        s = torch.sigmoid(x)
        return s * (1.0 - s)


@declare
class Swish(SmoothActivation):
    """x sigmoid(beta x) (Ramachandran et al. 2017; beta = 1 is SiLU);
    derivative sigma + beta x sigma (1 - sigma) with sigma = sigmoid(beta x)."""

    name = "Swish"
    beta: float = 1.0
    panels: int = DEFAULT_PANELS

    def __post_init__(self):
        self.beta = check_finite_real(self.beta, "beta")
        self._check_panels()

    def fn(self, x):
        return x * torch.sigmoid(self.beta * x)

    def derivative(self, x):
        s = torch.sigmoid(self.beta * x)
        return s + self.beta * x * s * (1.0 - s)


@declare
class Silu(SmoothActivation):
    """x sigmoid(x) (Swish with beta = 1, torch's SiLU)."""

    name = "Silu"
    panels: int = DEFAULT_PANELS

    def fn(self, x):
        return F.silu(x)

    def derivative(self, x):
        s = torch.sigmoid(x)
        return s + x * s * (1.0 - s)


@declare
class Softplus(SmoothActivation):
    """log(1 + exp(beta x)) / beta; derivative sigmoid(beta x). Computed without torch's
    linear cut-off above a threshold, so the kernel is that of the exact function."""

    name = "Softplus"
    beta: float = 1.0
    panels: int = DEFAULT_PANELS

    def __post_init__(self):
        self.beta = check_finite_real(self.beta, "beta")
        if self.beta <= 0:
            raise ValueError(f"`beta` must be positive, got {self.beta}.")
        self._check_panels()

    def fn(self, x):
        bx = self.beta * x
        return (bx.clamp_min(0.0) + torch.log1p(torch.exp(-bx.abs()))) / self.beta

    def derivative(self, x):
        return torch.sigmoid(self.beta * x)


@declare
class Mish(SmoothActivation):
    """x tanh(softplus(x)) (Misra 2019); derivative
    tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x) with sp = softplus(x)."""

    name = "Mish"
    panels: int = DEFAULT_PANELS

    def fn(self, x):
        return x * torch.tanh(_softplus(x))

    def derivative(self, x):
        t = torch.tanh(_softplus(x))
        return t + x * (1.0 - t * t) * torch.sigmoid(x)


def _softplus(x: Tensor) -> Tensor:
    return x.clamp_min(0.0) + torch.log1p(torch.exp(-x.abs()))
