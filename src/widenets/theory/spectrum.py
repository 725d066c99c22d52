"""Spectra of kernel matrices: the smallest eigenvalue, which controls how well a kernel
(and, through the NTK, a wide network trained by gradient descent) can fit distinct inputs.

Gao et al. 2023 ("Wide Neural Networks as Gaussian Processes: Lessons from Deep Equilibrium
Models") show that the NNGP kernel of a DEQ is strictly positive definite on distinct,
non-parallel inputs; Du et al. 2019 use lambda_min(NTK) > 0 for global convergence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from widenets.predict._validation import as_train_kernel


def min_eigenvalue(kernel, get: str = "nngp") -> float:
    """Smallest eigenvalue of a kernel matrix (computed in float64 by ``eigvalsh``).

    Args:
        kernel: a square symmetric (N, N) matrix, or a :class:`~widenets.Kernel` of a set
            of inputs with itself (``net.kernel(x)``), whose ``get`` field is used.
        get: "nngp" or "ntk" when ``kernel`` is a Kernel record.

    Returns:
        lambda_min as a float (negative values are round-off or a non-PSD input).
    """
    if get not in ("nngp", "ntk"):
        raise ValueError(f'`get` must be "nngp" or "ntk", got {get!r}.')
    if hasattr(kernel, "nngp") and hasattr(kernel, "ntk"):
        mat = getattr(kernel, get)
        if mat is None:
            raise ValueError(f"`kernel.{get}` is None; compute it with get={get!r}.")
        name = f"kernel.{get}"
    else:
        mat, name = kernel, "kernel"
    k = as_train_kernel(mat, name)
    k = k.to(torch.float64)
    k = (k + k.T) / 2
    return float(torch.linalg.eigvalsh(k)[0])


def eigenvalues(kernel: Tensor) -> Tensor:
    """All eigenvalues of a symmetric kernel matrix, ascending, float64."""
    k = as_train_kernel(kernel, "kernel").to(torch.float64)
    return torch.linalg.eigvalsh((k + k.T) / 2)
