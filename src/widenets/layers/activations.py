"""Elementwise nonlinearities with exact infinite-width kernels.

For a Gaussian pre-activation (u, v) ~ N(0, [[q1, K], [K, q2]]) each activation phi gives

    K'     = E[phi(u) phi(v)]                  (the NNGP recursion, Neal 1996; Lee et al. 2018)
    Kdot   = E[phi'(u) phi'(v)]                (its derivative in K, Price's theorem)
    Theta' = Theta * Kdot                      (the NTK recursion, Jacot et al. 2018)

The variances follow the same map with K = q1 = q2. Closed forms: the arc-cosine kernels
of Cho & Saul 2009 for the ReLU family, Williams 1997 for erf, Tsuchida et al. 2020 for
GELU; Gaussian integrals for sin, the Gaussian bump, sign and monomials.

On spatial kernels the maps act per pair of positions: each entry K[s, s'] is paired with
the variances of position s of x1 and position s' of x2 (``Kernel.pair_variances``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import field

import torch
from torch import Tensor, nn

from widenets import _fused, _workspace
from widenets.errors import check_finite_real
from widenets.kernel import Kernel
from widenets.layers.base import BuildContext, Layer, declare, linear_degree
from widenets.numerics import SIN_LIMIT, flag_pairs, flag_pairs_below, watching

PI = math.pi


def outer_sqrt(q1: Tensor, q2: Tensor) -> Tensor:
    """sqrt(q1 q2) as sqrt(q1) * sqrt(q2), with zero variances kept just above zero.

    A zero-variance input has K = 0 with everything, so its correlation becomes 0 rather
    than NaN, which is the limit of every closed form below.
    """
    tiny = torch.finfo(q1.dtype).tiny
    return q1.sqrt().clamp_min(tiny) * q2.sqrt().clamp_min(tiny)


def tracks_grad(*tensors: Tensor) -> bool:
    """Whether autograd records through these tensors (e.g. learnable w_std/b_std): then the
    kernel maps take their out-of-place branch, since the in-place fast path would
    overwrite values that backward needs."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def correlation(nngp: Tensor, s: Tensor) -> Tensor:
    """c = K / sqrt(q1 q2), clipped to [-1, 1]; within 64 ulp of +-1 it is set to +-1.

    Round-off puts c of an input with itself a few ulp off 1, where arccos has infinite
    slope (theta ~ 1e-8 for c = 1 - 1e-16): snapping keeps the diagonal exact.
    """
    c = nngp / s
    tol = 64 * torch.finfo(c.dtype).eps
    if tracks_grad(c):  # differentiable; snapped entries get zero gradient
        c = c.clamp(-1.0, 1.0)
        one = torch.ones_like(c)
        c = torch.where(c > 1.0 - tol, one, c)
        return torch.where(c < -1.0 + tol, -one, c)
    c.clamp_(-1.0, 1.0)
    c.masked_fill_(c > 1.0 - tol, 1.0)
    c.masked_fill_(c < -1.0 + tol, -1.0)
    return c


def snap_angles_(theta: Tensor) -> Tensor:
    """Set angles within sqrt(2 * 64 ulp) of 0 or pi to 0 or pi, in place.

    That is |c| within 64 ulp of 1: round-off puts the correlation of an input with itself
    a few ulp off 1, where arccos has infinite slope (c = 1 - 1e-16 gives theta = 1.5e-8).
    """
    tol = math.sqrt(2 * 64 * torch.finfo(theta.dtype).eps)
    if not _workspace.usable(theta) or not theta.is_contiguous():  # (a buffer of another
        theta.masked_fill_(theta < tol, 0.0)  # layout than theta's would slow both passes)
        theta.masked_fill_(theta > PI - tol, PI)
        return theta
    mask = _workspace.empty_like(theta, torch.bool)  # one buffer for both masks
    theta.masked_fill_(torch.lt(theta, tol, out=mask), 0.0)
    theta.masked_fill_(torch.gt(theta, PI - tol, out=mask), PI)
    return theta


def _new(like: Tensor, *others: Tensor) -> Tensor | None:
    """A workspace buffer for an elementwise result of ``like`` broadcast with ``others``
    (``widenets._workspace``), or None (then the operation allocates its own)."""
    if not _workspace.usable(like, *others) or not like.is_contiguous():
        return None  # (a contiguous result: the operation's own would follow like's strides)
    if torch.broadcast_shapes(like.shape, *(t.shape for t in others)) != like.shape:
        return None
    return _workspace.empty_like(like)


