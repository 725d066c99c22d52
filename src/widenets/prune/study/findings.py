"""The published findings the pruning study checks, each decided from the run's numbers by
a stated rule (thresholds below), never by hand.

The numbers are the per-(architecture, method, density) means over seeds and their standard
errors (:func:`summarize`). A difference a - b counts only beyond ``2 * se``, with
se = sqrt(se_a^2 + se_b^2) (unpaired: conservative for the paired seeds of the study).

1. **SynFlow avoids layer collapse where SNIP and GraSP lose accuracy abruptly** (Tanaka et
   al. 2020, Fig. 1). On an architecture: SynFlow prunes no layer to nothing at any density
   (any seed), and each of SNIP and GraSP has a density of at most ``EXTREME`` where its
   accuracy has fallen by at least ``ABRUPT_DROP`` from the next denser one and lies below
   SynFlow's by at least max(``SYNFLOW_MARGIN``, 2 se).
2. **IMP tickets keep the dense accuracy down to about 10-20% density on LeNet-300-100,
   randomly reinitialised tickets do not** (Frankle & Carbin 2019). IMP's accuracy is at
   least the dense one minus max(``KEEP_TOL``, 2 se) at every density in [``BAND_LOW``, 1);
   and at some density in [``BAND_LOW``, ``BAND_HIGH``] the reinitialised ticket falls
   short of the dense accuracy by that rule and lies below IMP by more than 2 se.
3. **Random pruning with ERK densities stays close to the dense accuracy at moderate
   sparsity** (Liu et al. 2022). On an architecture: at every density in [``MODERATE_LOW``,
   ``MODERATE_HIGH``] random ERK's accuracy is at least the dense one minus
   max(``CLOSE_TOL``, 2 se).

A finding holding on every architecture it concerns is "reproduced", on some "partly
reproduced", on none "not reproduced"; without the methods or densities it needs, "not
evaluated".
"""

from __future__ import annotations

import math
import statistics

ABRUPT_DROP = 0.15  # accuracy lost between two neighbouring densities of the grid
EXTREME = 0.1  # "extreme sparsity": the drop ends at a density of at most 10%
SYNFLOW_MARGIN = 0.05  # SynFlow above SNIP/GraSP by at least this much
KEEP_TOL = 0.01  # "keeps the dense accuracy": within 1 point
BAND_LOW, BAND_HIGH = 0.1, 0.2  # "about 10-20% density"
CLOSE_TOL = 0.02  # "close to the dense accuracy": within 2 points
MODERATE_LOW, MODERATE_HIGH = 0.2, 0.5  # moderate sparsity: 50-80% of the weights removed

REPRODUCED, PARTLY, NOT, UNEVALUATED = (
    "reproduced",
    "partly reproduced",
    "not reproduced",
    "not evaluated",
)
LENET = "lenet_300_100"


