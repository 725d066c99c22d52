"""Empirical NTK and NNGP of any ``torch.nn.Module``.

Theta(x1, x2)[a, b] = sum_{p in S} d f_a(x1)/dp d f_b(x2)/dp over a set S of parameters
(all trainable ones by default). ``trace_outputs=True`` returns the mean over the diagonal
a = b, which estimates the per-channel NTK of the infinite-width limit (where
Theta = Theta_scalar (x) I_O); otherwise the full (N1, N2, O, O) block.

The model is evaluated in eval mode (BatchNorm with its running statistics, dropout off)
and restored afterwards: with batch statistics an example's output would depend on the
rest of the batch and the per-example NTK would not be defined. Inputs are a tensor, a
tuple of tensors (positional arguments) or a dict of tensors (keyword arguments), each
with the batch axis first; outputs may be a tensor or a tuple/list/dict of tensors,
flattened per example and concatenated (O values in all).

Methods (see :mod:`.cost` for their estimated costs and :func:`explain`):

- ``"jacobian"``: per-example Jacobians by ``vmap(jacrev)`` over ``functional_call``,
  contracted parameter by parameter (the ``torch.func`` NTK tutorial). Without
  ``batch_size`` it streams over parameter slices (``_methods.StreamedJacobian``: each
  example's Jacobian formed once, one slice at a time); otherwise, or when a tensor would
  need more than 4 slices, in tiles of examples.
- ``"ntk_vector"``: rows of J(x1) by reverse mode, pushed through the x2 block in forward
  mode (``jvp``), so J(x2) is never formed.
- ``"structured"``: structured derivatives for ``nn.Linear``, ``nn.Conv1d/2d``,
  eval-mode BatchNorm, LayerNorm, GroupNorm and widenets' affine modules (Novak et al.
  2022), Jacobians for any other parameter; when every parameter is in such a layer and
  the model treats examples independently, from batched forward and reverse passes
  instead of per-example ``vmap``; see :mod:`.structured`.
- ``"auto"``: the method with the least estimated arithmetic among those that fit the
  memory budget (near-ties go to the one holding less).

The kernel is computed in tiles of (b1, b2) examples so that memory is bounded (the tiles
are sized for the method used: at most ``MEMORY_SCALARS`` scalars held, by the estimate);
for x2 None only tiles on or above the diagonal are computed and mirrored. Every entry is
the same sum whatever the tiling, so the result does not depend on ``batch_size``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from widenets.empirical import structured
from widenets.empirical._common import Batch, eval_mode, prepare, probe
from widenets.empirical._methods import JacobianMethod, NtkVectorMethod, StreamedJacobian
from widenets.empirical.cost import CostReport, Shape, activation_numel, estimate, forward_flops
from widenets.empirical.params import select_params
from widenets.empirical.structured import StructuredMethod, batch_independent, find_layers

METHODS = ("auto", "jacobian", "ntk_vector", "structured")
#: scalars held at once (features of two blocks and a tile); float64: 512 MiB
MEMORY_SCALARS = 1 << 26
#: show a progress bar by default from this many tiles on
PROGRESS_TILES = 8
#: ... or, for the streamed Jacobian contraction, from this many parameter-slice passes on
PROGRESS_PASSES = 64


def _check_batch_size(batch_size, n1, n2):
    if batch_size is None:
        return None
    pair = (batch_size, batch_size) if isinstance(batch_size, int) else tuple(batch_size)
    if len(pair) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in pair):
        raise ValueError(
            f"`batch_size` must be a positive int or a pair of them, got {batch_size!r}."
        )
    return min(pair[0], n1), min(pair[1], n2)


class _Setup:
    """Everything the methods and the cost estimate need, computed once."""

    def __init__(
        self, model, x1: Batch, x2: Batch | None, params, trace, batch_size, method="auto"
    ):
        self.model, self.x1, self.x2, self.trace = model, x1, x2, trace
        sel = select_params(model, params)
        self.params = {k: v.detach() for k, v in sel.items()}
        self.frozen = {k: v.detach() for k, v in model.named_parameters() if k not in sel}
        self.frozen.update({k: v.detach() for k, v in model.named_buffers()})
        self.n_out = probe(model, x1, "x1")
        if x2 is not None:
            probe(model, x2, "x2")
        state = {**self.frozen, **self.params}
        self.specs = find_layers(model, self.params, self.frozen, x1)
        try:
            f_flops = forward_flops(model, state, x1)
        except Exception:  # noqa: BLE001 - an op the counter cannot trace: a rough guess
            f_flops = 2.0 * sum(v.numel() for v in state.values())
        try:
            act = activation_numel(model, self.params, self.frozen, x1)
        except Exception:  # noqa: BLE001 - a rough guess: the forward's outputs
            act = f_flops / 100
        covered = {s.weight for s in self.specs} | {s.bias for s in self.specs}
        batched = bool(self.specs) and all(k in covered for k in self.params)
        if structured.FORCE_VARIANT is not None:
            batched = batched and structured.FORCE_VARIANT != "per_example"
        elif batched:
            batched = batch_independent(model, state, x1, x2)
        self.batched = batched
        y_numel = float(sum(math.prod(s.y_shape) for s in self.specs))
        self.shape = Shape(self.n_out, f_flops, act, y_numel, batched)
        n1 = x1.n
        n2 = n1 if x2 is None else x2.n
        self.n1, self.n2 = n1, n2
        fixed = _check_batch_size(batch_size, n1, n2)
        self.stream = fixed is None  # no batch_size: the Jacobian contraction may stream
        if x2 is not None and fixed is None:
            fixed = self._fit(method, n1, n2, lambda b1, b2: b1 >= b2)
        elif fixed is None:
            fixed = self._fit(method, n1, n2, None)
        if x2 is None:
            fixed = (min(fixed),) * 2
        self.block = fixed
        self.report = self._report(fixed)
        self.method_name = self.report.method if method == "auto" else method

    def _fit(self, method, b1, b2, halve_first):
        """Halve the blocks until the method used (for "auto": the one it would pick among
        those that fit) holds at most MEMORY_SCALARS scalars."""
        while True:
            rep = self._report((b1, b2))
            name = rep.method if method == "auto" else method
            if rep.cost(name).scalars <= MEMORY_SCALARS or (b1 == 1 and b2 == 1):
                return b1, b2
            if halve_first is None:  # x2 None: square blocks
                b1 = b2 = max(1, b1 // 2)
            elif halve_first(b1, b2):
                b1 = max(1, b1 // 2)
            else:
                b2 = max(1, b2 // 2)

    def _report(self, block) -> CostReport:
        return estimate(
            self.n1,
            self.n2,
            self.params,
            self.specs,
            self.shape,
            block,
            self.trace,
            same=self.x2 is None,
            budget=MEMORY_SCALARS,
            stream=self.stream,
        )

    def method(self, name: str):
        args = (self.model, self.params, self.frozen, self.n_out, self.trace)
        if name == "jacobian":
            return JacobianMethod(*args)
        if name == "ntk_vector":
            return NtkVectorMethod(*args)
        cost = self.report.cost("structured")
        return StructuredMethod(
            *args,
            self.specs,
            max(1, int((self.block[0] * self.block[1]) ** 0.5)),
            variant=cost.variant,
            chunk=cost.chunk,
        )


def _tiled(m, x1: Batch, x2: Batch | None, block, n_out, trace, progress) -> Tensor:
    same = x2 is None
    x2b = x1 if same else x2
    b1, b2 = block
    r1 = [(i, min(i + b1, x1.n)) for i in range(0, x1.n, b1)]
    r2 = r1 if same else [(j, min(j + b2, x2b.n)) for j in range(0, x2b.n, b2)]
    tiles = [(a, b) for ia, a in enumerate(r1) for ib, b in enumerate(r2) if not same or ib >= ia]
    show = progress if progress is not None else len(tiles) >= PROGRESS_TILES
    out = None
    bar = tqdm(total=len(tiles), desc="empirical NTK", disable=not show, leave=False)
    try:
        for a in r1:
            left = m.left(x1.slice(*a))
            for b in r2:
                if same and b[0] < a[0]:
                    continue
                if same and b == a and m.symmetric_right:
                    right = left
                else:
                    right = m.right(x2b.slice(*b))
                tile = m.pair(left, right)
                if same and b == a:  # exactly symmetric, whatever the rounding of the products
                    tile = (tile + (tile.T if trace else tile.permute(1, 0, 3, 2))) / 2
                if out is None:
                    shape = (x1.n, x2b.n) + (() if trace else (n_out, n_out))
                    out = torch.empty(shape, dtype=tile.dtype, device=tile.device)
                out[a[0] : a[1], b[0] : b[1]] = tile
                if same and b != a:
                    mirror = tile.transpose(0, 1)
                    out[b[0] : b[1], a[0] : a[1]] = mirror if trace else mirror.transpose(2, 3)
                bar.update(1)
    finally:
        bar.close()
    return out


def ntk(
    model: nn.Module,
    x1,
    x2=None,
    *,
    params=None,
    trace_outputs: bool = True,
    method: str = "auto",
    batch_size=None,
    progress: bool | None = None,
) -> Tensor:
    """Empirical NTK of ``model`` between x1 and x2 (x2 None: x1 with itself).

    Args:
        model: any ``torch.nn.Module`` (evaluated in eval mode, restored afterwards).
        x1, x2: a tensor, tuple of tensors or dict of tensors, batch axis first.
        params: the parameters to differentiate (see :mod:`widenets.empirical.params`):
            None (all trainable), names, a predicate, or "readout" / "norm_affine" /
            "no_embeddings".
        trace_outputs: mean over the output channels' diagonal, (N1, N2); else
            (N1, N2, O, O).
        method: "auto", "jacobian", "ntk_vector" or "structured".
        batch_size: examples per tile, an int or a pair (b1, b2); None picks tiles that
            keep about ``MEMORY_SCALARS`` scalars in memory for the method used.
        progress: show a progress bar over tiles (default: from 8 tiles on).

    Returns:
        A detached tensor in the model's dtype.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    x1, x2 = prepare(model, x1, x2)
    with eval_mode(model):
        setup = _Setup(model, x1, x2, params, trace_outputs, batch_size, method)
        if setup.method_name == "jacobian" and batch_size is None:
            streamed = _streamed_jacobian(setup, x1, x2)
            if streamed is not None:
                return _run_streamed(streamed, x1, x2, progress).detach()
        m = setup.method(setup.method_name)
        return _tiled(m, x1, x2, setup.block, setup.n_out, trace_outputs, progress).detach()


