"""Regularised ZCA whitening of inputs, fitted on the training set.

ZCA ("zero-phase component analysis") whitening decorrelates the input features while
staying as close as possible to the original inputs (the whitening matrix is symmetric).
Lee et al. 2020 ("Finite Versus Infinite Neural Networks: an Empirical Study") found that
whitening with a regulariser improves both infinite-width kernels and finite networks on
images; the regulariser is relative to the mean eigenvalue of the feature covariance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ZCA_NORMALIZE = ("per_example", None)


def _check_regularizer(regularizer) -> float:
    if (
        isinstance(regularizer, bool)
        or not isinstance(regularizer, (int, float))
        or not math.isfinite(regularizer)
        or regularizer < 0
    ):
        raise ValueError(f"`regularizer` must be a finite number >= 0, got {regularizer!r}.")
    return float(regularizer)


def zca_whiten(
    x_train: Tensor,
    x_test: Tensor | None = None,
    regularizer: float = 0.1,
    *,
    center: bool = True,
    normalize: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Regularised ZCA whitening: fitted on ``x_train``, applied to both splits.

    Features are the flattened inputs (``(N, d)`` or images ``(N, C, H, W)``, any shape
    ``(N, ...)``; the output has the input's shape). With mu the training mean of each
    feature (0 if ``center=False``), Sigma = (X - mu)^T (X - mu) / N the d x d training
    covariance, Sigma = U diag(lambda) U^T and eps = ``regularizer``::

        Sigma_eps = Sigma + eps * tr(Sigma) / d * I,
        W = Sigma_eps^{-1/2} = U diag((lambda + eps * mean(lambda))^{-1/2}) U^T,
        x -> (x - mu) W

    (Lee et al. 2020: the regulariser is eps times the mean eigenvalue tr(Sigma)/d, so eps
    is scale free; eps -> infinity tends to plain centring up to a common factor). The
    whitened training covariance is U diag(lambda / (lambda + eps mean(lambda))) U^T: the
    identity for eps = 0 and full-rank data, and with eps > 0 directions of small variance
    are amplified less. The test set is transformed with the training mu and W only.

    With eps = 0, directions whose eigenvalue is below d * machine-eps * lambda_max (a
    rank-deficient covariance: fewer examples than features, constant pixels, or per-example
    centred data, whose features always sum to zero) are projected out (the Moore-Penrose
    inverse square root) rather than divided by zero.

    ``normalize="per_example"`` renormalises every whitened example afterwards to mean 0
    and norm sqrt(d) (as :func:`widenets.data.load` does for images, the usual NNGP
    preprocessing); ``None`` leaves the whitened features as they are. Lee et al.'s own
    implementation normalises each image before whitening and uses the uncentred second
    moment (``center=False``).

    Args:
        x_train: (N, ...) training inputs (float; computed in float64, returned in the
            input's dtype).
        x_test: (M, ...) test inputs with the same per-example shape, or None.
        regularizer: eps >= 0.
        center: subtract the training mean of each feature before whitening.
        normalize: "per_example" or None (see above).

    Returns:
        ``(x_train_white, x_test_white)`` (the second None if ``x_test`` is None).

    Raises:
        ValueError: bad ``regularizer``/``normalize``, mismatched shapes, fewer than two
            training examples, or training inputs with zero variance in every feature.
    """
    eps = _check_regularizer(regularizer)
    if normalize not in ZCA_NORMALIZE:
        raise ValueError(f"`normalize` must be one of {ZCA_NORMALIZE}, got {normalize!r}.")
    if not isinstance(x_train, Tensor) or x_train.ndim < 2 or x_train.shape[0] < 2:
        raise ValueError("`x_train` must be a tensor of shape (N, ...) with N >= 2.")
    if x_test is not None and (
        not isinstance(x_test, Tensor) or tuple(x_test.shape[1:]) != tuple(x_train.shape[1:])
    ):
        raise ValueError(
            f"`x_test` must have the per-example shape of `x_train` {tuple(x_train.shape[1:])}."
        )
    n = x_train.shape[0]
    xtr = x_train.reshape(n, -1).to(torch.float64)
    d = xtr.shape[1]
    mu = xtr.mean(0, keepdim=True) if center else torch.zeros_like(xtr[:1])
    xc = xtr - mu
    sigma = xc.T @ xc / n
    sigma = (sigma + sigma.T) / 2
    lam, u = torch.linalg.eigh(sigma)
    lam = lam.clamp_min(0.0)
    mean_lam = lam.sum().item() / d
    if mean_lam <= 0:
        raise ValueError("`x_train` has zero variance in every feature: nothing to whiten.")
    if eps > 0:
        scale = (lam + eps * mean_lam).rsqrt()
    else:
        tol = d * torch.finfo(torch.float64).eps * lam.max()
        scale = torch.where(lam > tol, lam.clamp_min(tol).rsqrt(), torch.zeros_like(lam))
    w = (u * scale) @ u.T

    def apply(x):
        flat = (x.reshape(x.shape[0], -1).to(torch.float64) - mu) @ w
        if normalize == "per_example":
            flat = flat - flat.mean(1, keepdim=True)
            norm = flat.norm(dim=1, keepdim=True)
            flat = flat * (math.sqrt(d) / torch.where(norm > 0, norm, torch.ones_like(norm)))
        return flat.reshape(x.shape).to(x.dtype)

    return apply(x_train), (None if x_test is None else apply(x_test))
