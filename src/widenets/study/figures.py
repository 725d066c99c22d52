"""The study's figures (comparisons of Lee et al. 2019 and 2020), from the results dict.

Each figure is drawn only when its data exist (a partial run draws what it can) and saved
as PNG (300 dpi), SVG and PDF with the same stem. Figures are drawn without pyplot: the
user's matplotlib backend is never touched.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from widenets._plot import (
    DASHES,
    FORMATS,
    figure,
    legend,
    plain_log_ticks,
    reference_lines,
    render,
    width_axis,
)
from widenets.study.store import atomic_write

TAU = "training time τ = learning rate × step"
CAPTIONS = {
    "accuracy_vs_width": "Test accuracy and MSE of finite networks against width (mean ± std "
    "over seeds; ensembles are the mean of the seeds' outputs); the horizontal lines are the "
    "infinite-width values, their asymptote (values that coincide share one line).",
    "distance_vs_width": "Relative distance ‖f − f_∞‖ / ‖f_∞‖ of the test outputs from the "
    "infinite-width NTK prediction at the same training time, against width (log-log; the "
    "dotted line has slope −1/2).",
    "training_curves": "Training curves against the training time τ = learning rate × step, "
    "over the networks' training window: finite networks (first seed), their linearisation "
    "when available, and the closed form of gradient flow at the same τ; the horizontal line "
    "is the closed form at τ = ∞ (its training loss tends to 0), the vertical line the end "
    "of training.",
    "theory_exponents": "The theory's predictions: each measured quantity against width (one "
    "line per seed; for ensembles, against the number of members at the largest width), the "
    "fitted power law (solid) and the predicted exponent (dotted), log-log.",
    "regime_vs_width": "Regime measures against width (log-log, mean ± std over seeds): the "
    "kernel distance 1 − ⟨Θ₀, Θ_T⟩ / (‖Θ₀‖ ‖Θ_T‖) of the empirical NTK and the relative "
    "weight change ‖θ_T − θ₀‖ / ‖θ₀‖; dotted lines have slope −1/2.",
    "infinite_width": "Infinite width: NTK gradient flow along τ (to 100 times the networks' "
    "training time, marked by the vertical line) and the diagonal-regulariser sweep of the "
    "NNGP posterior and the NTK prediction at τ = ∞.",
}
METHOD_STYLE = {
    "gd": ("network, GD", "C0", "o"),
    "sgd": ("network, SGD", "C1", "s"),
    "linearized": ("linearised, GD", "C2", "^"),
}
# the infinite-width references, in a fixed order (so each keeps its colour and dash style)
REFERENCES = (
    ("nngp", "NNGP posterior", "C3"),
    ("ntk_t_inf", "NTK, τ = ∞", "C4"),
    ("ntk_at_training_time", "NTK, same τ", "C5"),
)
# y-axis labels of the theory checks (theory_checks.CHECKS keys)
DISTANCE = r"$\Vert f - f_\infty \Vert\, /\, \Vert f_\infty \Vert$ (test)"
SQRT_LAW = r"$\propto \mathrm{width}^{-1/2}$"
CHECK_YLABELS = {
    "distance_to_infinite": DISTANCE,
    "linearization_gap": r"$\sup_\tau \Vert f - f_\mathrm{lin} \Vert\, /\, "
    r"\Vert f_\mathrm{lin}(T) \Vert$",
    "ensemble": r"$\Vert \bar f_M - f_\infty \Vert\, /\, \Vert f_\infty \Vert$ (test)",
    "ntk_init_distance": r"$\Vert \hat\Theta_0 - \Theta \Vert\, /\, \Vert \Theta \Vert$",
    "relative_kernel_change": r"$\Vert \hat\Theta_T - \hat\Theta_0 \Vert\, /\, "
    r"\Vert \hat\Theta_0 \Vert$",
}
SCORE_LABELS = {"accuracy": "test accuracy", "mse": "test MSE", "train_loss": "train loss"}


def save(fig, path) -> Path:
    """Write ``fig`` as PNG, SVG and PDF beside each other (stem of ``path``), each file
    atomically; return the PNG's path."""
    path = Path(path)
    for fmt in FORMATS:
        atomic_write(path.with_suffix(f".{fmt}"), render(fig, fmt))
    return path.with_suffix(".png")