def _streamed_jacobian(setup: _Setup, x1: Batch, x2: Batch | None) -> StreamedJacobian | None:
    """Jacobian contraction streamed over parameter slices (no Jacobian formed twice), if
    one slice's Jacobians of all examples fit the memory budget; else None (tiles)."""
    n = x1.n + (0 if x2 is None else x2.n)
    return StreamedJacobian.plan(
        setup.model,
        setup.params,
        setup.frozen,
        setup.n_out,
        setup.trace,
        n,
        MEMORY_SCALARS,
        setup.shape.act,
    )


def _run_streamed(m: StreamedJacobian, x1, x2, progress) -> Tensor:
    show = progress if progress is not None else m.passes() >= PROGRESS_PASSES
    bar = tqdm(total=m.passes(), desc="empirical NTK", disable=not show, leave=False)
    try:
        return m.kernel(x1, x2, bar)
    finally:
        bar.close()


def explain(
    model: nn.Module,
    x1,
    x2=None,
    *,
    params=None,
    trace_outputs: bool = True,
    batch_size=None,
) -> CostReport:
    """Estimated FLOPs and memory of every NTK method for this model and these inputs.

    ``print(explain(model, x1, x2))`` shows a table; ``.method`` is what ``"auto"`` uses.
    """
    x1, x2 = prepare(model, x1, x2)
    with eval_mode(model):
        return _Setup(model, x1, x2, params, trace_outputs, batch_size).report


