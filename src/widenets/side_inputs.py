"""Per-input data that travels beside the inputs of a kernel call: masks and graph patterns.

``net.kernel(x1, x2, pattern=..., mask_constant=...)`` (Neural Tangents passes the same
keywords to its ``kernel_fn``) makes one :class:`SideInputs` of

- masks: with ``mask_constant`` c, a position of an input is masked when every channel
  there equals c (``isnan`` for c = NaN); its values are set to 0 and the boolean mask
  (N, *spatial), True where masked, enters the input kernel as ``Kernel.mask1`` / ``mask2``
  (``widenets.layers.masking``);
- graph patterns: ``pattern=(p1, p2)`` (or ``p`` for a set with itself), one per input, of
  which ``widenets.layers.graph.Aggregate`` reads its rows (``Kernel.pattern1`` /
  ``pattern2``).

Each tile's input kernel gets the rows of its inputs (:meth:`SideInputs.rows`), exactly as
its per-input variances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from widenets.errors import real_tensor


@dataclass(frozen=True)
class SideInputs:
    """Masks and patterns of x1 and x2 (None: none); ``*2 is *1`` for a set with itself."""

    mask1: Tensor | None = None
    mask2: Tensor | None = None
    pattern1: Tensor | None = None
    pattern2: Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.mask1 is None and self.pattern1 is None

    def rows(self, rows1, rows2, square: bool = False) -> dict:
        """``Kernel`` fields of the inputs ``rows1`` of x1 and ``rows2`` of x2 (slices or
        index tensors); ``square``: both are the same inputs (``mask2 is mask1``)."""

        def take(t, r):
            if t is None:
                return None
            return t[r] if isinstance(r, slice) else t.index_select(0, r.to(t.device))

        m1, p1 = take(self.mask1, rows1), take(self.pattern1, rows1)
        m2 = m1 if square else take(self.mask2, rows2)
        p2 = p1 if square else take(self.pattern2, rows2)
        return {"mask1": m1, "mask2": m2, "pattern1": p1, "pattern2": p2}


def position_mask(x: Tensor, mask_constant) -> Tensor:
    """(N, *spatial) booleans: every channel of the position equals ``mask_constant``."""
    hit = torch.isnan(x) if math.isnan(mask_constant) else x == mask_constant
    return hit.all(1)


def prepare_side_inputs(x1, x2, pattern, mask_constant):
    """(x1, x2, SideInputs, patterns_equal): the inputs with masked positions set to 0
    (new tensors; the caller's are untouched), their masks and patterns. ``patterns_equal``
    says whether x2's pattern is x1's (a set with itself needs it)."""
    masks = (None, None)
    if mask_constant is not None:
        if isinstance(mask_constant, bool) or not isinstance(mask_constant, (int, float)):
            raise ValueError(
                f"`mask_constant` must be a number (NaN allowed) or None, got {mask_constant!r}."
            )
        mask_constant = float(mask_constant)
        x1 = real_tensor(x1, "x1")
        x2 = None if x2 is None else real_tensor(x2, "x2")
        if x1.ndim < 3:
            raise ValueError(
                "`mask_constant` masks positions of spatial inputs (N, C, L) or (N, C, H, W); "
                f"`x1` has shape {tuple(x1.shape)} with no spatial axis."
            )
        masks = []
        xs = []
        for x in (x1, x2):
            if x is None:
                masks.append(None)
                xs.append(None)
                continue
            m = position_mask(x, mask_constant)
            masks.append(m)
            xs.append(torch.where(m.unsqueeze(1), torch.zeros((), dtype=x.dtype), x))
        x1, x2 = xs
    p1, p2, equal = _patterns(pattern, x2 is None)
    if p1 is not None:
        n1 = _batch(x1)
        if p1.shape[0] != n1:
            raise ValueError(
                f"`pattern` of x1 must have one graph per input (leading axis {n1}), got "
                f"shape {tuple(p1.shape)}."
            )
        if p2 is not None and x2 is not None and p2.shape[0] != _batch(x2):
            raise ValueError(
                f"`pattern` of x2 must have one graph per input (leading axis {_batch(x2)}), "
                f"got shape {tuple(p2.shape)}."
            )
    m1, m2 = masks
    side = SideInputs(m1, m2 if x2 is not None else m1, p1, p2 if p2 is not None else p1)
    return x1, x2, side, equal


def _batch(x) -> int:
    return len(x) if not isinstance(x, Tensor) else x.shape[0]


def _patterns(pattern, one_set: bool):
    """(p1, p2, p2 equals p1) from ``pattern``: None, a tensor (x1 and x2 the same set, or
    a pair)."""
    if pattern is None:
        return None, None, True
    if isinstance(pattern, (tuple, list)):
        if len(pattern) != 2:
            raise ValueError(
                "`pattern` must be a tensor (a set with itself) or a pair (pattern1, "
                f"pattern2), got a sequence of {len(pattern)}."
            )
        p1, p2 = pattern
    else:
        p1, p2 = pattern, None
        if not one_set:
            raise ValueError(
                "`pattern` for two sets of inputs must be a pair (pattern1, pattern2), one "
                "graph per input of x1 and of x2; got one tensor."
            )
    if p1 is None:
        raise ValueError("`pattern`: the pattern of x1 is None; give both or neither.")
    p1 = _pattern_tensor(p1, "pattern[0]")
    if p2 is None:
        if not one_set:
            raise ValueError("`pattern`: the pattern of x2 is None; give both or neither.")
        return p1, None, True
    p2 = _pattern_tensor(p2, "pattern[1]")
    equal = p1.shape == p2.shape and bool(torch.equal(p1, p2.to(p1.dtype)))
    if one_set and not equal:
        raise ValueError(
            "`pattern` has two different patterns but x2 is None (x1 with itself); pass x2."
        )
    return p1, p2, equal


def _pattern_tensor(p, name: str) -> Tensor:
    t = real_tensor(p, name, bools=True)
    if t.ndim < 2:
        raise ValueError(
            f"`{name}` must have a leading batch axis and a graph per input, got shape "
            f"{tuple(t.shape)}."
        )
    if t.dtype == torch.bool:
        t = t.to(torch.float64)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{name}` has NaN or inf entries.")
    return t
