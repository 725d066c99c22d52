"""Weight initialisers: draws of unit per-entry variance, scaled by the layer.

Every scheme has ``weight(shape, fan_in, generator, dtype) -> Tensor`` returning a tensor of
``shape`` whose entries have mean 0 and variance 1; the layer then multiplies by
w_std / sqrt(fan_in) (NTK parameterisation), so every scheme gives each layer the same
per-entry variance w_std^2 / fan_in. Weights of shape (out, in, *kernel) are treated as the
(out, fan_in) matrix that multiplies the flattened receptive field.

- :class:`Gaussian`: IID N(0, 1) (the default of ``build``).
- :class:`Uniform`: IID U(-sqrt 3, sqrt 3).
- :class:`GeneralizedGaussian`: IID with density proportional to exp(-|x / a|^beta), a chosen
  for unit variance; beta = 2 is Gaussian, beta < 2 heavier tails (beta = 1 Laplace),
  beta > 2 lighter (beta -> inf uniform).

The pseudo-IID family (Nait Saada, Naderi & Tanner, "Beyond IID weights: sparse and low-rank
deep neural networks are also Gaussian processes", ICLR 2024): weight matrices whose
entries are uncorrelated with variance 1 but not independent. With this scaling the
infinite-width NNGP and NTK are those of the Gaussian IID network:

- :class:`Orthogonal`: sqrt(max(out, in)) Q with Q Haar-distributed with orthonormal rows
  (out <= in) or columns (out > in);
- :class:`LowRank`: A B / sqrt(r), A (out, r) and B (r, in) IID N(0, 1): rank at most r,
  E[W_ij W_kl] = delta_ik delta_jl;
- :class:`Sparse`: exactly round(p * size) non-zero entries (or blocks, with ``block``) at
  uniformly random positions, N(0, 1) / sqrt(p_eff) there, p_eff = kept / count.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from widenets.errors import check_finite_real, check_positive_int


def _as_matrix_shape(shape) -> tuple[int, int]:
    if len(shape) < 2:
        raise ValueError(
            f"matrix initialisers need a weight of at least 2 axes (out, in, ...), got {shape}."
        )
    return shape[0], math.prod(shape[1:])


def draw_weight(scheme, shape, fan_in, generator, dtype, device=None) -> Tensor:
    """Unit-variance weight draw of ``shape`` from ``scheme`` (None: Gaussian IID)."""
    if scheme is None:
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)
    w = scheme.weight(tuple(shape), fan_in, generator, dtype)
    if tuple(w.shape) != tuple(shape):
        raise ValueError(
            f"`init` {scheme!r} returned a weight of shape {tuple(w.shape)}, expected "
            f"{tuple(shape)}."
        )
    return w.to(device=device, dtype=dtype)


def draw_bias(shape, generator, dtype, device=None) -> Tensor:
    """N(0, 1) bias entries (every scheme draws biases Gaussian)."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


class Scheme:
    """Base class of initialisers (any object with a ``weight`` method works in ``build``)."""

    def weight(self, shape, fan_in, generator, dtype) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Gaussian(Scheme):
    """IID standard normal entries (the default)."""

    def weight(self, shape, fan_in, generator, dtype):
        return torch.randn(tuple(shape), generator=generator, dtype=dtype)


class Uniform(Scheme):
    """IID uniform entries on [-sqrt 3, sqrt 3] (variance 1)."""

    def weight(self, shape, fan_in, generator, dtype):
        u = torch.rand(tuple(shape), generator=generator, dtype=dtype)
        return (2 * u - 1) * math.sqrt(3.0)


class GeneralizedGaussian(Scheme):
    """IID entries with density proportional to exp(-|x / a|^beta), unit variance.

    |x| = a G^(1/beta) with G ~ Gamma(1/beta, 1) and a^2 = Gamma(1/beta) / Gamma(3/beta).
    ``beta`` < 2 gives heavier tails than Gaussian, > 2 lighter.
    """

    def __init__(self, beta: float):
        beta = check_finite_real(beta, "beta")
        if beta <= 0:
            raise ValueError(f"`beta` (the shape parameter) must be > 0, got {beta!r}.")
        self.beta = beta

    def __repr__(self):
        return f"GeneralizedGaussian(beta={self.beta})"

    @property
    def scale(self) -> float:
        b = self.beta
        return math.exp(0.5 * (math.lgamma(1 / b) - math.lgamma(3 / b)))

    def weight(self, shape, fan_in, generator, dtype):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        g = rng.gamma(1.0 / self.beta, 1.0, size=tuple(shape))
        sign = rng.integers(0, 2, size=tuple(shape)) * 2 - 1
        return torch.as_tensor(sign * self.scale * g ** (1.0 / self.beta), dtype=dtype)


