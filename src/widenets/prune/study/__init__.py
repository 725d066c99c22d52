"""``widenets prune``: test accuracy against density for pruning at initialisation (random
uniform and ERK, magnitude, SNIP, GraSP, SynFlow) and lottery tickets (IMP with rewinding,
and its mask reinitialised), on MNIST-5k with LeNet-300-100 and a small CNN, with the kernel
distance at initialisation beside it; resumable; a report with the published findings
checked (:mod:`.findings`).

    from widenets.prune.study import run
    results = run(out="runs/prune", seeds=2)
"""

from widenets.prune.study.config import DEFAULTS, KEYS, PruneConfig, resolve
from widenets.prune.study.run import run

__all__ = ["DEFAULTS", "KEYS", "PruneConfig", "resolve", "run"]
