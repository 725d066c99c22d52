"""Kernels of any elementwise activation by Gauss-Hermite quadrature.

For (u, v) ~ N(0, [[q1, K], [K, q2]]) write u = sqrt(q1) z1 and
v = sqrt(q2) (c z1 + sqrt(1 - c^2) z2) with z1, z2 independent standard normals, so

    E[phi(u) phi(v)] ~= sum_i sum_j w_i w_j phi(sqrt(q1) z_i) phi(sqrt(q2)(c z_i + s z_j))

on the probabilists' Gauss-Hermite nodes z_i and weights w_i (exact for polynomials of
degree < 2n in each variable). The NTK needs E[phi'(u) phi'(v)], the same sum over phi',
which is taken from ``fn`` by autograd.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import field

import numpy as np
import torch
from torch import Tensor

from widenets.errors import check_positive_int
from widenets.layers.activations import Activation, correlation, outer_sqrt
from widenets.layers.base import declare

DEFAULT_DEGREE = 128


@functools.lru_cache(maxsize=32)
def _hermite_numpy(degree: int) -> tuple[np.ndarray, np.ndarray]:
    z, w = np.polynomial.hermite_e.hermegauss(degree)  # an eigenproblem: ~7 ms for 64
    return z, w / w.sum()


def hermite_nodes(degree: int, dtype, device=None) -> tuple[Tensor, Tensor]:
    """Nodes and weights of probabilists' Gauss-Hermite quadrature, weights summing to 1."""
    z, w = _hermite_numpy(degree)
    return (
        torch.as_tensor(z, dtype=dtype, device=device),
        torch.as_tensor(w, dtype=dtype, device=device),
    )


@declare
class Elementwise(Activation):
    """Any elementwise activation ``fn`` (a torch function), its kernels by quadrature.

    Args:
        fn: elementwise, differentiable torch function (torch.tanh, F.softplus, F.silu...).
        degree: Gauss-Hermite points per dimension (``degree**2`` evaluations per pair).
        name: shown in reprs and error messages.

    Two Elementwise layers are equal when their ``fn`` is the same function object (and
    ``degree`` and ``name`` agree).
    """

    fn: Callable[[Tensor], Tensor] = field()  # the field shadows Activation.fn per instance
    degree: int = DEFAULT_DEGREE
    name: str | None = None

    def __post_init__(self):
        fn = self.fn
        if not callable(fn):
            raise TypeError(f"`fn` must be a callable torch function, got {type(fn).__name__}.")
        self.degree = check_positive_int(self.degree, "degree")
        self.label = self.name or getattr(fn, "__name__", "fn")
        probe = torch.linspace(-1, 1, 5, dtype=torch.float64)
        try:
            out = fn(probe)
        except Exception as e:  # noqa: BLE001 - report any failure of the user's function
            raise TypeError(f"`fn` failed on a float64 tensor: {e}") from None
        if not isinstance(out, Tensor) or out.shape != probe.shape:
            raise TypeError(
                "`fn` must map a tensor elementwise to a tensor of the same shape "
                f"(got {type(out).__name__} {getattr(out, 'shape', '')})."
            )

    def __repr__(self):  # the field ``name`` is the label, not the class's name
        degree = "" if self.degree == DEFAULT_DEGREE else f", degree={self.degree}"
        return f"Elementwise({self.label}{degree})"

    def derivative(self, x: Tensor) -> Tensor:
        """phi'(x) by autograd (``fn`` must be elementwise); differentiable itself when
        ``x`` tracks gradients (e.g. of learnable w_std/b_std)."""
        if x.requires_grad and torch.is_grad_enabled():
            (g,) = torch.autograd.grad(self.fn(x).sum(), x, create_graph=True, allow_unused=True)
            return torch.zeros_like(x) if g is None else g
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fn(x).sum(), x, allow_unused=True)
        return torch.zeros_like(x) if g is None else g.detach()

    def pair_cost(self, in_shape) -> int:
        return self.degree**2

    def pair(self, nngp, q1, q2, want_dot):
        z, w = hermite_nodes(self.degree, nngp.dtype, nngp.device)
        s12 = outer_sqrt(q1, q2)
        c = correlation(nngp, s12)
        s = torch.mul(c, c).neg_().add_(1.0).clamp_min_(0.0).sqrt_()
        sq1 = q1.sqrt().expand_as(nngp).unsqueeze(-1)  # (..., 1)
        sq2 = q2.sqrt().expand_as(nngp).unsqueeze(-1).unsqueeze(-1)  # (..., 1, 1)
        u = sq1 * z  # (..., n): node i
        # v[..., i, j] = sqrt(q2) (c z_i + s z_j)
        v = sq2 * (c[..., None, None] * z[:, None] + s[..., None, None] * z[None, :])
        out = self._expect(self.fn, u, v, w)
        dot = self._expect(self.derivative, u, v, w) if want_dot else None
        return out, dot

    @staticmethod
    def _expect(f, u, v, w):
        fu = f(u)  # (..., n)
        inner = f(v) @ w  # (..., n): sum_j w_j f(v_ij)
        return (fu * inner) @ w
