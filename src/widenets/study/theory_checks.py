"""The theory's predictions for a study, each measured on the run and checked.

Every check is a power law y ~ x^p whose exponent p is fitted by least squares on log y
against log x, once per seed; the measured exponent is the mean over seeds and its
uncertainty the standard error of that mean (std / sqrt(seeds)). The ensemble check has
one curve, so its uncertainty is the jackknife over seeds (each seed left out in turn).

Predictions (NTK parameterisation, outputs centred at initialisation):

- networks' distance from the infinite-width prediction ~ width^-1/2 (Lee et al. 2019;
  with centring, Lee et al. 2020, the infinite-width prediction is deterministic and what
  is left are the O(width^-1/2) fluctuations of the finite network's NTK);
- networks against their own linearisation: sup_t ||f(t) - f_lin(t)|| = O(width^-1/2)
  (Lee et al. 2019, Theorem 2.1), a bound;
- ensembles of M networks at the largest width: distance ~ M^-1/2 (independent members'
  deviations average out; Lee et al. 2020, on centring and ensembling);
- empirical NTK at initialisation against the analytic one ~ width^-1/2 (Jacot et al. 2018;
  Lee et al. 2019: central-limit fluctuations);
- relative change of the empirical NTK during training = O(width^-1/2) (Lee et al. 2019,
  Theorem 2.1 and its appendix), a bound: the lazy regime.

A check holds when the exponent is within ``TOLERANCE`` + 2 standard errors of the
prediction (for a bound: no larger than the prediction plus that margin). The fixed part
of the margin allows for the finite-width corrections of the smallest widths, which tilt a
fit over a few octaves.
"""

from __future__ import annotations

import math
import statistics

TOLERANCE = 0.15

LEE_2019 = "Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models"
LEE_2020 = "Lee et al. 2020, Finite Versus Infinite Neural Networks"
JACOT_2018 = "Jacot et al. 2018, Neural Tangent Kernel; " + LEE_2019

CHECKS = (
    # key, what, x, prediction, kind, paper
    (
        "distance_to_infinite",
        "distance of trained networks from the infinite-width prediction",
        "width",
        -0.5,
        "approx",
        LEE_2019 + "; centred outputs as in " + LEE_2020,
    ),
    (
        "linearization_gap",
        "networks against their own linearisation, sup over training",
        "width",
        -0.5,
        "bound",
        LEE_2019 + " (Theorem 2.1)",
    ),
    (
        "ensemble",
        "ensemble of M networks at the largest width, distance from the prediction",
        "members M",
        -0.5,
        "approx",
        LEE_2020 + " (centring and ensembling)",
    ),
    (
        "ntk_init_distance",
        "empirical NTK at initialisation against the analytic NTK",
        "width",
        -0.5,
        "approx",
        JACOT_2018,
    ),
    (
        "relative_kernel_change",
        "relative change of the empirical NTK during training (lazy regime)",
        "width",
        -0.5,
        "bound",
        LEE_2019 + " (Theorem 2.1 and its appendix)",
    ),
)


def fit_exponent(xs, ys) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two usable points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def jackknife(leave_one_out: list[float]) -> float | None:
    """Jackknife standard error from the estimates with each sample left out."""
    n = len(leave_one_out)
    if n < 2:
        return None
    mean = statistics.fmean(leave_one_out)
    return math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in leave_one_out))


def holds(measured, se, prediction: float, kind: str) -> bool | None:
    """Whether the measured exponent agrees with the prediction (see the module docstring)."""
    if measured is None:
        return None
    margin = TOLERANCE + 2 * (se or 0.0)
    if kind == "bound":
        return measured <= prediction + margin
    return abs(measured - prediction) <= margin


SHORT = {
    "distance_to_infinite": "networks vs infinite width",
    "linearization_gap": "networks vs their linearisation",
    "ensemble": "ensembles vs infinite width",
    "ntk_init_distance": "empirical vs analytic NTK at init",
    "relative_kernel_change": "NTK change during training",
}


def per_seed_values(results: dict, key: str) -> dict[int, dict[int, float]]:
    """seed -> {width: value} of the quantity behind check ``key`` (not "ensemble")."""
    return _per_seed(results, _value(key))


