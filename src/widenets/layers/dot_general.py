"""DotGeneral: the input times a fixed tensor along given axes (Neural Tangents'
``stax.DotGeneral``), both faces.

The finite layer is ``lax.dot_general(x, rhs, dimension_numbers)`` (or ``(lhs, x)``) on the
spatial axes of each example, the same map for every channel: a linear map L of positions,
y[c, o] = sum_s L[o, s] x[c, s]. Without parameters, at infinite width (Neural Tangents'
``Kernel.dot_general``) the kernels map exactly as

    K'[o, o'] = sum_{s, s'} L[o, s] K[s, s'] L[o', s'],   Theta' likewise, and the variances.

Contracted axes mix positions (the full pixel-pair layout); without contraction (only
"batch" axes, an elementwise product, and the constant's free axes, an outer product) each
output position reads one input position, K'[o] = L[o, s(o)]^2 K[s(o)], and the cheap
diagonal layout suffices.

Output axes (as ``lax.dot_general``, with widenets' batch and channel axes kept first): the
paired ("batch") axes in the order listed, then for ``rhs`` the input's remaining spatial
axes followed by the constant's free axes, for ``lhs`` the constant's free axes followed
by the input's remaining spatial axes.

Differences from Neural Tangents: inputs are (N, C, *spatial), and the axes in
``dimension_numbers`` count axes of that whole input (so NT's NHWC axis 1, H, is axis 2
here); negative axes count from the last spatial axis; the batch axis (0) and the channel
axis (1) may not appear (Neural Tangents allows the batch axis, with per-example constants);
``batch_axis`` / ``channel_axis`` are accepted for Neural Tangents code but must be 0 and 1;
``precision`` is not offered (kernels are computed in the dtype asked for). Masks
(``mask_constant``): an output position is masked when every input position it reads with a
nonzero weight is (Neural Tangents tests the signed sum, which can cancel).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from widenets.errors import real_tensor, shape_str
from widenets.kernel import Kernel
from widenets.layers.base import BuildContext, Layer, declare, linear_degree
from widenets.layers.masking import zero_masked


class Constant:
    """A constant tensor as a hyperparameter: equal by value (so equal layers are equal
    keys), hashed by shape and bytes, shown by its shape (or its value when 0-dim)."""

    __slots__ = ("tensor", "_hash")

    def __init__(self, value, name: str):
        if isinstance(value, Constant):
            value = value.tensor
        t = real_tensor(value, name, none_error=ValueError).to(torch.float64).cpu().clone()
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"`{name}` must be finite, got NaN or inf entries.")
        self.tensor = t.contiguous()
        self._hash = hash((tuple(t.shape), t.numpy().tobytes()))

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Constant)
            and other.tensor.shape == self.tensor.shape
            and torch.equal(other.tensor, self.tensor)
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        if self.tensor.ndim == 0:
            return repr(float(self.tensor))
        return f"tensor{tuple(self.tensor.shape)}"


def _axes(value, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if not isinstance(value, (tuple, list)) or any(
        isinstance(a, bool) or not isinstance(a, int) for a in value
    ):
        raise ValueError(f"`{name}` must be a tuple of ints, got {value!r}.")
    return tuple(int(a) for a in value)


def _dimension_numbers(dn) -> tuple:
    """((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)) as tuples of ints."""
    form = "((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))"
    try:
        (lc, rc), (lb, rb) = dn
    except (TypeError, ValueError):
        raise ValueError(f"`dimension_numbers` must be {form}, got {dn!r}.") from None
    where = "an entry of `dimension_numbers`"
    out = ((_axes(lc, where), _axes(rc, where)), (_axes(lb, where), _axes(rb, where)))
    (lc, rc), (lb, rb) = out
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise ValueError(
            f"`dimension_numbers` must pair as many lhs as rhs axes, got {dn!r} (in {form})."
        )
    return out


@declare
class DotGeneral(Layer):
    """The input times a constant tensor: ``lax.dot_general(x, rhs, dimension_numbers)``
    when ``rhs`` is given, ``lax.dot_general(lhs, x, dimension_numbers)`` when ``lhs`` is,
    the identity when neither.

    Args:
        lhs, rhs: the constant (a number, array or tensor); at most one of them.
        dimension_numbers: ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)),
            tuples of axes; the input's axes count the whole input (N, C, *spatial), so
            spatial axis i is axis i + 2 (negative: from the last spatial axis), and the
            batch and channel axes may not appear.
        batch_axis, channel_axis: 0 and 1 (accepted for Neural Tangents code; widenets'
            inputs are (N, C, *spatial)).
    """

    name = "DotGeneral"

    lhs: object = None
    rhs: object = None
    dimension_numbers: tuple = (((), ()), ((), ()))
    batch_axis: int = 0
    channel_axis: int = 1

    def __post_init__(self):
        for name, want in (("batch_axis", 0), ("channel_axis", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v != want:
                raise ValueError(
                    f"`{name}` must be {want}: widenets' inputs are (N, C, *spatial), batch "
                    f"first and channels second, got {v!r}."
                )
        if self.lhs is not None and self.rhs is not None:
            raise ValueError(
                "DotGeneral takes at most one of `lhs` and `rhs` (the other factor is the "
                "layer's input), got both."
            )
        if self.lhs is not None:
            self.lhs = Constant(self.lhs, "lhs")
        if self.rhs is not None:
            self.rhs = Constant(self.rhs, "rhs")
        self.dimension_numbers = _dimension_numbers(self.dimension_numbers)
        (lc, rc), (lb, rb) = self.dimension_numbers
        other = self.constant
        if other is None:
            if lc or lb:
                raise ValueError(
                    "`dimension_numbers` must be empty when neither `lhs` nor `rhs` is given, "
                    f"got {self.dimension_numbers!r}."
                )
            return
        is_lhs = self.lhs is not None
        other_axes = (lc + lb) if is_lhs else (rc + rb)
        which = "lhs" if is_lhs else "rhs"
        n = other.ndim
        norm = []
        for a in other_axes:
            if not -n <= a < n:
                raise ValueError(
                    f"`dimension_numbers` names axis {a} of `{which}`, which has {n} axes "
                    f"(shape {shape_str(other.shape)})."
                )
            norm.append(a % n)
        if len(set(norm)) != len(norm):
            raise ValueError(
                f"`dimension_numbers` names an axis of `{which}` twice: {other_axes!r}."
            )

    # ----- geometry ---------------------------------------------------------------------
    @property
    def constant(self) -> Tensor | None:
        c = self.lhs if self.lhs is not None else self.rhs
        return None if c is None else c.tensor

    def contracts(self) -> bool:
        """Whether an input axis is summed over (then the layer mixes positions)."""
        (lc, rc), _ = self.dimension_numbers
        return self.constant is not None and bool(lc)

    def needs_pixel_pairs(self) -> bool:
        return self.contracts()

    def _plan(self, in_shape):
        """(input contracting, input batch, other contracting, other batch) axes, 0-based
        among the input's spatial axes and the constant's axes, checked against the shape."""
        if not isinstance(in_shape, tuple):
            raise ValueError(f"{self!r} takes a single input, got {len(in_shape)} branches.")
        (lc, rc), (lb, rb) = self.dimension_numbers
        is_lhs = self.lhs is not None
        in_c, oc = (rc, lc) if is_lhs else (lc, rc)
        in_b, ob = (rb, lb) if is_lhs else (lb, rb)
        other = self.constant
        d = len(in_shape) - 1
        ndim = d + 2

        def spatial(a):
            full = a + ndim if a < 0 and a >= -d else a
            if full in (0, 1) and a >= 0:
                what = "the batch axis" if full == 0 else "the channel axis"
                raise ValueError(
                    f"{self!r}: `dimension_numbers` names axis {a} of the input (N, C, *spatial), "
                    f"{what}; only spatial axes (2..{ndim - 1}, or -{d}..-1) can be "
                    "contracted or paired (infinitely many channels, independent examples)."
                )
            if not 2 <= full < ndim:
                raise ValueError(
                    f"{self!r}: `dimension_numbers` names axis {a} of the input (N, C, *spatial) "
                    f"= (N, {', '.join(str(s) for s in in_shape)}); its spatial axes are "
                    f"2..{ndim - 1} (or -{d}..-1)."
                )
            return full - 2

        in_c = tuple(spatial(a) for a in in_c)
        in_b = tuple(spatial(a) for a in in_b)
        if len(set(in_c + in_b)) != len(in_c + in_b):
            raise ValueError(
                f"{self!r}: `dimension_numbers` names an input axis twice: "
                f"{self.dimension_numbers!r}."
            )
        oc = tuple(a % other.ndim for a in oc)
        ob = tuple(a % other.ndim for a in ob)
        sizes = in_shape[1:]
        for i, j in zip(in_c + in_b, oc + ob, strict=True):
            if sizes[i] != other.shape[j]:
                which = "lhs" if is_lhs else "rhs"
                raise ValueError(
                    f"{self!r}: input axis {i + 2} has size {sizes[i]} but axis {j} of `{which}` "
                    f"(shape {shape_str(other.shape)}) has size {other.shape[j]}."
                )
        return in_c, in_b, oc, ob

    def _layout(self, in_shape):
        """(output spatial sizes, einsum plan): ``plan(first, other_ids)`` gives, for
        input spatial ids ``first`` (one id per input spatial axis) and free ids for the
        constant's axes, the constant's ids and the output's spatial ids."""
        in_c, in_b, oc, ob = self._plan(in_shape)
        other = self.constant
        d = len(in_shape) - 1
        sizes = in_shape[1:]
        in_free = [i for i in range(d) if i not in in_c and i not in in_b]
        o_free = [j for j in range(other.ndim) if j not in oc and j not in ob]
        pair = dict(zip(oc + ob, in_c + in_b, strict=True))  # constant axis -> input axis
        is_lhs = self.lhs is not None

        def plan(first, free_ids):
            other_ids = [first[pair[j]] if j in pair else free_ids[j] for j in range(other.ndim)]
            batch = [first[i] for i in in_b]
            mine = [first[i] for i in in_free]
            theirs = [free_ids[j] for j in o_free]
            return other_ids, batch + (theirs + mine if is_lhs else mine + theirs)

        batch_sizes = [sizes[i] for i in in_b]
        mine_sizes = [sizes[i] for i in in_free]
        their_sizes = [other.shape[j] for j in o_free]
        out = batch_sizes + (their_sizes + mine_sizes if is_lhs else mine_sizes + their_sizes)
        return tuple(out), plan

    def out_shape(self, in_shape):
        if self.constant is None:
            return in_shape
        if not isinstance(in_shape, tuple):
            raise ValueError(f"{self!r} takes a single input, got {len(in_shape)} branches.")
        if len(in_shape) < 2 and self.constant.ndim > 0:
            raise ValueError(
                f"{self!r} acts on spatial axes: it needs per-example inputs (C, *spatial), "
                f"channels first, got {shape_str(in_shape)}."
            )
        out, _ = self._layout(in_shape)
        return (in_shape[0], *out)

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    # ----- the kernel face --------------------------------------------------------------
    def kernel_fn(self, k: Kernel) -> Kernel:
        other = self.constant
        if other is None:
            return k
        out, plan = self._layout(k.shape1)
        d = len(k.shape1) - 1
        full = k.full_spatial
        if self.contracts() and not full:
            raise ValueError(
                f"{self!r} contracts spatial axes: it needs the full pixel-pair kernel (got the "
                "diagonal one)."
            )
        k = zero_masked(k)  # masked positions hold zeros (``widenets.layers.masking``)
        n_other = other.ndim

        def apply(t, n_batch):
            lead = list(range(n_batch))
            base = n_batch
            c = other.to(dtype=t.dtype, device=t.device)
            if not full:  # each output reads one input position: L[o, s(o)]^2 K[s(o)]
                first = list(range(base, base + d))
                free = list(range(base + d, base + d + n_other))
                ids, out_ids = plan(first, free)
                return torch.einsum(t, lead + first, c * c, ids, lead + out_ids)
            first = list(range(base, base + 2 * d, 2))
            second = list(range(base + 1, base + 2 * d, 2))
            free1 = list(range(base + 2 * d, base + 2 * d + n_other))
            free2 = list(range(base + 2 * d + n_other, base + 2 * d + 2 * n_other))
            ids1, out1 = plan(first, free1)
            ids2, out2 = plan(second, free2)
            inter = [i for pair in zip(out1, out2, strict=True) for i in pair]
            pairs = [i for pair in zip(first, second, strict=True) for i in pair]
            return torch.einsum(t, lead + pairs, c, ids1, c, ids2, lead + inter)

        shape = (k.shape1[0], *out)
        masks = {}
        if k.mask1 is not None and not out:  # no position left: nothing to mask
            masks = {"mask1": None, "mask2": None}
        elif k.mask1 is not None:
            m1 = self._mask(k.mask1, plan, d)
            m2 = m1 if k.mask2 is k.mask1 else self._mask(k.mask2, plan, d)
            masks = {"mask1": m1, "mask2": m2}
        return k.map(apply, shape1=shape, shape2=shape, full_spatial=full and len(out) > 0, **masks)

    def _mask(self, mask: Tensor, plan, d: int) -> Tensor:
        """Masked outputs: those that read no unmasked input with a nonzero weight."""
        c = self.constant.abs().to(device=mask.device)
        first = list(range(1, 1 + d))
        free = list(range(1 + d, 1 + d + c.ndim))
        ids, out_ids = plan(first, free)
        keep = torch.einsum((~mask).to(torch.float64), [0, *first], c, ids, [0, *out_ids])
        return keep == 0

    # ----- the finite face ----------------------------------------------------------------
    def make_module(self, in_shape, ctx: BuildContext) -> nn.Module:
        if self.constant is None:
            return DotGeneralModule(None, [], [], 0)
        _, plan = self._layout(in_shape)
        d = len(in_shape) - 1
        first = list(range(2, 2 + d))
        free = list(range(2 + d, 2 + d + self.constant.ndim))
        ids, out_ids = plan(first, free)
        return DotGeneralModule(self.constant, ids, out_ids, d).to(device=ctx.device)


class DotGeneralModule(nn.Module):
    """y = dot_general of a batch (N, C, *spatial) with the constant ``other`` (a buffer),
    as an einsum: input ids (0, 1, 2..d+1), the constant's ``other_ids``, output ids
    (0, 1, *out_ids); the identity when ``other`` is None."""

    def __init__(self, other: Tensor | None, other_ids, out_ids, d: int):
        super().__init__()
        self.register_buffer("other", None if other is None else other.clone())
        self.other_ids = list(other_ids)
        self.out_ids = list(out_ids)
        self.d = d

    def forward(self, x: Tensor) -> Tensor:
        if self.other is None:
            return x
        c = self.other.to(dtype=x.dtype, device=x.device)
        in_ids = list(range(2 + self.d))
        return torch.einsum(x, in_ids, c, self.other_ids, [0, 1, *self.out_ids])

    def extra_repr(self) -> str:
        if self.other is None:
            return "identity"
        return f"other={tuple(self.other.shape)}, other_ids={self.other_ids}, out={self.out_ids}"


__all__ = ["DotGeneral"]
