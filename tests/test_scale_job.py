"""The scaling job (`widenets scale`, widenets.scale): power-law fits, stages that resume,
the report, the solver switch, the kernel store and Dask, CLI errors. Tiny N throughout."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from widenets.cli import app
from widenets.scale import fit_power_law, run
from widenets.scale.fit import describe

pytest.importorskip("mnist1d")

TINY = dict(n=[40, 80, 160], n_test=200, depth=1, dense_max=80, rank=100, tol=1e-10)


# ----------------------------------------------------------------------------- the fit


def test_fit_recovers_an_exact_power_law():
    ns = [1000, 2000, 4000, 8000, 16000]
    fit = fit_power_law(ns, [2.5 * n**-0.37 for n in ns])
    assert fit["b"] == pytest.approx(0.37, abs=1e-12)
    assert fit["a"] == pytest.approx(2.5, rel=1e-10)
    assert fit["b_se"] < 1e-10 and fit["points"] == 5 and fit["dropped"] == 0


def test_fit_standard_error_and_interval_match_the_scatter():
    """Monte Carlo: log-normal scatter (sigma 0.05) about 3 N^-0.37 at 6 sizes, 400 draws.
    The slope's spread matches sigma / sqrt(S_xx) and the 95% interval covers the true
    exponent in 95% of draws (binomial s.e. 1.1%: bounds at about 3 s.e.)."""
    g = torch.Generator().manual_seed(0)
    ns = [500, 1000, 2000, 4000, 8000, 16000]
    lx = [math.log(n) for n in ns]
    mx = sum(lx) / len(lx)
    true_sd = 0.05 / math.sqrt(sum((x - mx) ** 2 for x in lx))
    bs, covered = [], 0
    for _ in range(400):
        noise = torch.randn(len(ns), generator=g, dtype=torch.float64) * 0.05
        fit = fit_power_law(
            ns, [3 * n**-0.37 * math.exp(e) for n, e in zip(ns, noise.tolist(), strict=True)]
        )
        bs.append(fit["b"])
        covered += fit["b_ci95"][0] <= 0.37 <= fit["b_ci95"][1]
    mean = sum(bs) / len(bs)
    sd = math.sqrt(sum((b - mean) ** 2 for b in bs) / (len(bs) - 1))
    assert abs(mean - 0.37) < 4 * true_sd / math.sqrt(len(bs))
    assert sd / true_sd == pytest.approx(1.0, abs=0.15)
    assert 0.92 <= covered / 400 <= 0.98


def test_fit_drops_nonpositive_points_and_needs_two():
    fit = fit_power_law([10, 20, 40], [0.5, 0.0, 0.125])
    assert fit["points"] == 2 and fit["dropped"] == 1 and fit["b_se"] is None
    assert fit["b"] == pytest.approx(1.0)
    assert fit_power_law([10, 20], [0.5, 0.0]) is None
    assert "no fit" in describe(None) and "2 points" in describe(fit)


# ----------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "run"
    return out, run(None, out, **TINY)


def _preds(out, n):
    return torch.load(out / "stages" / f"n{n}.pt", weights_only=True)


def test_report_files_exist_and_state_the_numbers(tiny):
    out, res = tiny
    assert res["status"] == "complete"
    for f in ("index.html", "results.json", "points.csv", "config.toml", "figures/scaling.png",
              "figures/scaling.svg", "figures/cost.pdf"):  # fmt: skip
        assert (out / f).is_file(), f
    page = (out / "index.html").read_text()
    assert "first" in page
    for p in res["points"]:
        for k in ("nngp", "ntk"):
            assert f"{100 * p[k]['accuracy']:.2f}%" in page
            assert f"{p[k]['mse']:.4g}" in page
    for k in ("nngp", "ntk"):
        assert f"{res['fits'][k]['error']['b']:.3f}" in page
    rows = (out / "points.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(TINY["n"])
    assert json.loads((out / "results.json").read_text())["points"] == res["points"]
    solvers = [p["nngp"]["solver"] for p in res["points"]]
    assert solvers == ["cholesky", "cholesky", "pcg"]
    assert all(p["peak_memory_bytes"] > 0 for p in res["points"])


def test_scores_match_the_predictions(tiny):
    out, res = tiny
    import widenets.scale.data as sd

    pool = torch.load(out / "stages" / "data.pt", weights_only=True)
    for p in res["points"]:
        pred = _preds(out, p["n"])["ntk"]
        acc = (pred.argmax(1) == pool["y_test"]).double().mean().item()
        mse = ((pred - sd.targets(pool["y_test"])) ** 2).mean().item()
        assert acc == pytest.approx(p["ntk"]["accuracy"]) and mse == pytest.approx(p["ntk"]["mse"])


def test_pcg_stage_equals_the_dense_solve(tiny, tmp_path):
    """The N above dense_max (PCG) against the same N solved by Cholesky (same sizes: the
    pool and the standardisation depend on the largest and smallest N)."""
    out, _ = tiny
    dense = run(None, tmp_path / "dense", **{**TINY, "dense_max": 1000})
    assert dense["points"][-1]["nngp"]["solver"] == "cholesky"
    for k in ("nngp", "ntk"):
        a, b = _preds(out, 160)[k], _preds(tmp_path / "dense", 160)[k]
        assert ((a - b).norm() / b.norm()).item() < 1e-7


def test_resume_recomputes_exactly_the_damaged_stages(tiny, tmp_path):
    out, first = tiny
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "stages" / "n80.json").unlink()  # deleted
    pt = copy / "stages" / "n40.pt"
    pt.write_bytes(pt.read_bytes()[:100])  # truncated
    js = copy / "stages" / "n160.json"
    js.write_text(js.read_text().replace('"n": 160', '"n": 161'))  # edited
    res = run(None, copy, resume=True, **TINY)
    status = {k: v["status"] for k, v in res["stages"].items()}
    assert status == {"data": "resumed", "n40": "done", "n80": "done", "n160": "done"}
    notes = " ".join(res["notes"])
    assert "n40" in notes and "n160" in notes and "checksum" in notes
    for n in TINY["n"]:
        for k in ("nngp", "ntk"):
            assert torch.equal(_preds(copy, n)[k], _preds(out, n)[k])
    again = run(None, copy, resume=True, **TINY)
    assert {v["status"] for v in again["stages"].values()} == {"resumed"}
    changed = run(None, copy, resume=True, **{**TINY, "diag_reg": 1e-2})
    assert {v["status"] for v in changed["stages"].values()} == {"done"}


@pytest.mark.slow
def test_store_and_dask_give_the_same_predictions(tiny, tmp_path):
    pytest.importorskip("zarr")
    distributed = pytest.importorskip("distributed")
    out, _ = tiny
    small = TINY
    stored = run(None, tmp_path / "stored", store=tmp_path / "kernels", **small)
    for p in stored["points"]:
        n = p["n"]
        # two kernels each of N x N and n_test x N float64, plus variances and markers
        assert p["store"]["bytes"] >= 2 * 8 * (n * n + TINY["n_test"] * n)
        for k in ("nngp", "ntk"):
            assert torch.allclose(
                _preds(tmp_path / "stored", n)[k], _preds(out, n)[k], rtol=1e-12, atol=1e-14
            )
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        distributed.Client(cluster) as client,
    ):
        res = run(None, tmp_path / "dask", scheduler=client, **small)
    assert "Dask cluster" in res["executor"]
    for n in TINY["n"]:
        for k in ("nngp", "ntk"):
            assert torch.allclose(
                _preds(tmp_path / "dask", n)[k], _preds(out, n)[k], rtol=1e-12, atol=1e-14
            )


# ----------------------------------------------------------------------------- the CLI

runner = CliRunner()


@pytest.mark.parametrize(
    "args, names",
    [
        (["--n", "1000,x"], "--n"),
        (["--kernels", "nngp,cntk"], "--kernels"),
        (["--diag-reg", "0"], "--diag-reg"),
        (["--tol", "2"], "--tol"),
        (["--set", "colour=1"], "colour"),
        (["--activation", "swishy"], "--activation"),
    ],
)
def test_cli_bad_values_are_one_line_errors(args, names, tmp_path):
    res = runner.invoke(app, ["scale", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and names in lines[0], res.output
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_used_folder_and_runs_tiny(tiny, tmp_path):
    out, _ = tiny
    res = runner.invoke(app, ["scale", "--out", str(out)])
    assert res.exit_code == 2 and "--resume" in res.output and len(res.output.splitlines()) == 1
    args = ["scale", "--n", "40,80", "--n-test", "100", "--depth", "1", "--quiet"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "cli" / "index.html").read_text()
    assert "N = 80" in page or "80" in page
    cfg = (tmp_path / "cli" / "config.toml").read_text()
    assert "n = [\n    40,\n    80,\n]" in cfg or "n = [40, 80]" in cfg
