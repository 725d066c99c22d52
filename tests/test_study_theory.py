"""The study's theory checks: exponent fits against closed forms, the ensemble curve against
Monte Carlo, the per-network measures against independent computations, and the report's
table against a refit from runs.csv."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import widenets as wn
from _tiny_study import TINY as _BASE
from widenets.study import stages, theory_checks
from widenets.study.theory_checks import fit_exponent, holds, jackknife

TINY = {
    **_BASE,
    "widths": [8, 16, 32, 64],
    "seeds": 3,
    "sgd_batch_size": 0,
    "linearize_seeds": 3,
    "diag_reg_sweep": [0.0],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fit_exponent_recovers_power_laws_and_ignores_unusable_points():
    xs = [64, 128, 256, 512, 1024]
    for p in (-0.5, -1.0, 0.3):
        assert fit_exponent(xs, [3.7 * x**p for x in xs]) == pytest.approx(p, abs=1e-12)
    noisy = [2.0 * x**-0.5 * (1 + 0.1 * (-1) ** i) for i, x in enumerate(xs)]
    assert fit_exponent(xs, noisy) == pytest.approx(
        np.polyfit(np.log(xs), np.log(noisy), 1)[0], abs=1e-12
    )
    assert fit_exponent([64, 128], [0.0, 1.0]) is None  # one usable point
    assert fit_exponent([64, 64], [1.0, 2.0]) is None  # one x
    assert fit_exponent([64, 128, 256], [0.5, 0.0, 0.125]) == pytest.approx(-1.0)


def test_jackknife_and_holds():
    # jackknife of the mean reproduces the standard error of the mean
    x = [0.3, 1.2, -0.4, 2.2, 0.9]
    loo = [(sum(x) - xi) / (len(x) - 1) for xi in x]
    assert jackknife(loo) == pytest.approx(np.std(x, ddof=1) / math.sqrt(len(x)))
    assert jackknife([1.0]) is None
    tol = theory_checks.TOLERANCE
    assert holds(-0.5 + tol - 1e-9, None, -0.5, "approx")
    assert not holds(-0.5 + tol + 1e-9, None, -0.5, "approx")
    assert holds(-0.5 + tol + 0.09, 0.05, -0.5, "approx")  # within 2 s.e. more
    assert holds(-1.2, 0.01, -0.5, "bound")  # faster than a bound: holds
    assert not holds(-1.2, 0.01, -0.5, "approx")  # but not "about -1/2"
    assert not holds(0.0, 0.01, -0.5, "bound")
    assert holds(None, None, -0.5, "approx") is None


def test_ensemble_curve_falls_like_one_over_sqrt_members_for_independent_noise():
    """Members = reference + independent noise: the ensemble distance is sigma sqrt(D/M) /
    |ref| in expectation, so the exponent is -1/2 (Monte Carlo: D = 4000 entries make the
    relative error of each distance about 1/sqrt(2D) = 1.1%)."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(400, 10, generator=g, dtype=torch.float64)
    sigma = 0.3
    members = [
        ref + sigma * torch.randn(400, 10, generator=g, dtype=torch.float64) for _ in range(8)
    ]
    curve = stages.ensemble_curve(members, ref)
    expected = [sigma * math.sqrt(ref.numel() / m) / ref.norm().item() for m in range(1, 9)]
    for got, want in zip(curve, expected, strict=True):
        assert got == pytest.approx(want, rel=0.05)
    assert fit_exponent(range(1, 9), curve) == pytest.approx(-0.5, abs=0.03)
    # a shared bias (finite-width mean shift) flattens the curve: the check can fail
    biased = [m + 0.3 for m in members]
    assert fit_exponent(range(1, 9), stages.ensemble_curve(biased, ref)) > -0.3


def test_linearization_gap_is_the_sup_over_checkpoints():
    lin = [torch.zeros(3), torch.ones(3), 2 * torch.ones(3)]
    net = [torch.zeros(3), torch.tensor([1.0, 1.0, 4.0]), torch.tensor([2.0, 2.0, 3.0])]
    # gaps 0, 3, 1; scale |lin[-1]| = 2 sqrt(3)
    assert stages.linearization_gap(net, lin) == pytest.approx(3 / (2 * math.sqrt(3)))


def _synthetic_results(exponents: dict, seeds=3, widths=(64, 128, 256, 512), noise=0.05):
    g = np.random.default_rng(1)
    finite = []
    for s in range(seeds):
        for w in widths:

            def v(p, w=w):
                return 0.7 * w**p * math.exp(noise * g.standard_normal())

            finite.append(
                {
                    "width": w,
                    "seed": s,
                    "gd": {"distance_to_infinite": v(exponents["distance_to_infinite"])},
                    "linearized": {"max_distance_to_network": v(exponents["linearization_gap"])},
                    "regime": {
                        "ntk_init_distance": v(exponents["ntk_init_distance"]),
                        "relative_kernel_change": v(exponents["relative_kernel_change"]),
                    },
                }
            )
    return {"config": {"center": True}, "finite": finite}


