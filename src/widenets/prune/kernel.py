"""The kernel view of pruning: how far a pruned network's empirical NTK / NNGP is from a
reference (the dense network's, or the analytic infinite-width kernel).

A random mask of density p with the kept weights scaled by 1 / sqrt(p)
(``prune(model, "random", p, rescale=True)``) gives a pseudo-IID network (as
``widenets.init.Sparse``): its NNGP and NTK have the dense network's infinite-width limit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from widenets.empirical.ntk import nngp as empirical_nngp
from widenets.empirical.ntk import ntk as empirical_ntk

KINDS = ("ntk", "nngp")


def empirical_kernel(model: nn.Module, x, kind: str = "ntk") -> Tensor:
    """Empirical NTK (all trainable parameters: the masked originals carry the mask) or
    NNGP of ``model`` on ``x``, (N, N), traced over outputs."""
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    if kind == "ntk":
        return empirical_ntk(model, x)
    return empirical_nngp(model, x)


def _reference(ref, x, kind) -> Tensor:
    if isinstance(ref, Tensor):
        return ref
    if isinstance(ref, nn.Module):
        return empirical_kernel(ref, x, kind)
    if callable(getattr(ref, "kernel", None)):
        return getattr(ref.kernel(x, get=kind), kind)
    raise TypeError(
        "`model_dense` must be a torch.nn.Module, a kernel tensor, or a widenets network "
        f"(with .kernel), got {type(ref).__name__}."
    )


def kernel_distance(model_dense, model_pruned: nn.Module, x, kind: str = "ntk") -> float:
    """||K_pruned - K_ref||_F / ||K_ref||_F on inputs ``x``.

    Args:
        model_dense: the reference: a module (its empirical kernel), a precomputed (N, N)
            kernel, or a widenets network (its analytic kernel ``net.kernel(x)``; for the
            standard parameterisation pass the network at the finite widths).
        model_pruned: the pruned module.
        kind: "ntk" or "nngp".
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    if not isinstance(model_pruned, nn.Module):
        raise TypeError(
            f"`model_pruned` must be a torch.nn.Module, got {type(model_pruned).__name__}."
        )
    k = empirical_kernel(model_pruned, x, kind).to(torch.float64)
    ref = _reference(model_dense, x, kind).to(dtype=torch.float64, device=k.device)
    if ref.shape != k.shape:
        raise ValueError(
            f"`model_dense`: reference kernel of shape {tuple(ref.shape)}, expected "
            f"{tuple(k.shape)}."
        )
    norm = ref.norm()
    if not torch.isfinite(k).all() or not torch.isfinite(ref).all() or norm == 0:
        raise ValueError(
            "kernel_distance: the kernels must be finite and the reference non-zero "
            f"(|K_ref|_F = {float(norm)})."
        )
    return float((k - ref).norm() / norm)
