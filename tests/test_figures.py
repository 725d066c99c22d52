"""Figures: PNG + SVG + PDF on disk, readable legends, distinguishable reference lines, the
training curves over the networks' training window, and the user's matplotlib backend kept.

The results dict is built by hand (shaped as ``wn.study.run`` writes it), so the figures are
drawn without training anything.
"""

from __future__ import annotations

import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from widenets import _plot
from widenets.study import figures, report, theory_checks

LR, STEPS = 0.5, 64
WIDTHS = (8, 32, 128)
STEP_GRID = (0, 1, 4, 16, 64)


def _scores(acc, mse):
    return {"accuracy": acc, "mse": mse}


def _checkpoints(scale):
    """Checkpoint records at tau = LR * step; ``scale`` sets how far from the closed form."""
    return [
        {
            "step": s,
            "time": LR * s,
            "train_loss": 0.05 / (1 + s) + scale,
            "accuracy": min(0.9, 0.3 + 0.1 * math.log1p(s)) - scale,
            "mse": 0.09 / (1 + 0.1 * s) + scale,
            "distance_to_infinite": 0.0 if s == 0 else scale,
        }
        for s in STEP_GRID
    ]


def _method(scale, **extra):
    ck = _checkpoints(scale)
    return {"checkpoints": ck, **ck[-1], **extra}


def make_results(nngp_acc=0.85, ntk_inf_acc=0.87, ntk_t_acc=0.8):
    """A results dict of a study at widths 8, 32, 128 with two seeds."""
    finite = []
    for w in WIDTHS:
        for seed in (0, 1):
            d = (1 + 0.2 * seed) / math.sqrt(w)
            finite.append(
                {
                    "width": w,
                    "seed": seed,
                    "gd": _method(d),
                    "sgd": _method(1.2 * d),
                    "linearized": _method(0.8 * d, max_distance_to_network=0.5 * d),
                    "regime": {
                        "kernel_distance": 0.1 * d,
                        "relative_kernel_change": 0.3 * d,
                        "ntk_init_distance": 0.4 * d,
                        "relative_weight_change": 0.2 * d,
                    },
                }
            )
    t_end = LR * STEPS
    along = [
        {"time": t_end * 10 ** (-2 + 4 * i / 8), "train_loss": 0.05 / (1 + i), **_scores(0.8, 0.03)}
        for i in range(9)
    ]
    closed = _checkpoints(0.0)
    infinite = {
        "nngp": _scores(nngp_acc, 0.030),
        "ntk_t_inf": _scores(ntk_inf_acc, 0.031),
        "ntk_at_training_time": {**closed[-1], "accuracy": ntk_t_acc},
        "diag_reg_sweep": [
            {"diag_reg": r, "nngp": _scores(nngp_acc, 0.03), "ntk_t_inf": _scores(0.87, 0.031)}
            for r in (0.0, 1e-4, 1e-2)
        ],
        "along_t": along,
        "checkpoints": closed,
    }
    results = {
        "status": "complete",
        "config": {"arch": "fc", "data": "digits", "widths": list(WIDTHS), "seeds": 2},
        "kernels": {"learning_rate": LR, "training_time": t_end},
        "infinite": infinite,
        "finite": finite,
        "ensembles": {
            str(w): {"n_members": 2, "gd": {**_scores(0.8, 0.04), "distance_to_infinite": 0.5}}
            for w in WIDTHS
        },
        "ensemble_scaling": {
            "128": {"members": [1, 2], "distance": [0.2, 0.14], "leave_one_out": [[0.2], [0.21]]}
        },
    }
    results["theory"] = theory_checks.evaluate(results)
    results["summary"] = report.summarize(results)
    return results


