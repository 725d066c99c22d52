"""Empirical NTK and NNGP of any ``torch.nn.Module``.

Theta(x1, x2)[a, b] = sum_{p in S} d f_a(x1)/dp d f_b(x2)/dp over a set S of parameters
(all trainable ones by default). ``trace_outputs=True`` returns the mean over the diagonal
a = b, which estimates the per-channel NTK of the infinite-width limit (where
Theta = Theta_scalar (x) I_O); otherwise the full (N1, N2, O, O) block.

The model is evaluated in eval mode (BatchNorm with its running statistics, dropout off)
and restored afterwards: with batch statistics an example's output would depend on the
rest of the batch and the per-example NTK would not be defined. Every method
differentiates the model example by example, so before any of them runs a few examples
are passed through the model together and alone (:mod:`._checks`): a model that mixes the
examples of a batch (softmax or a mean over the batch axis, BatchNorm without running
statistics, ``batch_first=False``) or is random in eval mode is rejected with a
ValueError naming the likely cause. Inputs are a tensor, a tuple of tensors (positional
arguments) or a dict of tensors (keyword arguments), each with the batch axis first
(integer inputs, e.g. token ids, are passed unchanged: only parameters are
differentiated); outputs may be a tensor or a flat tuple/list/dict of tensors, flattened
per example and concatenated (O values in all). A module returning nested tuples
(``nn.LSTM``'s ``(output, (h, c))``) is wrapped by the user in one returning what to
differentiate.

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
- ``"loop"``: per-example Jacobians by plain reverse mode, one ``torch.autograd.grad``
  per example and output, contracted in tiles: no ``vmap``, no forward mode, so it runs
  models the others cannot (``nn.LSTM``/``nn.GRU``, whose fused kernels have no batching
  rule; modules whose fast paths have no forward AD), slowly.
- ``"auto"``: the method with the least estimated arithmetic among those that fit the
  memory budget (near-ties go to the one holding less). A method that cannot run the
  model (:func:`cannot_run`: no forward-AD formula, no vmap batching rule, ...) is passed
  over for the next in that order, down to ``"loop"``; the failure is remembered for the
  kind of model (:func:`_model_key`) so later calls do not retry it, and :func:`explain`
  reports it. An explicitly requested method that cannot run raises a ValueError.

The kernel is computed in tiles of (b1, b2) examples so that memory is bounded (the tiles
are sized for the method used: at most ``MEMORY_SCALARS`` scalars held, by the estimate);
for x2 None only tiles on or above the diagonal are computed and mirrored. The tiles are
planned and run as the network kernels' are (:mod:`.tiles`: ``widenets.tiling`` and an
executor of ``widenets.executors``). Every entry is the same sum whatever the tiling, so
the result does not depend on ``batch_size``.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten
from tqdm.auto import tqdm  # the streamed Jacobian's bar

from widenets.compute import check_batch_size
from widenets.empirical import tiles
from widenets.empirical._checks import check_per_example
from widenets.empirical._common import Batch, eval_mode, model_device, model_dtype, prepare
from widenets.empirical._methods import (
    JacobianMethod,
    LoopMethod,
    NtkVectorMethod,
    StreamedJacobian,
)
from widenets.empirical.choice import Choice, Force, choose
from widenets.empirical.cost import CostReport, Shape, activation_numel, forward_flops
from widenets.empirical.layer_structure import find_layers
from widenets.empirical.params import select_params
from widenets.empirical.structured import StructuredMethod
from widenets.executors import LocalExecutor

METHODS = ("auto", "jacobian", "ntk_vector", "structured", "loop")
#: scalars held at once (features of two blocks and a tile); float64: 512 MiB
MEMORY_SCALARS = 1 << 26
#: show a progress bar by default from this many tiles on
PROGRESS_TILES = 8
#: ... or, for the streamed Jacobian contraction, from this many parameter-slice passes on
PROGRESS_PASSES = 64


def _check_batch_size(batch_size, n1, n2):
    if batch_size is None:
        return None
    b1, b2 = check_batch_size(batch_size)
    return min(b1, n1), min(b2, n2)


class _Setup:
    """Everything the methods and the cost estimate need, computed once; ``choice``:
    the method, variant and blocks (:func:`widenets.empirical.choice.choose`)."""

    def __init__(
        self,
        model,
        x1: Batch,
        x2: Batch | None,
        params,
        trace,
        batch_size,
        method="auto",
        force: Force | None = None,
    ):
        self.model, self.x1, self.x2, self.trace = model, x1, x2, trace
        self.force = force or Force()
        self.executor = None  # runs the tiles (None: ``_tiled``'s default); tests set it
        self.budget = self.force.budget or MEMORY_SCALARS
        sel = select_params(model, params)
        self.params = {k: v.detach() for k, v in sel.items()}
        self.frozen = {k: v.detach() for k, v in model.named_parameters() if k not in sel}
        self.frozen.update({k: v.detach() for k, v in model.named_buffers()})
        # the outputs' size, and a ValueError unless each example is mapped alone
        self.n_out = check_per_example(model, x1, x2)
        self.key = _model_key(model, x1, self.params)
        self.known = _RUNS.setdefault(self.key, {})
        self.skipped = {k: v for k, v in self.known.items() if v is not None}
        state = {**self.frozen, **self.params}
        self.specs = find_layers(model, self.params, self.frozen, x1)
        try:
            f_flops = forward_flops(model, self.params, self.frozen, x1)
        except Exception:  # noqa: BLE001 - an op the counter cannot trace: a rough guess
            f_flops = 2.0 * sum(v.numel() for v in state.values())
        try:
            act = activation_numel(model, self.params, self.frozen, x1)
        except Exception:  # noqa: BLE001 - a rough guess: the forward's outputs
            act = f_flops / 100
        y_numel = float(sum(math.prod(s.y_shape) for s in self.specs))
        self.shape = Shape(self.n_out, f_flops, act, y_numel)
        n1 = x1.n
        n2 = n1 if x2 is None else x2.n
        self.n1, self.n2 = n1, n2
        self.batch_size = _check_batch_size(batch_size, n1, n2)
        self.stream = self.batch_size is None  # the Jacobian contraction may stream
        self._plan(method)

    def _plan(self, method: str) -> None:
        """Blocks sized for the method used ("auto": the one it picks among those not
        skipped), and the choice for them (``choice``; its ``report``, and the method's
        name ``method_name``)."""
        n1, n2, fixed = self.n1, self.n2, self.batch_size
        if self.x2 is not None and fixed is None:
            fixed = self._fit(method, n1, n2, lambda b1, b2: b1 >= b2)
        elif fixed is None:
            fixed = self._fit(method, n1, n2, None)
        if self.x2 is None:
            fixed = (min(fixed),) * 2
        self.block = fixed
        self.choice = self._choose(fixed, method)
        self.report = self.choice.report
        self.method_name = self.choice.method

    def skip(self, name: str, error: BaseException) -> None:
        """Method ``name`` cannot run this model: remember why (for this kind of model,
        see :func:`_model_key`) and plan for the next method ``auto`` prefers."""
        self.known[name] = self.skipped[name] = _first_line(error)
        self._plan("auto")

    def ran(self, name: str) -> None:
        self.known.setdefault(name, None)

    def _fit(self, method, b1, b2, halve_first):
        """Halve the blocks until the method used (for "auto": the one it would pick among
        those that fit) holds at most ``budget`` scalars."""
        while True:
            choice = self._choose((b1, b2), method)
            if choice.report.cost(choice.method).scalars <= self.budget or (b1 == 1 and b2 == 1):
                return b1, b2
            if halve_first is None:  # x2 None: square blocks
                b1 = b2 = max(1, b1 // 2)
            elif halve_first(b1, b2):
                b1 = max(1, b1 // 2)
            else:
                b2 = max(1, b2 // 2)

    def _choose(self, block, method) -> Choice:
        return choose(
            self.params,
            self.specs,
            self.shape,
            self.n1,
            self.n2,
            block,
            trace=self.trace,
            same=self.x2 is None,
            stream=self.stream,
            budget=self.budget,
            method=method,
            skipped=self.skipped,
            force=self.force,
        )

    def method(self, name: str):
        args = (self.model, self.params, self.frozen, self.n_out, self.trace)
        if name == "jacobian":
            return JacobianMethod(*args)
        if name == "ntk_vector":
            return NtkVectorMethod(*args)
        if name == "loop":
            return LoopMethod(*args)
        how = self.choice.structured
        return StructuredMethod(
            *args,
            self.specs,
            how.variant,
            how.modes,
            chunk=how.chunk,
            reverse_batch=self.choice.reverse_batch,
        )


def _tiled(m, x1: Batch, x2: Batch | None, block, trace, progress, executor=None) -> Tensor:
    """The kernel by method ``m`` in (b1, b2) = ``block`` tiles of examples, planned by
    :func:`.tiles.plan` and run by ``executor`` (default: in this process, one band after
    another, with a progress bar from ``PROGRESS_TILES`` tiles on)."""
    plan = tiles.plan(x1.n, x1.n if x2 is None else x2.n, x2 is None, block)
    sink = tiles.EmpiricalSink(plan)
    show = progress if progress is not None else plan.n_tiles >= PROGRESS_TILES
    if executor is None:
        executor = LocalExecutor(1, desc="empirical NTK")
    executor.run(plan, tiles.EmpiricalWork(m, x1, x2, trace), sink, show)
    return sink.finish()


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
        model: any ``torch.nn.Module`` (evaluated in eval mode, restored afterwards) that
            maps each example alone (checked: a model mixing the examples of a batch, or
            a random one, is rejected with a ValueError naming the likely cause) to a
            tensor or a flat tuple/list/dict of tensors, batch axis first.
        x1, x2: a tensor, tuple of tensors or dict of tensors, batch axis first (integer
            inputs such as token ids are passed as they are).
        params: the parameters to differentiate (see :mod:`widenets.empirical.params`):
            None (all trainable), names, a predicate, or "readout" / "norm_affine" /
            "no_embeddings".
        trace_outputs: mean over the output channels' diagonal, (N1, N2); else
            (N1, N2, O, O).
        method: "auto", "jacobian", "ntk_vector", "structured" or "loop". "auto" tries
            the methods in the order of their estimated cost, passing over those that
            cannot run the model (no forward AD, no vmap batching rule), down to "loop";
            an explicit method that cannot run raises a ValueError.
        batch_size: examples per tile, an int or a pair (b1, b2); None picks tiles that
            keep about ``MEMORY_SCALARS`` scalars in memory for the method used.
        progress: show a progress bar over tiles (default: from 8 tiles on).

    Returns:
        A detached tensor in the model's dtype.
    """
    return _ntk(
        model,
        x1,
        x2,
        params=params,
        trace_outputs=trace_outputs,
        method=method,
        batch_size=batch_size,
        progress=progress,
    )


