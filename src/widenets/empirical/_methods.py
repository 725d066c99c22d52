"""Jacobian contraction and NTK-vector products (torch.func), tile by tile.

Each method turns a block of x1 into "left" features and a block of x2 into "right"
features and contracts a pair of them into a tile of the kernel, Theta[i, j, a, b] =
sum_p J(x1_i)[a, p] J(x2_j)[b, p]. Traced tiles are the mean of the a = b diagonal.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jacrev, jvp, vmap

from widenets.empirical._common import Batch, call, single_fn


def jacobians(model, params: dict, frozen: dict, batch: Batch) -> dict[str, Tensor]:
    """Per-example Jacobians {name: (n, O, numel)} by vmap(jacrev) over functional_call."""
    f = single_fn(model, frozen)
    jac = vmap(jacrev(f), in_dims=(None, 0))(params, batch.tree())
    return {k: v.reshape(batch.n, v.shape[1], -1) for k, v in jac.items()}


def contract(j1: dict[str, Tensor], j2: dict[str, Tensor], trace: bool) -> Tensor:
    """sum over parameters of J1 J2^T: (n1, n2) mean over a = b, or (n1, n2, O, O)."""
    out = None
    for name, a in j1.items():
        b = j2[name]
        if trace:
            term = a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T
        else:
            term = torch.einsum("iap,jbp->ijab", a, b)
        out = term if out is None else out + term
    if trace:
        out = out / next(iter(j1.values())).shape[1]
    return out


class JacobianMethod:
    """Materialise per-example Jacobians of both blocks, then contract them."""

    name = "jacobian"

    def __init__(self, model, params, frozen, n_out, trace):
        self.model, self.params, self.frozen = model, params, frozen
        self.n_out, self.trace = n_out, trace

    def left(self, batch: Batch):
        return jacobians(self.model, self.params, self.frozen, batch)

    right = left
    symmetric_right = True  # right(x) == left(x): a diagonal tile reuses its left features

    def pair(self, left, right) -> Tensor:
        return contract(left, right, self.trace)


class NtkVectorMethod:
    """NTK-vector products: Theta(x1, x2) e_(i,a) = J(x2) J(x1)^T e_(i,a).

    The rows J(x1_i)[a] are obtained by reverse mode (vjp against each output basis
    vector), then pushed through the model on the x2 block in forward mode (jvp), so
    J(x2) is never materialised. The vmap over rows is chunked to bound memory.
    """

    name = "ntk_vector"
    symmetric_right = False

    def __init__(self, model, params, frozen, n_out, trace, chunk_size=None):
        self.model, self.params, self.frozen = model, params, frozen
        self.n_out, self.trace, self.chunk_size = n_out, trace, chunk_size

    def left(self, batch: Batch):
        f = single_fn(self.model, self.frozen)
        jac = vmap(jacrev(f), in_dims=(None, 0))(self.params, batch.tree())
        # rows of J(x1): tangent directions in parameter space, (n1 * O, *param.shape)
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in jac.items()}, batch.n

    def right(self, batch: Batch):
        return batch

    def pair(self, left, right: Batch) -> Tensor:
        rows, n1 = left
        tree, n2 = right.tree(), right.n

        def push(tangent):
            def f(p):
                return call(self.model, {**self.frozen, **p}, tree, n2)

            return jvp(f, (self.params,), (tangent,))[1]  # (n2, O)

        out = vmap(push, chunk_size=self.chunk_size)(rows)  # (n1 * O, n2, O)
        o = out.shape[-1]
        out = out.reshape(n1, o, n2, o).permute(0, 2, 1, 3)  # (n1, n2, a, b)
        if self.trace:
            return out.diagonal(dim1=2, dim2=3).mean(-1)
        return out
