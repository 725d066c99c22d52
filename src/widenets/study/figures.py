"""PNG figures of the comparisons of Lee et al. 2019 and 2020, from the results dict.

Each figure is drawn only when its data exist (a partial run draws what it can).
"""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path

from widenets.study.store import atomic_write

CAPTIONS = {
    "accuracy_vs_width": "Test accuracy and MSE of finite networks against width (mean ± std "
    "over seeds; ensembles are the mean of the seeds' outputs); the horizontal lines are the "
    "infinite-width values, their asymptote.",
    "distance_vs_width": "Relative distance ||f − f_∞|| / ||f_∞|| of the test outputs from the "
    "infinite-width NTK prediction at the same training time, against width (log-log; the "
    "dotted line has slope −1/2).",
    "training_curves": "Training curves against the training time τ = learning rate × step: "
    "finite networks (first seed), their linearisation when available, and the closed form of "
    "gradient flow at the same τ (the vertical line is the end of training).",
    "theory_exponents": "The theory's predictions: each measured quantity against width (one "
    "line per seed; for ensembles, against the number of members at the largest width), the "
    "fitted power law (solid) and the predicted exponent (dotted), log-log.",
    "regime_vs_width": "Regime measures against width (log-log): kernel distance "
    "1 − <K0,Kt>/(|K0||Kt|) of the empirical NTK and relative weight change.",
    "infinite_width": "Infinite width: NTK gradient flow along τ and the diagonal-regulariser "
    "sweep of the NNGP posterior and the NTK prediction at τ = ∞.",
}
METHOD_STYLE = {
    "gd": ("network, GD", "C0", "o"),
    "sgd": ("network, SGD", "C1", "s"),
    "linearized": ("linearised, GD", "C2", "^"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write(path, buf.getvalue())
    return path


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


def accuracy_vs_width(results, path):
    plt = _plt()
    summary, inf = results.get("summary"), results.get("infinite")
    if not summary or not inf:
        return None
    keys = [("accuracy", "test accuracy"), ("mse", "test MSE")]
    if inf["nngp"]["accuracy"] is None:
        keys = keys[1:]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        for method, (name, color, marker) in METHOD_STYLE.items():
            xs, ms, ss = _series(summary, method, key)
            if xs:
                ax.errorbar(xs, ms, yerr=ss, color=color, marker=marker, label=name, capsize=3)
        xs, ys = _ensemble(summary, key)
        if xs:
            ax.plot(xs, ys, "k--", marker="D", label="ensemble, GD")
        lines = [
            (inf["nngp"][key], "NNGP posterior", "C3"),
            (inf["ntk_t_inf"][key], "NTK, τ = ∞", "C4"),
            (inf["ntk_at_training_time"][key], "NTK, same τ", "C5"),
        ]
        for value, name, color in lines:
            if value is not None:
                ax.axhline(value, color=color, ls=":", label=f"{name} (∞ width)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return _save(fig, path)


def distance_vs_width(results, path):
    plt = _plt()
    summary = results.get("summary")
    if not summary:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    anchor = None
    for method, (name, color, marker) in METHOD_STYLE.items():
        xs, ms, ss = _series(summary, method, "distance_to_infinite")
        if xs:
            ax.plot(xs, ms, color=color, marker=marker, label=name)
            anchor = anchor or (xs[0], ms[0])
    xs, ys = _ensemble(summary, "distance_to_infinite")
    if xs:
        ax.plot(xs, ys, "k--", marker="D", label="ensemble, GD")
    if anchor is None:
        plt.close(fig)
        return None
    ws = sorted(int(w) for w in summary)
    ax.plot(ws, [anchor[1] * (w / anchor[0]) ** -0.5 for w in ws], "k:", label="∝ width^−1/2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("‖f − f_∞‖ / ‖f_∞‖ (test)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def training_curves(results, path):
    plt = _plt()
    inf, finite = results.get("infinite"), results.get("finite")
    if not inf or not finite:
        return None
    has_acc = inf["nngp"]["accuracy"] is not None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = [
        ("train_loss", "train loss"),
        ("accuracy" if has_acc else "mse", "test accuracy" if has_acc else "test MSE"),
    ]
    seed0 = [r for r in finite if r["seed"] == 0]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for i, r in enumerate(seed0):
            color = f"C{i}"
            ck = r["gd"]["checkpoints"][1:]
            ax.plot(
                [c["time"] for c in ck],
                [c[key] for c in ck],
                color=color,
                marker="o",
                ms=3,
                label=f"network w={r['width']}",
            )
            lin = r.get("linearized", {}).get("checkpoints")
            if lin:
                ax.plot(
                    [c["time"] for c in lin[1:]],
                    [c[key] for c in lin[1:]],
                    color=color,
                    ls="--",
                    label=f"linearised w={r['width']}",
                )
        along = inf["along_t"]
        ax.plot(
            [a["time"] for a in along],
            [a[key] for a in along],
            "k-",
            lw=2,
            alpha=0.6,
            label="closed form (∞ width)",
        )
        ax.axvline(inf["ntk_at_training_time"]["time"], color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        if key in ("train_loss", "mse"):
            ax.set_yscale("log")
        ax.set_xlabel("training time τ = lr × step")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return _save(fig, path)


def regime_vs_width(results, path):
    plt = _plt()
    summary = results.get("summary")
    if not summary:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, name, color in (
        ("kernel_distance", "kernel distance", "C0"),
        ("relative_weight_change", "relative weight change", "C1"),
    ):
        xs, ms, ss = [], [], []
        for w, e in summary.items():
            st = e.get("regime", {}).get(key)
            if st and st["mean"] > 0:
                xs.append(int(w))
                ms.append(st["mean"])
                ss.append(st["std"])
        if xs:
            ax.errorbar(xs, ms, yerr=ss, color=color, marker="o", label=name, capsize=3)
            ax.plot(xs, [ms[0] * (x / xs[0]) ** -0.5 for x in xs], color=color, ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("distance from initialisation")
    ax.legend(fontsize=7, title="dotted: ∝ width^−1/2", title_fontsize=7)
    return _save(fig, path)


def infinite_width(results, path):
    plt = _plt()
    inf = results.get("infinite")
    if not inf:
        return None
    key = "accuracy" if inf["nngp"]["accuracy"] is not None else "mse"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    along = inf["along_t"]
    axes[0].plot([a["time"] for a in along], [a[key] for a in along], "k-", marker=".")
    axes[0].axhline(inf["nngp"][key], color="C3", ls=":", label="NNGP posterior")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training time τ = lr × step")
    axes[0].set_ylabel(f"test {key}")
    axes[0].set_title("NTK gradient flow")
    axes[0].legend(fontsize=7)
    sweep = inf["diag_reg_sweep"]
    positive = [r["diag_reg"] for r in sweep if r["diag_reg"] > 0]
    for name, label, color in (("nngp", "NNGP posterior", "C3"), ("ntk_t_inf", "NTK τ = ∞", "C4")):
        pts = [(r["diag_reg"], r[name][key]) for r in sweep if r[name].get(key) is not None]
        if pts:
            axes[1].plot(*zip(*pts, strict=True), marker="o", color=color, label=label)
    if positive:
        axes[1].set_xscale("symlog", linthresh=min(positive))
    axes[1].set_xlabel("diag_reg (relative to the mean diagonal)")
    axes[1].set_ylabel(f"test {key}")
    axes[1].set_title("diagonal-regulariser sweep")
    axes[1].legend(fontsize=7)
    return _save(fig, path)


def theory_exponents(results, path):
    """One panel per check of :mod:`widenets.study.theory_checks`: the measured values (one
    line per seed) on log-log axes, with the fitted and the predicted slopes."""
    plt = _plt()
    theory = results.get("theory") or {}
    checks = [c for c in theory.get("checks", []) if c.get("measured") is not None]
    if not checks:
        return None
    from widenets.study import theory_checks as tc

    cols = min(3, len(checks))
    rows = -(-len(checks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
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
                ax.plot(xs, [g * x**p for x in xs], style, lw=1, label=f"{label} {p:+.2f}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(c["against"])
        ax.set_title(tc.SHORT.get(c["key"], c["key"]), fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


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
    """Draw every figure whose data exist into ``folder``; return the files made."""
    folder = Path(folder)
    made = []
    for name, fn in FIGURES.items():
        p = fn(results, folder / f"{name}.png")
        if p is not None:
            made.append(p)
    from widenets.study import findings

    made += findings.make_figures(results, folder)
    return made