def test_evaluate_fits_each_seed_and_reports_the_standard_error():
    exps = {
        "distance_to_infinite": -0.5,
        "linearization_gap": -0.9,
        "ntk_init_distance": -0.5,
        "relative_kernel_change": 0.2,
    }
    results = _synthetic_results(exps)
    theory = theory_checks.evaluate(results)
    rows = {r["key"]: r for r in theory["checks"]}
    for key, p in exps.items():
        per_seed = theory_checks.per_seed_values(results, key)
        slopes = []
        for curve in per_seed.values():
            ws = sorted(curve)
            slopes.append(np.polyfit(np.log(ws), np.log([curve[w] for w in ws]), 1)[0])
        assert rows[key]["measured"] == pytest.approx(np.mean(slopes), abs=1e-12)
        assert rows[key]["se"] == pytest.approx(np.std(slopes, ddof=1) / math.sqrt(3), abs=1e-12)
        assert rows[key]["measured"] == pytest.approx(p, abs=0.15)
        assert rows[key]["n"] == 3
    assert rows["distance_to_infinite"]["holds"] is True
    assert rows["linearization_gap"]["holds"] is True  # faster than the bound
    assert rows["relative_kernel_change"]["holds"] is False  # grows with width: violated
    assert rows["ensemble"]["holds"] is None and "not enough data" in rows["ensemble"]["note"]
    results["config"]["center"] = False
    rows = {r["key"]: r for r in theory_checks.evaluate(results)["checks"]}
    assert rows["distance_to_infinite"]["holds"] is None
    assert "not centred" in rows["distance_to_infinite"]["note"]
    table = theory_checks.table_rows(theory)
    assert len(table) == 5 and all(len(r) == 5 for r in table)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("theory")
    results = wn.study.run(TINY, out)
    return out, results


def test_report_table_matches_a_refit_from_runs_csv(study):
    """Two computations of each exponent: the study's, and numpy's fit of runs.csv."""
    out, results = study
    rows = list(csv.DictReader((out / "runs.csv").read_text().splitlines()))
    by_key = {
        "distance_to_infinite": ("gd", "distance_to_infinite"),
        "linearization_gap": ("linearized", "distance_to_network_sup"),
        "ntk_init_distance": ("gd", "ntk_init_distance"),
        "relative_kernel_change": ("gd", "relative_kernel_change"),
    }
    checks = {
        c["key"]: c for c in json.loads((out / "results.json").read_text())["theory"]["checks"]
    }
    for key, (method, column) in by_key.items():
        slopes = []
        for seed in range(TINY["seeds"]):
            pts = sorted(
                (int(r["width"]), float(r[column]))
                for r in rows
                if r["method"] == method and r["seed"] == str(seed)
            )
            assert len(pts) == len(TINY["widths"]), (key, seed)
            ws, ys = zip(*pts, strict=True)
            slopes.append(np.polyfit(np.log(ws), np.log(ys), 1)[0])
        assert checks[key]["measured"] == pytest.approx(np.mean(slopes), abs=1e-9), key
    ens = results["ensemble_scaling"]["64"]
    assert ens["members"] == [1, 2, 3] and len(ens["leave_one_out"]) == 3
    html = (out / "index.html").read_text()
    assert "The theory&#x27;s predictions, checked" in html or "predictions, checked" in html
    for c in checks.values():
        assert c["quantity"] in html
    assert (out / "figures" / "theory_exponents.png").is_file()


def test_per_network_measures_against_independent_computations(study):
    """ntk_init_distance and relative_kernel_change of one network, recomputed by hand."""
    _, results = study
    cfg = wn.study.resolve(TINY)
    ds, y, y_test = stages.data_and_targets(cfg)
    row = next(r for r in results["finite"] if r["width"] == 32 and r["seed"] == 1)
    net = wn.serial(
        wn.Dense(32, w_std=1.5, b_std=0.05),
        wn.Relu(),
        wn.Dense(32, w_std=1.5, b_std=0.05),
        wn.Relu(),
        wn.Dense(10, w_std=1.5, b_std=0.05),
    )
    model = net.build((64,), seed=1, dtype=torch.float32)
    xr = ds.x_train[:10].float()
    k0 = wn.empirical.ntk(model, xr).double()
    k_inf = net.kernel(ds.x_train[:10]).ntk
    assert row["regime"]["ntk_init_distance"] == pytest.approx(
        ((k0 - k_inf).norm() / k_inf.norm()).item(), rel=1e-5
    )
    lr = results["kernels"]["learning_rate"]
    x, f0 = ds.x_train.float(), None
    with torch.no_grad():
        f0 = model(x)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(cfg.steps):
        opt.zero_grad()
        (((model(x) - f0 - y.float()) ** 2).sum() / (2 * y.numel())).backward()
        opt.step()
    kt = wn.empirical.ntk(model, xr).double()
    assert row["regime"]["relative_kernel_change"] == pytest.approx(
        ((kt - k0).norm() / k0.norm()).item(), rel=1e-4
    )
    assert 0 < row["linearized"]["max_distance_to_network"] < 1


def test_short_citation_for_the_terminal():
    assert (
        theory_checks.short_citation(theory_checks.LEE_2019 + " (Theorem 2.1)")
        == "Lee et al. 2019 (Theorem 2.1)"
    )
    assert theory_checks.short_citation(theory_checks.LEE_2020) == "Lee et al. 2020"
    rows = theory_checks.table_rows(
        theory_checks.evaluate({"config": {}, "finite": []}), short=True
    )
    assert [r[2] for r in rows][0] == "Lee et al. 2019"