def _ntk(
    model,
    x1,
    x2=None,
    *,
    params=None,
    trace_outputs=True,
    method="auto",
    batch_size=None,
    progress=None,
    force: Force | None = None,
    executor=None,
) -> Tensor:
    """:func:`ntk`, with parts of the choice made by ``force`` and the tiles run by
    ``executor`` (``widenets.executors``; tests)."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    x1, x2 = prepare(model, x1, x2)
    with eval_mode(model):
        setup = _Setup(model, x1, x2, params, trace_outputs, batch_size, method, force)
        setup.executor = executor
        if method != "auto":
            return _run_explicit(setup, method, progress).detach()
        while True:
            name = setup.method_name
            try:
                out = _run(setup, name, progress)
            except Exception as e:
                if name == "loop" or not cannot_run(e):
                    raise
                setup.skip(name, e)  # and fall back to the next method
                continue
            setup.ran(name)
            return out.detach()


def _run(setup: _Setup, name: str, progress) -> Tensor:
    if name == "jacobian" and setup.choice.streamed_jacobian:
        streamed = _streamed_jacobian(setup, setup.x1, setup.x2)
        return _run_streamed(streamed, setup.x1, setup.x2, progress)
    m = setup.method(name)
    return _tiled(m, setup.x1, setup.x2, setup.block, setup.trace, progress, setup.executor)


def _run_explicit(setup: _Setup, method: str, progress) -> Tensor:
    reason = setup.skipped.get(method)
    if reason is None:
        try:
            out = _run(setup, method, progress)
        except Exception as e:
            if method == "loop" or not cannot_run(e):
                raise
            reason = _first_line(e)
            setup.known[method] = reason
        else:
            setup.ran(method)
            return out
    raise ValueError(
        f"method={method!r} cannot run this model ({reason}); use method='auto', which "
        "falls back to a method that can, or method='loop'."
    )


#: what each kind of model (:func:`_model_key`) is known to run: {key: {method: None if it
#: ran, else the first line of the error that shows it cannot}}; auto skips known failures
_RUNS: dict[tuple, dict[str, str | None]] = {}
#: kinds of model remembered at most (the oldest are forgotten)
RUNS_KEPT = 256

#: errors of torch.func transforms and forward-mode AD: the method, not the model, fails
_TRANSFORM_ERRORS = re.compile(
    r"vmap|functorch|torch\.func|batching rule|batchedtensor|forward ad|forward-mode|"
    r"forward mode|jvp|\bdual\b|doesn't match the broadcast shape|in-?place|\.item\(\)|"
    r"data-dependent",
    re.IGNORECASE,
)


def cannot_run(e: BaseException) -> bool:
    """Does error ``e`` mean that a method cannot run the model, which the per-example
    loop (plain reverse mode) may still differentiate? Errors of ``torch.func`` transforms
    and forward-mode AD: a missing forward-AD formula or vmap batching rule, an in-place
    write of batched values into an unbatched tensor (the initial state ``nn.LSTM`` and
    ``nn.GRU`` create), data-dependent control flow, ``.item()``; recognised by their
    message or by being raised inside a transform. Never out-of-memory errors."""
    if isinstance(e, torch.OutOfMemoryError) or not isinstance(
        e, (RuntimeError, NotImplementedError)
    ):
        return False
    text = str(e)
    if "out of memory" in text or "allocate" in text:
        return False
    if _TRANSFORM_ERRORS.search(text):
        return True
    tb = e.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "torch/_functorch/" in name or name.endswith("autograd/forward_ad.py"):
            return True
        tb = tb.tb_next
    return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else ""
    if len(line) > 200:
        line = line[:197] + "..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _model_key(model: nn.Module, x1: Batch, params: dict) -> tuple:
    """What decides which methods can run a model: its class, the kinds of modules in it,
    its device and dtype, the input dtypes and the differentiated parameters."""
    kinds = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in model.modules()})
    dtypes = (model_dtype(model), *(t.dtype for t in tree_flatten(x1.tree())[0]))
    key = (type(model), tuple(kinds), model_device(model).type, dtypes, tuple(params))
    if key not in _RUNS and len(_RUNS) >= RUNS_KEPT:
        del _RUNS[next(iter(_RUNS))]
    return key


def _trial(setup: _Setup, name: str) -> None:
    """Run method ``name`` on two examples of each set (one tile): raises if it cannot."""
    a = setup.x1.slice(0, min(2, setup.x1.n))
    b = None if setup.x2 is None else setup.x2.slice(0, min(2, setup.x2.n))
    block = (a.n, a.n if b is None else b.n)
    _tiled(setup.method(name), a, b, block, setup.trace, False)


def _streamed_jacobian(setup: _Setup, x1: Batch, x2: Batch | None) -> StreamedJacobian:
    """Jacobian contraction streamed over parameter slices (no Jacobian formed twice), as
    chosen: one slice's Jacobians of all examples fit the memory budget."""
    n = x1.n + (0 if x2 is None else x2.n)
    m = StreamedJacobian.plan(
        setup.model,
        setup.params,
        setup.frozen,
        setup.n_out,
        setup.trace,
        n,
        setup.budget,
        setup.shape.act,
    )
    if m is None:  # the estimate (cost._streamed_jacobian) found slices: so must this
        raise RuntimeError("internal error: the streamed Jacobian's slices do not fit.")
    return m


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
    """Estimated FLOPs and memory of every NTK method for this model and these inputs,
    and which method ``"auto"`` runs.

    ``print(explain(model, x1, x2))`` shows a table; ``.method`` is what ``"auto"`` uses:
    the cheapest by the estimate that can run the model, found (unless already known for
    this kind of model) by trying the methods in turn on two examples; ``.skipped`` holds
    the ones that cannot, with the first line of their error; ``.reasons`` says why the
    choice (method, structured variant) is what it is.
    """
    return _explain(
        model, x1, x2, params=params, trace_outputs=trace_outputs, batch_size=batch_size
    )


def _explain(
    model, x1, x2=None, *, params=None, trace_outputs=True, batch_size=None, force=None
) -> CostReport:
    """:func:`explain`, with parts of the choice made by ``force`` (tests)."""
    x1, x2 = prepare(model, x1, x2)
    with eval_mode(model):
        setup = _Setup(model, x1, x2, params, trace_outputs, batch_size, force=force)
        while True:  # which method auto runs: try it on two examples unless known
            name = setup.method_name
            if name == "loop" or name in setup.known:
                return setup.report
            try:
                _trial(setup, name)
            except Exception as e:
                if not cannot_run(e):
                    raise
                setup.skip(name, e)
                continue
            setup.ran(name)


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
