"""Dense (fully-connected) layer, applied over the channel axis.

Kernel recursion (Neural Tangents' definitions; Lee et al. 2018, Jacot et al. 2018):

- NTK parameterisation:  K' = w^2 K + b^2,   Theta' = K' + w^2 Theta;
- standard:              K' = w^2 K + b^2,   Theta' = n_in K + [1 if bias] + w^2 Theta,
- mean field ("mean_field", alias "mup"):  y = (w / n_in) W x + b b0 with W, b0 ~ N(0, 1),
                         K' = (w^2 / n_in) K + b^2,   Theta' = K' + (w^2 / n_in) Theta,

where n_in is the finite input width (the standard NTK grows with width).

The mean-field layer is the readout of the mean-field / maximal-update parameterisation
(Mei et al. 2018, Chizat & Bach 2018; Yang & Hu 2021: output multiplier 1/n, hidden layers
as in the NTK parameterisation, whose per-layer learning rates are the optimiser's business).
Its kernel face is that of the finite fan-in n_in carried by the kernel record (as for the
standard parameterisation): the weight part of K' and Theta' vanishes like 1/n_in, so the
infinite-width NNGP and NTK are degenerate (only the bias survives). ``n_in * Theta`` is the
kernel that drives training at initialisation when the learning rate is scaled by n_in, but,
unlike the NTK parameterisation, it does not stay constant during training (features learn).
"""

from __future__ import annotations

import math
from dataclasses import field

import torch
from torch import Tensor, nn

from widenets.errors import check_nonnegative, check_positive_int
from widenets.init.schemes import draw_bias, draw_weight
from widenets.kernel import Kernel
from widenets.layers.base import WIDTH, BuildContext, Layer, WeightedModule, declare, linear_degree

PARAMETERIZATIONS = ("ntk", "standard", "mean_field")
ALIASES = {"mup": "mean_field", "mean-field": "mean_field", "meanfield": "mean_field"}


def check_parameterization(p: str) -> str:
    q = p.lower() if isinstance(p, str) else p
    q = ALIASES.get(q, q)
    if q not in PARAMETERIZATIONS:
        raise ValueError(
            f"`parameterization` must be one of {PARAMETERIZATIONS} (or 'mup', an alias of "
            f"'mean_field'), got {p!r}."
        )
    return q


