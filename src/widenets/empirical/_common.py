"""Helpers shared by the empirical kernels: inputs, eval mode, functional forward calls.

Inputs of any model are a batch in one of three forms, every tensor with the batch axis
first: a tensor ``x`` (called as ``model(x)``), a tuple ``(a, b, ...)`` (``model(a, b, ...)``)
or a dict ``{"x": ..., "mask": ...}`` (``model(**dict)``, for keyword-argument forwards).
Outputs may be a tensor or a tuple/list/dict of tensors (multi-output models); they are
flattened per example and concatenated into (N, O).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_map

from widenets.errors import real_tensor


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _leaf(x, name: str, dtype, device) -> Tensor:
    t = real_tensor(x, name, bools=True, needs="empirical kernels")
    if t.is_floating_point():
        t = t.to(dtype)
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).nonzero()[0].tolist()
            raise ValueError(f"`{name}` contains NaN or inf (first at index {tuple(bad)}).")
    if t.ndim < 1:
        raise ValueError(f"`{name}` must have a batch axis first, got a scalar.")
    if t.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (batch size 0).")
    return t.to(device)


class Batch:
    """A batch of model inputs: positional ``args`` and keyword ``kwargs``, batch axis first."""

    def __init__(self, args: tuple, kwargs: dict):
        self.args, self.kwargs = args, kwargs
        leaves, _ = tree_flatten((args, kwargs))
        self.n = leaves[0].shape[0]

    @classmethod
    def from_user(cls, x, name: str, dtype, device) -> Batch:
        if x is None:
            raise ValueError(f"`{name}` must be a batch of inputs, got None.")
        if isinstance(x, dict):
            if not x:
                raise ValueError(f"`{name}` is an empty dict of keyword inputs.")
            args, kwargs = (), {k: _leaf(v, f"{name}[{k!r}]", dtype, device) for k, v in x.items()}
        elif (
            isinstance(x, (tuple, list))
            and x
            and all(isinstance(v, (Tensor, np.ndarray)) for v in x)
        ):
            args, kwargs = (
                tuple(_leaf(v, f"{name}[{i}]", dtype, device) for i, v in enumerate(x)),
                {},
            )
        else:
            args, kwargs = (_leaf(x, name, dtype, device),), {}
        leaves, _ = tree_flatten((args, kwargs))
        sizes = {t.shape[0] for t in leaves}
        if len(sizes) != 1:
            raise ValueError(
                f"every tensor in `{name}` must have the same batch size, got {sizes}."
            )
        return cls(args, kwargs)

    def example_shapes(self):
        return tree_map(lambda t: (tuple(t.shape[1:]), t.dtype), (self.args, self.kwargs))

    def slice(self, i0: int, i1: int) -> Batch:
        return Batch(*tree_map(lambda t: t[i0:i1], (self.args, self.kwargs)))

    def tree(self):
        return (self.args, self.kwargs)


def cat_batches(parts: list[Batch]) -> Batch:
    """The examples of several batches, in order, as one batch."""
    if len(parts) == 1:
        return parts[0]
    trees = [p.tree() for p in parts]
    return Batch(*tree_map(lambda *ts: torch.cat(ts), *trees))


def prepare(model: nn.Module, x1, x2) -> tuple[Batch, Batch | None]:
    """x1, x2 as Batches on the model's device (floats in its dtype); x2 None means x1."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    dtype, device = model_dtype(model), model_device(model)
    b1 = Batch.from_user(x1, "x1", dtype, device)
    b2 = None if x2 is None else Batch.from_user(x2, "x2", dtype, device)
    if b2 is not None and b1.example_shapes() != b2.example_shapes():
        raise ValueError(
            "`x1` and `x2` must have the same per-example shapes and dtypes, got "
            f"{b1.example_shapes()} and {b2.example_shapes()}."
        )
    return b1, b2


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode (BatchNorm running statistics, dropout off), restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def describe(out) -> str:
    """What a model returned, briefly: ``tuple(Tensor[2, 5, 8], tuple(Tensor[1, 2, 8], ...))``."""
    if isinstance(out, Tensor):
        return f"Tensor[{', '.join(map(str, out.shape))}]"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(describe(v) for v in out[:4]) + (", ..." if len(out) > 4 else "")
        return f"{type(out).__name__}({inner})"
    if isinstance(out, dict):
        items = list(out.items())
        inner = ", ".join(f"{k!r}: {describe(v)}" for k, v in items[:4])
        return "dict(" + inner + (", ..." if len(items) > 4 else "") + ")"
    return "None" if out is None else type(out).__name__