def vector_files(png: Path | str) -> list[Path]:
    """The vector versions (SVG, PDF) saved beside a figure's PNG."""
    png = Path(png)
    return [png.with_suffix(f".{fmt}") for fmt in FORMATS if fmt != "png"]


def _series(summary, method, key):
    xs, ms, ss = [], [], []
    for w, entry in summary.items():
        st = entry.get(method, {}).get(key)
        if st:
            xs.append(int(w))
            ms.append(st["mean"])
            ss.append(st["std"])
    return xs, ms, ss


def _ensemble(summary, key):
    xs, ys = [], []
    for w, entry in summary.items():
        e = entry.get("ensemble", {}).get("gd")
        if e and e.get(key) is not None:
            xs.append(int(w))
            ys.append(e[key])
    return xs, ys


def _errorbar(ax, xs, ms, ss, **kw):
    return ax.errorbar(xs, ms, yerr=ss, capsize=3, **kw)


def _log_errorbar(ax, xs, ms, ss, **kw):
    """Mean ± std on a log axis: the lower bar stops at a tenth of the mean when the std
    exceeds most of it (a log axis has no room below zero)."""
    lower = [min(s, 0.9 * m) if m > 0 else 0.0 for m, s in zip(ms, ss, strict=True)]
    return ax.errorbar(xs, ms, yerr=[lower, ss], capsize=3, **kw)


def _score_scale(ax, key):
    """MSE on a log axis when it spans more than a decade; accuracy linear."""
    if key != "accuracy":
        lo, hi = ax.dataLim.y0, ax.dataLim.y1  # the data's range, before margins
        if lo > 0 and hi / lo > 10:
            ax.set_yscale("log")
            plain_log_ticks(ax)


def accuracy_vs_width(results, path):
    summary, inf = results.get("summary"), results.get("infinite")
    if not summary or not inf:
        return None
    keys = ["accuracy", "mse"]
    if inf["nngp"]["accuracy"] is None:
        keys = keys[1:]
    fig, axes = figure(len(keys), 1, size=(7, 3.0 * len(keys)), sharex=True, squeeze=False)
    widths = [int(w) for w in summary]
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for method, (name, color, marker) in METHOD_STYLE.items():
            xs, ms, ss = _series(summary, method, key)
            if xs:
                bars = _log_errorbar if key == "mse" else _errorbar
                bars(ax, xs, ms, ss, color=color, marker=marker, label=name)
        xs, ys = _ensemble(summary, key)
        if xs:
            ax.plot(xs, ys, color="k", ls=(0, (3, 1)), marker="D", ms=4, label="ensemble, GD")
        reference_lines(
            ax, [(inf[k][key], f"{name} (∞ width)", color) for k, name, color in REFERENCES]
        )
        _score_scale(ax, key)
        ax.set_ylabel(SCORE_LABELS[key])
    width_axis(axes[-1, 0], widths)
    _legends(axes[:, 0])
    return save(fig, path)


def _legends(axes):
    """One legend per panel, outside on the right; a panel whose entries repeat the previous
    panel's gets none."""
    previous = None
    for ax in axes:
        labels = ax.get_legend_handles_labels()[1]
        if labels != previous:
            legend(ax, outside=True)
        previous = labels


def distance_vs_width(results, path):
    summary = results.get("summary")
    if not summary:
        return None
    fig, ax = figure(size=(6.5, 3.4))
    anchor = None
    for method, (name, color, marker) in METHOD_STYLE.items():
        xs, ms, ss = _series(summary, method, "distance_to_infinite")
        if xs:
            ax.plot(xs, ms, color=color, marker=marker, label=name)
            anchor = anchor or (xs[0], ms[0])
    xs, ys = _ensemble(summary, "distance_to_infinite")
    if xs:
        ax.plot(xs, ys, color="k", ls=(0, (3, 1)), marker="D", ms=4, label="ensemble, GD")
    if anchor is None:
        return None
    ws = sorted(int(w) for w in summary)
    ax.plot(ws, [anchor[1] * (w / anchor[0]) ** -0.5 for w in ws], "k:", label=SQRT_LAW)
    ax.set_yscale("log")
    width_axis(ax, ws)
    plain_log_ticks(ax)
    ax.set_ylabel(DISTANCE)
    legend(ax, outside=True)
    return save(fig, path)