def _features(model: nn.Module, batch: Batch, layer: str | None, chunk: int) -> Tensor:
    """Model outputs, or the inputs of module ``layer``, flattened to (N, d)."""
    from widenets.empirical._common import flatten_outputs

    target = None
    if layer is not None:
        mods = dict(model.named_modules())
        if layer not in mods:
            names = [n for n in mods if n]
            raise ValueError(
                f"`layer`: {layer!r} is not a submodule of `model`; submodules: {names}."
            )
        target = mods[layer]
    feats = []
    for i in range(0, batch.n, chunk):
        part = batch.slice(i, min(i + chunk, batch.n))
        seen = []
        handle = None
        if target is not None:
            handle = target.register_forward_hook(
                lambda mod, args, out, seen=seen: seen.append(args)
            )
        try:
            with torch.no_grad():
                out = model(*part.args, **part.kwargs)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"`model` rejected inputs of per-example shapes {part.example_shapes()}: "
                f"{type(e).__name__}: {e}"
            ) from None
        finally:
            if handle is not None:
                handle.remove()
        if target is None:
            feats.append(flatten_outputs(out, part.n))
            continue
        if len(seen) != 1 or not seen[0] or not isinstance(seen[0][0], Tensor):
            raise ValueError(
                f"`layer`: module {layer!r} must be called exactly once with a tensor first "
                f"argument per forward pass; it was called {len(seen)} times."
            )
        feats.append(seen[0][0].reshape(part.n, -1))
    return torch.cat(feats)


def nngp(
    model: nn.Module,
    x1,
    x2=None,
    *,
    layer: str | None = None,
    trace_outputs: bool = True,
    batch_size: int = 1024,
) -> Tensor:
    """Empirical NNGP: the Gram matrix of the outputs, or of the features entering ``layer``.

    K(x1, x2) = phi(x1) . phi(x2) / d with phi the d flattened outputs (or the flattened
    input of the submodule named ``layer``, e.g. the readout: the random-features
    kernel), i.e. the mean over channels, which estimates the infinite-width NNGP. With
    ``trace_outputs=False``, the (N1, N2, d, d) outer products phi_a(x1) phi_b(x2).
    The model runs in eval mode, ``batch_size`` examples at a time.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    b1, b2 = prepare(model, x1, x2)
    with eval_mode(model):
        f1 = _features(model, b1, layer, batch_size)
        f2 = f1 if b2 is None else _features(model, b2, layer, batch_size)
    if trace_outputs:
        return f1 @ f2.T / f1.shape[1]
    return torch.einsum("ia,jb->ijab", f1, f2)
