"""Graph aggregation (graph neural networks), both faces: ``Aggregate``.

Each input x (C, *spatial) comes with a graph over (some of) its positions, its vertices:
a dense weighted adjacency P (V, V), P[i, j] the weight of the arc from tail i to head j,
or an edge list. The layer replaces each vertex by the weighted sum of its predecessors,

    y[c, j] = sum_i P[i, j] x[c, i]                 (Neural Tangents' ``stax.Aggregate``),

a linear map without parameters, so at infinite width (Du et al. 2019, "Graph Neural
Tangent Kernel"; Neural Tangents) the kernel maps exactly as

    K'(x, x')[j, j'] = sum_{i, i'} P[i, j] K(x, x')[i, i'] P'[i', j'],  K' = P^T K P',

Theta likewise, and the variances with P on both sides. It needs every pair of positions
(the full layout). ``Conv(width, 1)`` is the per-vertex Dense layer. The GIN update
(1 + eps) x + A x is one Aggregate over the pattern A + (1 + eps) I, not ``fan_out(2)``,
``parallel(Identity(), Aggregate())``, ``fan_in_sum()``: FanInSum adds its branches'
kernels as those of independent branches, and these two share their input (Neural
Tangents' FanInSum makes the same assumption).

Where the graphs go (the same keyword as Neural Tangents' ``pattern=``):

- kernel: ``net.kernel(x1, x2, pattern=(p1, p2))``, p1 one graph per input of x1 and p2
  per input of x2 (``pattern=p`` when x2 is None). Every Aggregate layer of the network
  reads the same graphs. The kernel between two sets of graphs of V vertices each with
  node features (N, C, V) is thus one call.
- finite network: ``with graph_pattern(p): y = model(x)`` (all the Aggregate modules of
  ``model`` read ``p``), or ``AggregateModule(...)(x, pattern=p)`` for the module alone.

Pattern formats (``implementation``):

- ``"dense"``: (N, X_1, ..., X_K, X_1, ..., X_K) weights over the K aggregated axes
  (``to_dense``, if given, is applied to the pattern first, as in Neural Tangents);
- ``"sparse"``: integer (N, E, K, 2) or, for K = 1, (N, E, 2) arcs (tail, head) of weight
  1 (repeats add up); an arc with a negative coordinate is padding and dropped (so inputs
  may have different edge counts). The kernel converts each graph to its dense (V, V)
  pattern (the kernel is O(V^2) per pair anyway); the finite module sums messages over
  the arcs (O(V + E)).

Differences from Neural Tangents: inputs are channels first, (N, C, *spatial), so
``batch_axis`` must be 0 and ``channel_axis`` 1 (any other value is an error naming the
argument); ``aggregate_axis`` counts axes of the whole input (N, C, *spatial) as there
(None: every spatial axis; several axes in increasing order); a missing pattern is an
error rather than the identity graph; an arc index past the axis' size is an error
rather than wrapping around.

Example (a GIN on graphs of V vertices with C node features: x of shape (N, C, V),
adjacencies A of shape (N, V, V); ``examples/graph_classification.py`` trains on it):

    import torch
    import widenets as wn

    def gin_block(width):  # h -> relu(W2 relu(W1 (A + I) h))
        return wn.serial(wn.Aggregate(), wn.Conv(width, 1), wn.Relu(),
                         wn.Conv(width, 1), wn.Relu())

    net = wn.serial(gin_block(512), gin_block(512), wn.GlobalAvgPool(), wn.Dense(1))
    self_loops = lambda a: a + torch.eye(a.shape[-1], dtype=a.dtype)
    P_train, P_test = self_loops(A_train), self_loops(A_test)
    k = net.kernel(x_train, x_test, pattern=(P_train, P_test))  # k.nngp, k.ntk: (N1, N2)
    model = net.build((C, V), seed=0)
    with wn.graph_pattern(P_train.float()):
        y = model(x_train.float())

(A global sum readout is ``GlobalAvgPool`` followed by ``Scale(V)``.)
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from widenets.kernel import Kernel
from widenets.layers.base import BuildContext, Layer, declare, linear_degree
from widenets.layers.masking import zero_masked

IMPLEMENTATIONS = ("dense", "sparse")

_PATTERN: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar(
    "widenets_graph_pattern", default=None
)


@contextlib.contextmanager
def graph_pattern(pattern):
    """Within the block, every ``AggregateModule`` called without ``pattern=`` uses
    ``pattern`` (one graph per input of the batch it is called on)."""
    token = _PATTERN.set(torch.as_tensor(pattern))
    try:
        yield
    finally:
        _PATTERN.reset(token)


@declare
class Aggregate(Layer):
    """Sum over each vertex's predecessors in a per-input graph: y[c, j] = sum_i P[i, j] x[c, i].

    Args:
        aggregate_axis: the axes of the input (N, C, *spatial) that hold the vertices (an
            int or increasing tuple; None: every spatial axis).
        batch_axis, channel_axis: 0 and 1 (widenets' layout; accepted for Neural Tangents
            code, any other value is an error).
        to_dense: a function applied to the dense patterns before use (None: the identity);
            it gets the rows of a tile, (n, ...), so it must map each graph on its own.
        implementation: "dense" (weighted adjacency) or "sparse" (edge lists); see the
            module docstring for the formats.
    """

    name = "Aggregate"
    mixes_positions = True
    handles_packed_pairs = False  # the full layout only

    aggregate_axis: int | tuple[int, ...] | None = None
    batch_axis: int = 0
    channel_axis: int = 1
    to_dense: Callable | None = None
    implementation: str = "dense"

    def __post_init__(self):
        for name, want in (("batch_axis", 0), ("channel_axis", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v != want:
                raise ValueError(
                    f"`{name}` must be {want}: widenets' inputs are (N, C, *spatial), batch "
                    f"first and channels second, got {v!r}."
                )
        axis = self.aggregate_axis
        if axis is not None:
            axes = (axis,) if isinstance(axis, int) else axis
            if (
                not isinstance(axes, (tuple, list))
                or not axes
                or any(isinstance(a, bool) or not isinstance(a, int) for a in axes)
            ):
                raise ValueError(
                    f"`aggregate_axis` must be None, an int or a tuple of ints, got {axis!r}."
                )
            self.aggregate_axis = axes[0] if isinstance(axis, int) else tuple(axes)
        if self.to_dense is not None and not callable(self.to_dense):
            raise ValueError(f"`to_dense` must be None or a function, got {self.to_dense!r}.")
        impl = str(self.implementation).lower()
        if impl not in IMPLEMENTATIONS:
            raise ValueError(
                f"`implementation` must be one of {IMPLEMENTATIONS}, got {self.implementation!r}."
            )
        self.implementation = impl

    # ----- geometry ---------------------------------------------------------------------
    def axes(self, in_shape) -> tuple[int, ...]:
        """The aggregated spatial axes, 0-based among the spatial axes of ``in_shape``."""
        if not isinstance(in_shape, tuple):
            raise ValueError(f"{self!r} takes a single input, got {len(in_shape)} branches.")
        d = len(in_shape) - 1
        if d < 1:
            raise ValueError(
                f"{self!r} aggregates over vertices: it needs per-example inputs (C, V) (or "
                f"more spatial axes), channels first, got {in_shape}."
            )
        if self.aggregate_axis is None:
            return tuple(range(d))
        given = self.aggregate_axis
        given = (given,) if isinstance(given, int) else given
        ndim = d + 2
        axes = tuple(a + ndim if a < 0 else a for a in given)
        if any(not 2 <= a < ndim for a in axes):
            raise ValueError(
                f"{self!r}: `aggregate_axis` must name spatial axes of the input (N, C, "
                f"*spatial), i.e. 2..{ndim - 1} (or -{d}..-1), got {given!r}."
            )
        if list(axes) != sorted(set(axes)):
            raise ValueError(
                f"{self!r}: `aggregate_axis` must list distinct axes in increasing order, "
                f"got {given!r}."
            )
        return tuple(a - 2 for a in axes)

    def out_shape(self, in_shape):
        self.axes(in_shape)
        return in_shape

    def scaling_degree(self, degree):
        return linear_degree(degree, has_bias=False)

    # ----- patterns ---------------------------------------------------------------------
    def dense_patterns(self, pattern: Tensor, n: int, agg_shape, dtype, device, which) -> Tensor:
        """(n, V, V) weights from a pattern in this layer's format, checked."""
        v = math.prod(agg_shape)
        where = f"{self!r}: the pattern of x{which}"
        if self.implementation == "sparse":
            return edges_to_dense(pattern, n, agg_shape, where).to(dtype=dtype, device=device)
        if self.to_dense is not None:
            pattern = torch.as_tensor(self.to_dense(pattern))
        want = (n, *agg_shape, *agg_shape)
        if tuple(pattern.shape) != want:
            raise ValueError(
                f"{where} must have shape (N, X..., X...) = {want} (dense implementation; "
                f"implementation='sparse' takes edge lists), got {tuple(pattern.shape)}."
            )
        return pattern.to(dtype=dtype, device=device).reshape(n, v, v)

    # ----- the kernel face --------------------------------------------------------------
    def kernel_fn(self, k: Kernel) -> Kernel:
        axes = self.axes(k.shape1)
        if not k.full_spatial:
            raise ValueError(f"{self!r} needs the full pixel-pair kernel (got the diagonal one).")
        if k.pattern1 is None or k.pattern2 is None:
            raise ValueError(
                f"{self!r} needs the inputs' graphs: net.kernel(x1, x2, pattern=(pattern1, "
                "pattern2)), or pattern=p when x2 is None."
            )
        k = zero_masked(k)
        d = k.n_spatial
        spatial = tuple(k.cov1.shape[1::2])
        agg_shape = tuple(spatial[a] for a in axes)
        dtype, device = k.cov1.dtype, k.cov1.device
        p1 = self.dense_patterns(k.pattern1, k.cov1.shape[0], agg_shape, dtype, device, 1)
        p2 = (
            p1
            if k.pattern2 is k.pattern1 and k.cov2.shape[0] == k.cov1.shape[0]
            else self.dense_patterns(k.pattern2, k.cov2.shape[0], agg_shape, dtype, device, 2)
        )
        other = tuple(a for a in range(d) if a not in axes)

        def apply(t, n_batch, a, b):  # a^T t b over the aggregated axes of both inputs
            lead = list(range(n_batch))
            perm = lead + [n_batch + 2 * s + i for s in other for i in (0, 1)]
            perm += [n_batch + 2 * s for s in axes] + [n_batch + 2 * s + 1 for s in axes]
            m = t.permute(perm)
            kept = m.shape[: n_batch + 2 * len(other)]
            v = math.prod(agg_shape)
            m = m.reshape(*kept[:n_batch], -1, v, v)
            if n_batch == 2:
                m = torch.einsum("ivp,ijrvw,jwq->ijrpq", a, m, b)
            else:
                m = torch.einsum("ivp,irvw,iwq->irpq", a, m, b)
            m = m.reshape(*kept, *agg_shape, *agg_shape)
            inv = [0] * len(perm)
            for i, q in enumerate(perm):
                inv[q] = i
            return m.permute(inv)

        return k.map(
            lambda t, n_batch: apply(t, n_batch, p1, p2),
            cov=lambda t, which: apply(t, 1, p1, p1) if which == 1 else apply(t, 1, p2, p2),
        )

    # ----- the finite face --------------------------------------------------------------
    def make_module(self, in_shape, ctx: BuildContext) -> AggregateModule:
        axes = self.axes(in_shape)
        return AggregateModule(tuple(a + 2 for a in axes), self.implementation, self.to_dense)


