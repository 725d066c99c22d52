"""The remaining activations of Neural Tangents' ``stax``, with their exact kernels.

For (u, v) ~ N(0, [[q1, K], [K, q2]]) each layer gives K' = E[phi(u) phi(v)] and the NTK
factor Kdot = E[phi'(u) phi'(v)] (= dK'/dK, Price's theorem), with Neural Tangents 0.6.5's
conventions (``bench/nt_parity.py`` compares the two libraries):

- ``Exp(a, b)``: a exp(b x); K' = a^2 exp(b^2 ((q1 + q2)/2 + K)), Kdot = b^2 K'.
- ``Gabor()``: exp(-x^2) sin(x); a Gaussian integral (see :class:`Gabor`).
- ``Rbf(gamma)``: sqrt(2) sin(sqrt(2 gamma) x + pi/4); K' = exp(-gamma (q1 + q2 - 2K)),
  Kdot = 2 gamma K'.
- ``Sigmoid_like()``: 0.5 erf(x / 2.4020563531719796) + 0.5, an :class:`Erf`.
- ``RectifiedMonomial(n)``: x^n for x >= 0, else 0; the arc-cosine kernel of degree n (Cho &
  Saul 2009).
- ``Polynomial(coef)``: sum_i coef[i] x^i; a Hermite expansion, exact at any variance.
- ``Hermite(n)``: He_n(x) / sqrt(n!); K' = K^n for unit-variance pre-activations only.
- ``ExpNormalized(gamma, shift)``: sqrt(q1 q2) exp(gamma (c + shift)), c = K / sqrt(q1 q2)
  (Shankar et al. 2020); its finite face normalises over the channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from widenets.errors import check_finite_real
from widenets.layers.activations import (
    PI,
    Activation,
    Erf,
    correlation,
    outer_sqrt,
)
from widenets.layers.base import BuildContext, declare, linear_degree


def _check_degree(degree, name: str = "degree") -> int:
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {degree!r}.")
    return degree


@declare
class Exp(Activation):
    """phi(x) = a exp(b x): K' = a^2 exp(b^2 ((q1 + q2)/2 + K)) and Kdot = a^2 b^2
    exp(b^2 ((q1 + q2)/2 + K)) (the moment generating function of u + v)."""

    name = "Exp"

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self):
        self.a = check_finite_real(self.a, "a")
        self.b = check_finite_real(self.b, "b")

    def fn(self, x):
        return self.a * torch.exp(self.b * x)

    def pair(self, nngp, q1, q2, want_dot):
        b2 = self.b**2
        e = torch.exp(((q1 + q2) / 2 + nngp) * b2)
        out = e * self.a**2
        dot = e * (self.a**2 * b2) if want_dot else None
        return out, dot


@declare
class Gabor(Activation):
    """phi(x) = exp(-x^2) sin(x).

    With s = q1 + q2 and D = det(I + 2 Sigma) = 1 + 2 s + 4 (q1 q2 - K^2),
    E_pm = exp((1 + s pm 2K) / (2D)):

        K'   = e^{-1/2} (E_+ - E_-) / (2 sqrt(D)),
        Kdot = e^{-1/2} [E_+ (D + 4K (D + 1 + s + 2K)) + E_- (D - 4K (D + 1 + s - 2K))]
               / (2 D^{5/2}),

    from E[exp(-u^2 - v^2 + i t.(u, v))] = D^{-1/2} exp(-t' Sigma (I + 2 Sigma)^{-1} t / 2)
    and sin u sin v = (cos(u - v) - cos(u + v)) / 2; Kdot = dK'/dK.
    """

    name = "Gabor"

    def fn(self, x):
        return torch.exp(-x * x) * torch.sin(x)

    def pair(self, nngp, q1, q2, want_dot):
        s = q1 + q2
        gap = (q1 * q2 - nngp * nngp).clamp_min(0.0)  # exactly 0 on a set's own diagonal
        det = s * 2 + 1 + gap * 4
        e_plus = torch.exp((1 + s + 2 * nngp) / (2 * det))
        e_minus = torch.exp((1 + s - 2 * nngp) / (2 * det))
        half = math.exp(-0.5) / 2
        out = (e_plus - e_minus) * half / det.sqrt()
        dot = None
        if want_dot:
            k4 = 4 * nngp
            plus = e_plus * (det + k4 * (det + 1 + s + 2 * nngp))
            minus = e_minus * (det - k4 * (det + 1 + s - 2 * nngp))
            dot = (plus + minus) * half / det.pow(2.5)
        return out, dot


@declare
class Rbf(Activation):
    """phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4), whose NNGP is the squared-exponential
    kernel of the pre-activations: K' = exp(-gamma (q1 + q2 - 2K)) = exp(-gamma E[(u - v)^2]);
    Kdot = 2 gamma K'. (A :class:`Sin` with amplitude sqrt(2), frequency sqrt(2 gamma),
    phase pi/4, whose second exponential vanishes since cos(pi/2) = 0.)"""

    name = "Rbf"

    gamma: float = 1.0

    def __post_init__(self):
        self.gamma = check_finite_real(self.gamma, "gamma")
        if self.gamma <= 0:
            raise ValueError(f"`gamma` must be positive, got {self.gamma}.")

    def fn(self, x):
        return math.sqrt(2.0) * torch.sin(math.sqrt(2.0 * self.gamma) * x + PI / 4)

    def pair(self, nngp, q1, q2, want_dot):
        out = torch.exp((2 * nngp - q1 - q2) * self.gamma)
        return out, (out * (2 * self.gamma) if want_dot else None)


#: Neural Tangents' scale of ``Sigmoid_like``: erf(x / SIGMOID_LIKE_SCALE) fits the
#: logistic function on [-5, 5] in least squares
SIGMOID_LIKE_SCALE = 2.4020563531719796


def Sigmoid_like() -> Erf:  # noqa: N802 - Neural Tangents' name
    """0.5 erf(x / 2.4020563531719796) + 0.5, a sigmoid with an exact kernel (an
    :class:`Erf` with a = 0.5, b = 1 / 2.4020563531719796, c = 0.5, as in Neural Tangents)."""
    return Erf(0.5, 1.0 / SIGMOID_LIKE_SCALE, 0.5)


def _poly_mul_x(p: list[float]) -> list[float]:
    return [0.0] + p


def _poly_deriv(p: list[float]) -> list[float]:
    return [i * a for i, a in enumerate(p)][1:] or [0.0]


def _poly_add(p: list[float], q: list[float]) -> list[float]:
    n = max(len(p), len(q))
    return [(p[i] if i < len(p) else 0.0) + (q[i] if i < len(q) else 0.0) for i in range(n)]


def _poly_scale(p: list[float], a: float) -> list[float]:
    return [a * x for x in p]


def arccos_polynomials(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients (lowest first) of P_n, Q_n with J_n(theta) = P_n(c) (pi - theta) +
    Q_n(c) sin(theta), c = cos(theta), the angular part of the arc-cosine kernel.

    J_n = (-1)^n sin^{2n+1} (1/sin d/dtheta)^n ((pi - theta)/sin) = sin^{2n+1} d^n/dc^n
    [arccos(-c) (1 - c^2)^{-1/2}]; differentiating P arccos(-c) (1 - c^2)^{-(2k+1)/2} +
    Q (1 - c^2)^{-k} gives P_{k+1} = (1 - c^2) P_k' + (2k + 1) c P_k and Q_{k+1} = P_k +
    (1 - c^2) Q_k' + 2k c Q_k, from P_0 = 1, Q_0 = 0 (so J_1 = sin + (pi - theta) c).
    """
    p, q = [1.0], [0.0]
    one_minus_c2 = [1.0, 0.0, -1.0]

    def times(a, b):
        out = [0.0] * (len(a) + len(b) - 1)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                out[i + j] += x * y
        return out

    for k in range(n):
        p_next = _poly_add(
            times(one_minus_c2, _poly_deriv(p)), _poly_scale(_poly_mul_x(p), 2 * k + 1)
        )
        q_next = _poly_add(
            _poly_add(p, times(one_minus_c2, _poly_deriv(q))), _poly_scale(_poly_mul_x(q), 2 * k)
        )
        p, q = p_next, q_next
    return tuple(p), tuple(q)


