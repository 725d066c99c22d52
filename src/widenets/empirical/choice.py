"""The one place where the empirical NTK's method, structured variant and layer modes are
chosen (:func:`choose`), from the cost estimates of :mod:`widenets.empirical.cost`.

- Structured variants that can run: "per_example" unless every differentiated parameter
  sits in a recognised layer; then "streamed" and "per_output" for a traced kernel,
  "batched" for an untraced one. Each layer with several positions is contracted in the
  mode with the least arithmetic in an n x n tile, n = sqrt(b1 b2):
  materialised if 2 n c_ex + n^2 c_pair(materialised) <= n^2 c_pair(pairwise). Of the
  variants, the fewest FLOPs among those within the memory budget (all, if none fits).
- Methods: ``auto`` prefers the fewest FLOPs among methods within the budget; estimates
  within :data:`TIE` of the fewest count as a tie, broken by the smaller memory; the loop
  comes last. A method known to fail on this kind of model is passed over
  (``CostReport.skipped``).

:class:`Force` overrides parts of the choice (tests exercise every variant and mode with
it); the reasons for the choice are in ``CostReport.reasons``, which ``explain`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from widenets.empirical.cost import (
    CostReport,
    LayerCost,
    MethodCost,
    Shape,
    jacobian_cost,
    layer_options,
    loop_cost,
    ntk_vector_cost,
    structured_cost,
    tiling,
)
from widenets.empirical.layer_structure import LayerSpec
from widenets.empirical.probes import REVERSE_BATCH
from widenets.empirical.structured import VARIANTS

#: estimates within this factor of the fewest FLOPs are a tie, broken by memory
TIE = 1.25
#: modes a layer with several positions can be forced into
POSITION_MODES = ("materialised", "pairwise")


@dataclass(frozen=True)
class Force:
    """Choices made by the caller instead of the cost model (None: leave it to the model).

    ``variant``: one of :data:`VARIANTS`, used where it can run ("per_example" always;
    "batched" for untraced kernels, "streamed" / "per_output" for traced ones, when every
    parameter is in a recognised layer); ``mode``: "materialised" or "pairwise" for every
    layer with several positions; ``budget``: scalars held at most (instead of
    ``ntk.MEMORY_SCALARS``); ``reverse_batch``: most outputs per batched reverse pass
    (1: one reverse pass per output).
    """

    variant: str | None = None
    mode: str | None = None
    budget: float | None = None
    reverse_batch: int | None = None

    def __post_init__(self):
        if self.variant is not None and self.variant not in VARIANTS:
            raise ValueError(f"`variant` must be one of {VARIANTS}, got {self.variant!r}.")
        if self.mode is not None and self.mode not in POSITION_MODES:
            raise ValueError(f"`mode` must be one of {POSITION_MODES}, got {self.mode!r}.")
        if self.budget is not None and not self.budget > 0:
            raise ValueError(f"`budget` must be a positive number of scalars, got {self.budget!r}.")
        if self.reverse_batch is not None and not (
            isinstance(self.reverse_batch, int) and self.reverse_batch >= 1
        ):
            raise ValueError(f"`reverse_batch` must be a positive int, got {self.reverse_batch!r}.")


@dataclass
class Choice:
    """What runs: ``method``, and the report of every method's cost with the reasons."""

    method: str
    report: CostReport
    reverse_batch: int = REVERSE_BATCH

    @property
    def structured(self) -> MethodCost:
        """The structured method's variant, chunk and layer modes (``.variant`` etc.)."""
        return self.report.cost("structured")

    @property
    def streamed_jacobian(self) -> bool:
        return self.report.cost("jacobian").variant == "streamed"


