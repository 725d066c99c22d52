"""LayerNorm and Dropout, both faces.

LayerNorm (Neural Tangents' kernel): at infinite width the mean over channels of a
zero-mean Gaussian layer vanishes and its mean square is the variance q, so normalising
divides by a deterministic number: K'[p, p'] = K[p, p'] / sqrt((q1[p] + eps)(q2[p'] + eps))
over channels, or with q replaced by its mean over positions when normalising over
channels and space; Theta is divided alike. The input must be Gaussian (an affine layer's
output): after a nonlinearity the channel mean does not vanish and this kernel is wrong.

Dropout (train mode, drop probability p, kept units scaled by 1/(1 - p) as in torch): a
unit's mask is shared only by the same input at the same position, so those entries
(and the variances) are multiplied by E[m^2] = 1/(1 - p); every other entry is unchanged.
In eval mode it is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from widenets.errors import check_nonnegative
from widenets.kernel import Kernel, interleave
from widenets.layers.base import BuildContext, Layer, declare, linear_degree

NORM_AXES = ("channels", "channels+space")


@declare
class LayerNorm(Layer):
    """(x - mean) / sqrt(var + eps) per example.

    Args:
        over: "channels" (per position, over the channel axis) or "channels+space".
        eps: added to the variance.
    """

    name = "LayerNorm"
    requires_gaussian_input = True
    gaussian_input_hint = (
        "a zero-mean one (the output of Dense or Conv): after a nonlinearity the channel "
        "mean does not vanish at infinite width."
    )

    over: str = "channels"
    eps: float = 1e-12

    def __post_init__(self):
        if self.over not in NORM_AXES:
            raise ValueError(f"`over` must be one of {NORM_AXES}, got {self.over!r}.")
        self.eps = check_nonnegative(self.eps, "eps")

    def out_shape(self, in_shape):
        if not isinstance(in_shape, tuple):
            raise ValueError(f"{self!r} takes a single input, got {len(in_shape)} branches.")
        return in_shape

    def kernel_fn(self, k: Kernel) -> Kernel:
        spatial = self.over == "channels+space" and len(k.shape1) > 1
        q1, q2 = k.variances(1), k.variances(2)
        if spatial:
            q1 = q1.flatten(1).mean(1)
            q2 = q2.flatten(1).mean(1)
        r1 = (q1 + self.eps).rsqrt()
        r2 = r1 if k.cov2 is k.cov1 else (q2 + self.eps).rsqrt()
        if spatial or k.n_spatial == 0:  # one number per example
            rest = k.nngp.ndim - 2

            def pair(a, b):
                a, b = k.gather_pairs(a, b)  # (N1, 1) and (1, N2), or packed (M, 1) both
                ab = a * b
                return ab.reshape(*ab.shape, *[1] * rest)

            def own(a):
                return (a * a).reshape(-1, *[1] * rest)

        elif k.full_spatial:  # per position, every pair of positions

            def pair(a, b):
                return interleave(a, 0).unsqueeze(1) * interleave(b, 1).unsqueeze(0)

            def own(a):
                return interleave(a, 0) * interleave(a, 1)

        else:  # per position, diagonal layout

            def pair(a, b):
                a, b = k.gather_pairs(a, b)
                return a * b

            def own(a):
                return a * a

        scale = pair(r1, r2)
        return k.map(lambda t, _: t * scale, cov=lambda t, which: t * own(r1 if which == 1 else r2))

    def scaling_degree(self, degree):
        # K / sqrt(q1 q2) is scale-invariant without eps; with it, only at degree 0
        if self.eps == 0.0 and not isinstance(degree, list) and degree is not None:
            return 0
        return super().scaling_degree(degree)

    def make_module(self, in_shape, ctx: BuildContext):
        return LayerNormModule(self.over == "channels+space", self.eps)


class LayerNormModule(nn.Module):
    """(x - mean) / sqrt(var + eps) over the channel axis, or channels and space."""

    def __init__(self, spatial: bool, eps: float):
        super().__init__()
        self.spatial, self.eps = spatial, eps

    def forward(self, x):
        dims = tuple(range(1, x.ndim)) if self.spatial else (1,)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self):
        return f"over={'channels+space' if self.spatial else 'channels'}, eps={self.eps}"


@declare
class Dropout(Layer):
    """Dropout with drop probability ``rate`` (kept units scaled by 1/(1 - rate)).

    Neural Tangents' ``Dropout(rate)`` takes the *keep* probability: its rate r is 1 - rate.

    Args:
        rate: probability of dropping a unit, in [0, 1).
        mode: "train" (the kernel of a network with dropout on) or "test" (identity).
    """

    name = "Dropout"

    rate: float
    mode: str = "train"

    def __post_init__(self):
        rate = check_nonnegative(self.rate, "rate")
        if rate >= 1.0:
            raise ValueError(f"`rate` (the drop probability) must be in [0, 1), got {rate!r}.")
        if self.mode not in ("train", "test"):
            raise ValueError(f'`mode` must be "train" or "test", got {self.mode!r}.')
        self.rate = rate

    def kernel_fn(self, k: Kernel) -> Kernel:
        if self.mode == "test" or self.rate == 0.0:
            return k
        if k.is_input:
            raise ValueError(f"{self!r} on the inputs has no Gaussian-process kernel.")
        f = 1.0 / (1.0 - self.rate)  # E[m^2] where a unit's mask meets itself

        def dropped(t, n_batch):
            return k.scale_self_pairs(t, f) if n_batch == 2 else k.scale_self_variances(t, f)

        return k.map(dropped, is_gaussian=False)

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    def make_module(self, in_shape, ctx: BuildContext):
        return nn.Dropout(self.rate) if self.mode == "train" else nn.Identity()
