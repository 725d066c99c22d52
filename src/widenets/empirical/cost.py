"""Cost estimates of the empirical-NTK methods, and the choice ``method="auto"`` makes.

With F the forward FLOPs of one example (counted by ``torch.utils.flop_counter`` on one
example), P the number of differentiated parameters, O outputs, N1 x N2 pairs and k = 1
(traced) or O (untraced):

- jacobian: (N1 + N2) O (F + 2F) to build per-example Jacobians (one reverse pass per
  output, weight gradients included), 2 N1 N2 k O P to contract them; holds b O P
  scalars per block of b examples.
- ntk_vector: N1 O 3F for the rows of J(x1), then N1 O N2 3F for the forward-mode
  products through the x2 block; holds b1 O P scalars.
- structured: (N1 + N2) O 2F for the output-gradients (no weight gradients), plus the
  per-layer costs of :func:`widenets.empirical.structured.layer_cost`, plus the Jacobian
  contraction of the parameters outside supported layers.

These are estimates of arithmetic, not timings; ``explain`` prints them so the choice can
be checked and overridden with ``method=...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from widenets.empirical._common import Batch, call
from widenets.empirical.structured import layer_cost

METHODS = ("jacobian", "ntk_vector", "structured")


def forward_flops(model, state: dict, batch: Batch) -> float:
    """FLOPs of one forward pass on one example (matmuls and convolutions)."""
    one = batch.slice(0, 1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call(model, state, one.tree(), 1)
    return float(max(counter.get_total_flops(), 1))


@dataclass
class MethodCost:
    method: str
    flops: float
    scalars: float  # largest number of scalars held at once (features of a block + tile)
    note: str = ""


@dataclass
class CostReport:
    """Estimated cost of each method; ``method`` is what ``"auto"`` picks (least FLOPs)."""

    n1: int
    n2: int
    n_out: int
    n_params: int
    forward_flops: float
    block: tuple[int, int]
    costs: list[MethodCost] = field(default_factory=list)

    @property
    def method(self) -> str:
        return min(self.costs, key=lambda c: c.flops).method

    def __str__(self) -> str:
        lines = [
            f"empirical NTK of {self.n1} x {self.n2} inputs, {self.n_out} outputs, "
            f"{self.n_params:,} parameters, forward {self.forward_flops:.3g} FLOPs/example, "
            f"blocks {self.block[0]} x {self.block[1]}",
            f"{'method':<12}{'GFLOPs':>12}{'Mscalars':>12}  note",
        ]
        for c in self.costs:
            mark = " <- auto" if c.method == self.method else ""
            lines.append(
                f"{c.method:<12}{c.flops / 1e9:>12.3f}{c.scalars / 1e6:>12.2f}  {c.note}{mark}"
            )
        return "\n".join(lines)

    __repr__ = __str__


def estimate(n1, n2, n_out, params, specs, f_flops, block, trace) -> CostReport:
    """The cost of every method for this model and batch (see module docstring)."""
    k = 1 if trace else n_out
    p = sum(v.numel() for v in params.values())
    b1, b2 = block
    tile = b1 * b2 * (1 if trace else n_out**2)
    rep = CostReport(n1, n2, n_out, p, f_flops, block)
    rep.costs.append(
        MethodCost(
            "jacobian",
            (n1 + n2) * n_out * 3 * f_flops + 2 * n1 * n2 * k * n_out * p,
            (b1 + b2) * n_out * p + tile,
        )
    )
    rep.costs.append(
        MethodCost(
            "ntk_vector",
            n1 * n_out * 3 * f_flops + n1 * n_out * n2 * 3 * f_flops,
            b1 * n_out * p + b1 * n_out * b2 * n_out + tile,
        )
    )
    covered = {s.weight for s in specs} | {s.bias for s in specs}
    p_rest = sum(v.numel() for n, v in params.items() if n not in covered)
    flops = (n1 + n2) * n_out * 2 * f_flops + 2 * n1 * n2 * k * n_out * p_rest
    held = (b1 + b2) * n_out * p_rest + tile
    modes = {}
    bb = max(1, int((b1 * b2) ** 0.5))
    for s in specs:
        mode, fl, mem = layer_cost(s, bb, n_out, trace)
        scale = n1 * n2 / (bb * bb)
        flops += fl * scale
        held += mem
        modes[mode] = modes.get(mode, 0) + 1
    note = f"{len(specs)} structured layers " + str(modes) if specs else "no supported layers"
    if p_rest:
        note += f", {p_rest:,} params by Jacobian"
    rep.costs.append(MethodCost("structured", flops, held, note))
    return rep