class Activation(Layer):
    """Base class: ``fn`` is the finite face, ``pair`` the closed-form kernel map."""

    name = "Activation"
    requires_gaussian_input = True
    gaussian_input_hint = (
        "put an affine layer (Dense, Conv) before it. The closed-form kernel of a "
        "nonlinearity assumes Gaussian pre-activations."
    )

    def fn(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def pair(self, nngp: Tensor, q1: Tensor, q2: Tensor, want_dot: bool):
        """Return (E[phi(u) phi(v)], E[phi'(u) phi'(v)] or None), broadcasting q1, q2."""
        raise NotImplementedError

    def pair_of_kernel(self, k: Kernel):
        """``pair`` on a kernel record's nngp and its variances shaped to broadcast."""
        q1, q2 = k.pair_variances()
        return self.pair(k.nngp, q1, q2, k.ntk is not None)

    def variance(self, q: Tensor) -> Tensor:
        """E[phi(u)^2] for u ~ N(0, q): the pair map at c = 1. (Not a separate closed form:
        the diagonal of a kernel of a set with itself must equal it bit for bit.)"""
        return self.pair(q, q, q, False)[0]

    def kernel_fn(self, k: Kernel) -> Kernel:
        nngp, dot = self.pair_of_kernel(k)

        def variances(q, which):
            if k.full_spatial:  # q holds every pair of positions of each input
                return self.pair(q, *k.self_pair_variances(which), False)[0]
            return self.variance(q)

        cov1, cov2 = k.map_variances(variances)
        ntk = None if k.ntk is None else self._ntk_product(k.ntk, dot)
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=False)

    def _ntk_product(self, ntk: Tensor, dot: Tensor) -> Tensor:
        """Theta Kdot (a layer whose ``dot`` is a new tensor of its own may write into it)."""
        return ntk * dot

    def make_module(self, in_shape, ctx: BuildContext):
        return ActivationModule(self.fn, repr(self))


class ActivationModule(nn.Module):
    """The finite face of every activation: ``fn`` applied elementwise."""

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str):
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


