"""Theory of random initialisation: signal propagation, training regimes, kernel spectra.

- :mod:`widenets.theory.signal`: variance and correlation maps, q*, c*, chi_1, depth
  scales, the edge of chaos and phase diagrams, for any widenets activation.
- :mod:`widenets.theory.regime`: how far training moved a network from initialisation
  (relative weight change, NTK distance, kernel-target alignment, rank of the change).
- :mod:`widenets.theory.studies`: experiments as functions returning data and a figure.
- :mod:`widenets.theory.spectrum`: eigenvalues and the smallest eigenvalue of a kernel.
"""

from widenets.theory import regime, signal
from widenets.theory.spectrum import eigenvalues, min_eigenvalue
from widenets.theory.studies import critical_init_depth_study, lazy_rich_study, pseudo_iid_study

__all__ = [
    "critical_init_depth_study",
    "eigenvalues",
    "lazy_rich_study",
    "min_eigenvalue",
    "pseudo_iid_study",
    "regime",
    "signal",
]
