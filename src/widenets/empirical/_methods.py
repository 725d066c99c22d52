"""Jacobian contraction and NTK-vector products (torch.func), tile by tile.

Each method turns a block of x1 into "left" features and a block of x2 into "right"
features and contracts a pair of them into a tile of the kernel, Theta[i, j, a, b] =
sum_p J(x1_i)[a, p] J(x2_j)[b, p]. Traced tiles are the mean of the a = b diagonal.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor
from torch.func import jacrev, jvp, vmap
from torch.utils._pytree import tree_map

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


class LoopMethod:
    """Per-example Jacobians by plain reverse mode, one ``torch.autograd.grad`` per example
    and output (no ``vmap``, no forward mode), then contracted as :class:`JacobianMethod`
    does. The slowest method and the last resort of ``"auto"``: it runs any model whose
    forward pass on one example can be differentiated, e.g. ``nn.LSTM``/``nn.GRU`` (whose
    fused kernels have no batching rule) or modules taking fast paths without forward AD."""

    name = "loop"
    symmetric_right = True

    def __init__(self, model, params, frozen, n_out, trace):
        self.model, self.frozen = model, frozen
        self.n_out, self.trace = n_out, trace
        self.leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        # cuDNN's RNN kernels have no backward in eval mode: the native ones do
        self.cudnn = not any(isinstance(m, torch.nn.RNNBase) for m in model.modules())

    def left(self, batch: Batch) -> dict[str, Tensor]:
        names, leaves = list(self.leaves), list(self.leaves.values())
        jac = {k: v.new_zeros((batch.n, self.n_out, v.numel())) for k, v in self.leaves.items()}
        state = {**self.frozen, **self.leaves}
        cudnn = contextlib.nullcontext() if self.cudnn else torch.backends.cudnn.flags(False)
        with torch.enable_grad(), cudnn:
            for i in range(batch.n):
                out = call(self.model, state, batch.slice(i, i + 1).tree(), 1)[0]
                if not out.requires_grad:  # no selected parameter reaches the outputs
                    continue
                for a in range(self.n_out):
                    grads = torch.autograd.grad(
                        out[a], leaves, retain_graph=a < self.n_out - 1, allow_unused=True
                    )
                    for k, g in zip(names, grads, strict=True):
                        if g is not None:
                            jac[k][i, a] = g.reshape(-1)
        return jac

    right = left

    def pair(self, left, right) -> Tensor:
        return contract(left, right, self.trace)


#: rows of a square Gram block computed by one matrix product in :func:`add_gram`
GRAM_BLOCK = 128


def add_gram(out: Tensor, a: Tensor, b: Tensor | None) -> None:
    """out += a b^T; for b None (a a^T), only the row blocks on and above the diagonal are
    added (about half the arithmetic of one product): see :func:`mirror_upper`."""
    if b is not None:
        out.addmm_(a, b.T)
        return
    n = a.shape[0]
    for i0 in range(0, n, GRAM_BLOCK):
        i1 = min(i0 + GRAM_BLOCK, n)
        out[i0:i1, i0:].addmm_(a[i0:i1], a[i0:].T)


def mirror_upper(out: Tensor) -> Tensor:
    """The symmetric matrix whose upper triangle is that of ``out``."""
    return torch.triu(out) + torch.triu(out, 1).T


#: most slices one parameter tensor is cut into: each slice's reverse pass still forms the
#: gradient of the whole tensor (then keeps its rows), so more would repeat that work
MAX_PIECES = 4


def parameter_slices(params: dict[str, Tensor], per_slice: int) -> list[list[tuple]] | None:
    """Group the parameters into slices of at most ``per_slice`` scalars: whole tensors
    packed together (entries (name, None, None)), or runs of rows (first axis) of a larger
    one ((name, row start, row end)). None if a tensor would need more than MAX_PIECES."""
    slices, current, size = [], [], 0
    for name, p in params.items():
        if p.numel() <= per_slice:
            if size + p.numel() > per_slice and current:
                slices.append(current)
                current, size = [], 0
            current.append((name, None, None))
            size += p.numel()
            continue
        row = p.numel() // p.shape[0]
        if row > per_slice or math.ceil(p.shape[0] / (per_slice // row)) > MAX_PIECES:
            return None
        step = per_slice // row
        slices.extend([(name, r0, min(r0 + step, p.shape[0]))] for r0 in range(0, p.shape[0], step))
    if current:
        slices.append(current)
    return slices


def vmap_chunk(params, slices, act_per_example, outputs, budget) -> int:
    """Examples one vmap chunk of a streamed pass runs: their activations and, for a tensor
    cut into row slices, its whole per-example gradients, within ``budget`` scalars."""
    cut = max([params[k].numel() for sl in slices for k, r0, _ in sl if r0 is not None] or [0])
    held = 4.0 * act_per_example * outputs + cut * outputs
    return max(1, int(budget // max(1.0, held)))


class StreamedJacobian:
    """Jacobian contraction of the whole kernel, streamed over parameter slices.

    Theta = sum over parameter slices s (and, traced, outputs a) of J_s,a(x1) J_s,a(x2)^T.
    Each slice's Jacobian of every example is formed once, by vmap(jacrev) with only that
    slice differentiated, contracted into the kernel and freed: memory holds one slice's
    (N1 + N2) x outputs x slice-size Jacobian, never J, and no example's Jacobian is formed
    twice (tiles of examples form each block's Jacobian again for every tile it is in).
    On a set with itself only the Gram blocks on or above the diagonal are multiplied.
    """

    name = "jacobian"

    def __init__(self, model, params, frozen, n_out, trace, slices, outputs_per_pass, chunk):
        self.model, self.params, self.frozen = model, params, frozen
        self.n_out, self.trace, self.slices = n_out, trace, slices
        self.per_pass, self.chunk = outputs_per_pass, chunk

    @classmethod
    def plan(cls, model, params, frozen, n_out, trace, n_examples, budget, act_per_example):
        """The streamed method if one slice's Jacobians fit ``budget`` scalars, else None."""
        outputs = 1 if trace else n_out  # traced: one output a pass, the least arithmetic
        slices = parameter_slices(params, max(1, budget // (n_examples * outputs)))
        if slices is None:
            return None
        chunk = vmap_chunk(params, slices, act_per_example, outputs, budget)
        return cls(model, params, frozen, n_out, trace, slices, outputs, chunk)

    def passes(self) -> int:
        return len(self.slices) * (self.n_out // self.per_pass)

    def _jacobians(self, sl, outs: list[int], batch: Batch) -> list[Tensor]:
        """[(n, len(outs), numel)] per tensor of the slice: d f_outs / d part, every example
        (kept apart: the Gram is a sum over them, and joining them would copy J)."""
        params = self.params
        parts = {k: params[k] if r0 is None else params[k][r0:r1] for k, r0, r1 in sl}
        rows = {k: (r0, r1) for k, r0, r1 in sl if r0 is not None}

        def f(part, tree):
            state = {**self.frozen, **params, **part}
            for k, (r0, r1) in rows.items():
                state[k] = torch.cat([params[k][:r0], part[k], params[k][r1:]], 0)
            tree = tree_map(lambda t: t.unsqueeze(0), tree)
            return call(self.model, state, tree, 1)[0, outs]

        # vmap with any chunk_size concatenates its chunks' results, a copy of the whole
        # slice's Jacobian even when there is one chunk (torch.profiler, MLP w=512 N=256:
        # aten::cat 1.27 s of 5.4 s; bench/empirical_ntk.py jacobian 6.36 s -> 4.72 s)
        chunk = None if self.chunk >= batch.n else self.chunk
        jac = vmap(jacrev(f), in_dims=(None, 0), chunk_size=chunk)(parts, batch.tree())
        return [v.reshape(batch.n, len(outs), -1) for v in jac.values()]

    def kernel(self, x1: Batch, x2: Batch | None, bar=None) -> Tensor:
        ref = next(iter(self.params.values()))
        rep = 1 if self.trace else self.n_out
        n2 = x1.n if x2 is None else x2.n
        out = torch.zeros((x1.n * rep, n2 * rep), dtype=ref.dtype, device=ref.device)
        for sl in self.slices:
            for a0 in range(0, self.n_out, self.per_pass):
                outs = list(range(a0, a0 + self.per_pass))
                j1 = self._jacobians(sl, outs, x1)
                j2 = [None] * len(j1) if x2 is None else self._jacobians(sl, outs, x2)
                for a, b in zip(j1, j2, strict=True):
                    # traced: (n, 1, s), one output; untraced: rows i O + a of (n O, s)
                    add_gram(
                        out,
                        a.reshape(-1, a.shape[2]),
                        None if b is None else b.reshape(-1, b.shape[2]),
                    )
                del j1, j2
                if bar is not None:
                    bar.update(1)
        if x2 is None:
            out = mirror_upper(out)
        if self.trace:
            return out / self.n_out
        return out.reshape(x1.n, self.n_out, n2, self.n_out).permute(0, 2, 1, 3)
