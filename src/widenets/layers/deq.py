"""Deep equilibrium (DEQ) layer: the infinitely deep weight-tied network with input injection.

Finite face (Bai et al. 2019, NTK parameterisation): with z in R^n (n = ``width``),

    z* = phi(W z* + U x + b),   W_ij ~ N(0, w_std^2 / n), U_ij ~ N(0, u_std^2 / C),
    b_i ~ N(0, b_std^2),

solved by fixed-point iteration from z = 0; gradients by implicit differentiation (the
adjoint fixed point y = g + J^T y, J = d phi(W z + U x + b)/dz at z*).

Infinite-width face (Gao et al. 2023, "Wide Neural Networks as Gaussian Processes: Lessons
from Deep Equilibrium Models"; Feng & Kolter 2020 for the NTK): the pre-activation
h* = W z* + U x + b is a GP whose kernel K* is the fixed point of the NNGP map

    K <- w^2 E[phi(u) phi(v)] + u^2 K_x + b^2,    (u, v) ~ N(0, [[q1, K], [K, q2]]),

(the variances q follow the same map), the limit of the depth-L weight-tied network as
L -> inf (width and depth limits commute). Where w^2 E[phi'(u) phi'(v)] < 1 the NTK exists:

    Theta_h* = (K* + u^2 Theta_x) / (1 - w^2 Kdot*),    Kdot* = E[phi'(u) phi'(v)] at K*,

the sum of the geometric series of the untied recursion Theta_{l+1} = K_{l+1} + u^2 Theta_x
+ w^2 Kdot_l Theta_l (the cross terms that weight tying adds vanish at infinite width). The
layer outputs z* = phi(h*): NNGP E[phi(u) phi(v)] at K* and NTK Theta_h* Kdot*, as an
activation layer does. ``depth=L`` gives instead the finite-depth weight-tied network
(L applications of phi, from z = 0), both faces.
"""

from __future__ import annotations

import math
from dataclasses import field

import torch
from torch import Tensor, nn

from widenets.errors import check_nonnegative, check_positive_int
from widenets.init.schemes import draw_bias, draw_weight
from widenets.kernel import Kernel
from widenets.layers.activations import Activation
from widenets.layers.base import WIDTH, BuildContext, Layer, WeightedModule, declare


def _amax(t: Tensor) -> float:
    """max |t| as a float (0 for an empty tile)."""
    return float(t.abs().max()) if t.numel() else 0.0


class FixedPointError(RuntimeError):
    """A fixed-point iteration did not converge; ``iterations`` and ``residual`` say how far."""

    def __init__(self, message: str, iterations: int, residual: float):
        super().__init__(message)
        self.iterations = iterations
        self.residual = residual


def _check_tol(tol, name):
    t = check_nonnegative(tol, name)
    if t == 0:
        raise ValueError(f"`{name}` must be a positive number, got {tol!r}.")
    return t


