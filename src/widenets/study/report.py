"""The study's report: results.json, runs.csv, figures and a self-contained index.html.

Everything is written from the results dict alone (so a partial run still gives a
readable report), each file atomically.
"""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
from pathlib import Path

from widenets._plot import DPI
from widenets.study import figures, findings, theory_checks
from widenets.study.store import atomic_json, atomic_write

CSV_FIELDS = (
    "width",
    "seed",
    "method",
    "test_accuracy",
    "test_mse",
    "train_loss",
    "distance_to_infinite",
    "distance_to_own_closed_form",
    "distance_to_network_sup",
    "kernel_distance",
    "relative_kernel_change",
    "ntk_init_distance",
    "relative_weight_change",
    "seconds",
)
METHODS = ("gd", "sgd", "linearized")
# CSS pixels are 1/96 inch: the PNGs' pixel density, so that a figure shows at its printed size
DENSITY = DPI / 96
REGIME_KEYS = (
    "kernel_distance",
    "relative_kernel_change",
    "ntk_init_distance",
    "relative_weight_change",
)


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarize(results: dict) -> dict:
    """Per width: mean and std over seeds of each method's scores, the ensembles, regime."""
    out = {}
    finite = results.get("finite", [])
    for width in sorted({r["width"] for r in finite}):
        rows = [r for r in finite if r["width"] == width]
        entry = {}
        for method in METHODS:
            recs = [r[method] for r in rows if method in r and "skipped" not in r[method]]
            if recs:
                entry[method] = {
                    key: _stats([x.get(key) for x in recs])
                    for key in (
                        "accuracy",
                        "mse",
                        "train_loss",
                        "distance_to_infinite",
                        "max_distance_to_network",
                    )
                }
        entry["regime"] = {
            key: _stats([r["regime"][key] for r in rows if "regime" in r]) for key in REGIME_KEYS
        }
        ens = results.get("ensembles", {}).get(str(width))
        if ens:
            entry["ensemble"] = ens
        out[str(width)] = entry
    return out


def csv_rows(results: dict) -> list[dict]:
    rows = []
    for r in results.get("finite", []):
        for method in METHODS:
            m = r.get(method)
            if not m or "skipped" in m:
                continue
            rows.append(
                {
                    "width": r["width"],
                    "seed": r["seed"],
                    "method": method,
                    "test_accuracy": m.get("accuracy"),
                    "test_mse": m.get("mse"),
                    "train_loss": m.get("train_loss"),
                    "distance_to_infinite": m.get("distance_to_infinite"),
                    "distance_to_own_closed_form": m.get("distance_to_own_closed_form"),
                    "distance_to_network_sup": m.get("max_distance_to_network"),
                    "kernel_distance": r["regime"]["kernel_distance"] if method == "gd" else None,
                    "relative_kernel_change": r["regime"].get("relative_kernel_change")
                    if method == "gd"
                    else None,
                    "ntk_init_distance": r["regime"].get("ntk_init_distance")
                    if method == "gd"
                    else None,
                    "relative_weight_change": r["regime"]["relative_weight_change"]
                    if method == "gd"
                    else None,
                    "seconds": r.get("seconds") if method == "gd" else None,
                }
            )
    for width, ens in results.get("ensembles", {}).items():
        for method in ("gd", "sgd"):
            if method in ens:
                rows.append(
                    {
                        "width": int(width),
                        "seed": f"ensemble of {ens['n_members']}",
                        "method": method,
                        "test_accuracy": ens[method]["accuracy"],
                        "test_mse": ens[method]["mse"],
                        "distance_to_infinite": ens[method]["distance_to_infinite"],
                    }
                )
    return rows


