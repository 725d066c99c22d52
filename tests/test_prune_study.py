"""widenets prune: the findings' rules on synthetic tables (each verdict flips where its
threshold says), configuration errors, IMP's schedule, and a tiny run that resumes."""

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from widenets import prune as P
from widenets.prune.study import findings as F
from widenets.prune.study import resolve, run
from widenets.prune.study.stages import steps_per_epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GRID = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005]


def _rows(curves: dict, arch="lenet_300_100", collapsed=None, seeds=(0,)) -> list[dict]:
    """Rows of one seed per value (or several with offsets) from {method: {density: acc}}."""
    collapsed = collapsed or {}
    out = []
    for s in seeds:
        for method, pts in curves.items():
            for d, acc in pts.items():
                out.append({
                    "arch": arch, "method": method, "seed": s, "density": d, "accuracy": acc,
                    "kernel_distance": 1 - d, "actual_density": d,
                    "collapsed": ["0"] if (method, d) in collapsed else [],
                })  # fmt: skip
    return out


def _verdict(rows, key):
    return next(f for f in F.evaluate(F.summarize(rows)) if f["key"] == key)


def _flat(acc, ds=GRID[1:]):
    return dict.fromkeys(ds, acc)


def test_summarize_means_and_standard_errors():
    rows = _rows({"dense": {1.0: 0.9}}, seeds=(0,)) + _rows({"dense": {1.0: 0.8}}, seeds=(1,))
    (e,) = F.summarize(rows)
    assert e["n"] == 2 and e["accuracy"] == pytest.approx(0.85)
    assert e["accuracy_se"] == pytest.approx(math.sqrt(0.005) / math.sqrt(2))


def test_synflow_finding_reproduced_and_each_condition_flips_it():
    snip = {**_flat(0.9), 0.01: 0.9, 0.005: 0.5}  # drops 40 points at 0.5%
    grasp = {**_flat(0.9), 0.01: 0.6}
    syn = _flat(0.88)
    base = {"dense": {1.0: 0.95}, "snip": snip, "grasp": grasp, "synflow": syn}
    f = _verdict(_rows(base), "synflow")
    assert f["verdict"] == F.REPRODUCED and "0.5%" in f["details"][0]
    # SynFlow collapsing a layer somewhere: not reproduced
    f = _verdict(_rows(base, collapsed={("synflow", 0.005)}), "synflow")
    assert f["verdict"] == F.NOT
    # a drop just under ABRUPT_DROP is not abrupt
    smooth = {**snip, 0.005: 0.9 - F.ABRUPT_DROP + 0.01}
    f = _verdict(_rows({**base, "snip": smooth}), "synflow")
    assert f["verdict"] == F.NOT
    # ... and the report says which drop it tested: the steepest, with SynFlow's gap there
    assert f"steepest at most 10.0% is {100 * F.ABRUPT_DROP - 1:.1f} points" in f["details"][0]
    assert "SynFlow 88.0% there (+12.0 points" in f["details"][0]
    # SynFlow not above by SYNFLOW_MARGIN where the drop ends
    close = {**syn, 0.005: 0.5 + F.SYNFLOW_MARGIN - 0.01}
    assert _verdict(_rows({**base, "synflow": close}), "synflow")["verdict"] == F.NOT
    # an abrupt drop at a density above EXTREME does not count
    early = {**_flat(0.3), 0.5: 0.9, 0.2: 0.3}
    early_syn = {**syn, **dict.fromkeys([0.1, 0.05, 0.02, 0.01, 0.005], 0.31)}
    rows = _rows({**base, "grasp": early, "synflow": early_syn})
    assert _verdict(rows, "synflow")["verdict"] == F.NOT


def test_synflow_finding_partly_on_one_of_two_architectures():
    base = {
        "dense": {1.0: 0.95},
        "snip": {**_flat(0.9), 0.005: 0.3},
        "grasp": {**_flat(0.9), 0.005: 0.3},
        "synflow": _flat(0.88),
    }
    flat = {**base, "snip": _flat(0.9), "grasp": _flat(0.9)}
    rows = _rows(base) + _rows(flat, arch="small_cnn")
    f = _verdict(rows, "synflow")
    assert f["verdict"] == F.PARTLY and f["per_arch"] == {
        "lenet_300_100": True,
        "small_cnn": False,
    }


