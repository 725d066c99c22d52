"""Masks from scores: keep the highest-scoring weights, globally, per layer, or by ERK.

- ``"global"``: the round(D * N) highest scores over all prunable weights together;
- ``"layer"``: round(D * N_l) highest in each layer (uniform layer densities);
- ``"erk"``: Erdos-Renyi-Kernel layer densities (:func:`erk_densities`), counts rounded so
  that the total is round(D * N) exactly, the highest scores within each layer.

Ties are broken by position (``torch.topk``), so every mask has the requested count exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from widenets.prune.densities import check_density, counts_from_densities, erk_densities

SCOPES = ("global", "layer", "erk")


def _top(s: Tensor, k: int) -> Tensor:
    flat = s.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[torch.topk(flat.double(), k, sorted=False).indices] = True
    return mask.reshape(s.shape)


def layer_counts(scores: dict, density: float, scope: str = "global") -> dict[str, int] | None:
    """Kept counts per layer for "layer"/"erk" (None for "global")."""
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}.")
    sizes = {n: s.numel() for n, s in scores.items()}
    if scope == "global":
        return None
    if scope == "layer":
        return {n: round(density * sizes[n]) for n in sizes}
    d = erk_densities({n: tuple(s.shape) for n, s in scores.items()}, density)
    return counts_from_densities(sizes, d)


def masks_from_scores(scores: dict, density: float, scope: str = "global") -> dict[str, Tensor]:
    """Boolean masks keeping the highest ``scores`` (name -> tensor) at ``density``.

    A weight scored -inf (already pruned) is never revived: asking for more weights than
    remain raises a ValueError.
    """
    density = check_density(density)
    if not scores:
        raise ValueError("`scores` is empty: there are no prunable weights.")
    counts = layer_counts(scores, density, scope)
    alive = {n: int((s > float("-inf")).sum()) for n, s in scores.items()}
    if counts is None:
        k = round(density * sum(s.numel() for s in scores.values()))
        if k > sum(alive.values()):
            raise ValueError(
                f"`density`={density} keeps {k} weights but only {sum(alive.values())} are "
                "left unpruned (masks only remove weights)."
            )
        names = list(scores)
        flat = torch.cat([scores[n].reshape(-1).double().cpu() for n in names])
        keep = _top(flat, k)
        out, i = {}, 0
        for n in names:
            s = scores[n]
            out[n] = keep[i : i + s.numel()].reshape(s.shape).to(s.device)
            i += s.numel()
        return out
    for n, k in counts.items():
        if k > alive[n]:
            raise ValueError(
                f"`density`={density} ({scope}) keeps {k} weights of layer {n!r} but only "
                f"{alive[n]} are left unpruned (masks only remove weights)."
            )
    return {n: _top(s, counts[n]) for n, s in scores.items()}
