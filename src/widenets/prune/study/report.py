"""The pruning study's report: results.json, runs.csv, figures and index.html, written
from the results dict alone (a partial run gives a partial report), each file atomically.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from widenets._plot import DPI, figure, legend
from widenets.prune.study import findings
from widenets.prune.study.config import METHODS
from widenets.prune.study.networks import TITLES
from widenets.study.figures import save, vector_files
from widenets.study.store import atomic_json, atomic_write

LABELS = {
    "dense": "dense",
    "random": "random (uniform)",
    "erk": "random (ERK)",
    "magnitude": "magnitude",
    "snip": "SNIP",
    "grasp": "GraSP",
    "synflow": "SynFlow",
    "imp": "IMP ticket",
    "imp_reinit": "IMP mask, reinitialised",
}
STYLE = {  # colour, marker, line style
    "random": ("C7", "x", ":"),
    "erk": ("C5", "P", "-."),
    "magnitude": ("C4", "v", "--"),
    "snip": ("C0", "o", "-"),
    "grasp": ("C1", "s", "-"),
    "synflow": ("C2", "^", "-"),
    "imp": ("C3", "D", "-"),
    "imp_reinit": ("C3", "d", "--"),
}
CSV_FIELDS = (
    "arch", "method", "seed", "density", "actual_density", "accuracy", "train_loss",
    "kernel_distance", "collapsed", "seconds",
)  # fmt: skip
DENSITY = DPI / 96  # CSS pixels are 1/96 inch: figures shown at their printed size
CAPTION = (
    "{title}: test accuracy (left) and kernel distance at initialisation, "
    "‖Θ(m ⊙ θ) − Θ(θ)‖ / ‖Θ(θ)‖ of the empirical NTK on the first test inputs (right), "
    "against the fraction of weights kept (log axes, dense on the left; a distance above 1: the "
    "mask made the NTK larger); mean ± standard "
    "error over seeds; the dashed line is the dense network; hollow markers: a layer "
    "pruned to nothing in some seed."
)


def _curve(summary, arch, method, key):
    pts = [e for e in summary if e["arch"] == arch and e["method"] == method]
    dense = [e for e in summary if e["arch"] == arch and e["method"] == "dense"]
    if key == "accuracy":  # the dense point starts every accuracy curve (its distance is 0)
        pts = pts + dense
    pts = sorted(pts, key=lambda e: -e["density"])
    pts = [e for e in pts if e[key] is not None]
    return (
        [e["density"] for e in pts],
        [e[key] for e in pts],
        [e[f"{key}_se"] or 0.0 for e in pts],
        [e["collapsed_seeds"] > 0 for e in pts],
    )


def accuracy_figure(summary, arch, path) -> Path:
    fig, (ax, bx) = figure(1, 2, size=(10, 4))
    dense = next((e for e in summary if e["arch"] == arch and e["method"] == "dense"), None)
    for method in METHODS:
        if not any(e["arch"] == arch and e["method"] == method for e in summary):
            continue
        color, marker, ls = STYLE[method]
        for axis, key in ((ax, "accuracy"), (bx, "kernel_distance")):
            xs, ys, ss, col = _curve(summary, arch, method, key)
            if key == "accuracy":
                ys, ss = [100 * y for y in ys], [100 * s for s in ss]
            axis.errorbar(xs, ys, yerr=ss, color=color, marker=marker, ls=ls, capsize=2,
                          ms=5, label=LABELS[method])  # fmt: skip
            hollow = [(x, y) for x, y, c in zip(xs, ys, col, strict=True) if c]
            if hollow:
                axis.plot(*zip(*hollow, strict=True), ls="none", marker=marker, ms=9,
                          mfc="white", mec=color)  # fmt: skip
    if dense:
        ax.axhline(100 * dense["accuracy"], color="k", ls="--", lw=1, label="dense")
    for axis in (ax, bx):
        axis.set_xscale("log")
        axis.invert_xaxis()
        axis.set_xlabel("density (fraction of weights kept)")
        axis.xaxis.set_major_formatter(_pct_formatter())
    ax.set_ylabel("test accuracy (%)")
    bx.set_yscale("log")
    bx.set_ylabel("kernel distance at initialisation")
    ax.set_title(TITLES.get(arch, arch), fontsize=10)
    legend(bx, outside=True)
    return save(fig, path)


def _pct_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{100 * v:g}%")


def make_figures(results: dict, folder) -> list[Path]:
    summary = results.get("summary") or []
    archs = [a for a in results.get("config", {}).get("archs", []) if any(
        e["arch"] == a for e in summary)]  # fmt: skip
    return [accuracy_figure(summary, a, Path(folder) / f"accuracy_{a}.png") for a in archs]


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "collapsed": ";".join(r.get("collapsed", []))})
    atomic_write(path, buf.getvalue())


def write(out, results: dict) -> None:
    """results.json, runs.csv, figures (PNG, SVG, PDF) and index.html in ``out``."""
    out = Path(out)
    results["summary"] = findings.summarize(results.get("rows", []))
    results["findings"] = findings.evaluate(results["summary"])
    atomic_json(out / "results.json", results)
    write_csv(out / "runs.csv", results.get("rows", []))
    made = [str(p.relative_to(out)) for p in make_figures(results, out / "figures")]
    atomic_write(out / "index.html", render_html(results, made))
    if results.get("status") == "complete":
        (out / "status.json").unlink(missing_ok=True)


def _acc(e) -> str:
    if e is None or e["accuracy"] is None:
        return "–"
    text = f"{100 * e['accuracy']:.1f}"
    if e["n"] > 1:
        text += f" ± {100 * e['accuracy_se']:.1f}"
    return text + ("*" if e["collapsed_seeds"] else "")


def table_rows(summary, arch) -> tuple[list[str], list[list[str]]]:
    """Density rows × method columns of test accuracy (%), for one architecture."""
    t = findings.Table(summary)
    methods = [m for m in METHODS if t.densities(arch, m)]
    head = ["density"] + [LABELS[m] for m in methods]
    ds = sorted({e["density"] for e in summary if e["arch"] == arch}, reverse=True)
    rows = [[f"{100 * d:g}%"] + [_acc(t.get(arch, m, d)) for m in methods] for d in ds]
    return head, rows


VERDICT_COLOUR = {
    findings.REPRODUCED: "#1a7f37",
    findings.PARTLY: "#9a6700",
    findings.NOT: "#cf222e",
    findings.UNEVALUATED: "#57606a",
}


def render_html(results: dict, figure_paths: list[str]) -> str:
    esc = html.escape
    cfg = results.get("config", {})
    summary = results.get("summary") or []
    found = ""
    for f in results.get("findings", []):
        colour = VERDICT_COLOUR[f["verdict"]]
        details = "".join(f"<li>{esc(d)}</li>" for d in f["details"]) or "<li>–</li>"
        found += (
            f"<tr><td><b>{esc(f['claim'])}</b><br><small>{esc(f['paper'])}</small></td>"
            f'<td style="color:{colour}"><b>{esc(f["verdict"])}</b></td>'
            f"<td><ul>{details}</ul><small>Rule: {esc(f['rule'])}.</small></td></tr>\n"
        )
    tables = ""
    for arch in cfg.get("archs", []):
        head, rows = table_rows(summary, arch)
        if not rows:
            continue
        body = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
        tables += (
            f"<h3>{esc(TITLES.get(arch, arch))}</h3><table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head)
            + f"</tr>\n{body}</table>"
        )
    figs = "\n".join(
        f'<figure><img src="{esc(p)}" srcset="{esc(p)} {DENSITY:g}x" alt="{esc(Path(p).stem)}">'
        f"<figcaption>{esc(CAPTION.format(title=TITLES.get(_arch(p), _arch(p))))} (vector: "
        + ", ".join(
            f'<a href="{esc(v.as_posix())}">{v.suffix[1:].upper()}</a>' for v in vector_files(p)
        )
        + ")</figcaption></figure>"
        for p in figure_paths
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in results.get("notes", []))
    stages = "".join(
        f"<li>{esc(k)}: {esc(v.get('status', ''))}"
        + (f" ({v['seconds']:.1f} s)" if "seconds" in v else "")
        + (f" — {esc(v['error'])}" if "error" in v else "")
        + "</li>"
        for k, v in results.get("stages", {}).items()
    )
    total = results.get("seconds")
    took = f" in {total / 60:.1f} min" if total else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>widenets prune</title>
<style>
body {{ font-family: sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #bbb; padding: .3em .6em; vertical-align: top; }}
td ul {{ margin: 0; padding-left: 1.2em; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; height: auto; }}
pre {{ background: #f4f4f4; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>widenets prune: pruning at initialisation and lottery tickets</h1>
<p>Status: <b>{esc(str(results.get("status")))}</b>{esc(took)}. Data:
{esc(str(results.get("dataset", {}).get("source", "")))} ({cfg.get("n_train")} train /
{cfg.get("n_test")} test). {cfg.get("seeds")} seed(s) per point; Adam at learning rate
{cfg.get("learning_rate")}, batch {cfg.get("batch_size")}, {cfg.get("epochs")} epochs; IMP
rewinds to step {cfg.get("rewind_step")}; SynFlow {cfg.get("synflow_iterations")} iterations;
SNIP and GraSP scored on {cfg.get("score_examples")} training examples.</p>
<h2>Published findings, checked on this run</h2>
<table><tr><th>finding</th><th>verdict</th><th>numbers</th></tr>
{found}</table>
<p>Each verdict is computed from the numbers of this run by the rule under it (thresholds in
<code>widenets.prune.study.findings</code>); se is the standard error over seeds.</p>
<h2>Figures</h2>
{figs}
<h2>Test accuracy (%), mean ± standard error over seeds</h2>
<p>* a layer was pruned to nothing (layer collapse) in at least one seed.</p>
{tables}
<h2>Notes</h2><ul>{notes}</ul>
<h2>Stages</h2><ul>{stages}</ul>
<h2>Configuration</h2>
<p>Rerun with <code>widenets prune --config config.toml</code>. Files:
<a href="results.json">results.json</a>, <a href="runs.csv">runs.csv</a>,
<a href="config.toml">config.toml</a>.</p>
<pre>{esc(json.dumps(cfg, indent=1))}</pre>
<pre>{esc(json.dumps(results.get("versions", {}), indent=1))}</pre>
</body></html>
"""


def _arch(path) -> str:
    return Path(path).stem.removeprefix("accuracy_")


def print_summary(results: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for arch in results.get("config", {}).get("archs", []):
        head, rows = table_rows(results.get("summary") or [], arch)
        if rows:
            t = Table(title=f"test accuracy (%), {TITLES.get(arch, arch)}")
            for h in head:
                t.add_column(h)
            for r in rows:
                t.add_row(*r)
            console.print(t)
    for f in results.get("findings", []):
        console.print(f"[bold]{f['claim']}[/bold] ({f['paper']}): {f['verdict']}")
        for d in f["details"]:
            console.print(f"  {d}")