def test_imp_finding_rule():
    dense = {"dense": {1.0: 0.97}}
    imp = {**_flat(0.97), 0.05: 0.9}
    reinit = {**_flat(0.97), 0.2: 0.95, 0.1: 0.93}
    f = _verdict(_rows({**dense, "imp": imp, "imp_reinit": reinit}), "imp")
    assert f["verdict"] == F.REPRODUCED, f
    # IMP more than KEEP_TOL below dense at 10%: not reproduced
    worse = {**imp, 0.1: 0.97 - F.KEEP_TOL - 0.001}
    f = _verdict(_rows({**dense, "imp": worse, "imp_reinit": reinit}), "imp")
    assert f["verdict"] == F.NOT
    # IMP within KEEP_TOL is kept
    ok = {**imp, 0.1: 0.97 - F.KEEP_TOL + 0.001}
    assert _verdict(_rows({**dense, "imp": ok, "imp_reinit": reinit}), "imp")["verdict"] == (
        F.REPRODUCED
    )
    # the reinitialised ticket as good as IMP in the band: not reproduced
    same = _flat(0.97)
    f = _verdict(_rows({**dense, "imp": imp, "imp_reinit": same}), "imp")
    assert f["verdict"] == F.NOT
    # no LeNet in the run, or no reinitialised baseline: not evaluated
    rows = _rows({**dense, "imp": imp, "imp_reinit": reinit}, arch="small_cnn")
    assert _verdict(rows, "imp")["verdict"] == F.UNEVALUATED
    assert _verdict(_rows({**dense, "imp": imp}), "imp")["verdict"] == F.UNEVALUATED


def test_imp_finding_needs_two_standard_errors_between_ticket_and_reinit():
    dense = {"dense": {1.0: 0.97}}
    imp, reinit = _flat(0.97), {**_flat(0.97), 0.1: 0.94}
    rows = _rows({**dense, "imp": imp, "imp_reinit": reinit}, seeds=(0,))
    # a second seed where the reinitialised ticket is far better: large standard error
    rows += _rows({**dense, "imp": imp, "imp_reinit": {**_flat(0.97), 0.1: 1.0}}, seeds=(1,))
    assert _verdict(rows, "imp")["verdict"] == F.NOT


def test_erk_finding_rule():
    dense = {"dense": {1.0: 0.95}}
    erk = {**_flat(0.8), 0.5: 0.95, 0.2: 0.95 - F.CLOSE_TOL + 0.001}
    assert _verdict(_rows({**dense, "erk": erk}), "erk")["verdict"] == F.REPRODUCED
    far = {**erk, 0.2: 0.95 - F.CLOSE_TOL - 0.001}
    f = _verdict(_rows({**dense, "erk": far}), "erk")
    assert f["verdict"] == F.NOT and "20.0%" in f["details"][0]
    # densities outside the moderate band do not matter
    assert _verdict(_rows({**dense, "erk": {**erk, 0.1: 0.1}}), "erk")["verdict"] == F.REPRODUCED
    assert _verdict(_rows(dense), "erk")["verdict"] == F.UNEVALUATED


# ----- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"densities": [0.5, 0.0]}, "`densities`"),
        ({"densities": "1,abc"}, "`densities`"),
        ({"methods": ["imp_reinit"]}, "`methods`"),
        ({"archs": "resnet"}, "`archs`"),
        ({"seeds": 0}, "`seeds`"),
        ({"n_train": 4500, "n_test": 1000}, "5000"),
        ({"kernel_pts": 3}, "did you mean 'kernel_points'"),
        ({"learning_rate": -1.0}, "`learning_rate`"),
        ({"rewind_step": 10_000}, "`rewind_step`"),
    ],
)
def test_config_errors_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        resolve(**kw)