def write_csv(path: Path, results: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(results):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    atomic_write(path, buf.getvalue())


def write(out, results: dict) -> None:
    """results.json, runs.csv, figures (PNG, SVG, PDF) and index.html in ``out``."""
    out = Path(out)
    atomic_json(out / "results.json", results)
    write_csv(out / "runs.csv", results)
    made = figures.make_all(results, out / "figures")
    results_figs = [str(p.relative_to(out)) for p in made]
    atomic_write(out / "index.html", render_html(results, results_figs))
    if results.get("status") == "complete":
        (out / "status.json").unlink(missing_ok=True)


def _fmt(x, pct=False):
    if x is None:
        return "–"
    if isinstance(x, dict):
        if x.get("std") and x.get("n", 1) > 1:
            return f"{_fmt(x['mean'], pct)} ± {_fmt(x['std'], pct)}"
        x = x["mean"]
    return f"{100 * x:.2f}%" if pct else f"{x:.4g}"


def summary_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """The summary table (shared by the terminal and the HTML)."""
    head = ["model", "width", "test accuracy", "test MSE", "distance to infinite width"]
    rows = []
    inf = results.get("infinite")
    if inf:
        rows.append(
            [
                "NNGP posterior",
                "∞",
                _fmt(inf["nngp"]["accuracy"], True),
                _fmt(inf["nngp"]["mse"]),
                "–",
            ]
        )
        rows.append(
            [
                "NTK gradient flow, τ = ∞",
                "∞",
                _fmt(inf["ntk_t_inf"]["accuracy"], True),
                _fmt(inf["ntk_t_inf"]["mse"]),
                "–",
            ]
        )
        at = inf["ntk_at_training_time"]
        rows.append(
            [
                f"NTK gradient flow, τ = {at['time']:.4g}",
                "∞",
                _fmt(at["accuracy"], True),
                _fmt(at["mse"]),
                "0",
            ]
        )
    names = {
        "gd": "network, gradient descent",
        "sgd": "network, SGD",
        "linearized": "linearised network, GD",
    }
    for width, entry in results.get("summary", {}).items():
        for method in METHODS:
            if method in entry:
                e = entry[method]
                rows.append(
                    [
                        names[method],
                        width,
                        _fmt(e["accuracy"], True),
                        _fmt(e["mse"]),
                        _fmt(e["distance_to_infinite"]),
                    ]
                )
        ens = entry.get("ensemble", {})
        if "gd" in ens:
            rows.append(
                [
                    f"ensemble of {ens['n_members']}, GD",
                    width,
                    _fmt(ens["gd"]["accuracy"], True),
                    _fmt(ens["gd"]["mse"]),
                    _fmt(ens["gd"]["distance_to_infinite"]),
                ]
            )
    return head, rows


def render_html(results: dict, figure_paths: list[str]) -> str:
    esc = html.escape
    head, rows = summary_rows(results)
    cfg = results.get("config", {})
    ds = results.get("dataset", {})
    title = f"widenets study: {cfg.get('arch')} on {ds.get('name', cfg.get('data'))}"
    table = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>\n"
    table += "\n".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    captions = {**figures.CAPTIONS, **getattr(findings, "CAPTIONS", {})}
    figs = _figures_html(
        [p for p in figure_paths if not Path(p).stem.startswith("finding_")], captions, esc
    )
    theory = _theory_html(results, esc)
    found = _findings_html(results, figure_paths, captions, esc)
    notes = "".join(f"<li>{esc(n)}</li>" for n in results.get("notes", []))
    stages = "".join(
        f"<li>{esc(k)}: {esc(v.get('status', ''))}"
        + (f" ({v['seconds']:.1f} s)" if "seconds" in v else "")
        + (f" — {esc(v['error'])}" if "error" in v else "")
        + "</li>"
        for k, v in results.get("stages", {}).items()
    )
    kern = results.get("kernels", {})
    desc = esc(str(kern.get("description", "")))
    centred = ", outputs centred at initialisation" if cfg.get("center") else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #bbb; padding: .3em .6em; }}
figure {{ display: inline-table; margin: 1em; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ display: table-caption; caption-side: bottom; }}
pre {{ background: #f4f4f4; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>Status: <b>{esc(str(results.get("status")))}</b>. Dataset: {esc(str(ds.get("source", "")))}
({ds.get("n_train")} train / {ds.get("n_test")} test). Network:</p><pre>{desc}</pre><p>
at hidden widths {esc(str(cfg.get("widths")))}, {cfg.get("seeds")} seed(s), {cfg.get("steps")} steps
at learning rate {_fmt(kern.get("learning_rate"))} (training time τ = learning rate × steps =
{_fmt(kern.get("training_time"))}, the time of the gradient flow that the networks follow and
at which every infinite-width prediction is taken; loss ||f − y||² / (2 y.numel()), NTK
parameterisation{centred}).</p>
<h2>Summary</h2>
<table>
{table}
</table>
{theory}
<h2>Figures</h2>
{figs}
{found}
<h2>Notes</h2><ul>{notes}</ul>
<h2>Stages</h2><ul>{stages}</ul>
<h2>Configuration</h2>
<p>Rerun exactly with <code>widenets study --config config.toml</code>. Files:
<a href="results.json">results.json</a>, <a href="runs.csv">runs.csv</a>,
<a href="config.toml">config.toml</a>.</p>
<pre>{esc(json.dumps(cfg, indent=1))}</pre>
<pre>{esc(json.dumps(results.get("versions", {}), indent=1))}</pre>
</body></html>
"""


THEORY_HEAD = ["quantity", "prediction", "paper", "measured exponent", "holds"]


def theory_rows(results: dict, short: bool = False) -> list[list[str]]:
    """[quantity, predicted law, paper, measured exponent ± s.e., holds] per check."""
    return theory_checks.table_rows(results.get("theory") or {}, short)


def _theory_html(results: dict, esc) -> str:
    rows = theory_rows(results)
    if not rows:
        return ""
    tol = (results.get("theory") or {}).get("tolerance", theory_checks.TOLERANCE)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    head = "".join(f"<th>{esc(h)}</th>" for h in THEORY_HEAD)
    return f"""<h2>The theory's predictions, checked</h2>
<p>Each quantity is fitted as a power law of width (or of the number of ensemble members)
by least squares on log-log axes, once per seed; the measured exponent is the mean over
seeds ± its standard error (for the ensemble, a jackknife over seeds). A prediction holds
when the exponent is within {tol:g} + 2 standard errors of it (for a bound: not above it
by more than that); the {tol:g} allows for the finite-width corrections of the smallest
widths.</p>
<table>
<tr>{head}</tr>
{body}
</table>"""


def _figures_html(paths, captions: dict, esc) -> str:
    """<figure> elements of the PNGs at ``paths`` (shown at their printed size: 300 dpi) with
    their captions and links to the vector files saved beside them."""
    out = []
    for p in paths:
        links = ", ".join(
            f'<a href="{esc(v.as_posix())}">{v.suffix[1:].upper()}</a>'
            for v in figures.vector_files(p)
        )
        out.append(
            f'<figure><img src="{esc(p)}" srcset="{esc(p)} {DENSITY:g}x" '
            f'alt="{esc(Path(p).stem)}"><figcaption>{esc(captions.get(Path(p).stem, ""))}'
            f" (vector: {links})</figcaption></figure>"
        )
    return "\n".join(out)


def _findings_html(results: dict, figure_paths, captions, esc) -> str:
    said = findings.statements(results)
    if not said:
        return ""
    items = "".join(f"<li><b>{esc(claim)}</b> {esc(found)}</li>" for claim, found in said)
    figs = _figures_html(
        [p for p in figure_paths if Path(p).stem.startswith("finding_")], captions, esc
    )
    return f"""<h2>Findings of Lee et al. 2020, on this run</h2>
<ul>{items}</ul>
{figs}"""


def print_summary(results: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    def table(title, head, rows):
        t = Table(title=title)
        for h in head:
            t.add_column(h)
        for row in rows:
            t.add_row(*row)
        return t

    console = console or Console()
    console.print(table("widenets study: finite versus infinite width", *summary_rows(results)))
    rows = theory_rows(results, short=True)
    if rows:
        console.print(
            table("the theory's predictions (exponents fitted per seed)", THEORY_HEAD, rows)
        )
    for claim, found in findings.statements(results):
        console.print(f"[bold]{claim}[/bold] {found}")
    for note in results.get("notes", []):
        console.print(f"[dim]{note}[/dim]")
