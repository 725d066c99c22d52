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

from widenets.predict import _skinny
from widenets.predict.operators import KernelOperator, compute_threads

#: RPCholesky's candidates per round when no ``block_size`` is given (at most the rank)
DEFAULT_BLOCK = 256


class LowRankPreconditioner:
    """v -> (F F^T + nu I)^{-1} v, nu = mu + shift, for a factor F (N x r), mu > 0 and
    shift >= 0, by the Woodbury identity

        (F F^T + nu I)^{-1} v = (v - F M^{-1} F^T v) / nu,    M = nu I + F^T F (r x r),

    with M^{-1} applied through its Cholesky factor (two triangular solves with the r
    columns of F^T v). Building it costs the Gram matrix F^T F (N r^2) and a Cholesky of
    M (r^3 / 3): no tall SVD, no N x r basis. M's eigenvalues are s^2 + nu >= nu, so every
    direction of F is kept and M is positive definite however F is conditioned. Rounding
    (the Gram matrix knows F^T F to about eps s_max^2) moves the eigenvalues of
    P^{-1} (K + mu I) by a relative amount of order eps s_max^2 / nu for factors with
    orthogonal or graded columns, as :func:`nystrom`'s and :func:`rpcholesky`'s
    (``tests/test_pcg.py`` checks them within 0.2 % up to s_max^2 / mu = 1e8 and 10 % at
    1e12); a factor with nearly dependent columns loses more (orthonormalise it first). If
    the Cholesky of M fails (s_max^2 / nu near 1 / eps), the thin SVD of F from the Gram
    matrix is used instead, without the directions the Gram cannot resolve.

    ``shift``: added to mu in the preconditioner only (the system stays K + mu I). K - F F^T
    is PSD with mean eigenvalue tr(K - F F^T) / N, which the low-rank part does not see;
    :func:`widenets.predict.pcg.make_preconditioner` passes that mean, which maps the bulk
    of those eigenvalues near 1 (cf. the shift lambda_r of Frangella, Tropp and Udell 2023,
    "Randomized Nystrom preconditioning"). ``mu`` stays the regulariser the solve checks.
    """

    def __init__(self, factor: Tensor, mu: float, *, name: str = "low-rank", shift: float = 0.0):
        if not mu > 0:
            raise ValueError(f"`mu` must be positive (the regulariser), got {mu!r}.")
        if not (shift >= 0 and math.isfinite(shift)):
            raise ValueError(f"`shift` must be a finite number >= 0, got {shift!r}.")
        # F^T (r x N) contiguous: no copy for rpcholesky's factor (a transposed view)
        self._ft = factor.to(torch.float64).T.contiguous()
        self.mu, self.shift, self.name = float(mu), float(shift), name
        self._nu = self.mu + self.shift
        self.rank, self.n = (int(s) for s in self._ft.shape)
        self._chol = self._core = None
        if self.rank:
            gram = _gram(self._ft)
            m = gram.clone()
            m.diagonal().add_(self._nu)
            chol, info = torch.linalg.cholesky_ex(m)
            if int(info) == 0:
                self._chol = chol
            else:
                self._orthonormal_basis(gram)
        # F^T v and F c by the skinny loops, both from F^T's rows (no row-major copy of F)
        self._skinny = bool(self.rank) and _skinny.fits(self._ft)

    def _orthonormal_basis(self, gram: Tensor) -> None:
        """Fallback when mu I + F^T F is numerically indefinite (s_max^2 / mu near 1 / eps):
        the thin SVD F = U S V^T from the Gram's eigendecomposition, directions with s^2
        below max(N eps s_max^2, nu / 1000) dropped (the Gram does not know them), U made
        orthonormal; then P^{-1} v = (v - U diag(s^2 / (s^2 + nu)) U^T v) / nu."""
        lam, vec = torch.linalg.eigh(gram)
        top = float(lam.max())
        keep = lam > max(top * self.n * torch.finfo(torch.float64).eps, self._nu * 1e-3)
        lam, vec = lam[keep], vec[:, keep]
        u_t = (vec * lam.rsqrt()).T @ self._ft  # U^T
        g_lam, g_vec = torch.linalg.eigh(u_t @ u_t.T)  # (U^T U)^{-1/2} U^T: orthonormal
        self._ft = ((g_vec * g_lam.rsqrt()) @ g_vec.T @ u_t).contiguous()
        self._core = (lam / (lam + self._nu))[:, None]
        self.rank = int(self._ft.shape[0])

    def __call__(self, v: Tensor) -> Tensor:
        if not self.rank:
            return v / self._nu
        if self._skinny and v.ndim == 2:
            return self._skinny_apply(v)
        c = self._ft @ v
        if self._chol is not None:
            # LAPACK returns it column-major: a product with it and F^T's transpose
            # took 5x the time of the contiguous one (MKL, 8,000 x 1,000 F, 10 columns)
            c = torch.cholesky_solve(c, self._chol).contiguous()
        else:
            c = self._core * c
        return torch.addmm(v, self._ft.T, c, alpha=-1.0).div_(self._nu)

    def _skinny_apply(self, v: Tensor) -> Tensor:
        """``__call__`` with both products by the skinny loops, from the rows of F^T: F^T v
        (``_skinny.matmul``) and F c (``_skinny.t_matmul``; N = 8,000, rank 750, R = 10,
        2 threads: 3.9 ms, as the loop on a row-major copy of F, 3.8 ms, which cost 0.035 s
        to make)."""
        c = _skinny.matmul(self._ft, v)
        if c is None:
            c = self._ft @ v
        if self._chol is not None:
            c = torch.cholesky_solve(c, self._chol)
        else:
            c = self._core * c
        fc = _skinny.t_matmul(self._ft, c)
        if fc is None:
            fc = self._ft.T @ c
        return torch.sub(v, fc).div_(self._nu)

    @property
    def factor(self) -> Tensor:
        """The N x rank basis it applies: F (a float64 view), or the orthonormal U of the
        fallback."""
        return self._ft.T

    def __repr__(self) -> str:
        shift = f", shift={self.shift:.3g}" if self.shift else ""
        return f"LowRankPreconditioner({self.name}, rank={self.rank}, mu={self.mu:.3g}{shift})"


