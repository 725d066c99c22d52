"""Theory of random initialisation: signal propagation and training regimes.

- :mod:`widenets.theory.signal`: variance and correlation maps, q*, c*, chi_1, depth
  scales, the edge of chaos and phase diagrams, for any widenets activation.
- :mod:`widenets.theory.regime`: how far training moved a network from initialisation
  (relative weight change, NTK distance, kernel-target alignment, rank of the change).
- :mod:`widenets.theory.studies`: experiments as functions returning data and a figure.
"""

from widenets.theory import regime, signal
from widenets.theory.studies import critical_init_depth_study, lazy_rich_study, pseudo_iid_study

__all__ = [
    "critical_init_depth_study",
    "lazy_rich_study",
    "pseudo_iid_study",
    "regime",
    "signal",
]
