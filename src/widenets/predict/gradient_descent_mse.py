"""Closed-form outputs of a linearised network trained by gradient flow on the MSE loss."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from widenets.numerics import is_reduced
from widenets.predict import _validation as v
from widenets.predict._linalg import (
    Spectrum,
    extreme_eigenvalues,
    regularize,
    warn_if_ill_conditioned,
)
from widenets.predict._momentum import check_momentum, damping, oscillator_growth_over_e


class GradientDescentMSEPredictor:
    """Outputs at time t of gradient flow on L = ||f(X_train) - y||^2 / (2 y.numel()).

    With Theta the regularised train-train kernel, eta the learning rate, n = y.numel()
    and E(t) = exp(-eta Theta t / n) (Lee et al. 2019, "Wide Neural Networks of Any Depth
    Evolve as Linear Models Under Gradient Descent", Sec. 2.2):

        f_train(t) = f_train(0) + (I - E(t)) (y - f_train(0)),
        f_test(t)  = f_test(0) + Theta_* Theta^{-1} (I - E(t)) (y - f_train(0)).

    With ``momentum`` m (heavy ball, in Neural Tangents' continuous-time limit, see
    ``widenets.predict._momentum``) each eigen-direction of Theta is instead a damped
    oscillator f'' + c f' = -Theta (f - y) / n in tau = sqrt(eta) t, c = (1 - m) / sqrt(eta),
    started at rest; I - E(t) is replaced by its closed-form growth and the t = inf limit
    is unchanged.

    Finite times are evaluated in the eigenbasis of Theta, computed once on first use; at
    t = inf the test outputs are a Cholesky solve when Theta is safely positive definite.

    Times ``t`` are a number >= 0, ``None`` or ``inf`` (converged), or a 1-D array of
    times; a vector adds a leading time axis to the outputs. At t = inf, Theta^{-1} is a
    pseudo-inverse that drops eigenvalues <= N * eps(float64) * max eigenvalue, so for a
    positive-definite kernel the test outputs equal kernel ridge regression
    f_test(0) + Theta_* (Theta + reg I)^{-1} (y - f_train(0)), and the train outputs
    equal y (the train dynamics use the regularised kernel, as in Neural Tangents; for
    the regularised fit on the training points call ``test`` with
    ``k_test_train=k_train_train``).
    """

    def __init__(
        self,
        k_train_train,
        y_train,
        *,
        learning_rate: float = 1.0,
        diag_reg: float = 0.0,
        diag_reg_absolute_scale: bool = False,
        momentum: float | None = None,
    ):
        k_dd = v.as_train_kernel(k_train_train)
        self.n_train = k_dd.shape[0]
        self.device = k_dd.device
        y = v.as_targets(y_train, self.n_train, device=self.device)
        self.learning_rate = v.check_scalar(learning_rate, "learning_rate", positive=True)
        diag_reg = v.check_scalar(diag_reg, "diag_reg", positive=False)
        self.momentum = check_momentum(momentum)
        self.dtype = v.result_dtype(k_dd, y)
        self.y_shape = tuple(y.shape)
        self._y = y.to(torch.float64).reshape(self.n_train, -1)
        self._rate = self.learning_rate / y.numel()
        self._n_outputs = y.numel()
        self._k_reg = regularize(k_dd, diag_reg, diag_reg_absolute_scale)
        self._spectrum = None
        self._cholesky = None
        # for the warning on a train kernel in reduced precision (``_check_conditioning``)
        self._kernel_dtype = k_dd.dtype
        self._diag_reg = (diag_reg, diag_reg_absolute_scale)
        self._mean_diag = float(k_dd.diagonal().to(torch.float64).mean())

    @property
    def spectrum(self) -> Spectrum:
        """Eigendecomposition of the regularised kernel, computed on first use (finite t)."""
        if self._spectrum is None:
            self._spectrum = Spectrum(self._k_reg)
        return self._spectrum

    def _growth_over_e(self, ts: Tensor) -> Tensor:
        """(T, N) eigenvalues of Theta^+ (I - E(t)) at times ``ts`` (steps)."""
        if self.momentum is None:
            return self.spectrum.growth_over_e(ts * self._rate)
        spec = self.spectrum
        c = damping(self.learning_rate, self.momentum)

        def finite(e: Tensor, tau: Tensor) -> Tensor:
            h = oscillator_growth_over_e(e[0], tau, c, self._n_outputs)
            return torch.where(spec._learned(e), h, torch.zeros_like(h))

        def inf(e: Tensor) -> Tensor:
            learned = spec._learned(e)
            return torch.where(learned, 1.0 / torch.where(learned, e, 1.0), torch.zeros_like(e))

        return spec._eval(ts * math.sqrt(self.learning_rate), finite, inf)

    def _growth(self, ts: Tensor) -> Tensor:
        """(T, N) eigenvalues of I - E(t) at times ``ts`` (steps)."""
        if self.momentum is None:
            return self.spectrum.growth(ts * self._rate)
        spec = self.spectrum
        g = self._growth_over_e(ts) * spec.evals[None, :]
        return torch.where(torch.isinf(ts)[:, None] & spec._learned(spec.evals)[None], 1.0, g)

    def _flow_scale(self, ts: Tensor) -> float:
        """Largest (I - E(t)) / e over e -> 0 at times ``ts``: lr t / n without momentum,
        min(tau / c, tau^2 / 2) / n with it (for the conditioning warning)."""
        t = float(ts.max())
        if self.momentum is None or math.isinf(t):
            return t * self._rate
        tau = t * math.sqrt(self.learning_rate)
        c = damping(self.learning_rate, self.momentum)
        return min(tau / c, tau * tau / 2) / self._n_outputs

    def _converged_solve(self, rhs: Tensor) -> Tensor | None:
        """Theta^{-1} rhs by Cholesky when Theta is safely positive definite, else None.

        "Safely": the factorisation succeeds and its smallest pivot squared is above the
        pseudo-inverse cutoff N eps max(diag), so no eigen-direction would be dropped.
        """
        if self._cholesky is None:
            k = self._k_reg.to(torch.float64)
            chol, info = torch.linalg.cholesky_ex(k)
            n = k.shape[0]
            cutoff = n * torch.finfo(torch.float64).eps * float(k.diagonal().max())
            ok = int(info) == 0 and float(chol.diagonal().min()) ** 2 > cutoff
            self._cholesky = chol if ok else False
        if self._cholesky is False:
            return None
        return torch.cholesky_solve(rhs, self._cholesky)

    def _check_conditioning(self, ts: Tensor, by_cholesky: bool) -> None:
        """ReducedPrecisionWarning if the train kernel is float32 (or half) and too
        ill-conditioned for test outputs at times ``ts`` (see ``warn_if_ill_conditioned``):
        estimated from the Cholesky factor at t = inf, else from the eigenvalues."""
        if not is_reduced(self._kernel_dtype):
            return
        tau = self._flow_scale(ts)
        if by_cholesky:
            lam_max, lam_min = extreme_eigenvalues(self._k_reg, self._cholesky)
        else:
            spec = self.spectrum
            kept = spec.evals[spec.evals > spec.cutoff]  # the pseudo-inverse drops the rest
            lam_max = float(spec.evals.max())
            lam_min = float(kept.min()) if len(kept) else lam_max
        reg, absolute = self._diag_reg
        warn_if_ill_conditioned(
            self._kernel_dtype,
            lam_max,
            lam_min,
            self._mean_diag,
            diag_reg=reg,
            absolute=absolute,
            tau=tau,
        )

    def _residual_in_eigenbasis(self, fx_train_0) -> tuple[Tensor, Tensor]:
        """f_train(0) as (N, O) and V^T (y - f_train(0))."""
        f0 = v.as_initial_outputs(fx_train_0, self.y_shape, "fx_train_0", device=self.device)
        f0 = f0.reshape(self._y.shape)
        return f0, self.spectrum.evecs.T @ (self._y - f0)

    def _finish(self, out: Tensor, shape: tuple[int, ...], is_vector: bool, dtype) -> Tensor:
        out = out.reshape((out.shape[0],) + shape).to(dtype)
        return out if is_vector else out[0]

    def train(self, t, fx_train_0=0.0) -> Tensor:
        """Train outputs f_train(t): shape ``y_train.shape`` (with a leading time axis if
        ``t`` is a vector)."""
        ts, is_vector = v.as_times(t)
        f0, r = self._residual_in_eigenbasis(fx_train_0)
        g = self._growth(ts)
        out = f0[None] + torch.einsum("ni,ti,io->tno", self.spectrum.evecs, g, r)
        return self._finish(out, self.y_shape, is_vector, self.dtype)

    def test(self, t, k_test_train, fx_train_0=0.0, fx_test_0=0.0) -> Tensor:
        """Test outputs f_test(t) for the (N_test, N) kernel ``k_test_train``: shape
        (N_test,) + ``y_train.shape[1:]`` (with a leading time axis if ``t`` is a vector)."""
        ts, is_vector = v.as_times(t)
        k_td = v.as_matrix(k_test_train, "k_test_train", device=self.device)
        v.check_test_train(k_td, self.n_train)
        shape = (k_td.shape[0],) + self.y_shape[1:]
        ft0 = v.as_initial_outputs(fx_test_0, shape, "fx_test_0", device=self.device)
        if bool(torch.isinf(ts).all()):
            f0 = v.as_initial_outputs(fx_train_0, self.y_shape, "fx_train_0", device=self.device)
            alpha = self._converged_solve(self._y - f0.reshape(self._y.shape))
            if alpha is not None:  # t = inf: kernel ridge regression by Cholesky
                self._check_conditioning(ts, by_cholesky=True)
                out = ft0.reshape(k_td.shape[0], -1) + k_td.to(torch.float64) @ alpha
                out = out[None].expand(ts.shape[0], *out.shape)
                dtype = self.dtype
                if k_td.is_floating_point():
                    dtype = torch.promote_types(dtype, k_td.dtype)
                return self._finish(out, shape, is_vector, dtype)
        _, r = self._residual_in_eigenbasis(fx_train_0)
        self._check_conditioning(ts, by_cholesky=False)
        h = self._growth_over_e(ts)
        kv = k_td.to(torch.float64) @ self.spectrum.evecs
        out = ft0.reshape(k_td.shape[0], -1)[None] + torch.einsum("mi,ti,io->tmo", kv, h, r)
        dtype = self.dtype
        if k_td.is_floating_point():
            dtype = torch.promote_types(dtype, k_td.dtype)
        return self._finish(out, shape, is_vector, dtype)

    def __call__(self, t, k_test_train=None, *, fx_train_0=0.0, fx_test_0=0.0) -> Tensor:
        """``test(t, k_test_train, ...)`` if ``k_test_train`` is given, else ``train(t, ...)``."""
        if k_test_train is None:
            return self.train(t, fx_train_0)
        return self.test(t, k_test_train, fx_train_0, fx_test_0)


def gradient_descent_mse(
    k_train_train,
    y_train,
    *,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    momentum: float | None = None,
) -> GradientDescentMSEPredictor:
    """Predictor of a wide network's outputs under gradient flow on the MSE loss.

    f_train(t) - y = exp(-eta Theta t / n) (f_train(0) - y), n = y_train.numel(), and
    f_test(t) = f_test(0) + Theta_* Theta^{-1} (I - exp(-eta Theta t / n)) (y - f_train(0))
    (Lee et al. 2019, Sec. 2.2), with Theta = k_train_train + diag_reg * mean(diag) * I.

    Args:
        k_train_train: (N, N) train-train kernel Theta (NTK for a trained network, NNGP for
            training only the readout), torch tensor or numpy array.
        y_train: (N,) or (N, O) targets.
        learning_rate: eta > 0 (continuous-time gradient flow, so no stability limit).
        diag_reg: non-negative diagonal regulariser, relative to mean(diag(k_train_train))
            unless ``diag_reg_absolute_scale``.
        diag_reg_absolute_scale: treat ``diag_reg`` as absolute.
        momentum: None (gradient flow), or heavy-ball momentum m in [0, 1) in Neural
            Tangents' continuous-time limit: f'' + c f' = -Theta (f - y) / n with
            c = (1 - m) / sqrt(eta), in time tau = sqrt(eta) t (so eta and t no longer
            enter only as their product), started at rest; solved in closed form per
            eigen-direction. m = 0 is not the same as None (it keeps the inertia term).

    Returns:
        A :class:`GradientDescentMSEPredictor`; call it as
        ``pred(t, k_test_train=None, *, fx_train_0=0., fx_test_0=0.)`` or use
        ``pred.train`` / ``pred.test``.
    """
    return GradientDescentMSEPredictor(
        k_train_train,
        y_train,
        learning_rate=learning_rate,
        diag_reg=diag_reg,
        diag_reg_absolute_scale=diag_reg_absolute_scale,
        momentum=momentum,
    )