def test_config_densities_sorted_with_the_dense_network():
    cfg = resolve(densities="0.01, 0.1,0.1")
    assert cfg.densities == [1.0, 0.1, 0.01] and cfg.sparse_densities == [0.1, 0.01]
    assert steps_per_epoch(resolve(n_train=250, batch_size=100, score_examples=100)) == 3


# ----- IMP with a schedule ---------------------------------------------------------------


def test_imp_schedule_prunes_to_each_density_in_turn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))
    seen = []

    def train(m, on_step):
        seen.append(P.density(m))
        on_step(1)

    ticket = P.imp(model, train, schedule=[0.5, 0.2, 0.05], scope="layer")
    n = 10 * 20 + 20 * 4

    def kept(d):  # per layer: round(d * N_l)
        return (round(d * 200) + round(d * 80)) / n

    assert seen == [1.0, kept(0.5), kept(0.2)]
    assert ticket.densities == [0.5, 0.2, 0.05]
    assert P.density(model) == kept(0.05)
    for bad in ([0.5, 0.5], [1.0], [], "0.5"):
        with pytest.raises(ValueError, match="`schedule`"):
            P.imp(model, train, schedule=bad)
    with pytest.raises(ValueError, match="not both"):
        P.imp(model, train, 0.1, 2, schedule=[0.5])


# ----- a tiny run --------------------------------------------------------------------------

TINY = dict(
    archs=["small_cnn"], seeds=1, densities=[1.0, 0.1], n_train=100, n_test=40, epochs=1,
    batch_size=50, score_examples=20, synflow_iterations=2, kernel_points=3,
)  # fmt: skip


@pytest.mark.slow
def test_tiny_run_writes_the_report_and_resumes(tmp_path):
    out = tmp_path / "run"
    res = run(out=out, **TINY)
    assert res["status"] == "complete"
    methods = {r["method"] for r in res["rows"]}
    assert methods == {"dense", *resolve().methods}
    assert len(res["rows"]) == 1 + 8  # the dense network, then 8 methods at density 0.1
    for r in res["rows"]:
        assert 0 <= r["accuracy"] <= 1 and math.isfinite(r["kernel_distance"])
        if r["method"] != "dense":
            assert r["actual_density"] == pytest.approx(0.1, abs=0.01)
            assert 0 < r["kernel_distance"] < 10
    assert {f["key"] for f in res["findings"]} == {"synflow", "imp", "erk"}
    for name in ("index.html", "results.json", "runs.csv", "config.toml"):
        assert (out / name).is_file()
    assert (out / "figures" / "accuracy_small_cnn.png").is_file()
    html = (out / "index.html").read_text()
    assert "Published findings" in html and "not evaluated" in html  # IMP: no LeNet here
    with pytest.raises(ValueError, match="not empty"):
        run(out=out, **TINY)
    # resuming reuses every stage, and a damaged stage is recomputed
    stage = out / "stages" / "small_cnn__s0__snip.json"
    record = json.loads(stage.read_text())
    record["result"]["rows"][0]["accuracy"] = 0.5  # the checksum no longer matches
    stage.write_text(json.dumps(record))
    again = run(out=out, resume=True, **TINY)
    status = {k: v["status"] for k, v in again["stages"].items()}
    assert status.pop("small_cnn/s0/snip") == "done"
    assert set(status.values()) == {"resumed"}
    assert json.dumps(again["summary"]) == json.dumps(res["summary"])


def test_cli_prune_errors_and_interrupt(tmp_path, monkeypatch):
    from widenets.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["prune", "--densities", "0.5,2", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "`densities`" in res.output and "--densities" in res.output
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    res = runner.invoke(app, ["prune", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "--resume" in res.output

    import widenets.prune.study as S

    def interrupted(cfg, out, **kw):
        (out / "stages").mkdir(parents=True)
        (out / "stages" / "a.json").write_text("{}")
        (out / "config.toml").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "run", interrupted)
    res = runner.invoke(app, ["prune", "--out", str(tmp_path / "c")])
    assert res.exit_code == 130
    assert "widenets prune --config" in res.output and "--resume" in res.output
