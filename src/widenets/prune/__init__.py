"""Pruning at initialisation and lottery tickets for any ``torch.nn.Module``, and the
kernel view of a pruned network.

    import widenets as wn
    masks = wn.prune.prune(model, "synflow", 0.01, input_shape=(784,))
    ticket = wn.prune.imp(model, train, density=0.1, rounds=5, rewind_step=0)
    d = wn.prune.kernel_distance(dense_model, model, x, kind="ntk")
    wn.prune.reinit(model, seed=1)  # fresh weights under the same masks

Masks are ``torch.nn.utils.parametrize`` parametrisations of the weights (masked weights
stay zero under any optimiser); see :mod:`widenets.prune.targets`.
"""

from widenets.prune.api import prune
from widenets.prune.densities import check_density, erk_densities
from widenets.prune.kernel import empirical_kernel, kernel_distance
from widenets.prune.lottery import LotteryTicket, imp
from widenets.prune.masks import SCOPES, masks_from_scores
from widenets.prune.reinit import reinit
from widenets.prune.scores import METHODS, scores
from widenets.prune.targets import (
    LayerCollapseWarning,
    Mask,
    apply_masks,
    density,
    masks,
    prunable,
    remove,
)

__all__ = [
    "METHODS",
    "SCOPES",
    "LayerCollapseWarning",
    "LotteryTicket",
    "Mask",
    "apply_masks",
    "check_density",
    "density",
    "empirical_kernel",
    "erk_densities",
    "imp",
    "kernel_distance",
    "masks",
    "masks_from_scores",
    "prunable",
    "prune",
    "reinit",
    "remove",
    "scores",
]