def _gram(rows: Tensor, panel: int = 256) -> Tensor:
    """rows @ rows^T (r x r, symmetric), by panels of the lower triangle mirrored: half
    the products of the full matrix product."""
    r = rows.shape[0]
    gram = torch.empty(r, r, dtype=rows.dtype, device=rows.device)
    for s in range(0, r, panel):
        e = min(s + panel, r)
        gram[s:e, :e] = rows[s:e] @ rows[:e].T
    lower = gram.tril(-1)
    return lower + lower.T + torch.diag_embed(gram.diagonal())


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
        block_size: candidates per round (default min(r, 256)).
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
    block = min(rank, DEFAULT_BLOCK) if block_size is None else int(block_size)
    d = op.diagonal().to(torch.float64).clone().clamp_min_(0.0)
    trace0 = float(d.sum())
    device = d.device
    # F^T (r x N), row by row: every update below is a product of contiguous blocks
    rows = torch.empty(rank, n, dtype=torch.float64, device=device)
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
        on = cand.to(device)
        g = op.columns(cand).to(device, torch.float64).T.contiguous()  # K[cand, :]
        # the sum first: NaN and inf reach it (a full check only if it overflowed)
        if not bool(torch.isfinite(g.sum())) and not bool(torch.isfinite(g).all()):
            raise ValueError("The kernel operator returned NaN or inf columns.")
        # the residual submatrix (b x b) K[cand, cand] - F[cand] F[cand]^T decides which
        # candidates are accepted; the residual rows K[acc, :] - F[acc] F^T are then made
        # for the accepted only (N = 8,000, rank 750: 750 of 1,256 candidates)
        sub = g[:, on]
        if k:
            f_on = rows[:k, on]
            sub = torch.addmm(sub, f_on.T, f_on, alpha=-1.0)
        sub = sub.cpu().numpy()
        sub = (sub + sub.T) / 2
        accepted, chol = _rejection_cholesky(sub, d[on].cpu().numpy(), rank - k, rng)
        if not accepted:
            continue
        t = len(accepted)
        acc = torch.as_tensor(accepted, dtype=torch.long, device=device)
        g = g[acc]
        if k:
            g = torch.addmm(g, rows[:k, on[acc]].T, rows[:k], alpha=-1.0)
        lower = torch.from_numpy(chol).to(device)
        new = rows[k : k + t]  # t x N, written in place
        torch.linalg.solve_triangular(lower, g, upper=False, out=new)
        pivots[k : k + t] = cand[acc.cpu()]
        d -= torch.einsum("ij,ij->j", new, new)
        d.clamp_min_(0.0)
        d[on[acc]] = 0.0  # pivots are interpolated exactly
        k += t
    return rows[:k].T, pivots[:k]


def _rejection_cholesky(sub: np.ndarray, proposal: np.ndarray, most: int, rng):
    """Accepted indices T of a residual submatrix ``sub`` (candidate j accepted with
    probability (its residual diagonal after elimination of the earlier accepted) /
    proposal_j) and the lower Cholesky factor of sub[T, T]. Left-looking: the factor's
    columns are built only for accepted candidates (O(b t^2) for t accepted of b)."""
    b = sub.shape[0]
    most = min(most, b)
    w = np.zeros((b, most))  # w[:, i]: column i of the partial Cholesky factor
    resid = np.diag(sub).copy()  # residual diagonal after the accepted so far
    scale = max(float(np.max(resid)), 0.0)
    accepted: list[int] = []
    for j in range(b):
        pivot = resid[j]
        if not pivot > 1e-14 * scale or rng.random() * proposal[j] > pivot:
            continue
        t = len(accepted)
        col = (sub[:, j] - w[:, :t] @ w[j, :t]) / math.sqrt(pivot)
        w[:, t] = col
        resid -= col * col
        accepted.append(j)
        if len(accepted) == most:
            break
    chol = np.tril(w[accepted, : len(accepted)])
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
