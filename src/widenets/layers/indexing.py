"""Index: NumPy-style indexing of the spatial axes, both faces (Neural Tangents' ``stax.Index``).

Indexing is a selection of positions, so the kernel is indexed the same way: in the
diagonal layout K'[..., p] = K[..., idx(p)], in the full layout both positions of every pair,
K'[p, p'] = K[idx(p), idx(p')]. An integer removes its axis (when none is left the kernel
is that of a (C,) feature vector); slices may have any step, negative included. The channel
axis (infinitely many channels) may not be indexed; the batch axis is not part of the
per-example index (Neural Tangents' ``idx`` includes it; here ``idx`` starts at channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from widenets.errors import shape_str
from widenets.kernel import Kernel
from widenets.layers.base import BuildContext, Layer, declare, linear_degree


@dataclass(frozen=True)
class Span:
    """A hashable ``slice`` (``slice`` objects are not hashable before Python 3.12)."""

    start: int | None
    stop: int | None
    step: int | None

    def indices(self, size: int) -> list[int]:
        return list(range(*slice(self.start, self.stop, self.step).indices(size)))

    def __repr__(self) -> str:
        return f"slice({self.start}, {self.stop}, {self.step})"


class _Slice:
    """``Slice[:, 1:4, ::-1]`` is the index ``(slice(None), slice(1, 4), slice(None, None, -1))``
    (as Neural Tangents' ``stax.Slice``)."""

    def __getitem__(self, idx):
        return idx


Slice = _Slice()


def _entry(e, where: str):
    if e is Ellipsis:
        return e
    if isinstance(e, slice):
        for part in (e.start, e.stop, e.step):
            if part is not None and (isinstance(part, bool) or not isinstance(part, int)):
                raise ValueError(f"{where}: slice bounds must be ints or None, got {e!r}.")
        if e.step == 0:
            raise ValueError(f"{where}: slice step must not be zero, got {e!r}.")
        return Span(e.start, e.stop, e.step)
    if isinstance(e, Span):
        return e
    if isinstance(e, int) and not isinstance(e, bool):
        return int(e)
    raise ValueError(
        f"{where}: entries must be ints, slices or ..., got {type(e).__name__}: {e!r}."
    )


def _take(t: Tensor, axis: int, entry) -> Tensor:
    """``t`` indexed along ``axis`` by an int (axis removed) or a Span (a copy or a view)."""
    if isinstance(entry, int):
        return t.select(axis, entry)
    idx = entry.indices(t.shape[axis])
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return t.narrow(axis, idx[0], len(idx))
    return t.index_select(axis, torch.tensor(idx, device=t.device))


def index_mask(mask: Tensor, spatial: tuple) -> Tensor:
    """A mask (N, *spatial) indexed by the spatial entries of an index."""
    for i in reversed(range(len(spatial))):
        mask = _take(mask, 1 + i, spatial[i])
    return mask


@declare
class Index(Layer):
    """Indexing of the per-example activations (C, *spatial), channels first.

    Args:
        idx: a tuple of ints, slices and at most one ``...``, as in ``x[:, idx]`` of a batch;
            the first entry (channels) must be ``:`` (or covered by ``...``). Write it with
            ``wn.Slice``: ``Index(wn.Slice[:, 2:6, ::-1])`` crops the first spatial axis and
            reverses the second; ``Index(wn.Slice[..., 0])`` drops the last axis.
    """

    name = "Index"

    idx: tuple

    def __post_init__(self):
        idx = self.idx if isinstance(self.idx, tuple) else (self.idx,)
        idx = tuple(_entry(e, "`idx` of Index") for e in idx)
        if sum(e is Ellipsis for e in idx) > 1:
            raise ValueError(f"`idx` of Index may hold at most one ..., got {self.idx!r}.")
        self.idx = idx

    def _spatial(self, in_shape) -> tuple:
        """One entry per spatial axis (``Span(None, None, None)`` where not indexed)."""
        if not isinstance(in_shape, tuple):
            raise ValueError(f"{self!r} takes a single input, got {len(in_shape)} branches.")
        n = len(in_shape)
        idx = self.idx
        if Ellipsis in idx:
            i = idx.index(Ellipsis)
            fill = n - (len(idx) - 1)
            if fill < 0:
                raise ValueError(
                    f"{self!r}: {len(idx) - 1} indices for an input of {n} axes "
                    f"{shape_str(in_shape)}."
                )
            idx = idx[:i] + (Span(None, None, None),) * fill + idx[i + 1 :]
        if len(idx) > n:
            raise ValueError(
                f"{self!r}: {len(idx)} indices for an input of {n} axes {shape_str(in_shape)} "
                "(channels first, no batch axis)."
            )
        idx = idx + (Span(None, None, None),) * (n - len(idx))
        if idx[0] != Span(None, None, None):
            raise ValueError(
                f"{self!r} indexes the channel axis (axis 0 of the per-example shape "
                f"{shape_str(in_shape)}): only ':' is allowed there (infinitely many channels)."
            )
        for size, e in zip(in_shape[1:], idx[1:], strict=True):
            if isinstance(e, int) and not -size <= e < size:
                raise ValueError(f"{self!r}: index {e} is out of range for an axis of size {size}.")
            if isinstance(e, Span) and not e.indices(size):
                raise ValueError(f"{self!r}: {e!r} selects nothing of an axis of size {size}.")
        return idx[1:]

    def out_shape(self, in_shape):
        spatial = self._spatial(in_shape)
        out = [in_shape[0]]
        for size, e in zip(in_shape[1:], spatial, strict=True):
            if isinstance(e, Span):
                out.append(len(e.indices(size)))
        return tuple(out)

    def kernel_fn(self, k: Kernel) -> Kernel:
        spatial = self._spatial(k.shape1)
        full = k.full_spatial

        def index(t, n_batch):
            for i in reversed(range(len(spatial))):  # from the last axis: positions stay put
                if spatial[i] == Span(None, None, None):
                    continue
                axes = (n_batch + 2 * i, n_batch + 2 * i + 1) if full else (n_batch + i,)
                for a in reversed(axes):
                    t = _take(t, a, spatial[i])
            return t

        out = self.out_shape(k.shape1)
        masks = {}
        if k.mask1 is not None:  # the mask is indexed as the positions (Neural Tangents)
            m1 = index_mask(k.mask1, spatial) if len(out) > 1 else None
            m2 = m1 if k.mask2 is k.mask1 or m1 is None else index_mask(k.mask2, spatial)
            masks = {"mask1": m1, "mask2": m2}
        return k.map(index, shape1=out, shape2=out, full_spatial=full and len(out) > 1, **masks)

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    def make_module(self, in_shape, ctx: BuildContext):
        return IndexModule(self._spatial(in_shape))


class IndexModule(nn.Module):
    """x[:, :, idx...] of a batch (N, C, *spatial): the spatial entries of the index."""

    def __init__(self, spatial: tuple):
        super().__init__()
        self.spatial = spatial

    def forward(self, x: Tensor) -> Tensor:
        for i in reversed(range(len(self.spatial))):
            x = _take(x, 2 + i, self.spatial[i])
        return x

    def extra_repr(self) -> str:
        return f"spatial={self.spatial}"


__all__ = ["Index", "Slice"]