def choose(
    params: dict,
    specs: list[LayerSpec],
    shape: Shape,
    n1: int,
    n2: int,
    block: tuple[int, int],
    *,
    trace: bool,
    same: bool,
    stream: bool,
    budget: float,
    method: str = "auto",
    skipped: dict | None = None,
    force: Force | None = None,
) -> Choice:
    """Choose the method (``method`` "auto", or the one requested), the structured
    variant and every layer's mode for a kernel of n1 x n2 examples in tiles ``block``.

    ``params``: the differentiated parameters; ``specs``: the recognised layers
    (:func:`widenets.empirical.layer_structure.find_layers`); ``shape``: outputs, FLOPs and
    activations of one example; ``same``: x2 is None; ``stream``: no batch_size was
    given, so the Jacobian contraction may stream over parameter slices; ``skipped``:
    methods known to fail on this kind of model, {method: reason}.
    """
    force = force or Force()
    t = tiling(n1, n2, block, trace, shape.n_out, same)
    reasons: list[str] = []
    structured = _structured(t, params, specs, shape, trace, budget, force, reasons)
    rep = CostReport(
        n1,
        n2,
        shape.n_out,
        sum(v.numel() for v in params.values()),
        shape.f_flops,
        block,
        budget=budget,
        skipped=dict(skipped or {}),
    )
    rep.costs = [
        jacobian_cost(t, params, shape, trace, budget, stream),
        ntk_vector_cost(t, params, shape),
        structured,
        loop_cost(t, params, shape, trace),
    ]
    rep.preference = _preference(rep.costs, budget)
    rep.reasons = reasons
    auto = rep.method
    order = rep.order()
    over = order[: order.index(auto)]  # the methods before it are known to fail
    why = "fewest FLOPs among the methods within the memory budget"
    why += f" (estimates within {TIE}x count as a tie, broken by memory)"
    if over:
        why += "; passed over, cannot run: " + ", ".join(over)
    rep.reasons.insert(0, f"auto: {auto}, {why}")
    chosen = auto if method == "auto" else method
    return Choice(chosen, rep, force.reverse_batch or REVERSE_BATCH)


def _structured(t, params, specs, shape, trace, budget, force, reasons) -> MethodCost:
    """The structured method's cost in the variant chosen, with its layer modes."""
    covered = {s.weight for s in specs} | {s.bias for s in specs}
    rest = [k for k in params if k not in covered]
    p_rest = sum(params[k].numel() for k in rest)
    # batched passes give each example's derivatives: every method runs only after
    # ntk._Setup has checked that the model treats the examples of a batch independently
    if not specs:
        variants, why = ["per_example"], "no recognised layers"
    elif rest:
        variants = ["per_example"]
        why = f"{len(rest)} parameter tensor(s) outside recognised layers, by Jacobian"
    elif trace:
        variants, why = ["streamed", "per_output"], "every parameter in a recognised layer"
    else:
        variants, why = ["batched"], "every parameter in a recognised layer, untraced"
    if force.variant == "per_example" or force.variant in variants:
        variants, why = [force.variant], f"forced {force.variant!r}"
    b1, b2 = t.block
    n = max(1, int((b1 * b2) ** 0.5))
    options = []
    for v in variants:
        one = v in ("streamed", "per_output")
        layers = {}
        for s in specs:
            opts = layer_options(s, shape.n_out, trace, one, grams_per_output=v == "per_output")
            layers[s.key] = _layer_mode(opts, n, force)
        options.append(structured_cost(t, v, layers, shape, p_rest, trace, budget))
    fit = [c for c in options if c.scalars <= budget] or options
    best = min(fit, key=lambda c: (c.flops, c.scalars))
    if len(options) > 1:
        why += f"; {best.variant}: fewest FLOPs of {'/'.join(variants)} within the budget"
    reasons.append(f"structured: {best.variant} ({why})")
    if force.mode is not None:
        reasons.append(f"structured: layers with several positions forced {force.mode!r}")
    return best


def _layer_mode(options: dict[str, LayerCost], n: int, force: Force) -> LayerCost:
    """The mode of one layer: the only one, the forced one, or the cheaper in n x n."""
    if len(options) == 1:
        return next(iter(options.values()))
    if force.mode is not None:
        return options[force.mode]
    mat, pair = options["materialised"], options["pairwise"]
    if 2 * n * mat.per_example + n * n * mat.per_pair <= n * n * pair.per_pair:
        return mat
    return pair


def _preference(costs: list[MethodCost], budget: float) -> list[str]:
    """Every method, in the order ``auto`` prefers them (the loop last)."""

    def best(cands: list[MethodCost]) -> MethodCost:
        fit = [c for c in cands if c.scalars <= budget] or cands
        least = min(c.flops for c in fit)
        ties = [c for c in fit if c.flops <= TIE * least]
        return min(ties, key=lambda c: (c.scalars, c.flops))

    rest = [c for c in costs if c.method != "loop"]
    out = []
    while rest:
        b = best(rest)
        out.append(b.method)
        rest.remove(b)
    return [*out, "loop"]
