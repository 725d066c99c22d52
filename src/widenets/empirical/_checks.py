"""Is the model a function of each example alone? Checked before any NTK is computed.

Every method differentiates the model example by example (a batch of one under ``vmap``,
or a loop), so the kernel is that of the per-example function. A model whose outputs
depend on the rest of the batch (softmax or a mean over the batch axis, batch
statistics, a module whose batch axis is not first) would silently get the NTK of a
different function, and a stochastic one (dropout that stays on in eval mode, injected
noise) a random NTK. :func:`check_per_example` compares, in eval mode and without
gradients, the outputs of a few examples run as one batch (the first and last of x1, the
first of x2) with those of each example alone: one forward pass of the batch, which also
serves as the probe of the outputs, and one per example, no Jacobian. On a mismatch it
runs the batch again to tell a stochastic model from a coupled one, and raises a one-line
``ValueError``.

The tolerance is relative to the largest output of the batch: sqrt(eps) of the dtype
(float64 1.5e-8, float32 3.5e-4), of TF32 (3.1e-2) for float32 on a GPU that allows it.
Batched and one-example forward passes of a per-example model differ only by rounding
(reductions blocked differently), orders of magnitude below it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from widenets.empirical._common import Batch, checked_outputs, flatten_outputs, probe

#: examples of x1 and of x2 run together: the first and last of x1, the first of x2
CHECK_X1, CHECK_X2 = 2, 1


def _pick(batch: Batch, k: int) -> Batch:
    """The first example, and the last if k >= 2."""
    if k < 2 or batch.n <= 2:
        return batch.slice(0, min(k, batch.n))
    return Batch(*tree_map(lambda t: t[:: batch.n - 1], batch.tree()))


def _cat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return Batch(*tree_map(lambda *ts: torch.cat(ts), *[p.tree() for p in parts]))


def tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """Relative tolerance of a batched against a one-example forward pass."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo().eps
    if dtype == torch.float32:
        if device.type == "cuda" and (
            torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
        ):
            eps = 2.0**-10  # TF32 matmuls and convolutions
        precision = torch.get_float32_matmul_precision()
        if precision == "medium":
            eps = max(eps, 2.0**-7)  # bfloat16 products
        elif precision == "high":
            eps = max(eps, 2.0**-10)
    return math.sqrt(eps)


def _forward(model: nn.Module, batch: Batch) -> Tensor:
    return flatten_outputs(model(*batch.args, **batch.kwargs), batch.n)


def _difference(a: Tensor, b: Tensor) -> tuple[float, float]:
    """(max |a - b|, the larger of max |a| and max |b|) over the entries finite in both;
    an infinite difference where only one is finite (NaN in both counts as equal)."""
    stats = torch.stack([(a - b).abs().max(), a.abs().max(), b.abs().max()]).tolist()
    if all(math.isfinite(v) for v in stats):  # one synchronisation in the common case
        return stats[0], max(stats[1], stats[2])
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    both = fa & fb
    bad = (fa != fb) | (~both & ~(torch.isnan(a) & torch.isnan(b)) & (a != b))
    if bool(bad.any()):
        return math.inf, 0.0
    if not bool(both.any()):
        return 0.0, 0.0
    diff = float((a[both] - b[both]).abs().max())
    scale = max(float(a[both].abs().max()), float(b[both].abs().max()))
    return diff, scale


def _batch_norms(model: nn.Module) -> list[str]:
    """BatchNorm modules that normalise by the batch even in eval mode (no running
    statistics), by name."""
    bn = nn.modules.batchnorm._BatchNorm
    return [
        name or type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, bn) and (m.training or m.running_mean is None or m.running_var is None)
    ]


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _bn_hint(names: list[str]) -> str:
    quoted = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
    return (
        f"BatchNorm module(s) {quoted} use batch statistics (track_running_stats=False, so "
        "even in eval mode): give them running statistics (track_running_stats=True) and "
        "call model.eval(), or use a per-example normalisation (LayerNorm, GroupNorm)"
    )


def check_per_example(model: nn.Module, x1: Batch, x2: Batch | None) -> int:
    """The number of outputs O per example; raises a one-line ValueError unless the model,
    as evaluated (eval mode), maps each example of a batch to the same outputs as that
    example alone, deterministically (or a clear error if it rejects the inputs or its
    outputs are not a tensor or a flat tuple/list/dict of batch-first tensors)."""
    parts = [_pick(x1, CHECK_X1)]
    if x2 is not None:
        parts.append(_pick(x2, CHECK_X2))
    both = _cat(parts)
    with torch.no_grad():
        try:
            raw = model(*both.args, **both.kwargs)
        except Exception as e:  # noqa: BLE001 - say which inputs it rejects
            probe(model, x1, "x1")
            if x2 is not None:
                probe(model, x2, "x2")
            raise ValueError(
                f"`model` rejected a batch of examples of `x1` and `x2` together: "
                f"{type(e).__name__}: {_first(e)}"
            ) from None
        together = checked_outputs(raw, both.n)
        del raw
        alone = []
        for i in range(both.n):
            try:
                alone.append(_forward(model, both.slice(i, i + 1)))
            except Exception as e:  # noqa: BLE001 - say that it is the single example
                bns = _batch_norms(model)
                hint = f"; {_bn_hint(bns)}" if bns else ""
                raise ValueError(
                    "`model` fails on a single example (the empirical NTK is computed "
                    f"example by example): {type(e).__name__}: {_first(e)}{hint}."
                ) from None
        alone = torch.cat(alone)
        diff, scale = _difference(together, alone)
        tol = tolerance(together.dtype, together.device)
        if diff <= tol * scale:
            return together.shape[1]
        again = _forward(model, both)
    found = (
        f"max difference {diff:.3g} for outputs up to {scale:.3g} (tolerance {tol:.2g} relative)"
    )
    d_again, s_again = _difference(together, again)
    if d_again > tol * s_again:
        raise ValueError(
            "`model` must be deterministic in eval mode (the NTK of a random function is "
            f"random), but two forward passes on the same {both.n} examples differ "
            f"(max difference {d_again:.3g} for outputs up to {s_again:.3g}): random ops "
            "stay on in eval mode, e.g. F.dropout(x, p) (whose default is training=True: "
            "pass training=self.training) or added noise; make them depend on self.training "
            "(the NTK is taken in eval mode, where nn.Dropout is off)."
        )
    bns = _batch_norms(model)
    seq = [
        name or type(m).__name__
        for name, m in model.named_modules()
        if getattr(m, "batch_first", None) is False
    ]
    if bns:
        cause = _bn_hint(bns)
    elif seq:
        cause = (
            f"module(s) {', '.join(repr(n) for n in seq[:3])} take (sequence, batch, ...) "
            "inputs (batch_first=False) while the batch axis of the inputs is first: "
            "construct them with batch_first=True"
        )
    else:
        cause = (
            "likely an operation across the batch axis (softmax(dim=0), a mean or sum over "
            "the batch, batch statistics as in BatchNorm without running statistics) or a "
            "module whose batch axis is not first (batch_first=False in nn.LSTM, nn.GRU, "
            "nn.MultiheadAttention, transformer layers)"
        )
    raise ValueError(
        "`model` must treat the examples of a batch independently (the NTK is computed "
        f"example by example): expected the outputs of {both.n} examples run together to "
        f"equal those of each example alone, found {found}; {cause}."
    )
