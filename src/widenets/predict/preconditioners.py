"""Randomized low-rank preconditioners for kernel systems (K + mu I) A = Y.

A factor F (N x r) with F F^T ~ K gives the preconditioner P = F F^T + mu I, applied by
the Woodbury identity:

    P^{-1} v = (v - F (mu I + F^T F)^{-1} F^T v) / mu,

so P^{-1} (K + mu I) has its eigenvalues in [1, 1 + ||K - F F^T|| / mu] (Diaz, Epperly,
Frangella, Tropp, Webber 2023, "Robust, randomized preconditioning for kernel ridge
regression"): a good rank-r approximation leaves CG few iterations.

- :func:`rpcholesky`: randomly pivoted Cholesky (Chen, Epperly, Tropp, Webber 2022), in
  its accelerated block form with rejection sampling (Epperly, Tropp, Webber 2024, "Embrace
  rejection"): reads diag(K) and r columns of K (plus the rejected candidates' columns);
- :func:`nystrom`: randomized Nystrom approximation (Frangella, Tropp, Udell 2023): one
  product K Omega with r Gaussian columns.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from widenets.predict.operators import KernelOperator, compute_threads


class LowRankPreconditioner:
    """v -> (F F^T + mu I)^{-1} v for a factor F (N x r) and mu > 0, by the Woodbury identity

        (F F^T + mu I)^{-1} v = (v - F M^{-1} F^T v) / mu,    M = mu I + F^T F (r x r),

    with M^{-1} applied through its Cholesky factor (two triangular solves with the r
    columns of F^T v). Building it costs the Gram matrix F^T F (N r^2) and a Cholesky of
    M (r^3 / 3): no tall SVD, no N x r basis. M's eigenvalues are s^2 + mu >= mu, so every
    direction of F is kept and M is positive definite however F is conditioned. Rounding
    (the Gram matrix knows F^T F to about eps s_max^2) moves the eigenvalues of
    P^{-1} (K + mu I) by a relative amount of order eps s_max^2 / mu (``tests/test_pcg.py``
    checks them within 0.2 % up to s_max^2 / mu = 1e8 and 10 % at 1e12). If the Cholesky
    of M fails (s_max^2 / mu near 1 / eps), M^{-1} comes from the eigendecomposition of
    the Gram matrix with its eigenvalues clipped at zero.
    """

    def __init__(self, factor: Tensor, mu: float, *, name: str = "low-rank"):
        if not mu > 0:
            raise ValueError(f"`mu` must be positive (the regulariser), got {mu!r}.")
        self.factor = factor.to(torch.float64).contiguous()
        self.mu, self.name = float(mu), name
        self.n, self.rank = int(self.factor.shape[0]), int(self.factor.shape[1])
        self._chol = self._vec = self._core = None
        if self.rank:
            gram = self.factor.T @ self.factor
            gram = (gram + gram.T) / 2
            m = gram.clone()
            m.diagonal().add_(self.mu)
            chol, info = torch.linalg.cholesky_ex(m)
            if int(info) == 0:
                self._chol = chol
            else:  # M = V (lam + mu) V^T with the Gram's rounding below zero clipped
                lam, vec = torch.linalg.eigh(gram)
                self._vec, self._core = vec, 1.0 / (lam.clamp_min(0.0) + self.mu)

    def __call__(self, v: Tensor) -> Tensor:
        if not self.rank:
            return v / self.mu
        c = self.factor.T @ v
        if self._chol is not None:
            c = torch.cholesky_solve(c, self._chol)
        else:
            c = self._vec @ (self._core[:, None] * (self._vec.T @ c))
        return torch.addmm(v, self.factor, c, alpha=-1.0).div_(self.mu)

    def __repr__(self) -> str:
        return f"LowRankPreconditioner({self.name}, rank={self.rank}, mu={self.mu:.3g})"


def rpcholesky(
    op: KernelOperator,
    rank: int,
    *,
    seed: int = 0,
    block_size: int | None = None,
    trace_tol: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Randomly pivoted Cholesky: F (N x k), k <= rank, with F F^T ~ K, and its pivots.

    Each round samples ``block_size`` candidate pivots i.i.d. with probability proportional
    to the residual diagonal d = diag(K - F F^T), reads their columns, and accepts candidate
    j with probability (its residual diagonal after the earlier accepted ones) / d_j: the
    accepted pivots have the law of sequential RPCholesky (Epperly, Tropp, Webber 2024).
    Stops early when the residual trace falls to rounding (K of numerical rank < ``rank``).

    Args:
        op: a square :class:`KernelOperator` (reads ``diagonal()`` and ``columns(idx)``).
        rank: the target rank r.
        seed: seed of the pivot sampling (the factor is a deterministic function of it).
        block_size: candidates per round (default ceil(r / 2)).
        trace_tol: adaptive rank: stop as soon as the residual trace tr(K - F F^T) is at
            most ``trace_tol`` * tr(K) (``rank`` is then the most pivots); None: ``rank``.
    """
    if trace_tol is not None and not 0 < trace_tol < 1:
        raise ValueError(f"`trace_tol` must be in (0, 1) or None, got {trace_tol!r}.")
    with compute_threads():
        return _rpcholesky(op, rank, seed, block_size, trace_tol)