def edges_to_dense(edges: Tensor, n: int, agg_shape, where: str) -> Tensor:
    """(n, V, V) counts of the arcs (tail, head) of integer edge lists (n, E, K, 2) (or (n,
    E, 2) for K = 1); arcs with a negative coordinate are padding."""
    tails, heads = _arcs(edges, n, agg_shape, where)
    v = math.prod(agg_shape)
    out = torch.zeros(n, v, v, dtype=torch.float64, device=edges.device)
    keep = (tails >= 0) & (heads >= 0)
    rows = torch.arange(n, device=edges.device).unsqueeze(1).expand_as(tails)
    ones = torch.ones(int(keep.sum()), dtype=torch.float64, device=edges.device)
    out.index_put_((rows[keep], tails[keep], heads[keep]), ones, accumulate=True)
    return out


def _arcs(edges: Tensor, n: int, agg_shape, where: str) -> tuple[Tensor, Tensor]:
    """Flat (n, E) tail and head indices (-1: padding) of an edge list, checked."""
    k = len(agg_shape)
    if edges.is_floating_point() or edges.dtype == torch.bool:
        raise ValueError(
            f"{where} must be integer arcs (implementation='sparse'), got dtype {edges.dtype}."
        )
    if edges.ndim == 3 and k == 1:
        edges = edges.unsqueeze(2)
    if edges.ndim != 4 or edges.shape[0] != n or edges.shape[2] != k or edges.shape[3] != 2:
        raise ValueError(
            f"{where} must be arcs of shape (N, E, K, 2) = ({n}, E, {k}, 2) (or ({n}, E, 2) "
            f"for one aggregated axis), got {tuple(edges.shape)}."
        )
    sizes = torch.tensor(agg_shape, device=edges.device)
    if bool((edges >= sizes.view(1, 1, k, 1)).any()):
        raise ValueError(
            f"{where} has a vertex index past the aggregated axes' sizes {tuple(agg_shape)}."
        )
    flat = []
    for side in (0, 1):
        idx = edges[..., side].long()  # (n, E, K)
        f = torch.zeros(idx.shape[:2], dtype=torch.long, device=edges.device)
        for a in range(k):
            f = f * agg_shape[a] + idx[..., a]
        f[(idx < 0).any(-1)] = -1
        flat.append(f)
    bad = (flat[0] < 0) | (flat[1] < 0)
    flat[0][bad], flat[1][bad] = -1, -1
    return flat[0], flat[1]