@declare
class DEQ(Layer):
    """Deep equilibrium layer z* = phi(W z* + U x + b) of ``width`` channels (NTK parameterisation).

    Args:
        width: n, the finite width of z.
        activation: a widenets :class:`Activation` (closed form or ``Elementwise``).
        w_std, u_std, b_std: scales of W (recurrent), U (input injection) and b (bias; None
            for no bias).
        depth: None for the equilibrium (infinite depth); an int L for the weight-tied
            network unrolled L times from z = 0 (h_1 = U x + b, h_{l+1} = W phi(h_l) + U x + b).
        tol, max_iter: stopping rule of the finite solve (relative change of z) and of the
            kernel fixed point (relative change of K); the tolerance used is never below
            50 machine epsilons of the dtype (about 6e-6 in float32).

    Raises (from ``kernel``): ValueError when the NNGP map does not converge (not
    contractive at this ``w_std``), or when the NTK is requested but w^2 Kdot* >= 1.
    The finite module raises :class:`FixedPointError` when its iteration does not converge.
    """

    name = "DEQ"
    handles_packed_pairs = False  # fully connected: pairs (N1, N2) only

    width: int = field(metadata=WIDTH)
    activation: Activation
    w_std: float = 1.0
    u_std: float = 1.0
    b_std: float | None = 0.0
    depth: int | None = field(default=None, kw_only=True)
    tol: float = field(default=1e-12, kw_only=True)
    max_iter: int = field(default=2000, kw_only=True)

    def __post_init__(self):
        self.width = check_positive_int(self.width, "width")
        if not isinstance(self.activation, Activation):
            raise TypeError(
                "`activation` must be a widenets Activation (e.g. wn.Relu(), wn.Erf(), "
                f"wn.Elementwise(fn)), got {type(self.activation).__name__}."
            )
        self.w_std = check_nonnegative(self.w_std, "w_std")
        self.u_std = check_nonnegative(self.u_std, "u_std")
        self.b_std = check_nonnegative(self.b_std, "b_std", allow_none=True)
        self.depth = None if self.depth is None else check_positive_int(self.depth, "depth")
        self.tol = _check_tol(self.tol, "tol")
        self.max_iter = check_positive_int(self.max_iter, "max_iter")

    def unrolled(self, depth: int) -> DEQ:
        """The weight-tied network of finite ``depth`` with the same parameters."""
        return self.replace(depth=depth)

    # ----- shapes ---------------------------------------------------------------------------
    def out_shape(self, in_shape):
        if not isinstance(in_shape, tuple):
            raise ValueError(f"DEQ takes a single input, got {len(in_shape)} branches.")
        if len(in_shape) != 1:
            raise ValueError(
                f"DEQ takes (N, C) inputs (fully connected), got per-example shape {in_shape}."
            )
        return (self.width,)

    def pair_cost(self, in_shape) -> int:
        return 4 * self.activation.pair_cost(in_shape)

    # ----- infinite width ---------------------------------------------------------------------
    def _maps(self, k: Kernel):
        w2, u2 = self.w_std**2, self.u_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        kx = k.nngp * u2 + b2
        qx1 = k.cov1 * u2 + b2
        qx2 = qx1 if k.cov2 is k.cov1 else k.cov2 * u2 + b2
        return w2, u2, kx, qx1, qx2

    def _step(self, kk, q1, q2, kx, qx1, qx2, w2, want_dot):
        e, dot = self.activation.pair(kk, q1.unsqueeze(1), q2.unsqueeze(0), want_dot)
        eq1 = self.activation.pair(q1, q1, q1, False)[0]
        eq2 = eq1 if q2 is q1 else self.activation.pair(q2, q2, q2, False)[0]
        return e, dot, eq1, eq2

    def kernel_fn(self, k: Kernel) -> Kernel:
        if k.nngp is None:
            raise ValueError("DEQ needs the NNGP of its input.")
        w2, u2, kx, qx1, qx2 = self._maps(k)
        want_ntk = k.ntk is not None
        same = k.cov2 is k.cov1
        kk, q1, q2 = kx, qx1, qx2  # h_1 = U x + b
        theta = (kx + u2 * k.ntk) if want_ntk else None
        if self.depth is not None:
            for _ in range(self.depth - 1):
                e, dot, eq1, eq2 = self._step(kk, q1, q2, kx, qx1, qx2, w2, want_ntk)
                kk = w2 * e + kx
                if want_ntk:
                    theta = kk + u2 * k.ntk + w2 * dot * theta
                q1 = w2 * eq1 + qx1
                q2 = q1 if same else w2 * eq2 + qx2
        else:
            kk, q1, q2 = self._solve_kernel(kk, q1, q2, kx, qx1, qx2, w2, same)
        e, dot, eq1, eq2 = self._step(kk, q1, q2, kx, qx1, qx2, w2, want_ntk)
        ntk = None
        if want_ntk:
            if self.depth is None:
                gain = w2 * dot
                worst = _amax(gain)
                if not worst < 1.0:
                    raise ValueError(
                        f"{self!r}: the NTK of the equilibrium is infinite: w_std^2 "
                        f"E[phi'(u) phi'(v)] = {worst:.4g} >= 1 at the NNGP fixed point "
                        "(Feng & Kolter 2020's condition). Decrease `w_std` or ask for "
                        'get="nngp" only.'
                    )
                theta = (kk + u2 * k.ntk) / (1.0 - gain)
            ntk = theta * dot
        return k.replace(
            nngp=e,
            ntk=ntk,
            cov1=eq1,
            cov2=eq1 if same else eq2,
            shape1=(self.width,),
            shape2=(self.width,),
            is_gaussian=False,
            is_input=False,
        )

    def _solve_kernel(self, kk, q1, q2, kx, qx1, qx2, w2, same):
        """Iterate the NNGP map to its fixed point; ValueError if it does not converge."""
        res, prev = math.inf, math.inf
        growing = 0
        tol = max(self.tol, 50 * torch.finfo(kx.dtype).eps)
        it = 0
        history = []
        while it < self.max_iter:
            it += 1
            e, _, eq1, eq2 = self._step(kk, q1, q2, kx, qx1, qx2, w2, False)
            new_k = w2 * e + kx
            new_q1 = w2 * eq1 + qx1
            new_q2 = new_q1 if same else w2 * eq2 + qx2
            scale = max(_amax(new_q1), _amax(new_q2), 1e-300)
            res = max(_amax(new_k - kk), _amax(new_q1 - q1), _amax(new_q2 - q2))
            res = res / scale if math.isfinite(scale) else math.inf
            kk, q1, q2 = new_k, new_q1, new_q2
            history.append(res)
            if not math.isfinite(res) or not math.isfinite(scale):
                break
            if res < tol:
                return kk, q1, q2
            # 50 steps without a 0.1% decrease: the map does not contract here
            growing = growing + 1 if res >= 0.999 * prev else 0
            if growing >= 50:
                break
            prev = res
        slow = _slow_convergence(history, tol, it)
        if slow is not None:
            raise ValueError(
                f"{self!r}: the NNGP fixed-point iteration {_slowly(slow, res, it, tol)}, "
                "loosen `tol`, or decrease `w_std`."
            )
        raise ValueError(
            f"{self!r}: the NNGP fixed-point map is not contractive at w_std={self.w_std}: "
            f"relative residual {res:.3g} after {it} iterations (tol {tol:g}). The "
            "equilibrium kernel does not exist (variances diverge) and the finite DEQ's "
            "iteration does not converge either. Decrease `w_std` (for ReLU the map "
            "contracts iff w_std < sqrt(2)) or raise `max_iter`."
        )

    # ----- finite width -----------------------------------------------------------------------
    def make_module(self, in_shape, ctx: BuildContext) -> DEQModule:
        w, u, b = _draw_deq(
            ctx.init, ctx.generator, self.width, in_shape[0], self.b_std is not None, ctx.dtype
        )
        return DEQModule(self, w, u, b).to(device=ctx.device)


