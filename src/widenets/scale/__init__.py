"""``widenets scale``: kernel regression at growing N, with power-law fits (see :func:`run`).

Kernel regression with the NNGP and NTK of a fully-connected network on MNIST-1D at
training-set sizes N = 1,000, 2,000, ... (one fixed test set), dense Cholesky or PCG
solves, optionally on a Dask cluster and into zarr kernel stores; test error and MSE
against N with fitted power laws a N^-b (as Adlam et al. 2023, Figure 1), wall time and
peak memory per N. Every stage is saved with checksums and resumes.
"""

from widenets.scale.config import DEFAULTS, KEYS, ScaleConfig, resolve
from widenets.scale.fit import fit_power_law
from widenets.scale.run import ScaleError, run

__all__ = ["DEFAULTS", "KEYS", "ScaleConfig", "ScaleError", "fit_power_law", "resolve", "run"]
