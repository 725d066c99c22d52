"""How far training moved a network from initialisation: lazy (kernel) versus rich regimes.

From two snapshots (the initial and the trained module) or a trajectory of snapshots:

- relative weight change per parameter, |W_t - W_0|_F / |W_0|_F (Chizat et al. 2019: O(1/alpha)
  in the lazy regime; O(1/sqrt(width)) in the NTK parameterisation, Lee et al. 2019);
- kernel distance of the empirical NTKs, 1 - <K0, Kt>_F / (|K0|_F |Kt|_F) (Fort et al. 2020;
  Baratin et al. 2021), zero when the kernel only changes by a scale;
- kernel-target alignment <K, Y Y^T>_F / (|K|_F |Y Y^T|_F) (Cristianini et al. 2002);
- the rank of the weight change W_t - W_0 of each matrix (rich training of narrow tasks
  learns low-rank changes), numerical and effective (Roy & Vetterli 2007).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from widenets.empirical.ntk import ntk as empirical_ntk


def snapshot(model: nn.Module) -> nn.Module:
    """A detached deep copy of ``model`` (take one before training)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    return copy.deepcopy(model)


def _params(model) -> dict[str, Tensor]:
    if isinstance(model, nn.Module):
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if isinstance(model, dict):
        return {n: torch.as_tensor(p).detach() for n, p in model.items()}
    raise TypeError(f"snapshots must be modules or dicts of tensors, got {type(model).__name__}.")


def _paired(initial, final):
    p0, p1 = _params(initial), _params(final)
    if p0.keys() != p1.keys():
        raise ValueError("`initial` and `final` must have the same parameter names.")
    for n in p0:
        if p0[n].shape != p1[n].shape:
            raise ValueError(
                f"parameter {n!r} has shape {tuple(p0[n].shape)} initially and "
                f"{tuple(p1[n].shape)} finally."
            )
    return p0, p1


def relative_weight_change(initial, final) -> dict[str, float]:
    """|p_t - p_0|_F / |p_0|_F for every trainable parameter (inf where p_0 = 0 != p_t)."""
    p0, p1 = _paired(initial, final)
    out = {}
    for n in p0:
        num = float((p1[n] - p0[n]).norm())
        den = float(p0[n].norm())
        out[n] = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    return out


def kernel_distance(k0, kt) -> float:
    """1 - <K0, Kt>_F / (|K0|_F |Kt|_F): 0 for kernels equal up to a positive scale."""
    k0, kt = torch.as_tensor(k0, dtype=torch.float64), torch.as_tensor(kt, dtype=torch.float64)
    if k0.shape != kt.shape:
        raise ValueError(
            f"kernels must have the same shape, got {tuple(k0.shape)} and {tuple(kt.shape)}."
        )
    den = float(k0.norm() * kt.norm())
    if den == 0:
        raise ValueError("kernel_distance is undefined for a zero kernel.")
    return max(0.0, 1.0 - float((k0 * kt).sum()) / den)


def kernel_target_alignment(k, y) -> float:
    """<K, Y Y^T>_F / (|K|_F |Y Y^T|_F), y of shape (N,) or (N, C)."""
    k = torch.as_tensor(k, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    y = y[:, None] if y.ndim == 1 else y.reshape(y.shape[0], -1)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] != y.shape[0]:
        raise ValueError(
            f"`k` must be (N, N) and `y` (N, ...), got {tuple(k.shape)} and {tuple(y.shape)}."
        )
    yy = y @ y.T
    den = float(k.norm() * yy.norm())
    if den == 0:
        raise ValueError("kernel_target_alignment is undefined for a zero kernel or target.")
    return float((k * yy).sum()) / den


def weight_change_rank(initial, final, *, rtol: float | None = None) -> dict[str, dict]:
    """Rank of W_t - W_0 for each matrix parameter (2 or more axes, flattened to (out, -1)).

    ``rank`` counts singular values above ``rtol * s_max`` (default max(shape) * eps of the
    dtype, as numpy's matrix_rank); ``effective_rank`` is exp of the entropy of the
    normalised singular values (Roy & Vetterli 2007). Both are 0 for no change.
    """
    p0, p1 = _paired(initial, final)
    out = {}
    for n in p0:
        if p0[n].ndim < 2:
            continue
        d = (p1[n] - p0[n]).reshape(p0[n].shape[0], -1).to(torch.float64)
        s = torch.linalg.svdvals(d)
        smax = float(s.max()) if s.numel() else 0.0
        if smax == 0:
            out[n] = {"rank": 0, "effective_rank": 0.0}
            continue
        tol = rtol if rtol is not None else max(d.shape) * torch.finfo(p0[n].dtype).eps
        p = s / s.sum()
        p = p[p > 0]
        out[n] = {
            "rank": int((s > tol * smax).sum()),
            "effective_rank": float(torch.exp(-(p * p.log()).sum())),
        }
    return out


@dataclass(frozen=True)
class RegimeMeasures:
    """Regime measures of a trained network against its initial state."""

    relative_weight_change: dict[str, float]
    kernel_distance: float | None
    alignment_initial: float | None
    alignment_final: float | None
    weight_change_rank: dict[str, dict]

    @property
    def mean_relative_weight_change(self) -> float:
        return float(np.mean(list(self.relative_weight_change.values())))


def compare(initial: nn.Module, final: nn.Module, x=None, y=None, *, method="auto"):
    """All regime measures between two snapshots.

    Args:
        initial, final: the network at initialisation (see :func:`snapshot`) and later.
        x: inputs for the empirical NTKs (None: no kernel measures).
        y: targets for the kernel-target alignment (None: not computed).
    """
    k0 = kt = None
    if x is not None:
        k0 = empirical_ntk(initial, x, method=method).detach()
        kt = empirical_ntk(final, x, method=method).detach()
    return RegimeMeasures(
        relative_weight_change=relative_weight_change(initial, final),
        kernel_distance=None if k0 is None else kernel_distance(k0, kt),
        alignment_initial=None if k0 is None or y is None else kernel_target_alignment(k0, y),
        alignment_final=None if kt is None or y is None else kernel_target_alignment(kt, y),
        weight_change_rank=weight_change_rank(initial, final),
    )


def trajectory(snapshots, x=None, y=None, *, method="auto") -> dict[str, np.ndarray]:
    """Regime measures of each snapshot against the first (arrays over the trajectory).

    Returns ``mean_relative_weight_change``, ``kernel_distance`` and ``alignment`` (when x,
    and y, are given), each of length len(snapshots).
    """
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("`snapshots` is empty.")
    first = snapshots[0]
    k0 = None if x is None else empirical_ntk(first, x, method=method).detach()
    rwc, dist, align = [], [], []
    for s in snapshots:
        rwc.append(float(np.mean(list(relative_weight_change(first, s).values()))))
        if k0 is not None:
            kt = empirical_ntk(s, x, method=method).detach()
            dist.append(kernel_distance(k0, kt))
            if y is not None:
                align.append(kernel_target_alignment(kt, y))
    out = {"mean_relative_weight_change": np.array(rwc)}
    if dist:
        out["kernel_distance"] = np.array(dist)
    if align:
        out["alignment"] = np.array(align)
    return out