@pytest.fixture
def drawn(monkeypatch):
    """name -> Figure of every study figure, drawn but not saved."""
    got = {}

    def keep(fig, path):
        got[Path(path).stem] = fig
        return Path(path)

    monkeypatch.setattr(figures, "save", keep)
    results = make_results()
    for name, fn in figures.FIGURES.items():
        assert fn(results, Path(f"{name}.png")) is not None, name
    return got


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The folder of a report written from the hand-made results."""
    out = tmp_path_factory.mktemp("report")
    report.write(out, make_results())
    return out


def test_every_figure_saved_as_png_svg_pdf(written):
    made = sorted((written / "figures").glob("*.png"))
    assert {p.stem for p in made} == set(figures.FIGURES)
    for png in made:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
        # the PNG's pixel density (pHYs chunk, pixels per metre) is the print resolution
        phys = data.index(b"pHYs")
        ppm = int.from_bytes(data[phys + 4 : phys + 8], "big")
        assert ppm * 0.0254 == pytest.approx(_plot.DPI, abs=1), png
        svg, pdf = png.with_suffix(".svg"), png.with_suffix(".pdf")
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg") and len(root) > 0, svg
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.read_bytes().rstrip()[-5:] == b"%%EOF"
    assert not list(written.rglob("*.tmp")), "temporary files left behind"


def test_report_links_vector_files(written):
    html = (written / "index.html").read_text()
    for name in figures.FIGURES:
        for fmt in _plot.FORMATS:
            ref = f"figures/{name}.{fmt}"
            assert f'"{ref}' in html, ref
            assert (written / ref).is_file(), ref


def test_saved_files_are_reproducible(tmp_path):
    """No dates or random ids in the files: a rerun writes the same bytes."""
    results = make_results()
    a = figures.distance_vs_width(results, tmp_path / "a" / "d.png")
    b = figures.distance_vs_width(results, tmp_path / "b" / "d.png")
    for fmt in _plot.FORMATS:
        assert a.with_suffix(f".{fmt}").read_bytes() == b.with_suffix(f".{fmt}").read_bytes()


def test_legends_readable(drawn):
    for name, fig in drawn.items():
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends, name
        for leg in legends:
            for text in leg.get_texts():
                assert text.get_fontsize() >= 9, (name, text.get_text())


def _reference_lines(ax):
    return [line for line in ax.get_lines() if "∞ width" in line.get_label()]


def test_reference_lines_distinguishable(drawn):
    axes = drawn["accuracy_vs_width"].axes
    assert len(axes) == 2
    for ax in axes:
        refs = _reference_lines(ax)
        assert len(refs) == 3
        styles = [line.get_linestyle() for line in refs]
        assert len(set(styles)) == len(styles), styles


def test_coinciding_reference_lines_merged(monkeypatch):
    """NNGP and NTK at tau = inf with the same accuracy: one line, one combined entry."""
    got = {}
    monkeypatch.setattr(figures, "save", lambda fig, path: got.setdefault("fig", fig))
    figures.accuracy_vs_width(make_results(nngp_acc=0.85, ntk_inf_acc=0.85), Path("a.png"))
    acc, mse = got["fig"].axes
    labels = [line.get_label() for line in _reference_lines(acc)]
    assert len(labels) == 2
    assert "NNGP posterior (∞ width) = NTK, τ = ∞ (∞ width)" in labels
    assert len(_reference_lines(mse)) == 3  # their MSEs differ: drawn apart
    legend_labels = [t.get_text() for t in acc.get_legend().get_texts()]
    assert "NNGP posterior (∞ width) = NTK, τ = ∞ (∞ width)" in legend_labels


def test_reference_lines_helper():
    fig, ax = _plot.figure(size=(3, 2))
    lines = _plot.reference_lines(
        ax, [(1.0, "a", "C0"), (None, "skipped", "C1"), (1.0 + 1e-13, "b", "C2"), (2.0, "c", "C3")]
    )
    assert [ln.get_label() for ln in lines] == ["a = b", "c"]
    assert lines[0].get_linestyle() != lines[1].get_linestyle()


def test_training_curves_show_the_training_window(drawn):
    lo, hi = LR * STEP_GRID[1], LR * STEPS
    for ax in drawn["training_curves"].axes:
        x0, x1 = ax.get_xlim()
        assert lo / 1.5 <= x0 < lo and hi < x1 <= hi * 1.5, (x0, x1)
        assert "τ = learning rate × step" in ax.get_xlabel()
    # the closed form at tau = inf is shown as a line (the train loss tends to 0: not drawn)
    test_ax = drawn["training_curves"].axes[1]
    inf_line = [ln for ln in test_ax.get_lines() if ln.get_label() == "closed form, τ = ∞"]
    assert inf_line and inf_line[0].get_ydata()[0] == pytest.approx(0.87)


def test_one_quantity_per_y_label(drawn):
    regime = drawn["regime_vs_width"].axes
    assert [ax.get_ylabel().split(" ")[0] for ax in regime] == ["kernel", "relative"]
    for name, fig in drawn.items():
        for ax in fig.axes:
            if ax.get_visible() and ax.get_lines():
                assert ax.get_ylabel(), (name, ax.get_title())


_BACKEND_SCRIPT = """
import sys
import matplotlib
matplotlib.use("svg")
sys.path.insert(0, "tests")
import numpy as np
import widenets as wn
from widenets import theory
from widenets.study import figures
from test_figures import make_results

theory.signal.phase_diagram(wn.Erf(), np.linspace(0.5, 3, 4), np.linspace(0, 0.5, 3))
figures.training_curves(make_results(), sys.argv[1] + "/t.png")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_users_backend_is_kept(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _BACKEND_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert out.stdout.split() == ["svg", "False"], out.stdout + out.stderr


def test_mse_axis_log_only_when_it_spans_decades(monkeypatch):
    got = []
    monkeypatch.setattr(figures, "save", lambda fig, path: got.append(fig))
    results = make_results()
    for entry in results["summary"].values():  # test MSEs 0.04 +- 0.001, references 0.03
        for m in ("gd", "sgd", "linearized"):
            entry[m]["mse"] = {"mean": 0.04, "std": 0.001, "n": 2}
        entry["ensemble"]["gd"]["mse"] = 0.04
    figures.accuracy_vs_width(results, Path("a.png"))
    results["summary"]["8"]["gd"]["mse"]["mean"] = 1e4  # a diverged network
    figures.accuracy_vs_width(results, Path("b.png"))
    assert [fig.axes[1].get_yscale() for fig in got] == ["linear", "log"]
    assert [fig.axes[0].get_yscale() for fig in got] == ["linear", "linear"]
