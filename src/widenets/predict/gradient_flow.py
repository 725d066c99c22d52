"""Outputs of a linearised network trained by gradient flow on any differentiable loss.

In function space the linearised network evolves as (Lee et al. 2019, eq. 4)

    d f(X)/dt = -lr Theta(X, X) dL/df(X),      d f(x)/dt = -lr Theta(x, X) dL/df(X),

with t counting steps at learning rate ``lr``. Both are integrals of one quantity,
G(t) = int_0^t dL/df(X(s)) ds: f(X, t) = f(X, 0) - lr Theta G(t) and f(x, t) = f(x, 0) -
lr Theta(x, X) G(t), so the ODE is solved for G alone (``scipy.integrate.solve_ivp``) and
test outputs cost one matrix product per time. For L = ||f - y||^2 / (2 y.numel()) this is
``gradient_descent_mse``'s closed form. As Neural Tangents' ``predict.gradient_descent``.

With heavy-ball ``momentum`` m the flow is second order (``widenets.predict._momentum``):
f'' + c f' = -Theta dL/df in tau = sqrt(lr) t, c = (1 - m) / sqrt(lr), from rest; then
G'' + c G' = dL/df(X(tau)), G(0) = G'(0) = 0, gives f(X) = f(X, 0) - Theta G and
f(x) = f(x, 0) - Theta(x, X) G, and the ODE is solved for (G, G').
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from widenets.predict import _validation as v
from widenets.predict._momentum import check_momentum, damping


def cross_entropy(fx: Tensor, y: Tensor) -> Tensor:
    """Mean over examples of -sum_k y_k log softmax(f)_k (y one-hot or probabilities)."""
    return -(y * torch.log_softmax(fx, dim=-1)).sum(-1).mean()


def mse(fx: Tensor, y: Tensor) -> Tensor:
    """||f - y||^2 / (2 y.numel()), the loss of ``gradient_descent_mse``."""
    return 0.5 * ((fx - y) ** 2).mean()


class GradientDescentPredictor:
    """``pred(t, k_test_train=None, *, fx_train_0=0., fx_test_0=0.)``: outputs at times t
    (a number >= 0 or a 1-D array, which adds a leading time axis); the train outputs, or
    (train, test) when ``k_test_train`` (N_test, N_train) is given."""

    def __init__(
        self, loss, k_train_train, y_train, *, learning_rate, rtol, atol, method, momentum=None
    ):
        if not callable(loss):
            raise TypeError(f"`loss` must be a callable loss(fx, y) -> scalar, got {loss!r}.")
        self.loss = loss
        k = v.as_train_kernel(k_train_train)
        self.n_train = k.shape[0]
        y = v.as_targets(y_train, self.n_train, device=k.device)
        self.learning_rate = v.check_scalar(learning_rate, "learning_rate", positive=True)
        self.momentum = check_momentum(momentum)
        self.rtol = v.check_scalar(rtol, "rtol", positive=True)
        self.atol = v.check_scalar(atol, "atol", positive=True)
        if not isinstance(method, str):
            raise TypeError(f"`method` must be a solve_ivp method name, got {method!r}.")
        self.method = method
        self.dtype = v.result_dtype(k, y)
        self.device = k.device
        self.y_shape = tuple(y.shape)
        self._k = k.to("cpu", torch.float64)
        self._y = y.to("cpu", torch.float64)
        self._check_loss()

    def _check_loss(self):
        g = self._grad(torch.zeros(self.y_shape, dtype=torch.float64))
        if g.shape != self.y_shape:
            raise ValueError(f"`loss` must return a scalar of fx and y, got a gradient {g.shape}.")

    def _grad(self, fx: Tensor) -> Tensor:
        """dL/df at outputs ``fx`` (N,) or (N, O), float64."""
        with torch.enable_grad():
            fx = fx.detach().requires_grad_(True)
            value = self.loss(fx, self._y)
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise ValueError(f"`loss` must return a scalar tensor, got {value!r}.")
            (g,) = torch.autograd.grad(value.reshape(()), fx, allow_unused=True)
        return torch.zeros_like(fx) if g is None else g.detach()

    def _flow(self, times: Tensor, f0: Tensor) -> Tensor:
        """G(t) = int_0^t dL/df ds at each of ``times``, shape (T, N, ...); with momentum
        the G of the module docstring at tau = sqrt(lr) t."""
        shape, size = f0.shape, f0.numel()
        k = self._k.numpy()
        # f = f0 - scale Theta G: scale lr for gradient flow (t in steps), 1 with momentum
        scale = self.learning_rate if self.momentum is None else 1.0

        def gradient(g_flat):
            g = torch.from_numpy(k @ g_flat.reshape(self.n_train, -1)).reshape(shape)
            value = self._grad(f0 - scale * g).reshape(-1).numpy()
            if not np.isfinite(value).all():
                raise ValueError("`loss` has a NaN or inf gradient along the trajectory.")
            return value

        if self.momentum is None:
            state0 = np.zeros(size)

            def rhs(_, g_flat):  # G' = dL/df
                return gradient(g_flat)

        else:
            state0 = np.zeros(2 * size)
            c = damping(self.learning_rate, self.momentum)
            times = times * math.sqrt(self.learning_rate)  # steps -> tau

            def rhs(_, state):  # (G, G')' = (G', dL/df - c G')
                velocity = state[size:]
                return np.concatenate([velocity, gradient(state[:size]) - c * velocity])

        order = torch.argsort(times)
        ts = times[order].numpy()
        out = torch.zeros((len(ts), *shape), dtype=torch.float64)
        positive = ts > 0
        if positive.any():
            sol = solve_ivp(
                rhs, (0.0, float(ts[-1])), state0, method=self.method,
                t_eval=ts[positive], rtol=self.rtol, atol=self.atol,
            )  # fmt: skip
            if not sol.success:
                raise RuntimeError(f"the gradient-flow ODE solver failed: {sol.message}")
            g = sol.y[:size].T.copy()
            out[torch.from_numpy(positive)] = torch.from_numpy(g).reshape(-1, *shape)
        result = torch.empty_like(out)
        result[order] = out
        return result

    def __call__(self, t, k_test_train=None, *, fx_train_0=0.0, fx_test_0=0.0):
        times, is_vector = v.as_times(t)
        if torch.isinf(times).any():
            raise ValueError(
                "`t` must be finite for a general loss (gradient flow on it need not "
                f"converge), got {t!r}; use gradient_descent_mse for t = inf on MSE."
            )
        f0 = v.as_initial_outputs(fx_train_0, self.y_shape, "fx_train_0", device="cpu")
        f0 = f0.to(torch.float64)
        g = self._flow(times, f0)  # (T, N, ...)
        lr = self.learning_rate if self.momentum is None else 1.0
        g2 = g.reshape(len(times), self.n_train, -1)
        train = f0 - lr * torch.einsum("ij,tjo->tio", self._k, g2).reshape(g.shape)
        train = self._finish(train, is_vector)
        if k_test_train is None:
            return train
        kt = v.as_matrix(k_test_train, "k_test_train")
        v.check_test_train(kt, self.n_train)
        shape = (kt.shape[0], *self.y_shape[1:])
        ft0 = v.as_initial_outputs(fx_test_0, shape, "fx_test_0", device="cpu").to(torch.float64)
        kt64 = kt.to("cpu", torch.float64)
        test = ft0 - lr * torch.einsum("ij,tjo->tio", kt64, g2).reshape(len(times), *shape)
        return train, self._finish(test, is_vector)

    def _finish(self, out: Tensor, is_vector: bool) -> Tensor:
        out = out if is_vector else out[0]
        return out.to(self.device, self.dtype)


def gradient_descent(
    loss: Callable[[Tensor, Tensor], Tensor],
    k_train_train,
    y_train,
    learning_rate: float = 1.0,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    method: str = "DOP853",
    momentum: float | None = None,
) -> GradientDescentPredictor:
    """Gradient flow of the linearised network on ``loss(fx, y_train)`` (a scalar torch
    function of the (N,) or (N, O) train outputs, e.g. :func:`cross_entropy`), by
    integrating the function-space ODE; returns a :class:`GradientDescentPredictor`.

    ``k_train_train`` is the (N, N) NTK (shared by the output channels), t counts steps at
    ``learning_rate`` (as ``gradient_descent_mse``), and ``rtol`` / ``atol`` / ``method``
    go to ``scipy.integrate.solve_ivp``. ``momentum`` None is gradient flow; m in [0, 1)
    is heavy-ball momentum in Neural Tangents' continuous-time limit (module docstring):
    time tau = sqrt(learning_rate) t, so t and ``learning_rate`` are not interchangeable.
    """
    return GradientDescentPredictor(
        loss, k_train_train, y_train, learning_rate=learning_rate, rtol=rtol, atol=atol,
        method=method, momentum=momentum,
    )  # fmt: skip