def _horner(coef, x: Tensor) -> Tensor:
    """sum_i coef[i] x^i (coefficients lowest first)."""
    out = torch.full_like(x, float(coef[-1]))
    for a in reversed(coef[:-1]):
        out = out * x + float(a)
    return out


def _arccos_kernel(n: int, c: Tensor, s12: Tensor) -> Tensor:
    """E[u_+^n v_+^n] = (q1 q2)^{n/2} J_n(theta) / (2 pi), theta = arccos(c)."""
    p, q = arccos_polynomials(n)
    pi_minus_theta = torch.acos(-c)
    sin_theta = (1.0 - c * c).clamp_min(0.0).sqrt()
    j = _horner(p, c) * pi_minus_theta + _horner(q, c) * sin_theta
    return j * s12.pow(n) / (2 * PI)


@declare
class RectifiedMonomial(Activation):
    """phi(x) = x^degree for x >= 0, else 0 (degree 1 is ReLU, 0 the step function).

    K' = (q1 q2)^{n/2} J_n(theta) / (2 pi), the arc-cosine kernel of degree n (Cho & Saul
    2009; J_n from :func:`arccos_polynomials`), and Kdot = n^2 (q1 q2)^{(n-1)/2}
    J_{n-1}(theta) / (2 pi). For degree 0 the derivative is zero almost everywhere, so the
    NTK through it is zero (as for :class:`Sign`, and in Neural Tangents).
    """

    name = "RectifiedMonomial"

    degree: int

    def __post_init__(self):
        self.degree = _check_degree(self.degree)

    def fn(self, x):
        return torch.where(x >= 0, x**self.degree, torch.zeros_like(x))

    def scaling_degree(self, degree):
        if degree is None or isinstance(degree, list):
            return None
        return self.degree * degree

    def pair(self, nngp, q1, q2, want_dot):
        n = self.degree
        s12 = outer_sqrt(q1, q2)
        c = correlation(nngp, s12)
        out = _arccos_kernel(n, c, s12)
        dot = None
        if want_dot:
            dot = _arccos_kernel(n - 1, c, s12) * n * n if n else torch.zeros_like(nngp)
        return out, dot


