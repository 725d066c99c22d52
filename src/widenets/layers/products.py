"""FanInProd: the elementwise product of independent branches, both faces.

For independent centred Gaussian branches f_1, ..., f_n (Neural Tangents' ``stax.FanInProd``)

    K = prod_i K_i,    Theta = sum_i Theta_i prod_{j != i} K_j,

(the product rule for d(f_1 ... f_n)/dtheta, whose cross terms vanish by independence), in
every layout. The product of Gaussians is not Gaussian, so a nonlinearity after it needs an
affine layer between (unless there is only one branch).
"""

from __future__ import annotations

from torch import nn

from widenets.errors import shape_str
from widenets.layers.base import BuildContext, Layer, declare


def _product(ts):
    out = ts[0]
    for t in ts[1:]:
        out = out * t
    return out


@declare
class FanInProd(Layer):
    """Elementwise product of branches of equal shape (after ``fan_out``).

    K = prod_i K_i and Theta = sum_i Theta_i prod_{j != i} K_j (branches independent: put an
    affine layer in each, as for ``fan_in_sum``). ``fan_in_prod()`` makes one.
    """

    name = "fan_in_prod"
    takes_branches = True

    def out_shape(self, in_shape):
        if not isinstance(in_shape, list):
            raise ValueError("fan_in_prod needs a list of branches (use fan_out first).")
        if any(s != in_shape[0] for s in in_shape):
            raise ValueError(
                "fan_in_prod needs branches of equal shape, got "
                + ", ".join(shape_str(s) for s in in_shape)
            )
        return in_shape[0]

    def kernel_fn(self, ks):
        if not isinstance(ks, list):
            raise ValueError("fan_in_prod needs a list of branches (use fan_out first).")
        self.out_shape([k.shape1 for k in ks])
        k0 = ks[0]
        nngp = _product([k.nngp for k in ks])
        ntk = None
        if k0.ntk is not None:  # Theta_(1..i) = Theta_(1..i-1) K_i + (K_1..K_{i-1}) Theta_i
            ntk, prefix = k0.ntk, k0.nngp
            for k in ks[1:]:
                ntk = ntk * k.nngp + prefix * k.ntk
                prefix = prefix * k.nngp
        cov1 = _product([k.cov1 for k in ks])
        cov2 = cov1 if k0.cov2 is k0.cov1 else _product([k.cov2 for k in ks])
        return k0.replace(
            nngp=nngp,
            ntk=ntk,
            cov1=cov1,
            cov2=cov2,
            is_gaussian=len(ks) == 1 and k0.is_gaussian,
            is_input=all(k.is_input for k in ks),
        )

    def scaling_degree(self, degree):
        if not isinstance(degree, list) or not degree or any(d is None for d in degree):
            return None
        if any(isinstance(d, list) for d in degree):
            return None
        return sum(degree)

    def make_module(self, in_shape, ctx: BuildContext):
        return FanInProdModule()


class FanInProdModule(nn.Module):
    """Elementwise product of a tuple of tensors of equal shape."""

    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


def fan_in_prod() -> FanInProd:
    """Multiply the branches elementwise."""
    return FanInProd()


__all__ = ["FanInProd", "fan_in_prod"]
