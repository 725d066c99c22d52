"""Large-N kernel predictions by preconditioned conjugate gradients, without factorising K.

Solves (K + mu I) A = Y, mu = diag_reg * mean(diag K) (Neural Tangents' convention; or
mu = diag_reg with ``diag_reg_absolute_scale``), for all columns of Y at once by block CG:
one product with K per iteration serves every column (one per class), and all columns
share one Krylov space (Y's columns may be linearly dependent, e.g. centred one-hot
targets: the dependent directions are dropped). K is a
:class:`~widenets.predict.operators.KernelOperator`, so it can be a tensor in memory,
tiles read from disk, or tiles recomputed from the network.

Then K_test,train A is
- the NNGP posterior mean (:func:`gp_mean_pcg`, as ``gp_inference``), or
- the NTK gradient-flow prediction at t = inf (:func:`gradient_descent_mse_pcg`, as
  ``gradient_descent_mse(...)(None, k_test_train)``), with Y = y - f_train(0) and f_test(0)
  added back.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from widenets.predict import _skinny, _skinny_upper
from widenets.predict import _validation as v
from widenets.predict._linalg import _user_stacklevel
from widenets.predict.operators import (
    DenseKernel,
    KernelOperator,
    as_operator,
    compute_threads,
)
from widenets.predict.preconditioners import LowRankPreconditioner, nystrom, rpcholesky

#: the preconditioner's rank when none is given: min(N, this)
DEFAULT_RANK = 1000
_PRECONDITIONERS = ("rpcholesky", "nystrom", None)
_ON_NO_CONVERGENCE = ("raise", "warn")
#: restarts from the true residual when the recursive one has drifted below tol
_MAX_RESTARTS = 3
#: a float64 kernel in memory (``DenseKernel`` of a tensor) with ``tol`` at least this: the
#: first pass of CG multiplies by a float32 copy of K (made during its first product),
#: reading half the bytes; the final residual is checked with K itself, and if it is above
#: tol CG restarts from it with K itself (set to 1 to never use the copy)
FLOAT32_TOL = 1e-4
#: largest float32 copy of K made for that (bytes)
FLOAT32_COPY_BYTES = 2 * 2**30


class ConvergenceError(RuntimeError):
    """PCG did not reach the tolerance within ``max_iter`` iterations; ``.result`` holds
    the last iterate and its residuals."""

    def __init__(self, message: str, result: PCGResult):
        super().__init__(message)
        self.result = result


class ConvergenceWarning(RuntimeWarning):
    """PCG did not reach the tolerance (``on_no_convergence="warn"``): the iterate is
    returned with ``converged=False``."""


@dataclass(frozen=True, eq=False)
class PCGResult:
    """Solution of (K + mu I) A = Y by PCG.

    Attributes:
        solution: A, shape (N, R) float64.
        iterations: CG iterations (products with K, not counting the final residual check).
        residual: max over columns of ||Y_j - (K + mu I) A_j|| / ||Y_j||, recomputed from A
            at the end (not the recursive estimate).
        column_residuals: the same per column, shape (R,).
        converged: residual <= tol.
        tol: the tolerance asked for.
        mu: the absolute regulariser added to the diagonal.
        preconditioner: its name, or None.
        rank: the preconditioner's rank (0 without one).
        history: the recursive max relative residual after each iteration (index 0: start).
        setup_seconds: time to build the preconditioner; solve_seconds: time of the CG loop.
    """

    solution: Tensor
    iterations: int
    residual: float
    column_residuals: Tensor
    converged: bool
    tol: float
    mu: float
    preconditioner: str | None
    rank: int
    history: tuple[float, ...] = field(repr=False)
    setup_seconds: float = 0.0
    solve_seconds: float = 0.0


@dataclass(frozen=True, eq=False)
class PCGPrediction:
    """A prediction K_test,train A (+ offsets) and the solve behind it.

    Attributes:
        prediction: shape (N_test,) + y_train.shape[1:].
        solve: the :class:`PCGResult` (iterations, residual, ...).
    """

    prediction: Tensor
    solve: PCGResult

    @property
    def iterations(self) -> int:
        return self.solve.iterations

    @property
    def residual(self) -> float:
        return self.solve.residual


def _check_tol(tol) -> float:
    t = v.check_scalar(tol, "tol", positive=True)
    if t >= 1:
        raise ValueError(f"`tol` must be a relative residual in (0, 1), got {tol!r}.")
    return t


def _check_choice(value, name: str, choices) -> None:
    if not any(value is c or value == c for c in choices):
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def pcg_solve(
    k_train_train,
    y,
    *,
    diag_reg: float,
    diag_reg_absolute_scale: bool = False,
    tol: float = 1e-8,
    max_iter: int = 500,
    preconditioner: str | LowRankPreconditioner | None = "rpcholesky",
    rank: int | None = None,
    rank_tol: float | None = None,
    seed: int = 0,
    on_no_convergence: str = "raise",
) -> PCGResult:
    """Solve (K + mu I) A = Y for all columns of Y by preconditioned CG.

    mu = diag_reg * mean(diag K), or diag_reg with ``diag_reg_absolute_scale``. Each column
    stops when its relative residual ||Y_j - (K + mu I) A_j|| / ||Y_j|| <= ``tol``; at the
    end the residual is recomputed from A (one more product with K) and CG restarts from it
    if rounding made the recursive estimate optimistic.

    Args:
        k_train_train: the (N, N) kernel: a :class:`KernelOperator` (``DenseKernel``,
            ``NetworkKernel``, ``RowFunctionKernel``) or a tensor / array.
        y: (N,) or (N, R) right-hand sides.
        diag_reg: > 0, relative to mean(diag K) unless ``diag_reg_absolute_scale``.
        tol: relative residual to reach, in (0, 1).
        max_iter: most CG iterations.
        preconditioner: "rpcholesky" (randomly pivoted Cholesky, default), "nystrom", None
            (plain CG), or a :class:`LowRankPreconditioner` built before (to reuse it).
        rank: rank of the preconditioner (default min(N, 1000)).
        rank_tol: adaptive rank ("rpcholesky"): stop adding pivots once the residual trace
            tr(K - F F^T) <= ``rank_tol`` * tr(K) (``rank``: the most); None: ``rank``.
        seed: seed of the preconditioner's random sampling.
        on_no_convergence: "raise" (a :class:`ConvergenceError`) or "warn" (a
            :class:`ConvergenceWarning` and the iterate, ``converged=False``).

    Returns:
        A :class:`PCGResult`.
    """
    with compute_threads() as workers:
        return _pcg_solve(
            k_train_train,
            y,
            diag_reg=diag_reg,
            diag_reg_absolute_scale=diag_reg_absolute_scale,
            tol=tol,
            max_iter=max_iter,
            preconditioner=preconditioner,
            rank=rank,
            rank_tol=rank_tol,
            seed=seed,
            on_no_convergence=on_no_convergence,
            workers=workers,
        )


def _matmul(op: KernelOperator, v: Tensor, workers: int) -> Tensor:
    return op.matmul(v) if workers <= 1 else op.matmul(v, workers=workers)


def _pcg_solve(
    k_train_train,
    y,
    *,
    diag_reg,
    diag_reg_absolute_scale,
    tol,
    max_iter,
    preconditioner,
    rank,
    seed,
    on_no_convergence,
    workers,
    rank_tol=None,
) -> PCGResult:
    op = as_operator(k_train_train, "k_train_train", square=True)
    n = op.n
    diag_reg = v.check_scalar(diag_reg, "diag_reg", positive=False)
    if diag_reg == 0:
        raise ValueError(
            "`diag_reg` must be > 0 for PCG (it solves K + diag_reg * mean(diag K) * I, which "
            "must be positive definite), got 0; use gp_inference / gradient_descent_mse for "
            "an unregularised dense solve."
        )
    tol = _check_tol(tol)
    max_iter = _check_count(max_iter, "max_iter")
    _check_choice(on_no_convergence, "on_no_convergence", _ON_NO_CONVERGENCE)
    if not isinstance(preconditioner, LowRankPreconditioner):
        _check_choice(preconditioner, "preconditioner", _PRECONDITIONERS)
    if rank is not None:
        rank = _check_count(rank, "rank")
    if rank_tol is not None:
        rank_tol = v.check_scalar(rank_tol, "rank_tol", positive=True)
        if not rank_tol < 1 or preconditioner != "rpcholesky":
            raise ValueError(
                "`rank_tol` must be in (0, 1) with preconditioner='rpcholesky', got "
                f"{rank_tol!r} with {preconditioner!r}."
            )
    seed = _check_count(seed, "seed", minimum=0)
    y_t = v.as_targets(y, n, device=op.device, name="y")
    rhs = y_t.to(torch.float64).reshape(n, -1)

    diag = op.diagonal()
    if not bool(torch.isfinite(diag).all()) or float(diag.min()) < 0:
        raise ValueError("`k_train_train` has a NaN, inf or negative diagonal entry.")
    mu = diag_reg if diag_reg_absolute_scale else diag_reg * float(diag.mean())
    if not mu > 0:
        raise ValueError(
            f"The regulariser diag_reg * mean(diag K) is {mu:.3g}: the kernel's diagonal is "
            "zero; pass diag_reg_absolute_scale=True with a positive diag_reg."
        )

    start = time.perf_counter()
    if isinstance(preconditioner, LowRankPreconditioner):
        precond = preconditioner
        if precond.n != n:
            raise ValueError(
                f"`preconditioner` was built for N = {precond.n}, the kernel has N = {n}."
            )
        if not math.isclose(precond.mu, mu, rel_tol=1e-12):
            raise ValueError(
                f"`preconditioner` was built for mu = {precond.mu:.6g}, this solve has "
                f"mu = {mu:.6g} (diag_reg {diag_reg:g}); build it with the same regulariser."
            )
    else:
        precond = make_preconditioner(
            op,
            mu,
            preconditioner,
            rank=rank,
            seed=seed,
            workers=workers,
            rank_tol=rank_tol,
            trace=float(diag.sum()),
        )
    setup = time.perf_counter() - start

    start = time.perf_counter()
    with _skinny.torch_serial() if op.skinny_products() else nullcontext():
        fast = _Float32Copy.for_solve(op, tol)
        x, iters, history, col_res = _cg(op, mu, rhs, precond, tol, max_iter, workers, fast)
    solve = time.perf_counter() - start
    residual = float(col_res.max()) if len(col_res) else 0.0
    result = PCGResult(
        solution=x,
        iterations=iters,
        residual=residual,
        column_residuals=col_res,
        converged=residual <= tol,
        tol=tol,
        mu=mu,
        preconditioner=None if precond is None else precond.name,
        rank=0 if precond is None else precond.rank,
        history=tuple(history),
        setup_seconds=setup,
        solve_seconds=solve,
    )
    if not result.converged:
        message = (
            f"PCG did not converge: relative residual {residual:.3g} after {iters} iterations "
            f"(max_iter={max_iter}), above tol={tol:.3g}. Raise max_iter, the preconditioner's "
            "rank or diag_reg, or pass on_no_convergence='warn' to get the iterate."
        )
        if on_no_convergence == "raise":
            raise ConvergenceError(message, result)
        warnings.warn(ConvergenceWarning(message), stacklevel=_user_stacklevel())
    return result


def make_preconditioner(
    op: KernelOperator,
    mu: float,
    kind: str | None = "rpcholesky",
    *,
    rank: int | None = None,
    rank_tol: float | None = None,
    seed: int = 0,
    workers: int = 1,
    trace: float | None = None,
) -> LowRankPreconditioner | None:
    """The preconditioner F F^T + (mu + shift) I of ``kind`` ("rpcholesky", "nystrom" or
    None) with rank min(N, ``rank`` or 1000), for the absolute regulariser ``mu``; with
    ``rank_tol`` (RPCholesky only) the rank is the fewest pivots whose residual trace
    tr(K - F F^T) is at most ``rank_tol`` * tr(K), ``rank`` at most.

    shift = tr(K - F F^T) / N, the mean variance F F^T leaves out (``trace``: tr(K), read
    from the diagonal if not given): fewer iterations than shift 0 (block CG, MNIST-1D
    N = 8,000, 10 classes, tol 1e-3: diag_reg 1e-2, rank 500 / 750: 22 / 18 against 25 /
    20; diag_reg 1e-3: 28 / 23 against 38 / 31; docs/large_n.md)."""
    if kind is None:
        return None
    r = min(op.n, DEFAULT_RANK if rank is None else rank)
    if kind == "rpcholesky":
        factor, _ = rpcholesky(op, r, seed=seed, trace_tol=rank_tol)
    else:
        factor = nystrom(op, r, seed=seed, workers=workers)
    if trace is None:
        trace = float(op.diagonal().sum())
    captured = float(torch.linalg.vector_norm(factor)) ** 2  # tr(F F^T)
    shift = max(0.0, trace - captured) / op.n
    return LowRankPreconditioner(factor, mu, name=kind, shift=shift)


def _check_count(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {what}, got {value!r}.")
    return value


class _Float32Copy:
    """Products with a float32 copy of a float64 ``DenseKernel``'s tensor (see
    :data:`FLOAT32_TOL`), the copy written by the first product.

    When the tensor passes :func:`widenets.predict._skinny_upper.looks_symmetric` (a
    sampled check: a square operator is a symmetric kernel by contract, and a kernel from
    the library is exactly symmetric), the copy holds its upper triangle only and every
    product reads that triangle alone (:func:`widenets.predict._skinny_upper.matmul`): the
    first from K itself (float64 sums), the others from the copy with float32 sums. Else
    (or with ``UPPER = False``) the whole copy and :func:`widenets.predict._skinny.matmul`.
    Either way the pass's result is checked with the whole of K itself (the final
    residual), so a symmetry the check missed costs iterations, never accuracy."""

    #: take the upper triangle where the kernel looks symmetric
    UPPER = True

    def __init__(self, k: Tensor, upper: bool = False):
        self.k, self.k32, self.upper = k, None, upper

    @classmethod
    def for_solve(cls, op: KernelOperator, tol: float):
        if not (tol >= FLOAT32_TOL and isinstance(op, DenseKernel) and op.skinny_products()):
            return None
        k = op.k
        if k.dtype != torch.float64 or k.numel() * 4 > FLOAT32_COPY_BYTES:
            return None
        return cls(k, upper=cls.UPPER and _skinny_upper.looks_symmetric(k))

    def __call__(self, p: Tensor, workers: int) -> Tensor | None:
        n_threads = None if workers <= 1 else workers
        if self.upper:
            if self.k32 is not None:
                return _skinny_upper.matmul(self.k32, p, n_threads, sums=torch.float32)
            k32 = torch.empty(self.k.shape, dtype=torch.float32)  # lower part never touched
            out = _skinny_upper.matmul(self.k, p, n_threads, cast=k32)
        elif self.k32 is not None:
            return _skinny.matmul(self.k32, p, n_threads)
        else:
            k32 = torch.empty(self.k.shape, dtype=torch.float32)
            out = _skinny.matmul(self.k, p, n_threads, cast=k32)
        if out is not None:
            self.k32 = k32
        return out


#: block CG: a search direction whose squared singular value, among the residual's
#: preconditioned columns scaled to unit norm, is below this times the largest is dropped
#: (the columns are linearly dependent: centred one-hot targets, equal or zero columns)
_DROP = 1e-10


def _basis(w: Tensor) -> Tensor:
    """An orthonormal basis of the span of w's columns (N x s, s <= R), its nearly
    dependent directions dropped: the columns are scaled to unit norm (zero columns
    removed), then twice W <- W V diag(lam)^(-1/2) from the eigendecomposition W^T W =
    V diag(lam) V^T, keeping lam > _DROP * max(lam) (the second pass restores the
    orthogonality the first loses to rounding, about eps / lam_kept)."""
    norms = w.norm(dim=0)
    nonzero = norms > 0
    if not bool(nonzero.all()):
        w, norms = w[:, nonzero], norms[nonzero]
    if not w.shape[1]:
        return w
    w = w / norms
    for _ in range(2):
        lam, vec = torch.linalg.eigh(w.T @ w)
        keep = lam > _DROP * lam[-1]
        w = w @ (vec[:, keep] * lam[keep].rsqrt())
    return w


def _cg(
    op: KernelOperator,
    mu: float,
    b: Tensor,
    precond,
    tol: float,
    max_iter: int,
    workers,
    fast: _Float32Copy | None = None,
):
    """Block PCG on (K + mu I) X = B: (X, iterations, history, true residuals).

    All columns share one block Krylov space (O'Leary 1980), in the breakdown-free form of
    Ji and Li (2017): the search block P is an orthonormal basis of M R + P_prev beta (M
    the preconditioner), with dependent directions dropped (:func:`_basis`), so linearly
    dependent right-hand sides (centred one-hot targets: rank R - 1) do not break it. Each
    step: Q = (K + mu I) P, X += P a, R -= Q a with a = (P^T Q)^{-1} P^T R (every column's
    error minimal in the (K + mu I)-norm over the directions so far), then beta =
    -(P^T Q)^{-1} Q^T M R. One product with K per iteration, as column-wise CG, with
    fewer iterations (N = 8,000 MNIST-1D, 10 classes, rank 750 unshifted, tol 1e-3: 20
    against 22).
    Stops when every column's relative residual is at most ``tol``. ``fast``: products for
    the first pass (then the true residual and any restart with ``op``)."""
    n, r_cols = b.shape

    def apply(p: Tensor, exact: bool = False) -> Tensor:
        q = None if exact or fast is None else fast(p, workers)
        if q is None:
            q = _matmul(op, p, workers)
        if not bool(torch.isfinite(q.sum())) and not bool(torch.isfinite(q).all()):
            raise ValueError("The kernel operator returned NaN or inf in a product K @ v.")
        return q.add_(p, alpha=mu)

    def prec(r: Tensor) -> Tensor:
        return r.clone() if precond is None else precond(r)

    bnorm = b.norm(dim=0)
    safe = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    x = torch.zeros_like(b)
    res = b.clone()
    rel = res.norm(dim=0) / safe
    history = [float(rel.max())] if r_cols else [0.0]
    iters = 0
    for _ in range(_MAX_RESTARTS + 1):
        p = _basis(prec(res)) if bool((rel > tol).any()) else res[:, :0]
        while p.shape[1] and iters < max_iter:
            q = apply(p)
            pq = p.T @ q
            chol, info = torch.linalg.cholesky_ex((pq + pq.T) / 2)
            if int(info):
                raise ValueError(
                    "K + mu I is not positive definite along a CG direction (least "
                    "eigenvalue of P^T (K + mu I) P "
                    f"{float(torch.linalg.eigvalsh((pq + pq.T) / 2)[0]):.3g}): the kernel "
                    "is not PSD; pass a larger diag_reg."
                )
            a = torch.cholesky_solve(p.T @ res, chol)
            x.addmm_(p, a)
            res.addmm_(q, a, alpha=-1.0)
            rel = res.norm(dim=0) / safe
            iters += 1
            history.append(float(rel.max()))
            if not bool((rel > tol).any()):
                break
            z = prec(res)
            beta = torch.cholesky_solve(q.T @ z, chol)
            p = _basis(z.addmm_(p, beta, alpha=-1.0))
        res = b - apply(x, exact=True) if r_cols else res  # the true residual
        fast = None  # restarts multiply by K itself
        rel = res.norm(dim=0) / safe
        if not bool((rel > tol).any()) or iters >= max_iter:
            break
    return x, iters, history, rel


def _prediction_inputs(k_train_train, y_train, k_test_train, name_test="k_test_train"):
    op = as_operator(k_train_train, "k_train_train", square=True)
    y = v.as_targets(y_train, op.n, device=op.device)
    test = None
    if k_test_train is not None:
        test = as_operator(k_test_train, name_test, square=False)
        if test.n != op.n:
            raise ValueError(
                f"`{name_test}` must have shape (N_test, {op.n}) to match `k_train_train`, "
                f"got {test.shape}."
            )
    return op, y, test


def gp_mean_pcg(
    k_train_train,
    y_train,
    k_test_train=None,
    *,
    diag_reg: float,
    diag_reg_absolute_scale: bool = False,
    tol: float = 1e-8,
    max_iter: int = 500,
    preconditioner: str | LowRankPreconditioner | None = "rpcholesky",
    rank: int | None = None,
    rank_tol: float | None = None,
    seed: int = 0,
    on_no_convergence: str = "raise",
) -> PCGPrediction:
    """NNGP posterior mean K_* (K + mu I)^{-1} y by PCG (``gp_inference``'s mean).

    ``k_test_train`` (N_test, N): a :class:`KernelOperator` (e.g. ``NetworkKernel(net,
    x_test, x_train)`` or ``RowFunctionKernel``), tensor or array; None: the training points
    (K_* = K, un-regularised). Other arguments as :func:`pcg_solve`.

    Returns:
        :class:`PCGPrediction`: ``prediction`` of shape (N_test,) + y_train.shape[1:],
        ``solve`` with iterations and the final relative residual.
    """
    op, y, test = _prediction_inputs(k_train_train, y_train, k_test_train)
    with compute_threads() as workers:
        solve = _pcg_solve(
            op,
            y,
            diag_reg=diag_reg,
            diag_reg_absolute_scale=diag_reg_absolute_scale,
            tol=tol,
            max_iter=max_iter,
            preconditioner=preconditioner,
            rank=rank,
            rank_tol=rank_tol,
            seed=seed,
            on_no_convergence=on_no_convergence,
            workers=workers,
        )
        k_star = op if test is None else test
        mean = _matmul(k_star, solve.solution, workers)
    return PCGPrediction(mean.reshape((k_star.shape[0],) + tuple(y.shape[1:])), solve)


def gradient_descent_mse_pcg(
    k_train_train,
    y_train,
    k_test_train,
    *,
    fx_train_0=0.0,
    fx_test_0=0.0,
    diag_reg: float,
    diag_reg_absolute_scale: bool = False,
    tol: float = 1e-8,
    max_iter: int = 500,
    preconditioner: str | LowRankPreconditioner | None = "rpcholesky",
    rank: int | None = None,
    rank_tol: float | None = None,
    seed: int = 0,
    on_no_convergence: str = "raise",
) -> PCGPrediction:
    """Test outputs at t = inf of gradient flow on the MSE loss, by PCG:

        f_test(inf) = f_test(0) + Theta_* (Theta + mu I)^{-1} (y - f_train(0)),

    which is ``gradient_descent_mse(Theta, y, diag_reg=...)(None, Theta_*, fx_train_0=...,
    fx_test_0=...)`` (the learning rate does not matter at t = inf; the train outputs there
    are y itself, so ``k_test_train`` is required). Arguments as :func:`gp_mean_pcg`;
    ``fx_train_0`` / ``fx_test_0``: the network's outputs at initialisation (scalars or
    broadcastable to y_train's / the prediction's shape), 0 for the mean over
    initialisations.
    """
    if k_test_train is None:
        raise ValueError(
            "`k_test_train` is required: at t = inf the train outputs are y_train itself "
            "(the regularised dynamics fit them exactly)."
        )
    op, y, test = _prediction_inputs(k_train_train, y_train, k_test_train)
    f0 = v.as_initial_outputs(fx_train_0, tuple(y.shape), "fx_train_0", device=op.device)
    out_shape = (test.shape[0],) + tuple(y.shape[1:])
    ft0 = v.as_initial_outputs(fx_test_0, out_shape, "fx_test_0", device=op.device)
    with compute_threads() as workers:
        solve = _pcg_solve(
            op,
            y.to(torch.float64) - f0,
            diag_reg=diag_reg,
            diag_reg_absolute_scale=diag_reg_absolute_scale,
            tol=tol,
            max_iter=max_iter,
            preconditioner=preconditioner,
            rank=rank,
            rank_tol=rank_tol,
            seed=seed,
            on_no_convergence=on_no_convergence,
            workers=workers,
        )
        out = ft0.reshape(test.shape[0], -1) + _matmul(test, solve.solution, workers)
    return PCGPrediction(out.reshape(out_shape), solve)
