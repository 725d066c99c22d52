"""Cost estimates of the empirical-NTK methods, and the choice ``method="auto"`` makes.

With F the forward FLOPs of one example (counted by ``torch.utils.flop_counter`` on one
example), A the activations it saves for a reverse pass (counted on one example), P the
number of differentiated parameters, O outputs, k = 1 (traced) or O (untraced), and the
kernel computed in tiles of b1 x b2 examples (for x2 None only the tiles on or above the
diagonal, each example pair once):

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
  holds one example's activations. Never the first choice: ``auto`` uses it only when
  the others cannot run the model.
- structured: F (1 + O) per example (reverse passes for the g's, no weight gradients),
  plus the per-layer costs of :func:`widenets.empirical.structured.layer_cost`, plus the
  Jacobian contraction of the parameters outside supported layers. Batched and traced
  ("streamed"), each tile runs its own passes over both blocks and holds the activations
  of those passes and the features of one output and one layer at a time.

These are estimates of arithmetic, not timings; ``explain`` prints them so the choice can
be checked and overridden with ``method=...``. ``auto`` takes the fewest FLOPs; estimates
within :data:`TIE` of each other count as a tie, broken by the smaller memory. Methods that
cannot run the model (``CostReport.skipped``, with the first line of their error) are
passed over, in the order of :meth:`CostReport.order`, down to the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from widenets.empirical import structured
from widenets.empirical._common import Batch, call
from widenets.empirical.structured import layer_cost

METHODS = ("jacobian", "ntk_vector", "structured", "loop")
#: estimates within this factor of the fewest FLOPs are a tie, broken by memory
TIE = 1.25


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
    variant: str | None = None  # structured: how (structured.VARIANTS)
    chunk: int | None = None  # structured, per output: examples per pass


@dataclass
class CostReport:
    """Estimated cost of each method; ``method`` is what ``"auto"`` picks."""

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

    def _best(self, costs: list[MethodCost]) -> MethodCost:
        fit = [c for c in costs if c.scalars <= self.budget] or costs
        least = min(c.flops for c in fit)
        ties = [c for c in fit if c.flops <= TIE * least]
        return min(ties, key=lambda c: (c.scalars, c.flops))

    def order(self) -> list[str]:
        """Every method, in the order ``auto`` prefers them (the loop last)."""
        rest = [c for c in self.costs if c.method != "loop"]
        out = []
        while rest:
            best = self._best(rest)
            out.append(best.method)
            rest.remove(best)
        return [*out, "loop"]

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
        return "\n".join(lines)

    __repr__ = __str__


@dataclass
class Shape:
    """What the estimate needs to know about the model, measured once."""

    n_out: int
    f_flops: float
    act: float  # activations saved per example
    y_numel: float  # outputs of the structured layers per example (their g's)
    batched: bool  # structured: batched passes (every parameter in a supported layer)


def _tiling(n1, n2, b1, b2, same):
    """(example pairs contracted, examples whose features are formed for left/right
    blocks, examples run through per-tile passes, tiles)."""
    t1, t2 = math.ceil(n1 / b1), math.ceil(n2 / b2)
    if same:
        tiles = t1 * (t1 + 1) // 2
        pairs = n1 * (n1 + b1) / 2
        feats = n1 + n1 * (t1 - 1) / 2
        per_tile = n1 + (t1 - 1) * n1
    else:
        tiles = t1 * t2
        pairs = n1 * n2
        feats = n1 + t1 * n2
        per_tile = t1 * n2 + t2 * n1
    return pairs, feats, per_tile, tiles


def estimate(
    n1, n2, params, specs, shape: Shape, block, trace, same=False, budget=math.inf, stream=False
) -> CostReport:
    """The cost of every method for this model and batch (see module docstring);
    ``stream``: the Jacobian contraction may stream over parameter slices (no batch_size
    given), which it does when a slice fits the budget."""
    o, f, act = shape.n_out, shape.f_flops, shape.act
    k = 1 if trace else o
    p = sum(v.numel() for v in params.values())
    b1, b2 = block
    tile = b1 * b2 * (1 if trace else o**2)
    pairs, feats, per_tile, _ = _tiling(n1, n2, b1, b2, same)
    # examples whose features a tile holds: one block when x2 is None and one tile covers
    # it (the diagonal tile reuses its left features), else the two blocks of the tile
    span = b1 if same and b1 >= n1 else b1 + b2
    rep = CostReport(n1, n2, o, p, f, block, budget=budget)
    streamed = _streamed_jacobian(n1, n2, params, shape, trace, same, budget) if stream else None
    rep.costs.append(
        streamed
        or MethodCost(
            "jacobian",
            feats * f * (1 + 2 * o) + pairs * 2 * k * o * p,
            span * o * p + max(b1, b2) * (o + 1) * act + tile,
        )
    )
    rep.costs.append(
        MethodCost(
            "ntk_vector",
            n1 * f * (1 + 2 * o) + pairs * o * 3 * f,
            b1 * o * p + b1 * o * b2 * act + (o + 1) * b1 * act + tile,
        )
    )
    covered = {s.weight for s in specs} | {s.bias for s in specs}
    p_rest = sum(v.numel() for n, v in params.items() if n not in covered)
    if not (shape.batched and not p_rest):
        variants = ["per_example"]
    else:
        variants = ["streamed", "per_output"] if trace else ["batched"]
    forced = structured.FORCE_VARIANT
    if forced == "per_example" or forced in variants:
        variants = [forced]
    options = [
        _structured(
            v, specs, shape, p_rest, trace, block, span, pairs, feats, per_tile, tile, budget
        )
        for v in variants
    ]
    fit = [c for c in options if c.scalars <= budget] or options
    rep.costs.append(min(fit, key=lambda c: (c.flops, c.scalars)))
    rep.costs.append(
        MethodCost(
            "loop",
            feats * f * (1 + 2 * o) + pairs * 2 * k * o * p,
            span * o * p + (o + 1) * act + tile,
            "a reverse pass per example and output, no vmap (last resort)",
        )
    )
    return rep


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
    )


#: scalars a batched pass holds per example, in units of its saved activations
#: (the activations, the reverse pass's transients, allocator slack)
C_ACT = 3.0


def _structured(
    variant, specs, shape, p_rest, trace, block, span, pairs, feats, per_tile, tile, budget
):
    """The structured method's cost in one variant (see structured.VARIANTS)."""
    o, f, act = shape.n_out, shape.f_flops, shape.act
    k = 1 if trace else o
    b1, b2 = block
    one = variant in ("streamed", "per_output")
    examples = per_tile if one else feats
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
    modes, layer_held = {}, []
    for s in specs:
        c = layer_cost(s, max(1, int((b1 * b2) ** 0.5)), o, trace, one, variant == "per_output")
        flops += examples * c.per_example + pairs * c.per_pair
        layer_held.append(span * c.held_example + b1 * b2 * c.held_pair)
        modes[c.mode] = modes.get(c.mode, 0) + 1
    if layer_held:  # streamed: one layer's features at a time; else all of them
        held += max(layer_held) if variant == "streamed" else sum(layer_held)
    how = variant.replace("_", " ") + (f", chunks of {chunk}" if chunk else "")
    note = f"{len(specs)} structured layers {modes}, {how}" if specs else "no supported layers"
    if p_rest:
        note += f", {p_rest:,} params by Jacobian"
    return MethodCost("structured", flops, held, note, variant, chunk)