@declare
class ABRelu(Activation):
    """phi(x) = a x for x < 0 and b x for x > 0 (Relu: a=0, b=1; Abs: a=-1, b=1).

    With theta = arccos(c): K' = a b K + (b - a)^2 sqrt(q1 q2) (sin theta + (pi - theta) c)
    / (2 pi) and Kdot = a b + (b - a)^2 (pi - theta) / (2 pi)  (Cho & Saul 2009).
    """

    name = "ABRelu"

    a: float = 0.0
    b: float = 1.0

    def __post_init__(self):
        self.a = check_finite_real(self.a, "a")
        self.b = check_finite_real(self.b, "b")

    def fn(self, x):
        return torch.where(x > 0, self.b * x, self.a * x)

    def _root_factors(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-1/sqrt(q), 1/sqrt(q), sqrt(q) (b - a)^2 / (2 pi) and sqrt(q), per entry of q."""
        root = q.sqrt().clamp_min(torch.finfo(q.dtype).tiny)
        inv = root.reciprocal()
        return inv.neg(), inv, root * ((self.b - self.a) ** 2 / (2 * PI)), root

    def scaling_degree(self, degree):
        # phi(s h) = s phi(h) for s > 0: positively homogeneous of degree 1
        return linear_degree(degree, has_bias=False)

    def pair(self, nngp, q1, q2, want_dot):
        if tracks_grad(nngp, q1, q2):  # differentiable (out-of-place) path, e.g. GPyTorch
            s = outer_sqrt(q1, q2)
            return self._pair_autograd(nngp, s, correlation(nngp, s), want_dot)
        neg_inv1, _, scaled1, _ = f1 = self._root_factors(q1)
        _, inv2, _, root2 = f1 if q2 is q1 else self._root_factors(q2)
        return self._pair_from_roots(nngp, neg_inv1, inv2, scaled1, root2, want_dot)

    def kernel_fn(self, k: Kernel) -> Kernel:
        if watching() or not _fused.usable(k.nngp, k.ntk, k.cov1, k.cov2):
            return super().kernel_fn(k)
        fused = _fused.abrelu_pair(self.a, self.b, k.nngp, k.ntk, *self._pair_factors(k))
        if fused is None:
            return super().kernel_fn(k)
        # one compiled loop over the tile (``widenets._fused``); the variances by the same
        # loop, so that the diagonal of a set with itself equals them bit for bit

        def fused_pair(nngp, q1, q2):
            f1 = self._root_factors(q1)
            f2 = f1 if q2 is q1 else self._root_factors(q2)
            out = _fused.abrelu_pair(self.a, self.b, nngp, None, f1[0], f2[1], f1[2], f2[3])
            return self.pair(nngp, q1, q2, False)[0] if out is None else out[0]

        def variances(q, which):
            if k.full_spatial:  # q holds every pair of positions of each input
                return fused_pair(q, *k.self_pair_variances(which))
            return fused_pair(q, q, q)

        cov1, cov2 = k.map_variances(variances)
        return k.replace(nngp=fused[0], ntk=fused[1], cov1=cov1, cov2=cov2, is_gaussian=False)

    def _ntk_product(self, ntk, dot):
        # ``dot`` is the angle's own new buffer (``_pair_from_roots``): the product in place
        same_strides = ntk.is_contiguous() and dot.is_contiguous()
        if dot.shape != ntk.shape or not same_strides or tracks_grad(ntk, dot):
            return ntk * dot  # (a strided ntk: the product follows its strides)
        return dot.mul_(ntk)

    def _pair_factors(self, k: Kernel) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-1/sqrt(q1), 1/sqrt(q2), sqrt(q1) coef and sqrt(q2), shaped to broadcast
        against ``k.nngp`` in its layout."""
        if k.pairs is None:
            q1, q2 = k.pair_variances()
            f1 = self._root_factors(q1)
            f2 = f1 if q2 is q1 else self._root_factors(q2)
            neg_inv1, inv2, scaled1, root2 = f1[0], f2[1], f1[2], f2[3]
        else:
            # packed pairs: the square-root factors are formed once per input, then
            # gathered for each pair (rather than gathering variances and taking roots)
            f1 = self._root_factors(k.cov1)
            f2 = f1 if k.cov2 is k.cov1 else self._root_factors(k.cov2)
            neg_inv1, inv2 = k.gather_pairs(f1[0], f2[1])
            scaled1, root2 = k.gather_pairs(f1[2], f2[3])
        return neg_inv1, inv2, scaled1, root2

    def pair_of_kernel(self, k: Kernel):
        if tracks_grad(k.nngp, k.cov1, k.cov2):
            return super().pair_of_kernel(k)
        return self._pair_from_roots(
            k.nngp, *self._pair_factors(k), k.ntk is not None, watch=watching()
        )

    def _pair_from_roots(self, nngp, neg_inv1, inv2, scaled1, root2, want_dot, watch=False):
        """The closed form from -1/sqrt(q1), 1/sqrt(q2), sqrt(q1) coef and sqrt(q2)
        (whatever their broadcast shapes, the same operations per entry). With ``watch``
        (a tile in reduced precision) the pairs at an angle with sin(theta) < SIN_LIMIT
        are flagged for recomputation in float64 (``widenets.numerics``)."""
        a, b = self.a, self.b
        coef = (b - a) ** 2 / (2 * PI)
        # -c = -K / sqrt(q1 q2) by two broadcast products (no division over the tile), and
        # phi = pi - theta = arccos(-c), so that sin(theta) = sin(phi): no pass for pi - theta
        neg_c = torch.mul(nngp, neg_inv1, out=_new(nngp, neg_inv1)).mul_(inv2).clamp_(-1.0, 1.0)
        phi = snap_angles_(torch.acos(neg_c, out=_new(neg_c)))
        j = torch.sin(phi, out=_new(phi))
        if watch:
            flag_pairs_below(j, SIN_LIMIT)
        j.addcmul_(phi, neg_c, value=-1.0)  # sin(theta) + (pi - theta) c
        out = j.mul_(scaled1).mul_(root2)
        if a != 0.0:
            out.add_(nngp, alpha=a * b)
        dot = None
        if want_dot:
            dot = phi.mul_(coef)
            if a != 0.0:
                dot.add_(a * b)
        return out, dot

    def _pair_autograd(self, nngp, s, c, want_dot):
        """The same closed form, out of place (differentiable in w_std/b_std)."""
        a, b = self.a, self.b
        coef = (b - a) ** 2 / (2 * PI)
        pi_minus_theta = PI - torch.acos(c)
        # where |c| = 1 the snapped c has zero gradient: keep sqrt's infinite slope out
        inside = c.abs() < 1.0
        one_minus = torch.where(inside, 1.0 - c * c, torch.ones_like(c))
        sin_theta = torch.where(inside, one_minus.sqrt(), torch.zeros_like(c))
        out = (sin_theta + pi_minus_theta * c) * s * coef + (a * b) * nngp
        dot = pi_minus_theta * coef + a * b if want_dot else None
        return out, dot


@declare
class Relu(ABRelu):
    """max(x, 0)."""

    name = "Relu"

    a: float = field(default=0.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def fn(self, x):
        return torch.relu(x)


@declare
class LeakyRelu(ABRelu):
    """x for x > 0, alpha x otherwise."""

    name = "LeakyRelu"

    a: float = field(default=0.01, init=False, repr=False)  # = alpha
    b: float = field(default=1.0, init=False, repr=False)
    alpha: float = 0.01

    def __post_init__(self):
        self.a = self.alpha
        super().__post_init__()  # checks it (as `a`, the ABRelu slope)
        self.alpha = self.a


@declare
class Abs(ABRelu):
    """|x|."""

    name = "Abs"

    a: float = field(default=-1.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def fn(self, x):
        return x.abs()


@declare
class Erf(Activation):
    """phi(x) = a erf(b x) + c (Williams 1997).

    K' = a^2 (2/pi) arcsin(2 b^2 K / sqrt((1 + 2 b^2 q1)(1 + 2 b^2 q2))) + c^2,
    Kdot = a^2 b^2 (4/pi) / sqrt((1 + 2 b^2 q1)(1 + 2 b^2 q2) - 4 b^4 K^2).
    """

    name = "Erf"

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def __post_init__(self):
        self.a = check_finite_real(self.a, "a")
        self.b = check_finite_real(self.b, "b")
        self.c = check_finite_real(self.c, "c")

    def fn(self, x):
        return self.a * torch.erf(self.b * x) + self.c

    def pair(self, nngp, q1, q2, want_dot):
        return self._pair(nngp, q1, q2, want_dot, False)

    def pair_of_kernel(self, k: Kernel):
        q1, q2 = k.pair_variances()
        return self._pair(k.nngp, q1, q2, k.ntk is not None, watching())

    def _pair(self, nngp, q1, q2, want_dot, watch):
        """With y = 2 b^2 K and D = (1 + 2b^2 q1)(1 + 2b^2 q2) - y^2 = 1 + 2b^2 (q1 + q2)
        + 4b^4 (q1 q2 - K^2): K' = a^2 (2/pi) atan(y / sqrt(D)) + c^2 and
        Kdot = a^2 b^2 (4/pi) / sqrt(D). Expanded so, D does not cancel at large variances
        (the product form loses every digit of D once 2b^2 q passes 1/eps); q1 q2 - K^2 is
        exactly 0 on the diagonal of a set with itself."""
        b2 = self.b**2
        gap = torch.mul(q1, q2)
        if tracks_grad(nngp, q1, q2):  # the same, out of place (differentiable)
            det = (q1 + q2) * (2 * b2) + 1.0 + (gap - nngp * nngp).clamp_min(0.0) * (4 * b2 * b2)
            root = det.sqrt()
            out = torch.atan(nngp * (2 * b2) / root) * (self.a**2 * 2 / PI) + self.c**2
            dot = root.reciprocal() * (self.a**2 * b2 * 4 / PI) if want_dot else None
            return out, dot
        gap = gap.sub(torch.mul(nngp, nngp)).clamp_min_(0.0).mul_(4 * b2 * b2)
        det = gap.add_(torch.add(q1, q2).mul_(2 * b2).add_(1.0))
        y = nngp * (2 * b2)
        if watch:  # r^2 = y^2 / (y^2 + D) > 3/4: D amplifies K's rounding by r^2 / (1 - r^2)
            flag_pairs(torch.mul(y, y) > det * 3.0)
        root = det.sqrt_()
        # atan(y / sqrt(D)) = asin(y / d), conditioned at any r (atan2 would do, but its
        # scalar and vectorised CPU paths differ in the last bit, so that a pair's value
        # would depend on its place in the tile: D > 0, so atan of the ratio is the same)
        out = torch.atan(y.div_(root)).mul_(self.a**2 * 2 / PI)
        if self.c:
            out.add_(self.c**2)
        dot = root.reciprocal_().mul_(self.a**2 * b2 * 4 / PI) if want_dot else None
        return out, dot


@declare
class Gelu(Activation):
    """x Phi(x), Phi the normal CDF (Tsuchida et al. 2020, closed form as in Neural Tangents).

    With P = q1 q2, P1 = (1 + q1)(1 + q2), delta = sqrt(P1 - K^2) and a = atan2(K, delta):
    K' = K/4 + [(K^2 + P delta^2) / (P1 delta) + K a] / (2 pi),
    Kdot = 1/4 + a / (2 pi) + K / (2 pi delta) [1/delta^2 + (1 - P)/P1 + 1].

    Evaluated without cancellation or overflow at large variances: delta^2 = 1 + q1 + q2 +
    (q1 q2 - K^2) (exactly 1 + 2q on the diagonal, where P1 - K^2 rounds to 0 once q passes
    1/eps), (K^2 + P delta^2) / (P1 delta) = K^2 r1 r2 / delta + u1 u2 delta and
    (1 - P)/P1 + 1 = r1 + r2, with r = 1 / (1 + q) and u = q / (1 + q).
    """

    name = "Gelu"

    def fn(self, x):
        return torch.nn.functional.gelu(x)

    def pair(self, nngp, q1, q2, want_dot):
        return self._pair(nngp, q1, q2, want_dot, False)

    def pair_of_kernel(self, k: Kernel):
        q1, q2 = k.pair_variances()
        return self._pair(k.nngp, q1, q2, k.ntk is not None, watching())

    def _pair(self, nngp, q1, q2, want_dot, watch):
        r1 = (1 + q1).reciprocal()
        r2 = r1 if q2 is q1 else (1 + q2).reciprocal()
        u1, u2 = q1 * r1, q2 * r2
        k2 = nngp * nngp
        delta2 = (q1 * q2 - k2).clamp_min(0.0) + (1 + q1 + q2)
        if watch:  # K^2 / delta^2 amplifies K's rounding in delta
            flag_pairs(k2 > delta2)
        delta = delta2.sqrt()
        angle = torch.atan(nngp / delta)  # = atan2(K, delta), delta >= 1 (see Erf._pair)
        out = k2 * (r1 * r2) / delta + (u1 * u2) * delta + nngp * angle
        out = out / (2 * PI) + 0.25 * nngp
        dot = None
        if want_dot:
            first = (delta2.reciprocal() + (r1 + r2)) * nngp / delta / (2 * PI)
            dot = first + 0.25 + angle / (2 * PI)
        return out, dot


@declare
class Sin(Activation):
    """phi(x) = amplitude sin(frequency x + phase); ``Cos`` is phase pi/2.

    With s = q1 + q2, w = frequency: K' = a^2/2 [e^{-w^2 (s - 2K)/2} - e^{-w^2 (s + 2K)/2}
    cos 2 phase] and Kdot = a^2 w^2/2 [e^{-w^2 (s - 2K)/2} + e^{-w^2 (s + 2K)/2} cos 2 phase].
    """

    name = "Sin"

    amplitude: float = 1.0
    frequency: float = 1.0
    phase: float = 0.0

    def __post_init__(self):
        self.amplitude = check_finite_real(self.amplitude, "amplitude")
        self.frequency = check_finite_real(self.frequency, "frequency")
        self.phase = check_finite_real(self.phase, "phase")

    def fn(self, x):
        return self.amplitude * torch.sin(self.frequency * x + self.phase)

    def pair(self, nngp, q1, q2, want_dot):
        w2 = self.frequency**2
        s = q1 + q2
        minus = torch.exp(-w2 / 2 * (s - 2 * nngp))
        plus = torch.exp(-w2 / 2 * (s + 2 * nngp)) * math.cos(2 * self.phase)
        a2 = self.amplitude**2
        out = (minus - plus) * (a2 / 2)
        dot = (minus + plus) * (a2 * w2 / 2) if want_dot else None
        return out, dot


def Cos(amplitude: float = 1.0, frequency: float = 1.0, phase: float = 0.0) -> Sin:
    """amplitude cos(frequency x + phase), as a Sin shifted by pi/2."""
    return Sin(amplitude, frequency, phase + PI / 2)


@declare
class Gaussian(Activation):
    """phi(x) = a exp(b x^2) for b < 1/(2 q) (a Gaussian bump for b < 0).

    With D = (1 - 2b q1)(1 - 2b q2) - 4 b^2 K^2: K' = a^2 / sqrt(D) and
    Kdot = 4 a^2 b^2 K / D^{3/2}.
    """

    name = "Gaussian"

    a: float = 1.0
    b: float = -0.5

    def __post_init__(self):
        self.a = check_finite_real(self.a, "a")
        self.b = check_finite_real(self.b, "b")

    def fn(self, x):
        return self.a * torch.exp(self.b * x * x)

    def pair(self, nngp, q1, q2, want_dot):
        b = self.b
        det = (1 - 2 * b * q1) * (1 - 2 * b * q2) - 4 * b * b * nngp * nngp
        if b > 0 and not bool((det > 0).all()):
            raise ValueError(
                f"{self!r}: E[exp(2 b x^2)] is infinite for pre-activation variance >= "
                f"1/(4b) = {1 / (4 * b):.3g}; use b < 0 or smaller weights."
            )
        out = det.rsqrt() * self.a**2
        dot = (nngp * det.pow(-1.5)) * (4 * self.a**2 * b * b) if want_dot else None
        return out, dot


@declare
class Sign(Activation):
    """sign(x): K' = (2/pi) arcsin(c).

    Its derivative is zero almost everywhere, so, as for a finite network trained by
    autograd (and in Neural Tangents), the NTK through it is zero.
    """

    name = "Sign"

    def fn(self, x):
        return torch.sign(x)

    def scaling_degree(self, degree):
        # sign(s h) = sign(h) for s > 0: scale-invariant
        return 0 if degree is not None and not isinstance(degree, list) else None

    def pair_of_kernel(self, k: Kernel):
        q1, q2 = k.pair_variances()
        return self._pair(k.nngp, q1, q2, k.ntk is not None, watching())

    def pair(self, nngp, q1, q2, want_dot):
        return self._pair(nngp, q1, q2, want_dot, False)

    def _pair(self, nngp, q1, q2, want_dot, watch):
        c = correlation(nngp, outer_sqrt(q1, q2))
        if watch:  # asin has slope 1 / sqrt(1 - c^2)
            flag_pairs(torch.mul(c, c) > 1.0 - SIN_LIMIT**2)
        out = torch.asin(c).mul_(2 / PI)
        # a zero-variance input has sign 0: its variance and covariances vanish
        zero = (q1 == 0) | (q2 == 0)
        if bool(zero.any()):
            out = out.masked_fill(zero.expand_as(out), 0.0)
        return out, (torch.zeros_like(nngp) if want_dot else None)


def _monomial_coeffs(degree: int) -> list[tuple[int, float]]:
    """(k, a_{d,k}^2 k!) for x^d = sum_k a_{d,k} He_k(x), the probabilists' Hermite basis.

    Mehler's formula then gives E[u^d v^d] = sum_k a_{d,k}^2 k! (q1 q2)^{(d-k)/2} K^k.
    """
    out = []
    for k in range(degree % 2, degree + 1, 2):
        m = (degree - k) // 2
        a = math.factorial(degree) / (math.factorial(k) * math.factorial(m) * 2**m)
        out.append((k, a * a * math.factorial(k)))
    return out


def _monomial_kernel(degree: int, nngp, q1, q2):
    if degree == 0:
        return torch.ones_like(nngp)
    prod = q1 * q2
    out = torch.zeros_like(nngp)
    for k, coef in _monomial_coeffs(degree):
        m = (degree - k) // 2
        term = nngp.pow(k) if k else torch.ones_like(nngp)
        if m:
            term = term * prod.pow(m)
        out += coef * term
    return out


@declare
class Monomial(Activation):
    """phi(x) = x^degree: K' = sum_k a_{d,k}^2 k! (q1 q2)^{(d-k)/2} K^k (Hermite expansion);
    Kdot = d^2 E[u^{d-1} v^{d-1}]."""

    name = "Monomial"

    degree: int

    def __post_init__(self):
        d = self.degree
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"`degree` must be a non-negative integer, got {d!r}.")

    def fn(self, x):
        return x**self.degree

    def scaling_degree(self, degree):
        if degree is None or isinstance(degree, list):
            return None
        return self.degree * degree

    def pair(self, nngp, q1, q2, want_dot):
        d = self.degree
        out = _monomial_kernel(d, nngp, q1, q2)
        dot = None
        if want_dot:
            dot = _monomial_kernel(d - 1, nngp, q1, q2) * d * d if d else torch.zeros_like(nngp)
        return out, dot
