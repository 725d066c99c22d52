"""The infinite-width kernel record passed from layer to layer.

At infinite width the covariance of a layer's outputs over channels is K (x) I, so the
record stores only the per-channel kernels (Neural Tangents' convention):

- ``nngp[i, j]`` = E[f(x1_i) f(x2_j)] for one output channel (the NNGP kernel);
- ``ntk[i, j]``  = <df(x1_i)/dtheta, df(x2_j)/dtheta> for one channel (the NTK);
- ``cov1[i]``    = E[f(x1_i)^2] and ``cov2[j]`` = E[f(x2_j)^2], the per-input variances that
  nonlinearities need to normalise ``nngp`` into a correlation.

Leading axes are the batch axes (N1, N2); any trailing axes hold spatial positions, in
one of two layouts chosen by the network from its own layers (``full_spatial``):

- diagonal (``full_spatial=False``): ``nngp`` is (N1, N2, S1, ..., Sd), the covariance of
  each position with the *same* position of the other input; ``cov1`` is (N1, S1, ..., Sd).
  This is all that convolutions, nonlinearities and a Flatten readout need (cost linear in
  the number of positions).
- packed (``pairs`` set, diagonal layout only): a set with itself keeps only the pairs
  i <= j of its symmetric kernel, listed: ``nngp`` is (M, 1, S1, ..., Sd), entry m the
  pair (``cov1[pairs[0][m]]``, ``cov2[pairs[1][m]]``), ``cov1`` (the same tensor as
  ``cov2``) the variances of every input the list touches. Half the work of the square.
- full (``full_spatial=True``): ``nngp`` is (N1, N2, S1, S1', ..., Sd, Sd'), every pair of
  positions (axes interleaved as in Neural Tangents); ``cov1`` is (N1, S1, S1', ..., Sd, Sd'),
  the covariance of each input's positions with each other. Needed by pooling and
  attention (cost quadratic in positions).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from widenets import _variance_memo, _workspace


@dataclass(frozen=True, eq=False)
class Kernel:
    """Immutable infinite-width state of a network at one layer.

    Attributes:
        nngp: (N1, N2, ...) NNGP kernel per output channel, or None when not requested.
        ntk: (N1, N2, ...) NTK per output channel, or None when not requested.
        cov1: (N1, ...) variances E[f(x1)^2].
        cov2: (N2, ...) variances E[f(x2)^2] (the same tensor as cov1 when x2 is x1).
        shape1, shape2: per-example shapes of the finite network's activations at this
            layer, channels first; the channel count is the finite width (used by the
            standard parameterisation, whose NTK depends on it).
        x1_is_x2: the kernel is of a set of inputs with itself.
        is_gaussian: the layer's outputs are a Gaussian process at infinite width (true
            after an affine layer): the closed forms of nonlinearities assume it.
        is_input: the kernel is still the input kernel (no layer applied yet).
        full_spatial: the spatial layout (see the module docstring).
        diagonal_offset: ``x1[r]`` and ``x2[r + diagonal_offset]`` are the same input
            (None: no input is shared); layers such as Dropout treat those entries apart.
        pairs: the packed layout (see the module docstring): the (M,) indices into
            ``cov1`` and ``cov2`` of the inputs of each listed pair, or None.
        mask1, mask2: boolean (N1, S1, ..., Sd) and (N2, ...): True where a position of an
            input is masked (padding of a variable-length input, ``widenets.layers.masking``);
            None when nothing is masked. Indexed as ``cov1`` / ``cov2`` (packed layout too);
            ``mask2 is mask1`` when ``cov2 is cov1``.
        pattern1, pattern2: per-input graph patterns of x1 and x2 (dense (N, V, V) or edge
            lists (N, E, 2), ``widenets.layers.graph.Aggregate``), or None; indexed as
            ``cov1`` / ``cov2``.
    """

    nngp: Tensor | None
    ntk: Tensor | None
    cov1: Tensor
    cov2: Tensor
    shape1: tuple[int, ...]
    shape2: tuple[int, ...]
    x1_is_x2: bool = False
    is_gaussian: bool = False
    is_input: bool = True
    full_spatial: bool = False
    diagonal_offset: int | None = None
    pairs: tuple[Tensor, Tensor] | None = None
    mask1: Tensor | None = None
    mask2: Tensor | None = None
    pattern1: Tensor | None = None
    pattern2: Tensor | None = None

    def replace(self, **changes) -> Kernel:
        """A copy with some fields changed (the record itself never changes)."""
        return dataclasses.replace(self, **changes)

    @property
    def n_spatial(self) -> int:
        """Number of spatial axes carried per batch pair (0 for fully-connected nets)."""
        if self.full_spatial:
            return (self.cov1.ndim - 1) // 2
        return self.cov1.ndim - 1

    def variances(self, which: int = 1) -> Tensor:
        """Per-position variances (N, S1, ..., Sd) of x1 (``which=1``) or x2, in both layouts."""
        cov = self.cov1 if which == 1 else self.cov2
        return spatial_diagonal(cov, 1) if self.full_spatial else cov

    def pair_variances(self) -> tuple[Tensor, Tensor]:
        """Variances of x1 and x2, shaped to broadcast against ``nngp``.

        Diagonal layout: (N1, 1, S...) and (1, N2, S...) (packed: (M, 1, S...) both). Full
        layout: the variance of position s of x1 and of position s' of x2, (N1, 1, S1, 1, ...)
        and (1, N2, 1, S1', ...).
        """
        if not self.full_spatial:
            return self.gather_pairs(self.cov1, self.cov2)
        q1 = self.variances(1)
        q2 = q1 if self.cov2 is self.cov1 else self.variances(2)
        return interleave(q1, 0).unsqueeze(1), interleave(q2, 1).unsqueeze(0)

    def gather_pairs(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Per-input tensors a (N1, ...) of x1 and b (N2, ...) of x2 shaped to broadcast
        against a diagonal-layout ``nngp``: (N1, 1, ...) and (1, N2, ...), or in the packed
        layout the entries of each listed pair, (M, 1, ...) both."""
        if self.pairs is None:
            return a.unsqueeze(1), b.unsqueeze(0)
        i, j = self.pairs
        return a.index_select(0, i).unsqueeze(1), b.index_select(0, j).unsqueeze(1)

    def self_pair_variances(self, which: int = 1) -> tuple[Tensor, Tensor]:
        """Full layout: variances broadcasting against ``cov1`` (or ``cov2``): position s and s'."""
        q = self.variances(which)
        return interleave(q, 0), interleave(q, 1)

    # ----- the layout API: a layer's kernel map says only its maths -------------------------
    def map(
        self,
        fn: Callable[[Tensor, int], Tensor],
        *,
        ntk: Callable[[Tensor, Tensor], Tensor] | None = None,
        cov: Callable[[Tensor, int], Tensor] | None = None,
        **changes,
    ) -> Kernel:
        """The record after a layer that maps each kernel tensor, in every layout.

        ``fn(t, n_batch)`` maps ``nngp`` (and ``ntk``, unless ``ntk`` is given) with
        ``n_batch = 2`` leading batch axes ((N1, N2), or (M, 1) in the packed layout) and
        the variances ``cov1``, ``cov2`` with ``n_batch = 1`` (unless ``cov`` is given);
        the spatial axes that follow are in the record's layout (``full_spatial``).
        ``ntk(theta, nngp)``: the new NTK from the input NTK and the new NNGP.
        ``cov(t, which)``: the new variances of x1 (``which`` 1) or x2 (2).
        An NTK that is not computed stays None and ``cov2`` stays the same tensor as
        ``cov1`` when it was (computed once); ``changes`` are other fields to set.
        """
        nngp = None if self.nngp is None else fn(self.nngp, 2)
        if self.ntk is None:
            new_ntk = None
        else:
            new_ntk = fn(self.ntk, 2) if ntk is None else ntk(self.ntk, nngp)
        cov1, cov2 = self.map_variances(cov or (lambda t, _: fn(t, 1)))
        return self.replace(nngp=nngp, ntk=new_ntk, cov1=cov1, cov2=cov2, **changes)

    def map_variances(self, fn: Callable[[Tensor, int], Tensor]) -> tuple[Tensor, Tensor]:
        """(fn(cov1, 1), fn(cov2, 2)), the second the same tensor as the first when
        ``cov2 is cov1`` (a set with itself: computed once); within a full-layout tile of a
        kernel evaluation taken from the tensors an earlier tile of the same inputs mapped
        (``widenets._variance_memo``)."""
        memo = _variance_memo.map_variances(self, fn)
        if memo is not None:
            return memo
        cov1 = fn(self.cov1, 1)
        return cov1, cov1 if self.cov2 is self.cov1 else fn(self.cov2, 2)

    @staticmethod
    def merge(ks: list[Kernel], fn: Callable[[list[Tensor]], Tensor], **changes) -> Kernel:
        """The record merging branches ``ks`` field by field: ``fn([k.nngp for k in ks])``
        and likewise ``ntk`` (None stays None), ``cov1`` and ``cov2`` (the same tensor as
        ``cov1`` when it was); the other fields from ``ks[0]`` unless in ``changes``."""
        k0 = ks[0]
        cov1 = fn([k.cov1 for k in ks])
        return k0.replace(
            nngp=fn([k.nngp for k in ks]),
            ntk=None if k0.ntk is None else fn([k.ntk for k in ks]),
            cov1=cov1,
            cov2=cov1 if k0.cov2 is k0.cov1 else fn([k.cov2 for k in ks]),
            **changes,
        )

    def scale_self_pairs(self, t: Tensor, factor: float) -> Tensor:
        """A pair tensor (like ``nngp``) with the entries of an input with itself at the
        same position multiplied by ``factor``, in every layout: the listed pairs (i, i)
        (packed), the entries ``diagonal_offset`` marks (diagonal), and there only each
        position with itself (full). A copy when any entry changes, else ``t`` itself."""
        if self.pairs is not None:
            r = torch.nonzero(self.pairs[0] == self.pairs[1]).squeeze(1)
            t = t.clone()
            t[r] = t[r].mul_(factor)
            return t
        off = self.diagonal_offset
        if off is None:
            return t
        lo, hi = max(0, -off), min(t.shape[0], t.shape[1] - off)
        if hi <= lo:
            return t
        r = torch.arange(lo, hi)
        t = t.clone()
        block = t[r, r + off]  # (n, spatial...)
        if self.full_spatial:
            spatial_diagonal(block, 1).mul_(factor)
        else:
            block.mul_(factor)
        t[r, r + off] = block
        return t

    def scale_self_variances(self, t: Tensor, factor: float) -> Tensor:
        """Variances (like ``cov1``) with each position's variance times ``factor`` (the
        full layout's covariances of distinct positions unchanged)."""
        if not self.full_spatial:
            return t * factor
        t = t.clone()
        spatial_diagonal(t, 1).mul_(factor)
        return t

    def __repr__(self) -> str:
        def shape(t):
            return None if t is None else tuple(t.shape)

        return (
            f"Kernel(nngp={shape(self.nngp)}, ntk={shape(self.ntk)}, cov1={shape(self.cov1)}, "
            f"cov2={shape(self.cov2)}, dtype={self.cov1.dtype})"
        )


def spatial_diagonal(t: Tensor, n_batch: int) -> Tensor:
    """(B..., S1, S1', ..., Sd, Sd') -> (B..., S1, ..., Sd): each position with itself."""
    d = (t.ndim - n_batch) // 2
    for _ in range(d):
        t = t.diagonal(0, n_batch, n_batch + 1)
    return t


def interleave(q: Tensor, slot: int) -> Tensor:
    """(N, S1, ..., Sd) -> (N, S1, 1, S2, 1, ...) (slot 0) or (N, 1, S1, 1, S2, ...) (slot 1)."""
    shape = [q.shape[0]]
    for s in q.shape[1:]:
        shape += [s, 1] if slot == 0 else [1, s]
    return q.reshape(shape)


def _full_gram(a: Tensor, b: Tensor, batch: str) -> Tensor:
    """Channel-averaged products of every position of a with every position of b."""
    d = a.ndim - 2
    letters = "abcdef"[:d]
    upper = letters.upper()
    pairs = "".join(x + y for x, y in zip(letters, upper, strict=True))
    first, second = ("i", "j") if batch == "ij" else ("i", "i")
    out = torch.einsum(f"{first}z{letters},{second}z{upper}->{batch}{pairs}", a, b)
    return out / a.shape[1]


#: up to this many input channels the diagonal-layout input Gram is formed by broadcast
#: products, one pass per channel, rather than a batched matrix product over positions
SMALL_CHANNELS = 8


def input_kernel(
    x1: Tensor,
    x2: Tensor,
    *,
    x1_is_x2: bool = False,
    diagonal_offset: int | None = None,
    compute_ntk: bool = True,
    cov1: Tensor | None = None,
    cov2: Tensor | None = None,
    full_spatial: bool = False,
    gram_exponent: int = 0,
) -> Kernel:
    """Kernel of the raw inputs: nngp = x1 . x2 / C over the channel axis (axis 1).

    Inputs are (N, C) or (N, C, *spatial): spatial positions are kept (one covariance per
    position, as convolutions need), channels are averaged. ``diagonal_offset`` marks that
    ``x1[r]`` and ``x2[r + offset]`` are the same input: those entries are set to the exact
    variance so that the diagonal of a kernel of a set with itself is exact. ``cov1`` and
    ``cov2`` may be passed when already computed (see :func:`input_variances`).
    ``full_spatial`` keeps every pair of positions (see the module docstring).
    ``gram_exponent``: the products are multiplied by 2^gram_exponent (exactly, in steps),
    for inputs passed as 2^-e multiples of inputs whose Gram would overflow on the way
    (``widenets.numerics.prepare_inputs``).
    """
    channels = x1.shape[1]
    full_spatial = full_spatial and x1.ndim > 2
    if full_spatial:
        nngp = _full_gram(x1, x2, "ij")
    elif x1.ndim == 2:  # the 1/C scaling inside the matrix product (no extra pass)
        # into a tile buffer of the call (``widenets._workspace``: no fresh pages per
        # block), the start of one whose size is a power of two (blocks of many sizes,
        # the stripes of a triangle, then share a few buffers)
        n = x1.shape[0] * x2.shape[0]
        if _workspace.usable(x1, x2) and x1.dtype == x2.dtype and n > 1:
            buf = _workspace.empty((1 << (n - 1).bit_length(),), x1.dtype, x1.device)
            buf = buf[:n].view(x1.shape[0], x2.shape[0])
            nngp = torch.addmm(buf, x1, x2.T, beta=0.0, alpha=1.0 / channels, out=buf)
        else:
            nngp = torch.addmm(x1.new_empty(()), x1, x2.T, beta=0.0, alpha=1.0 / channels)
    elif channels <= SMALL_CHANNELS:  # a product of few channels: broadcast multiply-adds
        # (the einsum's batched matmul over positions with K = 3, and its division, were
        # 12% of a 5-layer CNN-VEC kernel of 100 8x8 images in torch.profiler)
        scaled = x1 * (1.0 / channels)
        nngp = torch.mul(scaled[:, None, 0], x2[None, :, 0])
        for c in range(1, channels):
            nngp.addcmul_(scaled[:, None, c], x2[None, :, c])
    else:
        nngp = torch.einsum("ic...,jc...->ij...", x1, x2) / channels
    if gram_exponent:
        _scale_exactly(nngp, gram_exponent)
    if cov1 is None:
        cov1 = input_variances(x1, full_spatial, gram_exponent)
    if cov2 is None:
        cov2 = cov1 if x1_is_x2 and x1 is x2 else input_variances(x2, full_spatial, gram_exponent)
    if diagonal_offset is not None:
        r = torch.arange(max(0, -diagonal_offset), min(x1.shape[0], x2.shape[0] - diagonal_offset))
        if len(r):
            nngp[r, r + diagonal_offset] = cov1[r]
    # the input NTK is zero: a broadcast view, never written (layers do not work in place)
    ntk = nngp.new_zeros(()).expand_as(nngp) if compute_ntk else None
    return Kernel(
        nngp=nngp,
        ntk=ntk,
        cov1=cov1,
        cov2=cov2,
        shape1=tuple(x1.shape[1:]),
        shape2=tuple(x2.shape[1:]),
        x1_is_x2=x1_is_x2,
        is_gaussian=False,
        is_input=True,
        full_spatial=full_spatial,
        diagonal_offset=diagonal_offset,
    )


def input_variances(x: Tensor, full_spatial: bool = False, gram_exponent: int = 0) -> Tensor:
    """Per-input variances x . x / C over the channel axis, spatial axes kept; with
    ``full_spatial`` the covariance of every pair of positions of each input (times
    2^gram_exponent, see :func:`input_kernel`)."""
    if full_spatial and x.ndim > 2:
        out = _full_gram(x, x, "i")
    else:
        out = (x * x).sum(1) / x.shape[1]
    return _scale_exactly(out, gram_exponent) if gram_exponent else out


def _scale_exactly(t: Tensor, exponent: int) -> Tensor:
    """t * 2^exponent in place, in steps of powers of two that t's dtype represents."""
    step = math.frexp(torch.finfo(t.dtype).max)[1] - 2  # 2^step is finite in t's dtype
    while exponent:
        e = max(-step, min(step, exponent))
        t.mul_(2.0**e)
        exponent -= e
    return t


def slice_pairs(k: Kernel, r0: int, r1: int, c0: int = 0) -> Kernel:
    """The kernel of x1[r0:r1] against x2[c0:] (views, no copy)."""
    offset = k.diagonal_offset

    def rows(t, a, b=None):
        return None if t is None else t[a:b]

    return k.replace(
        nngp=k.nngp[r0:r1, c0:],
        ntk=None if k.ntk is None else k.ntk[r0:r1, c0:],
        cov1=k.cov1[r0:r1],
        cov2=k.cov2[c0:],
        x1_is_x2=False,
        diagonal_offset=None if offset is None else offset + r0 - c0,
        mask1=rows(k.mask1, r0, r1),
        mask2=rows(k.mask2, c0),
        pattern1=rows(k.pattern1, r0, r1),
        pattern2=rows(k.pattern2, c0),
    )
