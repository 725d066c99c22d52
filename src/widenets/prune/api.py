"""One call: score, mask and apply (SynFlow iterated with an exponential density schedule)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from widenets.errors import check_positive_int
from widenets.prune.densities import check_density
from widenets.prune.masks import masks_from_scores
from widenets.prune.scores import GRASP_TEMPERATURE, METHODS, SynFlow, _check_finite, scores
from widenets.prune.targets import apply_masks, masks, prunable
from widenets.prune.targets import density as current_density


def prune(
    model: nn.Module,
    method: str,
    density: float,
    *,
    scope: str = "global",
    data=None,
    loss=None,
    input_shape=None,
    iterations: int | None = None,
    rescale: bool = False,
    layers=None,
    seed: int | None = None,
    temperature: float = GRASP_TEMPERATURE,
) -> dict:
    """Prune ``model`` in place to ``density`` by ``method``; returns the boolean masks.

    Args:
        method: "random", "magnitude", "snip", "grasp" or "synflow" (see
            :mod:`widenets.prune.scores`).
        density: fraction of the prunable weights kept, in (0, 1] (of all of them, counting
            those already pruned, which stay pruned).
        scope: "global", "layer" (uniform layer densities) or "erk" (see
            :mod:`widenets.prune.masks`).
        data, loss, input_shape: see :func:`widenets.prune.scores`.
        iterations: rounds of scoring; round t keeps d0 (density / d0) ** (t / iterations),
            d0 the current density (1 when unpruned; Tanaka et al. 2020). Default 100 for
            "synflow", 1 otherwise.
        rescale: scale each layer's kept weights by 1 / sqrt(its density) (variance kept).
        layers: restrict to these module names.
        seed: randomness of "random" (a fresh seed when None).
        temperature: GraSP's (see :func:`widenets.prune.scores`).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    density = check_density(density)
    if iterations is None:
        iterations = 100 if method == "synflow" else 1
    iterations = check_positive_int(iterations, "iterations")
    names = list(prunable(model, layers))
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    kw = dict(
        data=data,
        loss=loss,
        input_shape=input_shape,
        layers=names,
        generator=gen,
        temperature=temperature,
    )
    if iterations == 1:
        new = masks_from_scores(scores(model, method, **kw), density, scope)
    elif method == "synflow":
        flow = SynFlow(model, names, data, input_shape)
        current = dict(flow.masks)
        start = current_density(model, names)
        for t in range(1, iterations + 1):
            d_t = density if t == iterations else start * (density / start) ** (t / iterations)
            raw = flow.scores(current)
            for n in raw:
                _check_finite(raw[n], method, n)
                raw[n] = raw[n].masked_fill(~current[n].to(raw[n].device), float("-inf"))
            current = masks_from_scores(raw, min(d_t, start), scope)
        new = current
    else:
        work = copy.deepcopy(model)  # intermediate masks stay off the user's model
        start = current_density(model, names)
        for t in range(1, iterations + 1):
            d_t = density if t == iterations else start * (density / start) ** (t / iterations)
            new = masks_from_scores(scores(work, method, **kw), min(d_t, start), scope)
            if t < iterations:
                with warnings.catch_warnings():  # collapse is reported once, at the end
                    warnings.simplefilter("ignore")
                    apply_masks(work, new)
    apply_masks(model, new, rescale=rescale)
    return masks(model, names)
