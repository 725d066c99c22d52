"""Theory helpers: kernel spectra (and, from other modules, signal propagation)."""

from widenets.theory.spectrum import eigenvalues, min_eigenvalue

__all__ = ["eigenvalues", "min_eigenvalue"]
