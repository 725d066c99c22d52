"""The largest stable learning rate of (momentum) gradient descent on the MSE loss.

Discrete gradient descent on L = ||f - y||^2 / (2n) moves a linearised network's outputs as
f <- f - (eta / n) Theta (f - y); heavy-ball momentum m adds m (f_k - f_{k-1}). Along an
eigen-direction of Theta with eigenvalue lambda the iteration contracts iff
eta lambda / n < 2 (1 + m) (the roots of z^2 - (1 + m - eta lambda / n) z + m = 0 lie inside
the unit circle), so the largest stable eta is 2 (1 + m) n / lambda_max. As Neural Tangents'
``predict.max_learning_rate`` (Goh 2017, "Why Momentum Really Works").
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from widenets.predict import _validation as v
from widenets.predict._momentum import check_momentum


def max_learning_rate(
    ntk_train_train,
    y_train_size: int | None = None,
    momentum: float = 0.0,
    eps: float = 1e-12,
) -> float:
    """2 (1 + momentum) n / (lambda_max(ntk_train_train) + eps): gradient descent on
    ||f(X_train) - y||^2 / (2n) with a learning rate below this converges, above it diverges
    (for the linearised network, whose NTK is ``ntk_train_train``).

    Args:
        ntk_train_train: (N, N) NTK of the training inputs (analytic or empirical).
        y_train_size: n = y_train.numel() (N times the number of outputs); None: N.
        momentum: heavy-ball momentum in [0, 1).
        eps: added to lambda_max so that a zero kernel gives a finite rate.

    Returns:
        The learning rate, a float.
    """
    k = v.as_train_kernel(ntk_train_train, "ntk_train_train")
    if y_train_size is None:
        n = k.shape[0]
    else:
        if isinstance(y_train_size, bool) or not isinstance(
            y_train_size, (numbers.Integral, np.integer)
        ):
            raise TypeError(f"`y_train_size` must be a positive int or None, got {y_train_size!r}.")
        n = int(y_train_size)
        if n < 1:
            raise ValueError(
                f"`y_train_size` must be a positive int or None, got {y_train_size!r}."
            )
    m = check_momentum(momentum)
    if m is None:
        raise TypeError("`momentum` must be a real number in [0, 1), got None.")
    eps = v.check_scalar(eps, "eps", positive=False)
    k64: Tensor = k.to(torch.float64)
    lam_max = float(torch.linalg.eigvalsh((k64 + k64.T) / 2)[-1])
    return 2.0 * (1.0 + m) * n / (lam_max + eps)