def _per_seed(results: dict, value) -> dict[int, dict[int, float]]:
    """seed -> {width: value(row)} over the finite networks (values that are None dropped)."""
    out: dict[int, dict[int, float]] = {}
    for r in results.get("finite", []):
        v = value(r)
        if v is not None:
            out.setdefault(r["seed"], {})[r["width"]] = v
    return out


def _width_fit(per_seed: dict[int, dict[int, float]]):
    slopes = []
    for curve in per_seed.values():
        ws = sorted(curve)
        slopes.append(fit_exponent(ws, [curve[w] for w in ws]))
    mean, se = _mean_se(slopes)
    n = len([s for s in slopes if s is not None])
    return mean, se, n


def _value(key: str):
    if key == "distance_to_infinite":
        return lambda r: r.get("gd", {}).get("distance_to_infinite")
    if key == "linearization_gap":
        return lambda r: r.get("linearized", {}).get("max_distance_to_network")
    return lambda r: r.get("regime", {}).get(key)


def _ensemble(results: dict):
    scaling = results.get("ensemble_scaling") or {}
    if not scaling:
        return None, None, 0, None
    width = max(scaling, key=int)
    e = scaling[width]
    full = fit_exponent(e["members"], e["distance"])
    loo = [fit_exponent(list(range(1, len(c) + 1)), c) for c in e["leave_one_out"]]
    loo = [v for v in loo if v is not None]
    return full, (jackknife(loo) if full is not None else None), len(e["members"]), width


def evaluate(results: dict) -> dict:
    """The table of predictions: one row per check, with the measured exponent, its standard
    error over seeds, the number of seeds (or members) it rests on and whether it holds."""
    cfg = results.get("config", {})
    rows = []
    for key, what, x, prediction, kind, paper in CHECKS:
        row = {
            "key": key,
            "quantity": what,
            "against": x,
            "prediction": prediction,
            "kind": kind,
            "paper": paper,
        }
        if key == "ensemble":
            measured, se, n, width = _ensemble(results)
            row["width"] = None if width is None else int(width)
        else:
            measured, se, n = _width_fit(_per_seed(results, _value(key)))
        row.update({"measured": measured, "se": se, "n": n})
        if key in ("distance_to_infinite", "ensemble") and not cfg.get("center", True):
            row["holds"] = None
            row["note"] = "not applicable: outputs not centred (center = false)"
        elif measured is None:
            row["holds"] = None
            row["note"] = "not enough data (needs two widths, or two seeds for ensembles)"
        else:
            row["holds"] = holds(measured, se, prediction, kind)
            if se is None:
                row["note"] = "one seed: no uncertainty"
        rows.append(row)
    return {"tolerance": TOLERANCE, "checks": rows}


def describe_prediction(row: dict) -> str:
    p = "−1/2" if row["prediction"] == -0.5 else f"{row['prediction']:g}"
    if row["kind"] == "bound":
        return f"∝ {row['against']}^{p} or faster (bound)"
    return f"∝ {row['against']}^{p}"


def describe_measured(row: dict) -> str:
    m, se = row.get("measured"), row.get("se")
    if m is None:
        return "–"
    text = f"{m:+.2f}" + (f" ± {se:.2f}" if se is not None else "")
    n = row.get("n")
    unit = "members" if row["key"] == "ensemble" else "seeds"
    if n:
        text += f" ({n} {unit}" + (f", width {row['width']}" if row.get("width") else "") + ")"
    return text


def describe_holds(row: dict) -> str:
    h = row.get("holds")
    if h is None:
        return row.get("note", "–")
    return "yes" if h else "no"


def short_citation(paper: str) -> str:
    """ "Lee et al. 2019 (Theorem 2.1)" from the full citation (for the terminal)."""
    short = paper.split(",")[0]
    if paper.endswith(")") and "(" in paper:
        short += " " + paper[paper.rindex("(") :]
    return short


def table_rows(theory: dict, short: bool = False) -> list[list[str]]:
    """[quantity, prediction, paper, measured exponent, holds] for the report (with
    ``short``, the papers' titles left out)."""
    return [
        [
            r["quantity"],
            describe_prediction(r),
            short_citation(r["paper"]) if short else r["paper"],
            describe_measured(r),
            describe_holds(r),
        ]
        for r in theory.get("checks", [])
    ]
