"""Cost estimates of the empirical-NTK methods (what :func:`widenets.empirical.choice.choose`
compares and ``explain`` prints).

With F the forward FLOPs of one example (counted by ``torch.utils.flop_counter`` on one
example), A the activations it saves for a reverse pass (counted on one example), P the
number of differentiated parameters, O outputs, k = 1 (traced) or O (untraced), and the
kernel computed in tiles of b1 x b2 examples (for x2 None only the tiles on or above the
diagonal, each example pair once, :class:`Tiling`):

- jacobian: a forward pass and O reverse passes with weight gradients, F (1 + 2 O), for
  every example whose Jacobian is formed (the left block of a row of tiles, the right
  block of each tile off the diagonal), then 2 k O P per pair of examples; holds the
  Jacobians of two blocks, (b1 + b2) O P (one block if a single tile covers x1 with
  itself), and the reverse passes of a block, b O A. Streamed over parameter slices (no
  ``batch_size``): one pass over all N examples per slice and output (traced), holding one
  slice's Jacobians; see :func:`_streamed_jacobian`.
- ntk_vector: F (1 + 2 O) for the rows of J(x1), then 3 F O per pair (forward-mode
  products through the x2 block); holds b1 O P rows and the tangents of b1 O b2 passes.
- loop: the Jacobian contraction with one reverse pass per example and output in a
  Python loop (no ``vmap``): the arithmetic of the tiled jacobian, far more wall time;
  holds one example's activations.
- structured, in a variant (:data:`widenets.empirical.structured.VARIANTS`): F (1 + O)
  per example (reverse passes for the g's, no weight gradients; "per_output": a forward
  and a reverse pass per output, 2 F O), plus each layer's cost in its mode
  (:func:`layer_options`), plus the Jacobian contraction of the parameters outside
  recognised layers. "streamed" runs its own passes over both blocks of each tile and
  holds the activations of those passes and the features of one output and one layer.

These are estimates of arithmetic, not timings; ``explain`` prints them with the choice
made from them, which can be overridden with ``method=...``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from widenets.empirical._common import Batch, call

METHODS = ("jacobian", "ntk_vector", "structured", "loop")


def forward_flops(model, params: dict, frozen: dict, batch: Batch) -> float:
    """FLOPs of one forward pass on one example (matmuls and convolutions), with the
    parameters requiring gradients as the methods run it: without, modules such as
    ``nn.TransformerEncoderLayer`` in eval mode take fused fast paths the counter misses."""
    one = batch.slice(0, 1)
    state = {**frozen, **{k: v.detach().requires_grad_() for k, v in params.items()}}
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        call(model, state, one.tree(), 1)
    return float(max(counter.get_total_flops(), 1))


def activation_numel(model, params: dict, frozen: dict, batch: Batch) -> float:
    """Scalars one example's forward pass saves for the reverse pass: what a pass over two
    examples saves beyond a pass over one, so that tensors made from the weights alone (a
    weight times its scale, computed in each forward) are not counted per example."""
    own = {v.data_ptr() for v in params.values()} | {v.data_ptr() for v in frozen.values()}
    state = {**frozen, **{k: v.detach().requires_grad_() for k, v in params.items()}}

    def saved(n: int) -> float:
        seen: dict = {}

        def pack(t):
            if t.data_ptr() not in own:
                seen[(t.data_ptr(), t.numel())] = t.numel()
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            call(model, state, batch.slice(0, n).tree(), n)
        return float(sum(seen.values()))

    one = saved(1)
    if batch.n < 2:
        return one
    return max(saved(2) - one, 0.0)


@dataclass
class MethodCost:
    method: str
    flops: float
    scalars: float  # largest number of scalars held at once (features of a block + tile)
    note: str = ""
    variant: str | None = None  # jacobian: "streamed" or None (tiles); structured: how
    chunk: int | None = None  # structured, per output: examples per pass
    modes: dict | None = None  # structured: {layer key: how it is contracted}


@dataclass
class CostReport:
    """Estimated cost of each method, the order in which ``"auto"`` tries them and why
    (:func:`widenets.empirical.choice.choose`); ``method`` is what ``"auto"`` runs."""

    n1: int
    n2: int
    n_out: int
    n_params: int
    forward_flops: float
    block: tuple[int, int]
    costs: list[MethodCost] = field(default_factory=list)
    budget: float = math.inf  # scalars; methods holding more are chosen only if none fit
    #: methods that cannot run this model: {method: "ErrorType: first line of the error"}
    skipped: dict = field(default_factory=dict)
    #: every method, in the order ``auto`` prefers them (the loop last)
    preference: list[str] = field(default_factory=list)
    #: why the choice is what it is, one line each
    reasons: list[str] = field(default_factory=list)

    def order(self) -> list[str]:
        """Every method, in the order ``auto`` prefers them (the loop last)."""
        return list(self.preference)

    @property
    def method(self) -> str:
        """What ``auto`` uses: the first of :meth:`order` not known to fail."""
        return next((m for m in self.order() if m not in self.skipped), "loop")

    def cost(self, method: str) -> MethodCost:
        return next(c for c in self.costs if c.method == method)

    def __str__(self) -> str:
        lines = [
            f"empirical NTK of {self.n1} x {self.n2} inputs, {self.n_out} outputs, "
            f"{self.n_params:,} parameters, forward {self.forward_flops:.3g} FLOPs/example, "
            f"blocks {self.block[0]} x {self.block[1]}",
            f"{'method':<12}{'GFLOPs':>12}{'Mscalars':>12}  note",
        ]
        chosen = self.method
        for c in self.costs:
            mark = " <- auto" if c.method == chosen else ""
            if c.method in self.skipped:
                mark = f" [cannot run: {self.skipped[c.method]}]"
            lines.append(
                f"{c.method:<12}{c.flops / 1e9:>12.3f}{c.scalars / 1e6:>12.2f}  {c.note}{mark}"
            )
        lines += [f"- {r}" for r in self.reasons]
        return "\n".join(lines)

    __repr__ = __str__


@dataclass
class Shape:
    """What the estimate needs to know about the model, measured once."""

    n_out: int
    f_flops: float
    act: float  # activations saved per example
    y_numel: float  # outputs of the structured layers per example (their g's)


@dataclass(frozen=True)
class Tiling:
    """How a request is cut into tiles, as the estimates count it."""

    n1: int
    n2: int
    block: tuple[int, int]
    same: bool  # x2 None: only the tiles on or above the diagonal
    pairs: float  # example pairs contracted
    feats: float  # examples whose features are formed for left/right blocks
    per_tile: float  # examples run through per-tile passes
    span: int  # examples whose features a tile holds
    tile: float  # scalars of one tile


def tiling(n1, n2, block, trace, n_out, same) -> Tiling:
    b1, b2 = block
    t1, t2 = math.ceil(n1 / b1), math.ceil(n2 / b2)
    if same:
        pairs = n1 * (n1 + b1) / 2
        feats = n1 + n1 * (t1 - 1) / 2
        per_tile = n1 + (t1 - 1) * n1
    else:
        pairs = n1 * n2
        feats = n1 + t1 * n2
        per_tile = t1 * n2 + t2 * n1
    # examples whose features a tile holds: one block when x2 is None and one tile covers
    # it (the diagonal tile reuses its left features), else the two blocks of the tile
    span = b1 if same and b1 >= n1 else b1 + b2
    tile = b1 * b2 * (1 if trace else n_out**2)
    return Tiling(n1, n2, (b1, b2), same, pairs, feats, per_tile, span, tile)


def jacobian_cost(t: Tiling, params, shape: Shape, trace, budget, stream) -> MethodCost:
    """Jacobian contraction in tiles, or streamed over parameter slices (``stream``: no
    batch_size given) when a slice fits the budget (``variant`` "streamed")."""
    streamed = (
        _streamed_jacobian(t.n1, t.n2, params, shape, trace, t.same, budget) if stream else None
    )
    if streamed is not None:
        return streamed
    o, f, act = shape.n_out, shape.f_flops, shape.act
    k = 1 if trace else o
    p = sum(v.numel() for v in params.values())
    b1, b2 = t.block
    return MethodCost(
        "jacobian",
        t.feats * f * (1 + 2 * o) + t.pairs * 2 * k * o * p,
        t.span * o * p + max(b1, b2) * (o + 1) * act + t.tile,
    )


def ntk_vector_cost(t: Tiling, params, shape: Shape) -> MethodCost:
    o, f, act = shape.n_out, shape.f_flops, shape.act
    p = sum(v.numel() for v in params.values())
    b1, b2 = t.block
    return MethodCost(
        "ntk_vector",
        t.n1 * f * (1 + 2 * o) + t.pairs * o * 3 * f,
        b1 * o * p + b1 * o * b2 * act + (o + 1) * b1 * act + t.tile,
    )


def loop_cost(t: Tiling, params, shape: Shape, trace) -> MethodCost:
    o, f, act = shape.n_out, shape.f_flops, shape.act
    k = 1 if trace else o
    p = sum(v.numel() for v in params.values())
    return MethodCost(
        "loop",
        t.feats * f * (1 + 2 * o) + t.pairs * 2 * k * o * p,
        t.span * o * p + (o + 1) * act + t.tile,
        "a reverse pass per example and output, no vmap (last resort)",
    )


def _streamed_jacobian(n1, n2, params, shape: Shape, trace, same, budget) -> MethodCost | None:
    """Jacobian contraction streamed over parameter slices (``_methods.StreamedJacobian``):
    per slice and output (traced) or slice (untraced) one pass over all examples,
    F (1 + 2 k'), k' its outputs; then the Gram, about half of it on a set with itself."""
    from widenets.empirical._methods import parameter_slices, vmap_chunk

    if not math.isfinite(budget):
        return None
    o, f = shape.n_out, shape.f_flops
    n = n1 if same else n1 + n2
    outputs = 1 if trace else o
    slices = parameter_slices(params, max(1, int(budget // (n * outputs))))
    if slices is None:
        return None
    passes = len(slices) * (o // outputs)
    p = sum(v.numel() for v in params.values())
    pairs = n1 * (n1 + 128) / 2 if same else n1 * n2
    per_slice = max(
        sum(
            params[k].numel() if r0 is None else (r1 - r0) * params[k][0].numel()
            for k, r0, r1 in sl
        )
        for sl in slices
    )
    chunk = min(n, vmap_chunk(params, slices, shape.act, outputs, budget))
    return MethodCost(
        "jacobian",
        passes * n * f * (1 + 2 * outputs) + pairs * 2 * (1 if trace else o) * o * p,
        n * outputs * per_slice + chunk * (outputs + 1) * shape.act + n1 * n2 * outputs**2,
        f"streamed, {len(slices)} parameter slices",
        variant="streamed",
    )


@dataclass
class LayerCost:
    """One layer's share of the structured method in one mode: FLOPs per example whose
    features are formed and per pair of examples contracted, scalars held per example of
    a block and per pair of a tile."""

    mode: str
    per_example: float
    per_pair: float
    held_example: float
    held_pair: float = 0.0


def layer_options(
    spec, n_out: int, trace: bool, one_output: bool = False, grams_per_output: bool = False
) -> dict[str, LayerCost]:
    """The ways to contract one layer (see :mod:`widenets.empirical.structured`) and the
    cost of each: {"norm"} or {"factored"} (one position), else {"materialised",
    "pairwise"}.

    ``one_output``: one output at a time (batched traced kernels), so only the features
    of one output are held; ``grams_per_output``: the Gram matrices of the patches are
    formed again for every output."""
    k = 1 if trace else n_out  # output pairs per output
    held_out = 1 if one_output else n_out
    uu = n_out if grams_per_output else 1
    if spec.norm:
        p = spec.out * ((spec.weight is not None) + (spec.bias is not None))
        cost = LayerCost(
            "norm", 4 * n_out * math.prod(spec.y_shape), 2 * k * n_out * p, held_out * p
        )
        return {"norm": cost}
    if spec.L == 1:
        cost = LayerCost(
            "factored",
            0.0,
            2 * (uu * spec.fan_in + k * n_out * spec.out),
            held_out * spec.out + spec.fan_in,
        )
        return {"factored": cost}
    p = spec.out * spec.fan_in
    mat = LayerCost("materialised", 2 * n_out * spec.L * p, 2 * k * n_out * p, held_out * p)
    pair = LayerCost(
        "pairwise",
        0.0,
        2 * spec.L**2 * (uu * spec.fan_in + k * n_out * spec.out),
        held_out * spec.L * spec.out + spec.L * spec.fan_in,
        spec.L**2 * (1 + (1 if trace else n_out**2)),
    )
    return {"materialised": mat, "pairwise": pair}


#: scalars a batched pass holds per example, in units of its saved activations
#: (the activations, the reverse pass's transients, allocator slack)
C_ACT = 3.0


def structured_cost(
    t: Tiling, variant: str, layers: dict, shape: Shape, p_rest: int, trace, budget
) -> MethodCost:
    """The structured method's cost in one variant, with ``layers`` {layer key:
    LayerCost} in the chosen modes."""
    o, f, act = shape.n_out, shape.f_flops, shape.act
    k = 1 if trace else o
    b1, b2 = t.block
    pairs, span, tile = t.pairs, t.span, t.tile
    one = variant in ("streamed", "per_output")
    examples = t.per_tile if one else t.feats
    chunk = None
    if variant == "per_output":  # a forward and a reverse pass per output
        flops = examples * o * 2 * f
        chunk = int(max(1, min(max(b1, b2), budget / 4 / (C_ACT * max(act, 1.0)))))
        held = chunk * C_ACT * act + tile
    elif variant == "streamed":  # one forward, one reverse pass per output
        flops = examples * f * (1 + o)
        held = span * C_ACT * act + tile
    else:
        flops = examples * f * (1 + o) + pairs * 2 * k * o * p_rest
        held = span * o * (p_rest + shape.y_numel) + max(b1, b2) * (o + 1) * act + tile
    counts, layer_held = {}, []
    for c in layers.values():
        flops += examples * c.per_example + pairs * c.per_pair
        layer_held.append(span * c.held_example + b1 * b2 * c.held_pair)
        counts[c.mode] = counts.get(c.mode, 0) + 1
    if layer_held:  # streamed: one layer's features at a time; else all of them
        held += max(layer_held) if variant == "streamed" else sum(layer_held)
    how = variant.replace("_", " ") + (f", chunks of {chunk}" if chunk else "")
    note = f"{len(layers)} structured layers {counts}, {how}" if layers else "no supported layers"
    if p_rest:
        note += f", {p_rest:,} params by Jacobian"
    modes = {key: c.mode for key, c in layers.items()}
    return MethodCost("structured", flops, held, note, variant, chunk, modes)
