"""The scaling job's figures, from the results dict: test error and MSE against N with the
fitted power laws (log-log, as Adlam et al. 2023, Figure 1), and wall time and peak memory
against N. Saved as PNG (300 dpi), SVG and PDF; drawn without pyplot."""

from __future__ import annotations

from pathlib import Path

from widenets._plot import figure, legend, plain_log_ticks, width_axis
from widenets.study.figures import save

GIB = 2**30
STYLE = {"nngp": ("NNGP posterior", "C3", "o"), "ntk": ("NTK gradient flow, t = ∞", "C4", "s")}
QUANTITY = {"error": "test error (1 − accuracy)", "mse": "test MSE"}
CAPTIONS = {
    "scaling": "Test error and test MSE against the number of training examples N "
    "(log-log), one fixed test set; the lines are the least-squares power laws a N^−b "
    "(exponent ± its standard error in the legend).",
    "cost": "Wall time of each N (kernels of the training set and of test × training set, "
    "solves) and the peak resident memory of this process during it, against N (log-log).",
}


def scaling(results: dict, path) -> Path | None:
    points = results.get("points", [])
    if not points:
        return None
    fig, axes = figure(1, 2, size=(9.0, 3.8))
    ns = [p["n"] for p in points]
    for ax, key in zip(axes, ("error", "mse"), strict=True):
        for name, (label, color, marker) in STYLE.items():
            rows = [p for p in points if name in p and p[name][key] > 0]
            if not rows:
                continue
            xs = [p["n"] for p in rows]
            ax.plot(xs, [p[name][key] for p in rows], marker, color=color, label=label)
            fit = results.get("fits", {}).get(name, {}).get(key)
            if fit is not None:
                lo, hi = min(xs), max(xs)
                grid = [lo * (hi / lo) ** (i / 50) for i in range(51)]
                se = f" ± {fit['b_se']:.3f}" if fit["b_se"] is not None else ""
                ax.plot(
                    grid,
                    [fit["a"] * x ** -fit["b"] for x in grid],
                    "--",
                    color=color,
                    label=f"fit: ∝ N^−{fit['b']:.3f}{se}",
                )
        ax.set_yscale("log")
        width_axis(ax, ns, label="training examples N")
        ax.set_ylabel(QUANTITY[key])
        plain_log_ticks(ax)
        legend(ax)
    return save(fig, path)


def cost(results: dict, path) -> Path | None:
    points = results.get("points", [])
    if not points:
        return None
    fig, (ax_t, ax_m) = figure(1, 2, size=(9.0, 3.8))
    ns = [p["n"] for p in points]
    names = [k for k in STYLE if any(k in p for p in points)]
    series = {
        "total": [p["wall_seconds"] for p in points],
        "kernels": [p["kernel_seconds"] + p["test_kernel_seconds"] for p in points],
        "solves": [sum(p[k]["solve_seconds"] for k in names if k in p) for p in points],
    }
    for (label, ys), marker in zip(series.items(), "os^", strict=True):
        ax_t.plot(ns, ys, marker + "-", label=label)
    ax_t.set_yscale("log")
    width_axis(ax_t, ns, label="training examples N")
    ax_t.set_ylabel("wall time (s)")
    plain_log_ticks(ax_t, max_ratio=1e4)
    legend(ax_t)
    mem = [(p["n"], p["peak_memory_bytes"] / GIB) for p in points if p.get("peak_memory_bytes")]
    if mem:
        ax_m.plot([m[0] for m in mem], [m[1] for m in mem], "o-", color="C2")
    ax_m.set_yscale("log")
    width_axis(ax_m, ns, label="training examples N")
    ax_m.set_ylabel("peak resident memory (GiB)")
    plain_log_ticks(ax_m)
    return save(fig, path)


def make_all(results: dict, folder) -> list[Path]:
    folder = Path(folder)
    made = [scaling(results, folder / "scaling.png"), cost(results, folder / "cost.png")]
    return [p for p in made if p is not None]