class AggregateModule(nn.Module):
    """y[n, c, ..., j] = sum_i P[n, i, j] x[n, c, ..., i] over the axes ``axes`` of (N, C,
    *spatial), P from ``forward``'s ``pattern`` or the enclosing ``graph_pattern``."""

    def __init__(self, axes: tuple[int, ...], implementation: str = "dense", to_dense=None):
        super().__init__()
        self.axes, self.implementation, self.to_dense = tuple(axes), implementation, to_dense

    def extra_repr(self) -> str:
        return f"axes={self.axes}, implementation={self.implementation!r}"

    def forward(self, x: Tensor, pattern=None) -> Tensor:
        if pattern is None:
            pattern = _PATTERN.get()
        if pattern is None:
            raise ValueError(
                "AggregateModule needs the inputs' graphs: call it as module(x, pattern=p) or "
                "run the network inside `with widenets.graph_pattern(p):`."
            )
        pattern = torch.as_tensor(pattern, device=x.device)
        n = x.shape[0]
        others = [a for a in range(2, x.ndim) if a not in self.axes]
        agg_shape = tuple(x.shape[a] for a in self.axes)
        v = math.prod(agg_shape)
        perm = [0, 1, *others, *self.axes]
        m = x.permute(perm)
        kept = m.shape[: 2 + len(others)]
        m = m.reshape(n, -1, v)  # (N, C R, V)
        if self.implementation == "sparse":
            tails, heads = _arcs(pattern, n, agg_shape, "AggregateModule: the pattern")
            out = _pass_messages(m, tails, heads)
        else:
            if self.to_dense is not None:
                pattern = torch.as_tensor(self.to_dense(pattern), device=x.device)
            if tuple(pattern.shape) != (n, *agg_shape, *agg_shape):
                raise ValueError(
                    f"AggregateModule: the pattern must have shape (N, X..., X...) = "
                    f"{(n, *agg_shape, *agg_shape)}, got {tuple(pattern.shape)}."
                )
            out = m @ pattern.to(x.dtype).reshape(n, v, v)
        out = out.reshape(*kept, *agg_shape)
        inv = [0] * len(perm)
        for i, q in enumerate(perm):
            inv[q] = i
        return out.permute(inv)


def _pass_messages(m: Tensor, tails: Tensor, heads: Tensor) -> Tensor:
    """out[n, :, head] += m[n, :, tail] for every arc (segment sum, O(V + E))."""
    n, f, v = m.shape
    keep = tails >= 0
    offsets = torch.arange(n, device=m.device).unsqueeze(1) * v
    src = (tails + offsets)[keep]
    dst = (heads + offsets)[keep]
    flat = m.transpose(1, 2).reshape(n * v, f)
    out = torch.zeros_like(flat).index_add_(0, dst, flat.index_select(0, src))
    return out.reshape(n, v, f).transpose(1, 2)


__all__ = ["Aggregate", "AggregateModule", "graph_pattern"]