def _scale(value, name: str, allow_none: bool):
    """A float >= 0, or a 0-dim tensor >= 0 kept as is (so that kernels are differentiable in
    it, e.g. as a learnable hyperparameter in :mod:`widenets.gpytorch`)."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point():
        check_nonnegative(value.detach().item(), name)
        return value
    return check_nonnegative(value, name, allow_none=allow_none)


def has_bias(b_std, parameterization: str) -> bool:
    """Whether a layer's kernel map adds a constant: a bias of nonzero (or tensor) scale,
    or any bias in the standard parameterisation (whose NTK adds 1 for it)."""
    if b_std is None:
        return False
    if parameterization == "standard" or isinstance(b_std, torch.Tensor):
        return True
    return b_std != 0.0


def affine(t, w_var: float, b_var: float):
    """w^2 t + b^2, without modifying t (one pass: b^2 broadcast plus w^2 t)."""
    if isinstance(w_var, torch.Tensor) or isinstance(b_var, torch.Tensor):
        return t * w_var + b_var  # differentiable in tensor-valued scales
    if b_var:
        return torch.add(t.new_full((), b_var), t, alpha=w_var)
    return t * w_var


@declare
class Dense(Layer):
    """Fully-connected layer with ``out_dim`` output channels.

    Args:
        out_dim: width of the finite layer (the kernel is that of infinite width).
        w_std: weight standard deviation (times 1/sqrt(fan_in)); a float, or a 0-dim float
            tensor for a kernel differentiable in it (the finite face needs a float).
        b_std: bias standard deviation (float or 0-dim tensor); None for no bias parameter.
        parameterization: "ntk" (default), "standard", or "mean_field" (alias "mup": weight
            multiplier w_std / fan_in, meant for the readout; see the module docstring).
    """

    name = "Dense"

    out_dim: int = field(metadata=WIDTH)
    w_std: float | torch.Tensor = 1.0
    b_std: float | torch.Tensor | None = None
    parameterization: str = "ntk"

    def __post_init__(self):
        self.out_dim = check_positive_int(self.out_dim, "out_dim")
        self.w_std = _scale(self.w_std, "w_std", allow_none=False)
        self.b_std = _scale(self.b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(self.parameterization)

    def out_shape(self, in_shape):
        if not isinstance(in_shape, tuple):
            raise ValueError(f"Dense takes a single input, got {len(in_shape)} branches.")
        return (self.out_dim, *in_shape[1:])

    def kernel_fn(self, k: Kernel) -> Kernel:
        w_var = self.w_std**2
        if self.parameterization == "mean_field":
            w_var = w_var / k.shape1[0]
        b_var = 0.0 if self.b_std is None else self.b_std**2

        def ntk_map(ntk, nngp):  # nngp: this layer's output NNGP
            if self.parameterization in ("ntk", "mean_field"):
                if isinstance(w_var, torch.Tensor):
                    return ntk * w_var + nngp
                return torch.add(nngp, ntk, alpha=w_var)
            ntk = ntk * w_var
            ntk.add_(k.nngp, alpha=float(k.shape1[0]))
            if self.b_std is not None:
                ntk += 1.0
            return ntk

        return k.map(
            lambda t, _: affine(t, w_var, b_var),
            ntk=ntk_map,
            shape1=(self.out_dim, *k.shape1[1:]),
            shape2=(self.out_dim, *k.shape2[1:]),
            is_gaussian=True,
            is_input=False,
        )

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias(self.b_std, self.parameterization))

    def make_module(self, in_shape, ctx: BuildContext) -> DenseModule:
        fan_in = in_shape[0]
        w, b = draw_affine(
            ctx.init, ctx.generator, (self.out_dim, fan_in), fan_in, self.w_std, self.b_std,
            self.parameterization, ctx.dtype,
        )  # fmt: skip
        return DenseModule(
            fan_in, self.out_dim, self.w_std, self.b_std, self.parameterization, w, b
        ).to(device=ctx.device)


# ----- the finite face -------------------------------------------------------------------------
# The parameterisation rule of every affine layer (Dense, Conv), stated once: what is drawn
# (``draw_affine``) and what the forward pass multiplies by (``parameterization_scales``).


def parameterization_scales(parameterization: str, w_std, b_std, fan_in: int) -> tuple:
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


def draw_affine(
    scheme, generator, shape, fan_in: int, w_std, b_std, parameterization: str, dtype, device=None
) -> tuple[Tensor, Tensor | None]:
    """Weight of ``shape`` (out, in, ...) and bias (out,) of an affine layer, drawn in that order.

    Entries of unit variance from ``scheme`` (None: Gaussian IID) and N(0, 1) biases (None
    when ``b_std`` is None); in the standard parameterisation scaled to variances
    w_std^2 / fan_in and b_std^2 (the other parameterisations scale in the forward pass).
    """
    w = draw_weight(scheme, shape, fan_in, generator, dtype)
    b = None if b_std is None else draw_bias((shape[0],), generator, dtype)
    if parameterization == "standard":
        w = w * (w_std / fan_in**0.5)
        b = None if b is None else b * b_std
    if device is not None:
        w = w.to(device)
        b = None if b is None else b.to(device)
    return w, b


class AffineModule(WeightedModule):
    """Weight, bias and the forward scales of an affine layer in a parameterisation; redrawn
    by ``reset_parameters`` exactly as ``build`` draws them (``draw_affine``)."""

    def __init__(self, fan_in: int, w_std, b_std, parameterization: str, weight, bias):
        super().__init__()
        self.fan_in = fan_in
        self.w_std = w_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.weight_scale, self.bias_scale = parameterization_scales(
            parameterization, w_std, b_std, fan_in
        )

    @torch.no_grad()
    def reset_parameters(self, scheme=None, generator: torch.Generator | None = None) -> None:
        w, b = draw_affine(
            scheme, generator, tuple(self.weight.shape), self.fan_in, self.w_std,
            None if self.bias is None else self.b_std, self.parameterization,
            self.weight.dtype, self.weight.device,
        )  # fmt: skip
        self.weight.copy_(w)
        if b is not None:
            self.bias.copy_(b)


class DenseModule(AffineModule):
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
        w_std,
        b_std,
        parameterization: str,
        weight: Tensor,
        bias: Tensor | None,
    ):
        super().__init__(in_features, w_std, b_std, parameterization, weight, bias)
        self.in_features = in_features
        self.out_features = out_features

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