def _stats(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def summarize(rows: list[dict]) -> list[dict]:
    """Per (arch, method, density): seeds n, accuracy and kernel distance (mean and standard
    error over seeds), seeds with a collapsed layer, mean kept fraction."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["arch"], r["method"], float(r["density"])), []).append(r)
    out = []
    for (arch, method, density), rs in groups.items():
        acc, acc_se = _stats([r["accuracy"] for r in rs])
        kd, kd_se = _stats([r.get("kernel_distance") for r in rs])
        out.append(
            {
                "arch": arch,
                "method": method,
                "density": density,
                "n": len(rs),
                "accuracy": acc,
                "accuracy_se": acc_se,
                "kernel_distance": kd,
                "kernel_distance_se": kd_se,
                "collapsed_seeds": sum(bool(r.get("collapsed")) for r in rs),
                "actual_density": statistics.fmean(r.get("actual_density", density) for r in rs),
            }
        )
    return sorted(out, key=lambda e: (e["arch"], e["method"], -e["density"]))


class Table:
    """Lookup of :func:`summarize` entries; the dense network answers for every method at
    density 1."""

    def __init__(self, summary: list[dict]):
        self.rows = {(e["arch"], e["method"], e["density"]): e for e in summary}
        self.archs = sorted({e["arch"] for e in summary})

    def get(self, arch, method, density):
        e = self.rows.get((arch, method, float(density)))
        if e is None and float(density) == 1.0:
            e = self.rows.get((arch, "dense", 1.0))
        return e

    def densities(self, arch, method) -> list[float]:
        """Densities with an entry, from dense (1.0 when the dense network is there) down;
        none for a method without entries."""
        ds = {d for (a, m, d) in self.rows if a == arch and m == method}
        if ds and (arch, "dense", 1.0) in self.rows:
            ds.add(1.0)
        return sorted(ds, reverse=True)


def _se(a, b) -> float:
    return math.sqrt((a["accuracy_se"] or 0.0) ** 2 + (b["accuracy_se"] or 0.0) ** 2)


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def _acc(e) -> str:
    if e["n"] > 1:
        return f"{100 * e['accuracy']:.1f} ± {100 * e['accuracy_se']:.1f}%"
    return _pct(e["accuracy"])


def _combine(per_arch: dict[str, bool]) -> str:
    if not per_arch:
        return UNEVALUATED
    held = sum(per_arch.values())
    return REPRODUCED if held == len(per_arch) else PARTLY if held else NOT


def _keeps(e, dense, tol) -> bool:
    return e["accuracy"] >= dense["accuracy"] - max(tol, 2 * _se(e, dense))


def _steepest_drop(table: Table, arch, method, grid):
    """(d, prev, entry at d, entry at prev, SynFlow's entry at d) of the largest accuracy
    drop between neighbouring densities ending at d <= EXTREME, or None."""
    best = None
    for prev, d in zip(grid, grid[1:], strict=False):
        a, p = table.get(arch, method, d), table.get(arch, method, prev)
        if not (a and p) or d > EXTREME:
            continue
        if (
            best is None
            or p["accuracy"] - a["accuracy"] > best[3]["accuracy"] - best[2]["accuracy"]
        ):
            best = (d, prev, a, p, table.get(arch, "synflow", d))
    return best


def synflow_finding(table: Table) -> dict:
    per_arch, details = {}, []
    for arch in table.archs:
        ds = table.densities(arch, "synflow")
        if len(ds) < 2 or not all(table.densities(arch, m)[1:] for m in ("snip", "grasp")):
            continue
        collapsed = [d for d in ds if (e := table.get(arch, "synflow", d)) and e["collapsed_seeds"]]
        parts, ok = [], not collapsed
        parts.append(
            "SynFlow collapses a layer at " + ", ".join(_pct(d) for d in collapsed)
            if collapsed
            else "SynFlow collapses no layer"
        )
        for m in ("snip", "grasp"):
            grid = table.densities(arch, m)
            found = None
            for prev, d in zip(grid, grid[1:], strict=False):
                a, p, s = (
                    table.get(arch, m, d),
                    table.get(arch, m, prev),
                    table.get(arch, "synflow", d),
                )
                if not (a and p and s) or d > EXTREME:
                    continue
                drop = p["accuracy"] - a["accuracy"]
                gap = s["accuracy"] - a["accuracy"]
                if drop >= ABRUPT_DROP and gap >= max(SYNFLOW_MARGIN, 2 * _se(s, a)):
                    found = (d, prev, a, p, s)
                    break
            name = m.upper() if m == "snip" else "GraSP"
            steepest = _steepest_drop(table, arch, m, grid)
            if found:
                d, prev, a, p, s = found
                where = f" ({a['collapsed_seeds']}/{a['n']} seeds with a collapsed layer)"
                parts.append(
                    f"{name} drops from {_acc(p)} at {_pct(prev)} to {_acc(a)} at {_pct(d)}"
                    f"{where if a['collapsed_seeds'] else ''}, SynFlow {_acc(s)} there"
                )
            elif steepest is None:
                ok = False
                parts.append(f"{name} has no density of at most {_pct(EXTREME)} to compare")
            else:
                ok = False
                d, prev, a, p, s = steepest
                gap = (
                    f"SynFlow {_acc(s)} there ({100 * (s['accuracy'] - a['accuracy']):+.1f} "
                    f"points, needed max({100 * SYNFLOW_MARGIN:.0f}, 2 se = "
                    f"{200 * _se(s, a):.1f}))"
                    if s
                    else "no SynFlow there"
                )
                parts.append(
                    f"{name} has no abrupt drop below SynFlow: its steepest at most "
                    f"{_pct(EXTREME)} is {100 * (p['accuracy'] - a['accuracy']):.1f} points, "
                    f"from {_acc(p)} at {_pct(prev)} to {_acc(a)} at {_pct(d)}, {gap}"
                )
        per_arch[arch] = ok
        details.append(f"{arch}: " + "; ".join(parts) + ".")
    return {
        "key": "synflow",
        "claim": "SynFlow avoids layer collapse at extreme sparsity where SNIP and GraSP lose "
        "accuracy abruptly",
        "paper": "Tanaka et al. 2020, Fig. 1",
        "rule": f"SynFlow collapses no layer at any density, and SNIP and GraSP each lose at "
        f"least {ABRUPT_DROP:.0%} accuracy between two neighbouring densities, ending at a "
        f"density of at most {EXTREME:.0%} and at least max({SYNFLOW_MARGIN:.0%}, 2 se) "
        "below SynFlow",
        "per_arch": per_arch,
        "verdict": _combine(per_arch),
        "details": details,
    }


def imp_finding(table: Table) -> dict:
    per_arch, details = {}, []
    arch = LENET
    dense = table.get(arch, "dense", 1.0)
    band = [d for d in table.densities(arch, "imp") if BAND_LOW <= d <= BAND_HIGH]
    if dense and band and table.densities(arch, "imp_reinit"):
        kept = [d for d in table.densities(arch, "imp") if BAND_LOW <= d < 1]
        lost = [d for d in kept if not _keeps(table.get(arch, "imp", d), dense, KEEP_TOL)]
        reinit_short = []
        for d in band:
            t, r = table.get(arch, "imp", d), table.get(arch, "imp_reinit", d)
            if t and r and not _keeps(r, dense, KEEP_TOL):
                if t["accuracy"] - r["accuracy"] > 2 * _se(t, r):
                    reinit_short.append(d)
        per_arch[arch] = not lost and bool(reinit_short)
        nums = "; ".join(
            f"at {_pct(d)}: IMP {_acc(table.get(arch, 'imp', d))}, reinitialised "
            + (_acc(table.get(arch, "imp_reinit", d)) if table.get(arch, "imp_reinit", d) else "–")
            for d in band
        )
        low = min(kept)
        details.append(
            f"{arch}: dense {_acc(dense)}; {nums}. IMP "
            + (
                f"falls short of the dense accuracy at {', '.join(_pct(d) for d in lost)}"
                if lost
                else f"keeps it down to {_pct(low)}"
            )
            + "; the reinitialised ticket "
            + (
                f"falls short of it and below IMP at {', '.join(_pct(d) for d in reinit_short)}"
                if reinit_short
                else f"does not fall short of it and below IMP in [{_pct(BAND_LOW)}, "
                f"{_pct(BAND_HIGH)}]"
            )
            + "."
        )
    return {
        "key": "imp",
        "claim": "IMP tickets with rewinding keep the dense accuracy down to about 10-20% "
        "density on LeNet-300-100, where random reinitialisation of the same mask does not",
        "paper": "Frankle & Carbin 2019",
        "rule": f"on LeNet-300-100, IMP within max({KEEP_TOL:.0%}, 2 se) of the dense accuracy "
        f"at every density in [{BAND_LOW:.0%}, 100%), and the reinitialised ticket further "
        f"below it and more than 2 se below IMP at some density in [{BAND_LOW:.0%}, "
        f"{BAND_HIGH:.0%}]",
        "per_arch": per_arch,
        "verdict": _combine(per_arch),
        "details": details,
    }


def erk_finding(table: Table) -> dict:
    per_arch, details = {}, []
    for arch in table.archs:
        dense = table.get(arch, "dense", 1.0)
        band = [d for d in table.densities(arch, "erk") if MODERATE_LOW <= d <= MODERATE_HIGH]
        if not dense or not band or band == [1.0]:
            continue
        band = [d for d in band if d < 1]
        far = [d for d in band if not _keeps(table.get(arch, "erk", d), dense, CLOSE_TOL)]
        per_arch[arch] = not far
        nums = "; ".join(
            f"at {_pct(d)}: ERK {_acc(table.get(arch, 'erk', d))}"
            + (
                f" (uniform random {_acc(table.get(arch, 'random', d))})"
                if table.get(arch, "random", d)
                else ""
            )
            for d in band
        )
        details.append(
            f"{arch}: dense {_acc(dense)}; {nums}"
            + (
                f"; more than the tolerance below dense at {', '.join(_pct(d) for d in far)}"
                if far
                else ""
            )
            + "."
        )
    return {
        "key": "erk",
        "claim": "Random pruning with ERK layer densities stays close to the dense accuracy at "
        "moderate sparsity",
        "paper": "Liu et al. 2022",
        "rule": f"random ERK within max({CLOSE_TOL:.0%}, 2 se) of the dense accuracy at every "
        f"density in [{MODERATE_LOW:.0%}, {MODERATE_HIGH:.0%}]",
        "per_arch": per_arch,
        "verdict": _combine(per_arch),
        "details": details,
    }


def evaluate(summary: list[dict]) -> list[dict]:
    """The three findings, decided on ``summary`` (:func:`summarize`)."""
    table = Table(summary)
    return [synflow_finding(table), imp_finding(table), erk_finding(table)]