def _hermite_terms(coef: tuple[float, ...]) -> list[tuple[int, tuple[float, ...]]]:
    """For phi(x) = sum_i coef[i] x^i: (l, coefficients of S_l) for each l with S_l != 0,
    S_l(q) = sum_i coef[2i + l] (2i + l)! / (2^i i!) q^i, so that phi(sqrt(q) z) =
    sum_l S_l(q) q^{l/2} He_l(z) / l! (x^m = sum_i m! / (2^i i! (m - 2i)!) He_{m-2i})."""
    out = []
    for lev in range(len(coef)):
        s = []
        for i in range((len(coef) - 1 - lev) // 2 + 1):
            m = 2 * i + lev
            s.append(coef[m] * math.factorial(m) / (2**i * math.factorial(i)))
        if any(s):
            out.append((lev, tuple(s)))
    return out


def _polynomial_kernel(terms, nngp: Tensor, q1: Tensor, q2: Tensor, derivative: bool) -> Tensor:
    """sum_l S_l(q1) S_l(q2) K^l / l! (Mehler: E[He_l(z1) He_m(z2)] = l! c^l delta_lm), or
    with ``derivative`` its derivative in K, sum_l S_l(q1) S_l(q2) K^{l-1} / (l-1)!."""
    out = torch.zeros_like(nngp)
    for lev, s in terms:
        if derivative and lev == 0:
            continue
        power = lev - 1 if derivative else lev
        term = _horner(s, q1) * _horner(s, q2) / math.factorial(power)
        out = out + (term * nngp.pow(power) if power else term)
    return out


@declare
class Polynomial(Activation):
    """phi(x) = coef[0] + coef[1] x + ... + coef[n] x^n (numpy.polynomial's order).

    Exact at any variance by the Hermite expansion: with S_l(q) = sum_i coef[2i + l]
    (2i + l)! / (2^i i!) q^i, K' = sum_l S_l(q1) S_l(q2) K^l / l! and Kdot = dK'/dK =
    sum_{l >= 1} S_l(q1) S_l(q2) K^{l-1} / (l - 1)! (Neural Tangents' formula, written
    without dividing by sqrt(q1 q2)).
    """

    name = "Polynomial"

    coef: tuple[float, ...]

    def __post_init__(self):
        coef = self.coef
        if isinstance(coef, (str, bytes)) or not hasattr(coef, "__iter__"):
            raise ValueError(f"`coef` must be a sequence of real numbers, got {coef!r}.")
        coef = tuple(coef)
        if not coef:
            raise ValueError("`coef` must hold at least one coefficient, got an empty sequence.")
        self.coef = tuple(check_finite_real(a, f"coef[{i}]") for i, a in enumerate(coef))
        self._terms = _hermite_terms(self.coef)

    def fn(self, x):
        return _horner(self.coef, x)

    def pair(self, nngp, q1, q2, want_dot):
        out = _polynomial_kernel(self._terms, nngp, q1, q2, False)
        dot = _polynomial_kernel(self._terms, nngp, q1, q2, True) if want_dot else None
        return out, dot


#: how far (relative, in units of the dtype's sqrt(eps)) a variance may be from 1 for Hermite
HERMITE_TOLERANCE = 16.0


@declare
class Hermite(Activation):
    """phi(x) = He_n(x) / sqrt(n!), the probabilists' Hermite polynomial normalised to unit
    norm under N(0, 1): for unit-variance pre-activations K' = K^n and Kdot = n K^{n-1}
    (Mehler's formula; Neural Tangents' convention).

    Its pre-activations must have variance 1 (e.g. inputs with ||x||^2 / d = 1 and
    w_std^2 + b_std^2 = 1): any other variance is an error here, where Neural Tangents only
    warns. (``Polynomial`` with He_n's coefficients gives the exact kernel at any variance.)
    """

    name = "Hermite"

    degree: int

    def __post_init__(self):
        self.degree = _check_degree(self.degree)

    def fn(self, x):
        n = self.degree
        prev, cur = torch.ones_like(x), x
        if n == 0:
            return prev
        for k in range(1, n):  # He_{k+1} = x He_k - k He_{k-1}
            prev, cur = cur, x * cur - k * prev
        return cur / math.sqrt(math.factorial(n))

    def _check_unit(self, q: Tensor) -> None:
        tol = HERMITE_TOLERANCE * math.sqrt(torch.finfo(q.dtype).eps)
        q = q.detach()
        if bool(((q - 1.0).abs() > tol).any()):
            raise ValueError(
                f"{self!r} needs pre-activations of variance 1 (e.g. inputs with "
                f"||x||^2 / d = 1 and w_std^2 + b_std^2 = 1), got variances from "
                f"{float(q.min()):.6g} to {float(q.max()):.6g}."
            )

    def pair(self, nngp, q1, q2, want_dot):
        self._check_unit(q1)
        if q2 is not q1:
            self._check_unit(q2)
        n = self.degree
        out = nngp.pow(n) if n else torch.ones_like(nngp)
        dot = None
        if want_dot:
            dot = nngp.pow(n - 1) * n if n > 1 else torch.full_like(nngp, float(n))
        return out, dot


@declare
class ExpNormalized(Activation):
    """The "Gaussian normalised kernel" of Shankar et al. 2020 ("Neural Kernels Without
    Tangents", p. 6): with c = K / sqrt(q1 q2),

        K' = sqrt(q1 q2) exp(gamma (c + shift)),    Kdot = gamma exp(gamma (c + shift)).

    Neural Tangents has only the kernel. The finite face here is the network it is the limit
    of: h -> s exp(sqrt(gamma) h / s + gamma (shift - 1) / 2) with s^2 the mean of h^2 over
    the channels of each example (and position), i.e. a * exp(b z) of the normalised
    pre-activation z = h / s, rescaled by s. (The gradient through s vanishes with width.)
    c is clipped to [-1, 1] (Neural Tangents' ``do_clip=True``; without clipping, rounding
    can put it a few ulp outside).
    """

    name = "ExpNormalized"

    gamma: float = 1.0
    shift: float = -1.0

    def __post_init__(self):
        self.gamma = check_finite_real(self.gamma, "gamma")
        self.shift = check_finite_real(self.shift, "shift")
        if self.gamma < 0:
            raise ValueError(f"`gamma` must be non-negative, got {self.gamma}.")

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    def fn(self, x):
        raise NotImplementedError(
            "ExpNormalized is not elementwise: its finite face normalises over the channel "
            "axis (use net.build, which makes ExpNormalizedModule)."
        )

    def pair(self, nngp, q1, q2, want_dot):
        s12 = outer_sqrt(q1, q2)
        e = torch.exp((correlation(nngp, s12) + self.shift) * self.gamma)
        return s12 * e, (e * self.gamma if want_dot else None)

    def make_module(self, in_shape, ctx: BuildContext):
        return ExpNormalizedModule(self.gamma, self.shift)


class ExpNormalizedModule(nn.Module):
    """s exp(sqrt(gamma) h / s + gamma (shift - 1) / 2), s = sqrt(mean of h^2 over dim 1)."""

    def __init__(self, gamma: float, shift: float):
        super().__init__()
        self.gamma = gamma
        self.shift = shift

    def forward(self, h):
        s = h.pow(2).mean(1, keepdim=True).sqrt().clamp_min(torch.finfo(h.dtype).tiny)
        return s * torch.exp(h / s * math.sqrt(self.gamma) + self.gamma * (self.shift - 1) / 2)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, shift={self.shift}"


__all__ = [
    "Exp",
    "ExpNormalized",
    "ExpNormalizedModule",
    "Gabor",
    "Hermite",
    "Polynomial",
    "RectifiedMonomial",
    "Rbf",
    "Sigmoid_like",
    "arccos_polynomials",
]
