"""Iterative magnitude pruning with weight rewinding (lottery tickets).

Frankle & Carbin 2019 (``rewind_step=0``: rewind to the initialisation) and Frankle et al.
2020 (rewind to the weights after k optimiser steps). Round r trains the masked network,
keeps the density ** (r / rounds) largest-magnitude weights (of all prunable weights,
globally or per layer), then rewinds every parameter and buffer (masks excepted) to the
stored state, so the surviving connections hold their step-k values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from widenets.errors import check_positive_int
from widenets.prune.densities import check_density
from widenets.prune.masks import masks_from_scores
from widenets.prune.scores import scores
from widenets.prune.targets import Mask, apply_masks, masks, prunable

_ORIG = "parametrizations.weight.original"


@dataclass
class LotteryTicket:
    """The outcome of :func:`imp`: final masks, the density after each round, what the
    training function returned in each round, and the rewound state (canonical names,
    ``...weight`` for masked weights)."""

    masks: dict[str, Tensor]
    densities: list[float] = field(default_factory=list)
    train_results: list = field(default_factory=list)
    rewind_state: dict[str, Tensor] = field(default_factory=dict)


def _canonical(name: str) -> str:
    if name == _ORIG:
        return "weight"
    return name[: -len(_ORIG)] + "weight" if name.endswith("." + _ORIG) else name


def _state(model: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers (not masks) by canonical name, as detached copies."""
    skip = tuple(f"{n}." if n else "" for n, m in model.named_modules() if isinstance(m, Mask))
    out = {_canonical(n): p.detach().clone() for n, p in model.named_parameters()}
    for n, b in model.named_buffers():
        if skip and any(n.startswith(s) for s in skip if s):
            continue
        out[_canonical(n)] = b.detach().clone()
    return out


@torch.no_grad()
def _load(model: nn.Module, state: dict[str, Tensor]) -> None:
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    for n, t in tensors.items():
        key = _canonical(n)
        if key in state:
            t.copy_(state[key])


def imp(
    model: nn.Module,
    train,
    density: float | None = None,
    rounds: int | None = None,
    *,
    schedule=None,
    rewind_step: int = 0,
    scope: str = "global",
    layers=None,
) -> LotteryTicket:
    """Find a lottery ticket of ``model`` in place by iterative magnitude pruning.

    Args:
        train: ``train(model, on_step)`` trains ``model`` (making its own optimiser) and
            calls ``on_step(step)`` after each optimiser step, step = 1, 2, ...; whatever
            it returns is recorded in ``train_results``.
        density: final fraction of prunable weights kept, in (0, 1].
        rounds: prune-train rounds; round r keeps density ** (r / rounds).
        schedule: instead of ``density`` and ``rounds``, the density kept after each round,
            decreasing (e.g. [0.5, 0.2, 0.1]).
        rewind_step: rewind to the weights after this many steps of the first round
            (0: the initial weights).
        scope: "global" or "layer" magnitude ranking.

    Returns:
        A :class:`LotteryTicket`; ``model`` is left masked at ``density`` and rewound
        (untrained: train it to evaluate the ticket).
    """
    schedule = _schedule(density, rounds, schedule)
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0:
        raise ValueError(f"`rewind_step` must be a non-negative int, got {rewind_step!r}.")
    if not callable(train):
        raise TypeError(f"`train` must be callable as train(model, on_step), got {train!r}.")
    names = list(prunable(model, layers))
    ticket = LotteryTicket(masks={})
    saved: dict = {}
    steps = [0]

    def on_step(step: int) -> None:
        steps[0] = max(steps[0], int(step))
        if "state" not in saved and int(step) == rewind_step:
            saved["state"] = _state(model)

    if rewind_step == 0:
        saved["state"] = _state(model)
    for d in schedule:
        ticket.train_results.append(train(model, on_step))
        if "state" not in saved:
            raise ValueError(
                f"`rewind_step`={rewind_step}: the training function reported only "
                f"{steps[0]} steps through on_step(step)."
            )
        mag = scores(model, "magnitude", layers=names)
        apply_masks(model, masks_from_scores(mag, d, scope))
        _load(model, saved["state"])
        ticket.densities.append(d)
    ticket.masks = masks(model, names)
    ticket.rewind_state = saved["state"]
    return ticket


def _schedule(density, rounds, schedule) -> list[float]:
    """The density after each round: density ** (r / rounds), or ``schedule`` checked."""
    if schedule is None:
        if density is None or rounds is None:
            raise ValueError("imp: give `density` and `rounds`, or `schedule`.")
        density = check_density(density)
        rounds = check_positive_int(rounds, "rounds")
        return [density ** (r / rounds) for r in range(1, rounds + 1)]
    if density is not None or rounds is not None:
        raise ValueError("imp: give `density` and `rounds`, or `schedule`, not both.")
    if isinstance(schedule, (str, bytes)) or not hasattr(schedule, "__iter__"):
        raise ValueError(f"`schedule` must be a list of densities, got {schedule!r}.")
    out = [check_density(d, "schedule") for d in schedule]
    if not out or any(b >= a for a, b in zip([1.0, *out], out, strict=False)):
        raise ValueError(
            f"`schedule` must be a non-empty list of densities in (0, 1), decreasing, got "
            f"{list(schedule)!r}."
        )
    return out