def _draw_deq(scheme, generator, n: int, c: int, bias: bool, dtype, device=None):
    """W (n, n) and U (n, C) from ``scheme``, then b ~ N(0, 1) (n,) if ``bias``."""
    w = draw_weight(scheme, (n, n), n, generator, dtype, device)
    u = draw_weight(scheme, (n, c), c, generator, dtype, device)
    b = draw_bias((n,), generator, dtype, device) if bias else None
    return w, u, b


def _slow_convergence(history: list[float], tol: float, done: int):
    """(rate, iterations needed) when the last residuals fall geometrically (rate < 1), so
    the iteration would converge given more iterations; None when they do not fall."""
    tail = [r for r in history[-20:] if math.isfinite(r) and r > 0]
    if len(tail) < 10:
        return None
    rate = (tail[-1] / tail[0]) ** (1.0 / (len(tail) - 1))
    if not rate < 0.9999:
        return None
    more = math.log(tol / tail[-1]) / math.log(rate)
    return rate, int(math.ceil(done + max(more, 0.0) * 1.1))


def _slowly(slow, res: float, it: int, tol: float) -> str:
    """The middle of a slow-convergence message, from ``_slow_convergence``'s result."""
    rate, needed = slow
    return (
        f"converges, but slowly: the residual falls by a factor {rate:.4g} per iteration and "
        f"is {res:.3g} after {it} iterations (tol {tol:g}); about {needed} iterations are "
        f"needed. Raise `max_iter` to {needed} or more"
    )


def _is_transformed(t: Tensor) -> bool:
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check(t)) if check is not None else False


