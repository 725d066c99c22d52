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

import torch

from widenets.errors import check_nonnegative, check_positive_int
from widenets.init_default import draw_bias, draw_weight
from widenets.kernel import Kernel
from widenets.layers.base import BuildContext, Layer, linear_degree
from widenets.modules import DenseLayer

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

    def __init__(
        self,
        out_dim: int,
        w_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
    ):
        self.out_dim = check_positive_int(out_dim, "out_dim")
        self.w_std = _scale(w_std, "w_std", allow_none=False)
        self.b_std = _scale(b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization)

    def __repr__(self) -> str:
        return (
            f"Dense({self.out_dim}, w_std={self.w_std}, b_std={self.b_std}"
            + (
                f", parameterization={self.parameterization!r}"
                if self.parameterization != "ntk"
                else ""
            )
            + ")"
        )

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

    def make_module(self, in_shape, ctx: BuildContext) -> DenseLayer:
        fan_in = in_shape[0]
        w = draw_weight(ctx.init, (self.out_dim, fan_in), fan_in, ctx.generator, ctx.dtype)
        b = None if self.b_std is None else draw_bias((self.out_dim,), ctx.generator, ctx.dtype)
        if self.parameterization == "standard":
            w = w * (self.w_std / fan_in**0.5)
            b = None if b is None else b * self.b_std
        return DenseLayer(
            fan_in, self.out_dim, self.w_std, self.b_std, self.parameterization, w, b
        ).to(device=ctx.device)

    def _rewidth(self, width, keep):
        if keep:
            return self, False
        return Dense(width, self.w_std, self.b_std, self.parameterization), False