def _parts(out) -> list | None:
    """The tensors of a tensor or a flat tuple/list/dict of tensors; None otherwise."""
    if isinstance(out, Tensor):
        return [out]
    parts = list(out.values()) if isinstance(out, dict) else out
    if isinstance(parts, (tuple, list)) and parts and all(isinstance(p, Tensor) for p in parts):
        return list(parts)
    return None


def flatten_outputs(out, n: int) -> Tensor:
    """A tensor or a flat tuple/list/dict of tensors, as (n, O): flattened and concatenated."""
    if isinstance(out, Tensor):
        return out.reshape(n, -1)
    parts = _parts(out)
    if parts is None:
        raise TypeError(
            "`model` must return a tensor or a flat tuple/list/dict of tensors (batch axis "
            f"first), got {describe(out)}: wrap the model in a module that returns the output "
            "to differentiate (e.g. for nn.LSTM: `out, _ = self.lstm(x); return out[:, -1]`)."
        )
    return torch.cat([p.reshape(n, -1) for p in parts], dim=1)


def call(model: nn.Module, state: dict, tree, n: int) -> Tensor:
    """functional_call of the model on the input tree (args, kwargs), outputs as (n, O)."""
    args, kwargs = tree
    return flatten_outputs(functional_call(model, state, args, kwargs, strict=False), n)


def single_fn(model: nn.Module, frozen: dict):
    """f(params, example) -> (O,) for one example (batch axis added and removed)."""

    def f(params, tree):
        tree = tree_map(lambda t: t.unsqueeze(0), tree)
        return call(model, {**frozen, **params}, tree, 1)[0]

    return f


def checked_outputs(out, n: int) -> Tensor:
    """A model's outputs on a batch of n examples as (n, O), or a clear error: a tensor or
    a flat tuple/list/dict of tensors, each with the batch axis first, floating, O > 0."""
    parts = _parts(out)
    if parts is None:
        flatten_outputs(out, n)  # raises: not a tensor or a flat tuple of tensors
    if any(p.ndim == 0 or p.shape[0] != n for p in parts):
        raise ValueError(
            f"`model` must return outputs with the batch axis first, got {describe(out)} for "
            f"a batch of {n} examples: use batch_first=True in nn.LSTM, nn.GRU, "
            "nn.MultiheadAttention and transformer layers, or wrap the model in a module "
            "that returns (N, ...) tensors."
        )
    flat = flatten_outputs(out, n)
    if flat.shape[1] == 0:
        raise ValueError("`model` returned no outputs (0 values per example).")
    if not flat.is_floating_point():
        raise TypeError(f"`model` must return floating outputs, got {flat.dtype}.")
    return flat


def probe(model: nn.Module, batch: Batch, name: str = "x1") -> int:
    """Run the model on two examples; the number of outputs O, or a clear error."""
    small = batch.slice(0, min(2, batch.n))
    try:
        with torch.no_grad():
            out = model(*small.args, **small.kwargs)
    except Exception as e:  # noqa: BLE001 - the model rejects the inputs: say which
        raise ValueError(
            f"`model` rejected inputs `{name}` of per-example shapes {batch.example_shapes()}: "
            f"{type(e).__name__}: {e}"
        ) from None
    return checked_outputs(out, small.n).shape[1]