class Orthogonal(Scheme):
    """Haar-random (partial) orthogonal matrix scaled to unit per-entry variance.

    Q is the QR factor of an IID Gaussian matrix with the signs of R's diagonal absorbed
    (Mezzadri 2007), which makes it Haar distributed. The result is sqrt(max(out, in)) Q.
    """

    def weight(self, shape, fan_in, generator, dtype):
        out, inn = _as_matrix_shape(shape)
        tall = out >= inn
        g = torch.randn((out, inn) if tall else (inn, out), generator=generator, dtype=dtype)
        q, r = torch.linalg.qr(g)
        d = torch.sign(torch.diagonal(r))
        d[d == 0] = 1
        q = q * d
        if not tall:
            q = q.T
        return (q * math.sqrt(max(out, inn))).reshape(tuple(shape))


class LowRank(Scheme):
    """W = A B / sqrt(r): rank at most r, entries uncorrelated of variance 1.

    Args:
        rank: the rank r (an int); must not exceed min(out, fan_in) of any layer it is used
            on, unless ``clip`` (then layers narrower than r are full rank).
        fraction: alternatively, r = ceil(fraction * min(out, fan_in)) per layer, in (0, 1].
        clip: cap an int ``rank`` at min(out, fan_in) instead of raising.
    """

    def __init__(self, rank: int | None = None, *, fraction: float | None = None, clip=False):
        if (rank is None) == (fraction is None):
            raise ValueError("LowRank needs exactly one of `rank` (an int) or `fraction`.")
        if rank is not None:
            rank = check_positive_int(rank, "rank")
        if fraction is not None:
            fraction = check_finite_real(fraction, "fraction")
            if not 0 < fraction <= 1:
                raise ValueError(f"`fraction` must be in (0, 1], got {fraction!r}.")
        self.rank, self.fraction, self.clip = rank, fraction, bool(clip)

    def __repr__(self):
        if self.rank is not None:
            return f"LowRank(rank={self.rank}" + (", clip=True)" if self.clip else ")")
        return f"LowRank(fraction={self.fraction})"

    def rank_for(self, out: int, inn: int) -> int:
        """The rank used for an (out, in) weight matrix."""
        full = min(out, inn)
        if self.fraction is not None:
            return max(1, math.ceil(self.fraction * full - 1e-12))
        if self.rank > full:
            if self.clip:
                return full
            raise ValueError(
                f"`rank`={self.rank} is above the width: a weight of shape ({out}, {inn}) has "
                f"rank at most {full}. Use a smaller rank, `fraction=`, or `clip=True`."
            )
        return self.rank

    def weight(self, shape, fan_in, generator, dtype):
        out, inn = _as_matrix_shape(shape)
        r = self.rank_for(out, inn)
        a = torch.randn((out, r), generator=generator, dtype=dtype)
        b = torch.randn((r, inn), generator=generator, dtype=dtype)
        return (a @ b / math.sqrt(r)).reshape(tuple(shape))


class Sparse(Scheme):
    """A fraction ``density`` of non-zero entries (or blocks), Gaussian, rescaled.

    Args:
        density: p in (0, 1]: round(p * count) entries (or blocks) are kept, at least one,
            chosen uniformly at random; kept entries are N(0, 1) / sqrt(p_eff), p_eff = kept / count
            the probability that an entry is kept, so each entry has variance exactly 1.
        block: None for unstructured sparsity, or (rows, cols) of the blocks of the
            (out, fan_in) matrix kept or zeroed together (edge blocks may be partial).
    """

    def __init__(self, density: float, *, block: tuple[int, int] | None = None):
        density = check_finite_real(density, "density")
        if not 0 < density <= 1:
            raise ValueError(f"`density` must be in (0, 1], got {density!r}.")
        self.density = density
        if block is not None:
            if isinstance(block, int):
                block = (block, block)
            block = tuple(check_positive_int(b, "block") for b in block)
            if len(block) != 2:
                raise ValueError(f"`block` must be a pair (rows, cols), got {block!r}.")
        self.block = block

    def __repr__(self):
        return f"Sparse(density={self.density}" + (f", block={self.block})" if self.block else ")")

    def mask(self, out: int, inn: int, generator) -> tuple[Tensor, float]:
        """Boolean (out, in) mask of kept entries, and the probability an entry is kept."""
        bo, bi = self.block or (1, 1)
        nr, nc = -(-out // bo), -(-inn // bi)
        n = nr * nc
        keep = max(1, round(self.density * n))
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=generator)[:keep]] = True
        m = flat.reshape(nr, nc)
        if self.block:
            m = m.repeat_interleave(bo, 0).repeat_interleave(bi, 1)[:out, :inn]
        return m, keep / n

    def weight(self, shape, fan_in, generator, dtype):
        out, inn = _as_matrix_shape(shape)
        m, p_eff = self.mask(out, inn, generator)
        w = torch.randn((out, inn), generator=generator, dtype=dtype) * m / math.sqrt(p_eff)
        return w.reshape(tuple(shape))
