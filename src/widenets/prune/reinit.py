"""Re-initialise a pruned model under its masks: the random-reinitialisation baseline of
lottery tickets (Frankle & Carbin 2019), the same sparse structure with fresh weights."""

from __future__ import annotations

import torch
from torch import nn

from widenets.prune.targets import masks


def reinit(
    model: nn.Module,
    scheme=None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    w_std: float = 1.0,
    b_std: float | None = None,
) -> nn.Module:
    """Redraw every weight of ``model`` in place, keeping each mask (and its scale); returns
    ``model``. The weight becomes ``new draw * mask * scale``.

    Widenets modules are redrawn as ``build`` draws them, ``nn.Linear`` / ``nn.Conv*`` as
    W = w_std / sqrt(fan_in) * draw (see :func:`widenets.init.apply`, which this calls, for
    ``scheme``, ``w_std``, ``b_std``, ``seed`` and ``generator``).
    """
    from widenets.init.apply import apply

    before = masks(model)  # also: a model without prunable weights is an error here
    apply(model, scheme, w_std=w_std, b_std=b_std, seed=seed, generator=generator)
    after = masks(model, list(before))
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    if changed:  # apply writes the originals only; a changed mask would be a bug here
        raise RuntimeError(f"reinit: the masks of {changed} changed.")
    return model
