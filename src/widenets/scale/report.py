"""The scaling job's report: results.json, points.csv, figures and a self-contained
index.html, all from the results dict (a partial run gives a readable report), each file
written atomically."""

from __future__ import annotations

import csv
import html
import io
import json
import shlex
from pathlib import Path

from widenets.scale import figures
from widenets.scale.fit import describe
from widenets.study.report import DENSITY
from widenets.study.store import atomic_json, atomic_write

GIB = 2**30
NAMES = {"nngp": "NNGP", "ntk": "NTK"}
CSV_FIELDS = (
    "n",
    "kernel",
    "solver",
    "accuracy",
    "error",
    "mse",
    "iterations",
    "residual",
    "solve_seconds",
    "kernel_seconds",
    "test_kernel_seconds",
    "wall_seconds",
    "peak_memory_bytes",
)


def csv_rows(results: dict) -> list[dict]:
    rows = []
    for p in results.get("points", []):
        for name in NAMES:
            if name in p:
                row = {"n": p["n"], "kernel": name, **p[name]}
                row.update({k: p.get(k) for k in CSV_FIELDS if k in p and k != "n"})
                rows.append({k: row.get(k) for k in CSV_FIELDS})
    return rows


def write(out, results: dict) -> None:
    """results.json, points.csv, figures (PNG, SVG, PDF) and index.html in ``out``."""
    out = Path(out)
    atomic_json(out / "results.json", results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(csv_rows(results))
    atomic_write(out / "points.csv", buf.getvalue())
    made = figures.make_all(results, out / "figures")
    atomic_write(out / "index.html", render_html(results, [str(p.relative_to(out)) for p in made]))
    if results.get("status") == "complete":
        (out / "status.json").unlink(missing_ok=True)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _num(x, fmt=".4g") -> str:
    return "–" if x is None else format(x, fmt)


def _gib(b) -> str:
    return "–" if not b else f"{b / GIB:.2f} GiB"


def headline(results: dict) -> str:
    """What was measured, in words: the largest N's scores and the fitted exponents."""
    points = results.get("points", [])
    if not points:
        return "No training-set size has finished yet."
    last = points[-1]
    said = [
        f"at N = {last['n']:,} the {NAMES[k]} reaches {_pct(last[k]['accuracy'])} test "
        f"accuracy (MSE {_num(last[k]['mse'])})"
        for k in NAMES
        if k in last
    ]
    text = "; ".join(said) + "."
    for k in NAMES:
        f = results.get("fits", {}).get(k, {})
        if f.get("error") is not None:
            text += (
                f" {NAMES[k]} test error ~ N^-b with {describe(f['error'])}; test MSE ~ N^-b "
                f"with {describe(f.get('mse'))}."
            )
    return text[0].upper() + text[1:]


def point_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    head = ["N", "solver"]
    kernels = [k for k in NAMES if any(k in p for p in results.get("points", []))]
    for k in kernels:
        head += [f"{NAMES[k]} accuracy", f"{NAMES[k]} MSE", f"{NAMES[k]} solve"]
    head += ["kernels", "wall time", "peak memory", "store"]
    rows = []
    for p in results.get("points", []):
        solver = {p[k]["solver"] for k in kernels if k in p}
        row = [f"{p['n']:,}", ", ".join(sorted(solver))]
        for k in kernels:
            e = p.get(k)
            if e is None:
                row += ["–"] * 3
                continue
            solve = f"{e['solve_seconds']:.1f} s"
            if e["solver"] == "pcg":
                solve += f" ({e['iterations']} it., residual {e['residual']:.1e})"
            row += [_pct(e["accuracy"]), _num(e["mse"]), solve]
        row += [
            f"{p['kernel_seconds'] + p['test_kernel_seconds']:.1f} s",
            f"{p['wall_seconds']:.1f} s",
            _gib(p.get("peak_memory_bytes")),
            _gib(p.get("store", {}).get("bytes")),
        ]
        rows.append(row)
    return head, rows


def fit_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    head = ["kernel", "quantity", "a", "exponent b", "standard error", "95% interval", "points"]
    rows = []
    for k, fits in results.get("fits", {}).items():
        for key, label in (("error", "test error"), ("mse", "test MSE")):
            f = fits.get(key)
            if f is None:
                rows.append([NAMES[k], label, "–", "no fit", "–", "–", "–"])
                continue
            ci = "–" if f["b_ci95"] is None else f"{f['b_ci95'][0]:.3f} to {f['b_ci95'][1]:.3f}"
            rows.append(
                [
                    NAMES[k],
                    label,
                    f"{f['a']:.4g}",
                    f"{f['b']:.3f}",
                    _num(f["b_se"], ".3f"),
                    ci,
                    str(f["points"]),
                ]
            )
    return head, rows


def _table(head, rows, esc) -> str:
    out = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>\n"
    out += "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>\n{out}\n</table>"


def resume_command(out, store=None, scheduler=None) -> str:
    words = ["widenets", "scale", "--config", str(Path(out) / "config.toml"), "--out", str(out)]
    if store:
        words += ["--store", str(store)]
    if scheduler:
        words += ["--scheduler", str(scheduler)]
    return " ".join(shlex.quote(w) for w in [*words, "--resume"])


def render_html(results: dict, figure_paths: list[str]) -> str:
    esc = html.escape
    cfg = results.get("config", {})
    data = results.get("data", {})
    desc = results["points"][0]["description"] if results.get("points") else ""
    title = f"widenets scale: fully connected, depth {cfg.get('depth')}, on MNIST-1D"
    figs = "\n".join(
        f'<figure><img src="{esc(p)}" srcset="{esc(p)} {DENSITY:g}x" alt="{esc(Path(p).stem)}">'
        f"<figcaption>{esc(figures.CAPTIONS.get(Path(p).stem, ''))} (vector: "
        + ", ".join(
            f'<a href="{esc(str(Path(p).with_suffix(s)))}">{s[1:].upper()}</a>'
            for s in (".svg", ".pdf")
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
    mem_note = ""
    if any(p.get("memory_source") == "process" for p in results.get("points", [])):
        mem_note = " (here the peak since the process started: the per-N peak was unavailable)"
    if "Dask" in results.get("executor", ""):
        mem_note += "; the Dask workers' memory is not included"
    solver = (
        f"dense Cholesky for N ≤ {cfg.get('dense_max'):,}, block PCG above it (randomly "
        f"pivoted Cholesky preconditioner of rank {cfg.get('rank')}, relative residual "
        f"{cfg.get('tol')}, at most {cfg.get('max_iter')} iterations)"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #bbb; padding: .3em .6em; }}
figure {{ display: inline-table; margin: 1em; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ display: table-caption; caption-side: bottom; }}
pre {{ background: #f4f4f4; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>Status: <b>{esc(str(results.get("status")))}</b>.</p>
<p><b>First kernel results on MNIST-1D.</b> No kernel-regression results on MNIST-1D have
been published; these are, as far as we know, the first. {esc(headline(results))}</p>
<p>Data: MNIST-1D ({esc(str(data.get("source", "")))}): training sets of N = the first
{esc(", ".join(f"{n:,}" for n in cfg.get("n", [])))} sequences of one pool of
{_num(data.get("n_pool"), ",")}, all scored on the same {_num(data.get("n_test"), ",")} test
sequences (length {data.get("length")}, every position standardised with the smallest
training set's statistics). Targets: centred one-hot (1 − 1/10, −1/10). Network (NTK
parameterisation):</p><pre>{esc(desc)}</pre>
<p>Predictions K<sub>*</sub> (K + μI)<sup>−1</sup> Y with μ = {cfg.get("diag_reg")} × mean
diag K: the NNGP posterior mean and the mean of NTK gradient flow on the MSE loss at
t = ∞. Solver: {esc(solver)}. Kernels computed in {esc(results.get("executor", ""))}
{"into the store " + esc(str(results["store"])) if results.get("store") else "in memory"}.
Peak memory: resident memory of this process during each N{esc(mem_note)}.</p>
<h2>Test scores, time and memory per N</h2>
{_table(*point_rows(results), esc)}
<h2>Power laws: error ~ a N<sup>−b</sup></h2>
<p>Least squares of log error on log N; the standard error of b is the regression slope's
and the interval uses Student's t with points − 2 degrees of freedom (it measures the
scatter about a straight line, not how far the law extrapolates).</p>
{_table(*fit_rows(results), esc)}
<h2>Figures</h2>
{figs}
<h2>Notes</h2><ul>{notes}</ul>
<h2>Stages</h2><ul>{stages}</ul>
<h2>Configuration</h2>
<p>Rerun with <code>widenets scale --config config.toml</code>; continue this run with
<code>{esc(resume_command("OUT", results.get("store")))}</code> (OUT: this folder). Files:
<a href="results.json">results.json</a>, <a href="points.csv">points.csv</a>,
<a href="config.toml">config.toml</a>.</p>
<pre>{esc(json.dumps(cfg, indent=1))}</pre>
<pre>{esc(json.dumps(results.get("versions", {}), indent=1))}</pre>
</body></html>
"""