class DEQModule(WeightedModule):
    """Finite DEQ: ``forward`` solves z = phi(s_w W z + s_u U x + s_b b) from z = 0.

    After each call ``iterations`` and ``residual`` (relative change of z at the last
    step) hold how the solve went. Backward uses implicit differentiation.
    """

    def __init__(self, layer: DEQ, weight: Tensor, input_weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.fn = layer.activation.fn
        self.act_name = repr(layer.activation)
        self.depth = layer.depth
        self.tol = layer.tol
        self.max_iter = layer.max_iter
        self.weight = nn.Parameter(weight)
        self.input_weight = nn.Parameter(input_weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.weight_scale = layer.w_std / math.sqrt(weight.shape[0])
        self.input_scale = layer.u_std / math.sqrt(input_weight.shape[1])
        self.bias_scale = 0.0 if layer.b_std is None else layer.b_std
        self.iterations = 0
        self.residual = math.nan

    @torch.no_grad()
    def reset_parameters(self, scheme=None, generator: torch.Generator | None = None) -> None:
        """Redraw W, U and b as ``build`` draws them (``_draw_deq``)."""
        n, c = self.input_weight.shape
        w, u, b = _draw_deq(
            scheme, generator, n, c, self.bias is not None, self.weight.dtype, self.weight.device
        )
        self.weight.copy_(w)
        self.input_weight.copy_(u)
        if b is not None:
            self.bias.copy_(b)

    def extra_repr(self) -> str:
        return (
            f"width={self.weight.shape[0]}, in={self.input_weight.shape[1]}, "
            f"activation={self.act_name}, depth={self.depth}"
        )

    def injection(self, x: Tensor) -> Tensor:
        """U x + b, scaled."""
        out = (x @ self.input_weight.T) * self.input_scale
        if self.bias is not None:
            out = out + self.bias * self.bias_scale
        return out

    def step(self, z: Tensor, inj: Tensor) -> Tensor:
        return self.fn((z @ self.weight.T) * self.weight_scale + inj)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2:
            raise ValueError(f"DEQ takes (N, C) inputs, got shape {tuple(x.shape)}.")
        if _is_transformed(x) or _is_transformed(self.weight):
            raise RuntimeError(
                "DEQ modules do not support torch.func transforms (vmap/jacrev, used by "
                "wn.empirical.ntk): the fixed-point solve stops on a data-dependent test. "
                "Differentiate with torch.autograd instead."
            )
        inj = self.injection(x)
        z = torch.zeros(x.shape[0], self.weight.shape[0], dtype=inj.dtype, device=inj.device)
        if self.depth is not None:
            for _ in range(self.depth):
                z = self.step(z, inj)
            self.iterations, self.residual = self.depth, math.nan
            return z
        z = self.solve(inj.detach(), z)
        if not torch.is_grad_enabled() or not (inj.requires_grad or self.weight.requires_grad):
            return z
        # one differentiable step at the fixed point, its gradient corrected by the adjoint
        out = self.step(z, inj)
        z0 = z.detach().requires_grad_()
        with torch.enable_grad():
            f0 = self.step(z0, inj.detach())

        tol = max(self.tol, 50 * torch.finfo(inj.dtype).eps)

        def adjoint(g):
            y = g
            for _ in range(self.max_iter):
                (jy,) = torch.autograd.grad(f0, z0, y, retain_graph=True)
                y_new = jy + g
                done = float((y_new - y).norm()) <= tol * float(y_new.norm())
                y = y_new
                if done:
                    return y
            raise FixedPointError(
                "DEQ backward: the adjoint fixed point did not converge.", self.max_iter, math.nan
            )

        out.register_hook(adjoint)
        return out

    @torch.no_grad()
    def solve(self, inj: Tensor, z: Tensor) -> Tensor:
        res = math.inf
        tol = max(self.tol, 50 * torch.finfo(inj.dtype).eps)
        history = []
        for it in range(1, self.max_iter + 1):
            z_new = self.step(z, inj)
            res = float((z_new - z).norm()) / max(float(z_new.norm()), 1e-300)
            history.append(res)
            z = z_new
            if res < tol:
                self.iterations, self.residual = it, res
                return z
            if not math.isfinite(res):
                break
        self.iterations, self.residual = it, res
        slow = _slow_convergence(history, tol, it)
        if slow is not None:
            raise FixedPointError(
                f"DEQ forward: the fixed-point iteration {_slowly(slow, res, it, tol)}, or "
                "loosen `tol`.",
                it,
                res,
            )
        raise FixedPointError(
            f"DEQ forward: the fixed-point iteration z = phi(W z + U x + b) did not converge: "
            f"relative residual {res:.3g} after {it} iterations (tol {tol:g}). The map is "
            "not contractive for this draw: decrease w_std, or raise max_iter/tol.",
            it,
            res,
        )