def _rpcholesky(op: KernelOperator, rank: int, seed: int, block_size, trace_tol=None):
    n = op.n
    rank = min(int(rank), n)
    block = max(1, math.ceil(rank / 2)) if block_size is None else int(block_size)
    d = op.diagonal().to(torch.float64).clone().clamp_min_(0.0)
    trace0 = float(d.sum())
    device = d.device
    factor = torch.zeros(n, rank, dtype=torch.float64, device=device)
    pivots = torch.empty(rank, dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    k = 0
    floor = trace0 * max(n * torch.finfo(torch.float64).eps, trace_tol or 0.0)
    for _ in range(4 * rank + 8):  # each round accepts at least one pivot in exact arithmetic
        total = float(d.sum())
        if k >= rank or not total > floor:
            break
        # adaptive: rounds grow by a quarter of the pivots so far (few pivots past the target)
        size = block if trace_tol is None else min(block, max(8, k // 4))
        cand = torch.multinomial((d / total).cpu(), size, replacement=True, generator=gen)
        cand = torch.unique(cand)  # a repeated pivot would be rejected anyway
        cand = cand[torch.randperm(len(cand), generator=gen)]  # i.i.d. order for rejection
        cols = op.columns(cand).to(device, torch.float64)
        if not bool(torch.isfinite(cols).all()):
            raise ValueError("The kernel operator returned NaN or inf columns.")
        g = cols - factor[:, :k] @ factor[cand.to(device), :k].T  # residual columns
        sub = g[cand.to(device)].cpu().numpy().copy()  # residual submatrix (b x b)
        sub = (sub + sub.T) / 2
        accepted, chol = _rejection_cholesky(sub, d[cand.to(device)].cpu().numpy(), rank - k, rng)
        if not accepted:
            continue
        t = len(accepted)
        lower = torch.from_numpy(chol).to(device)
        new = torch.linalg.solve_triangular(lower, g[:, accepted].T, upper=False).T
        factor[:, k : k + t] = new
        pivots[k : k + t] = cand[accepted]
        d -= (new**2).sum(1)
        d.clamp_min_(0.0)
        d[cand[accepted].to(device)] = 0.0  # pivots are interpolated exactly
        k += t
    return factor[:, :k].contiguous(), pivots[:k]


def _rejection_cholesky(sub: np.ndarray, proposal: np.ndarray, most: int, rng):
    """Accepted indices T of a residual submatrix ``sub`` (candidate j accepted with
    probability sub_jj (after elimination of the earlier accepted) / proposal_j) and the
    lower Cholesky factor of sub[T, T]."""
    b = sub.shape[0]
    h = sub
    scale = max(float(np.max(np.diag(h))), 0.0)
    accepted: list[int] = []
    for j in range(b):
        pivot = h[j, j]
        if not pivot > 1e-14 * scale or rng.random() * proposal[j] > pivot:
            continue
        accepted.append(j)
        h[j:, j] /= math.sqrt(pivot)
        h[j + 1 :, j + 1 :] -= np.outer(h[j + 1 :, j], h[j + 1 :, j])
        if len(accepted) == most:
            break
    chol = np.tril(h[np.ix_(accepted, accepted)])
    return accepted, chol


def nystrom(op: KernelOperator, rank: int, *, seed: int = 0, workers: int = 1) -> Tensor:
    """Randomized Nystrom factor F (N x r) with F F^T = (K Omega)(Omega^T K Omega)^+ (K
    Omega)^T for an orthonormalised Gaussian Omega, stabilised by a shift nu = eps * ||K
    Omega|| (Frangella, Tropp, Udell 2023, Alg. 2.1). Costs one product K Omega."""
    n = op.n
    rank = min(int(rank), n)
    gen = torch.Generator().manual_seed(int(seed))
    omega = torch.randn(n, rank, generator=gen, dtype=torch.float64).to(op.device)
    omega, _ = torch.linalg.qr(omega)
    y = op.matmul(omega) if workers <= 1 else op.matmul(omega, workers=workers)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("The kernel operator returned NaN or inf in K @ Omega.")
    nu = math.sqrt(n) * torch.finfo(torch.float64).eps * float(torch.linalg.matrix_norm(y, 2))
    y = y + nu * omega
    core = omega.T @ y
    chol = torch.linalg.cholesky((core + core.T) / 2)
    b = torch.linalg.solve_triangular(chol, y.T, upper=False).T  # y chol^{-T}
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    lam = (s**2 - nu).clamp_min(0.0)
    return u * lam.sqrt()