def training_window(results) -> tuple[float, float] | None:
    """(first, last) positive training time τ at which the networks were recorded."""
    times = [
        c["time"]
        for r in results.get("finite", [])
        for c in r.get("gd", {}).get("checkpoints", [])
        if c["time"] > 0
    ]
    return (min(times), max(times)) if times else None


def _width_colors(widths):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n = len(widths)
    return {w: cmap(0.85 * i / max(n - 1, 1)) for i, w in enumerate(sorted(widths))}


def training_curves(results, path):
    inf, finite = results.get("infinite"), results.get("finite")
    window = training_window(results)
    if not inf or not finite or window is None:
        return None
    score = "accuracy" if inf["nngp"]["accuracy"] is not None else "mse"
    fig, axes = figure(1, 2, size=(9, 3.4), sharex=True)
    seed0 = sorted((r for r in finite if r["seed"] == 0), key=lambda r: r["width"])
    colors = _width_colors([r["width"] for r in seed0])
    # the closed form at the networks' own checkpoint times (older results: along_t, clipped)
    closed = inf.get("checkpoints") or [
        a for a in inf["along_t"] if window[0] <= a["time"] <= window[1]
    ]
    closed = [c for c in closed if c["time"] > 0]
    for ax, key in zip(axes, ("train_loss", score), strict=True):
        for r in seed0:
            color = colors[r["width"]]
            ck = [c for c in r["gd"]["checkpoints"] if c["time"] > 0]
            ax.plot(
                [c["time"] for c in ck],
                [c[key] for c in ck],
                color=color,
                marker="o",
                ms=3,
                label=f"network, width {r['width']}",
            )
            lin = [c for c in r.get("linearized", {}).get("checkpoints", []) if c["time"] > 0]
            if lin:
                ax.plot(
                    [c["time"] for c in lin],
                    [c[key] for c in lin],
                    color=color,
                    ls="--",
                    label=f"linearised, width {r['width']}",
                )
        ax.plot(
            [c["time"] for c in closed],
            [c[key] for c in closed],
            color="k",
            lw=2.5,
            alpha=0.5,
            label="closed form (∞ width)",
        )
        if key != "train_loss":
            reference_lines(ax, [(inf["ntk_t_inf"][key], "closed form, τ = ∞", "0.35")])
        ax.axvline(window[1], color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlim(window[0] / 1.25, window[1] * 1.25)
        if key in ("train_loss", "mse"):
            ax.set_yscale("log")
            plain_log_ticks(ax)
        ax.set_xlabel(TAU)
        ax.set_ylabel(SCORE_LABELS[key])
    handles, labels = axes[1].get_legend_handles_labels()
    legend(axes[1], handles=handles, labels=labels, outside=True)
    return save(fig, path)


def regime_vs_width(results, path):
    summary = results.get("summary")
    if not summary:
        return None
    panels = []
    for key, label in (
        ("kernel_distance", "kernel distance"),
        ("relative_weight_change", "relative weight change"),
    ):
        xs, ms, ss = [], [], []
        for w, e in summary.items():
            st = e.get("regime", {}).get(key)
            if st and st["mean"] > 0:
                xs.append(int(w))
                ms.append(st["mean"])
                ss.append(st["std"])
        if xs:
            panels.append((label, xs, ms, ss))
    if not panels:
        return None
    fig, axes = figure(1, len(panels), size=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (label, xs, ms, ss) in zip(axes[0], panels, strict=True):
        _log_errorbar(ax, xs, ms, ss, color="C0", marker="o", label="networks, GD")
        ax.plot(xs, [ms[0] * (x / xs[0]) ** -0.5 for x in xs], "k:", lw=1, label=SQRT_LAW)
        ax.set_yscale("log")
        width_axis(ax, xs)
        plain_log_ticks(ax)
        ax.set_ylabel(label)
        legend(ax)
    return save(fig, path)


def infinite_width(results, path):
    inf = results.get("infinite")
    if not inf:
        return None
    key = "accuracy" if inf["nngp"]["accuracy"] is not None else "mse"
    fig, axes = figure(1, 2, size=(9, 3.4))
    along = inf["along_t"]
    ax = axes[0]
    ax.plot(
        [a["time"] for a in along], [a[key] for a in along], "k-", marker=".", label="NTK, along τ"
    )
    reference_lines(ax, [(inf[k][key], name, color) for k, name, color in REFERENCES[:2]])
    window = training_window(results)
    if window:
        ax.axvline(window[1], color="gray", ls=":", lw=1, label="end of the networks' training")
    ax.set_xscale("log")
    _score_scale(ax, key)
    ax.set_xlabel(TAU)
    ax.set_ylabel(SCORE_LABELS[key])
    ax.set_title("NTK gradient flow")
    legend(ax)
    ax = axes[1]
    sweep = inf["diag_reg_sweep"]
    positive = [r["diag_reg"] for r in sweep if r["diag_reg"] > 0]
    for i, (name, label, color) in enumerate(REFERENCES[:2]):
        pts = [(r["diag_reg"], r[name][key]) for r in sweep if r[name].get(key) is not None]
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                marker="os"[i],
                color=color,
                ls=DASHES[i],
                label=label,
            )
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    _score_scale(ax, key)
    ax.set_xlabel("diag_reg (relative to the mean diagonal)")
    ax.set_ylabel(SCORE_LABELS[key])
    ax.set_title("diagonal-regulariser sweep")
    legend(ax)
    return save(fig, path)


def theory_exponents(results, path):
    """One panel per check of :mod:`widenets.study.theory_checks`: the measured values (one
    line per seed) on log-log axes, with the fitted and the predicted slopes."""
    theory = results.get("theory") or {}
    checks = [c for c in theory.get("checks", []) if c.get("measured") is not None]
    if not checks:
        return None
    from widenets.study import theory_checks as tc

    cols = min(3, len(checks))
    rows = -(-len(checks) // cols)
    fig, axes = figure(rows, cols, size=(3.6 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat[len(checks) :]:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, checks, strict=False):
        curves = _check_curves(results, c["key"])
        for i, (xs, ys) in enumerate(curves):
            ax.plot(
                xs,
                ys,
                color="C0",
                marker="o",
                ms=3,
                alpha=0.6,
                label="measured" if i == 0 else None,
            )
        xs = sorted({x for cx, _ in curves for x in cx})
        if xs:
            # power laws through the mean of the measured points on log-log axes
            pts = [(x, y) for cx, cy in curves for x, y in zip(cx, cy, strict=True) if y > 0]
            mean_log_y = statistics.fmean(math.log(y) for _, y in pts)
            mean_log_x = statistics.fmean(math.log(x) for x, _ in pts)
            for p, style, label in (
                (c["measured"], "k-", "fit"),
                (c["prediction"], "k:", "theory"),
            ):
                g = math.exp(mean_log_y - p * mean_log_x)
                ax.plot(
                    xs,
                    [g * x**p for x in xs],
                    style,
                    lw=1,
                    label=f"{label} {p:+.2f}".replace("-", "−"),
                )
        ax.set_yscale("log")
        width_axis(ax, xs, c["against"])
        plain_log_ticks(ax)
        ax.set_ylabel(CHECK_YLABELS.get(c["key"], c["key"]))
        ax.set_title(tc.SHORT.get(c["key"], c["key"]), fontsize=10)
        legend(ax)
    return save(fig, path)


def _check_curves(results, key):
    """(xs, ys) per seed (or the one ensemble curve) behind a theory check."""
    from widenets.study import theory_checks as tc

    if key == "ensemble":
        scaling = results.get("ensemble_scaling") or {}
        if not scaling:
            return []
        e = scaling[max(scaling, key=int)]
        return [(e["members"], e["distance"])]
    per_seed = tc.per_seed_values(results, key)
    return [(sorted(c), [c[w] for w in sorted(c)]) for c in per_seed.values()]


FIGURES = {
    "accuracy_vs_width": accuracy_vs_width,
    "distance_vs_width": distance_vs_width,
    "training_curves": training_curves,
    "regime_vs_width": regime_vs_width,
    "infinite_width": infinite_width,
    "theory_exponents": theory_exponents,
}


def make_all(results: dict, folder) -> list[Path]:
    """Draw every figure whose data exist into ``folder``; return the PNG of each (its SVG
    and PDF lie beside it)."""
    folder = Path(folder)
    made = []
    for name, fn in FIGURES.items():
        p = fn(results, folder / f"{name}.png")
        if p is not None:
            made.append(p)
    from widenets.study import findings

    made += findings.make_figures(results, folder)
    return made
