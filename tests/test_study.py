"""`widenets study`: end to end on a tiny config, resume after an interruption, bad input."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from typer.testing import CliRunner

import widenets as wn
from _tiny_study import TINY as _BASE
from widenets.cli import app
from widenets.study import StudyError, stages

TINY = _BASE
TOML = """
data = "digits"
n_train = 60
n_test = 40
seeds = 2
steps = 8
n_checkpoints = 4
n_times = 5
regime_points = 10
sgd_batch_size = 20
diag_reg_sweep = [0.0, 0.01]
"""
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(width, w_std=1.5, b_std=0.05):
    return wn.serial(
        wn.Dense(width, w_std=w_std, b_std=b_std),
        wn.Relu(),
        wn.Dense(width, w_std=w_std, b_std=b_std),
        wn.Relu(),
        wn.Dense(10, w_std=w_std, b_std=b_std),
    )


def _train_by_hand(ds, y, width, seed, lr, steps):
    """The study's recipe written out: centred outputs, loss ||f - y||^2 / (2 y.numel())."""
    model = _net(width).build((64,), seed=seed, dtype=torch.float32)
    x, xt, yf = ds.x_train.float(), ds.x_test.float(), y.float()
    with torch.no_grad():
        f0, f0t = model(x), model(xt)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (((model(x) - f0 - yf) ** 2).sum() / (2 * yf.numel())).backward()
        opt.step()
    with torch.no_grad():
        return (model(xt) - f0t).double()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "tiny.toml").write_text(TOML)
    out = tmp / "out"
    res = runner.invoke(
        app,
        [
            "study",
            "--config",
            str(tmp / "tiny.toml"),
            "--widths",
            "8,32",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    return out


def test_end_to_end_files_present(cli_run):
    out = cli_run
    for name in ("results.json", "runs.csv", "index.html", "config.toml", "config.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    figs = sorted((out / "figures").glob("*.png"))
    assert {f.stem for f in figs} >= {
        "accuracy_vs_width",
        "distance_vs_width",
        "training_curves",
        "regime_vs_width",
        "infinite_width",
        "theory_exponents",
    }
    for f in figs:
        data = f.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f
    rows = list(csv.DictReader((out / "runs.csv").read_text().splitlines()))
    per_net = [r for r in rows if not r["seed"].startswith("ensemble")]
    # widths x seeds x (gd, sgd), plus the linearisation of the first linearize_seeds (default
    # 2, here every seed) at each width
    assert len([r for r in per_net if r["method"] in ("gd", "sgd")]) == 2 * 2 * 2
    assert len([r for r in per_net if r["method"] == "linearized"]) == 2 * 2
    assert {r["method"] for r in per_net} == {"gd", "sgd", "linearized"}


def test_html_references_only_existing_files(cli_run):
    html = (cli_run / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(r.endswith(".png") for r in refs)
    for ref in refs:
        assert (cli_run / ref).is_file(), ref


def test_resolved_config_reruns_exactly(cli_run):
    import tomllib

    cfg = tomllib.loads((cli_run / "config.toml").read_text())
    assert (
        wn.study.resolve(cfg).to_dict()
        == json.loads((cli_run / "results.json").read_text())["config"]
    )
    assert cfg["widths"] == [8, 32] and cfg["data"] == "digits"


def test_json_numbers_equal_python_api(cli_run):
    r = json.loads((cli_run / "results.json").read_text())
    ds = wn.data.load("digits", n_train=60, n_test=40, seed=0)
    y, y_test = ds.targets()
    net = _net(32)
    k, kt = net.kernel(ds.x_train), net.kernel(ds.x_test, ds.x_train)

    mean, _ = wn.predict.gp_inference(k.nngp, y, kt.nngp, diag_reg=1e-4)
    acc = (mean.argmax(1) == ds.y_test).double().mean().item()
    assert r["infinite"]["nngp"]["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert r["infinite"]["nngp"]["mse"] == pytest.approx(((mean - y_test) ** 2).mean().item())

    lam_max = torch.linalg.eigvalsh(k.ntk)[-1].item()
    lr = y.numel() / lam_max
    assert r["kernels"]["learning_rate"] == pytest.approx(lr, rel=1e-10)
    pred = wn.predict.gradient_descent_mse(k.ntk, y, learning_rate=lr, diag_reg=1e-4)
    f_inf = pred(None, kt.ntk)
    assert r["infinite"]["ntk_t_inf"]["mse"] == pytest.approx(((f_inf - y_test) ** 2).mean().item())
    flow = wn.predict.gradient_descent_mse(k.ntk, y, learning_rate=lr)
    f_t = flow(8, kt.ntk)  # the predictor's t counts steps at learning rate lr
    assert r["infinite"]["ntk_at_training_time"]["mse"] == pytest.approx(
        ((f_t - y_test) ** 2).mean().item()
    )

    outs = []
    for seed in range(2):
        f = _train_by_hand(ds, y, 32, seed, lr, 8)
        outs.append(f)
        row = next(x for x in r["finite"] if x["width"] == 32 and x["seed"] == seed)
        assert row["gd"]["mse"] == pytest.approx(((f - y_test) ** 2).mean().item(), rel=1e-5)
        assert row["gd"]["accuracy"] == (f.argmax(1) == ds.y_test).double().mean().item()
        dist = ((f - f_t).norm() / f_t.norm()).item()
        assert row["gd"]["distance_to_infinite"] == pytest.approx(dist, rel=1e-4)
    ens = torch.stack(outs).mean(0)
    e = r["ensembles"]["32"]["gd"]
    assert e["mse"] == pytest.approx(((ens - y_test) ** 2).mean().item(), rel=1e-5)
    assert e["distance_to_infinite"] == pytest.approx(
        ((ens - f_t).norm() / f_t.norm()).item(), rel=1e-4
    )
    s = r["summary"]["32"]["gd"]["mse"]
    assert s["n"] == 2


def _strip(obj):
    """Drop wall-clock times and run bookkeeping, which differ between runs."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ("seconds", "stages", "status")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_resume_after_interruption_gives_same_results(tmp_path, monkeypatch):
    full = wn.study.run(TINY, tmp_path / "full")

    real = stages.finite_stage
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[-2:])
        if len(calls) == 3:  # the third network: simulate Ctrl-C in the middle of the study
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "finite_stage", interrupted)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        wn.study.run(TINY, out)
    done = sorted(p.name for p in (out / "stages").glob("*.json"))
    assert done == ["finite__w8__s0.json", "finite__w8__s1.json", "infinite.json", "kernels.json"]
    partial = json.loads((out / "results.json").read_text())  # readable partial report
    assert partial["status"].startswith("failed in stage 'finite/w32/s0'")
    assert not list(out.rglob("*.tmp"))

    calls.clear()
    monkeypatch.setattr(
        stages, "finite_stage", lambda *a, **k: (calls.append(a[-2:]), real(*a, **k))[1]
    )
    res = runner.invoke(
        app, ["study", "--config", str(_toml(tmp_path)), "--out", str(out), "--resume", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    assert len(calls) == 2  # only the two unfinished networks ran
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["stages"]["kernels"]["status"] == "resumed"
    assert _strip(resumed) == _strip(json.loads(json.dumps(full)))
    assert not (out / "status.json").exists()


def _toml(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TOML + "widths = [8, 32]\n")
    return p


def test_failing_stage_is_named_and_finished_output_stays(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(stages, "finite_stage", boom)
    with pytest.raises(StudyError, match=r"stage 'finite/w8/s0' failed: RuntimeError: out of"):
        wn.study.run(TINY, tmp_path / "a")
    status = json.loads((tmp_path / "a" / "status.json").read_text())
    assert status["failed_stage"] == "finite/w8/s0"
    partial = json.loads((tmp_path / "a" / "results.json").read_text())
    assert partial["infinite"]["nngp"]["accuracy"] > 0.5
    res = runner.invoke(
        app, ["study", "--config", str(_toml(tmp_path)), "--out", str(tmp_path / "b"), "--quiet"]
    )
    assert res.exit_code == 1
    assert "finite/w8/s0" in res.output and "out of cheese" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "nope"], r"unknown architecture .*'nope'.*known: \[.*'fc'"),
        (["--data", "nope"], r"unknown dataset .*'nope'.*known: \[.*'mnist5k'.*'digits'"),
        (["--widths", "64,-3"], r"`widths` must be positive integers"),
        (["--widths", "64,abc"], r"`widths` must be positive integers"),
        (["--widths", "0"], r"`widths` must be positive integers"),
        (["--seeds", "0"], r"`seeds` must be a positive integer"),
    ],
)
def test_bad_command_line_fails_before_work(tmp_path, args, message):
    out = tmp_path / "never"
    res = runner.invoke(app, ["study", "--out", str(out), "--quiet", *args])
    assert res.exit_code == 2, res.output
    assert re.search(message, res.output.replace("\n", " ")), res.output
    assert not out.exists()


def test_unknown_config_key_and_unwritable_out(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('data = "digits"\nwidht = [64]\n')
    out = tmp_path / "never"
    res = runner.invoke(app, ["study", "--config", str(bad), "--out", str(out)])
    assert res.exit_code == 2
    assert "unknown config key(s) ['widht']" in res.output and "widths" in res.output
    assert not out.exists()
    with pytest.raises(ValueError, match="unknown config key"):
        wn.study.run({"depht": 3}, tmp_path / "never")

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    res = runner.invoke(app, ["study", "--out", str(blocker / "sub"), "--quiet"])
    assert res.exit_code == 2
    assert "not writable" in res.output
    with pytest.raises(ValueError, match="`out`=.* is not writable"):
        wn.study.run(TINY, blocker / "sub")
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        wn.study.run({**TINY, "steps": 2.5}, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_kernel_and_info_commands(tmp_path):
    out = tmp_path / "k.pt"
    res = runner.invoke(
        app,
        [
            "kernel",
            "--data",
            "digits",
            "--n-train",
            "20",
            "--n-test",
            "10",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    saved = torch.load(out, weights_only=True)
    ds = wn.data.load("digits", n_train=20, n_test=10, seed=0)
    k = _net(64).kernel(ds.x_test, ds.x_train)
    torch.testing.assert_close(saved["ntk_test"], k.ntk)
    assert json.loads(out.with_suffix(".json").read_text())["config"]["data"] == "digits"
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0 and "torch" in res.output and "mnist5k" in res.output


def test_diverging_training_is_detected_and_named(tmp_path):
    """A learning rate far above 2n / lambda_max makes gradient descent blow up: the stage
    fails with the reason instead of filling the report with inf/NaN."""
    with pytest.raises(StudyError, match=r"stage 'finite/w8/s0' failed: .*diverged at step"):
        wn.study.run(dict(TINY, learning_rate=1e4), tmp_path / "out")
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert "diverged" in json.dumps(status)


def _linear_gd(k, kt, y, lr, steps, f0=None, f0t=None):
    """Discrete gradient descent of the linear model with kernel k (the infinite-width
    network): f <- f - lr k (f - y) / n on the training set, the test outputs following
    through kt; the outputs at every step 0..steps."""
    n = y.numel()
    f = torch.zeros_like(y) if f0 is None else f0.clone()
    ft = torch.zeros(kt.shape[0], y.shape[1], dtype=y.dtype) if f0t is None else f0t.clone()
    outs = [ft.clone()]
    for _ in range(steps):
        r = f - y
        f, ft = f - lr * k @ r / n, ft - lr * kt @ r / n
        outs.append(ft.clone())
    return outs


def test_infinite_reference_is_discrete_gradient_descent_at_the_training_time():
    """S steps of gradient descent at the study's learning rate on the linear model with
    the analytic NTK reach the study's infinite-width reference at every checkpoint (the
    learning rate counted twice put it about 3x further along the flow: distance ~0.2)."""
    cfg = wn.study.resolve({**TINY, "steps": 60, "n_checkpoints": 6})
    ds, y, y_test = stages.data_and_targets(cfg)
    res, K = stages.kernels_stage(cfg, ds, y, progress=False)
    lr = res["learning_rate"]
    inf, inf_t = stages.infinite_stage(cfg, ds, y, y_test, K, lr)
    outs = _linear_gd(K["ntk"], K["ntk_test"], y, lr, cfg.steps)
    steps = stages.checkpoint_steps(cfg)
    assert steps[-1] == cfg.steps and len(steps) >= 4
    dist = stages.rel_distance(outs[cfg.steps], inf_t["checkpoint_test"][-1])
    assert dist < 1e-2, dist
    for k, step in enumerate(steps):
        assert inf["checkpoints"][k]["time"] == pytest.approx(lr * step)
    # the time mapping is not trivially satisfied: the reference moves along the flow
    assert stages.rel_distance(outs[steps[1]], inf_t["checkpoint_test"][-1]) > 0.05
    assert inf["ntk_at_training_time"]["time"] == pytest.approx(res["training_time"])
    assert res["training_time"] == pytest.approx(lr * cfg.steps)


def test_own_closed_form_is_discrete_gradient_descent_from_the_networks_f0():
    """center = false: the network's own closed form starts from its f(0) and, at the
    training time, equals discrete gradient descent of the linear model from that f(0)."""
    cfg = wn.study.resolve({**TINY, "steps": 40, "center": False, "linearize": False})
    ds, y, y_test = stages.data_and_targets(cfg)
    res, K = stages.kernels_stage(cfg, ds, y, progress=False)
    lr = res["learning_rate"]
    _, inf_t = stages.infinite_stage(cfg, ds, y, y_test, K, lr)
    out, tens = stages.finite_stage(cfg, ds, y, y_test, K, inf_t, lr, 512, 0)
    model = _net(512).build((64,), seed=0, dtype=torch.float32)
    with torch.no_grad():
        f0, f0t = model(ds.x_train.float()).double(), model(ds.x_test.float()).double()
    assert f0.norm() > 0.1 * y.norm()  # f(0) matters
    outs = _linear_gd(K["ntk"], K["ntk_test"], y, lr, cfg.steps, f0, f0t)
    direct = stages.rel_distance(tens["gd_test"], outs[cfg.steps])
    assert abs(out["gd"]["distance_to_own_closed_form"] - direct) < 1e-2
    own = tens["own_reference_test"]
    assert stages.rel_distance(outs[cfg.steps], own[-1]) < 1e-2
    # and the recorded distance is against that reference
    f_gd = tens["gd_test"]
    assert out["gd"]["distance_to_own_closed_form"] == pytest.approx(
        stages.rel_distance(f_gd, own[-1]), rel=1e-6
    )


def test_kernel_command_out_a_directory_is_a_one_line_error(tmp_path):
    res = runner.invoke(
        app, ["kernel", "--data", "digits", "--n-train", "10", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2
    assert "`--out`" in res.output and "is a directory" in res.output
    assert "Traceback" not in res.output and not list(tmp_path.iterdir())


def _tamper_kernels_times_four(stages_dir):
    pt = stages_dir / "kernels.pt"
    t = torch.load(pt, weights_only=True)
    torch.save({k: 4 * v for k, v in t.items()}, pt)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("tampered tensors", "does not match its checksum"),
        ("truncated json", "truncated, corrupted"),
        ("empty json", "truncated, corrupted"),
        ("edited json", "does not match its checksum"),
        ("missing tensors", "tensor file kernels.pt is missing"),
        ("other config", "another configuration"),
    ],
)
def test_resume_verifies_stage_files_and_recomputes_bad_ones(tmp_path, damage, reason):
    """Every stage file carries checksums of its content, its tensors, its configuration and
    the stages it used; --resume recomputes a stage whose file fails a check, says so, and
    gives the numbers of a clean run (a kernels file times 4 used to make the report)."""
    small = dict(TINY, widths=[8], seeds=1, linearize=False, sgd_batch_size=0)
    out = tmp_path / "out"
    clean = wn.study.run(small, out)
    js = out / "stages" / "kernels.json"
    if damage == "tampered tensors":
        _tamper_kernels_times_four(out / "stages")
    elif damage == "truncated json":
        js.write_text(js.read_text()[:100])
    elif damage == "empty json":
        js.write_text("")
    elif damage == "edited json":
        js.write_text(js.read_text().replace('"learning_rate": ', '"learning_rate": 2'))
    elif damage == "missing tensors":
        (out / "stages" / "kernels.pt").unlink()
    elif damage == "other config":
        from widenets.study.store import _canonical, _sha256

        record = json.loads(js.read_text())
        record.pop("checksum")
        record["config_digest"] = "0" * 16  # a valid file of another configuration
        js.write_text(json.dumps({"checksum": _sha256(_canonical(record)), **record}))
    res = runner.invoke(
        app, ["study", "--config", str(_toml_small(tmp_path)), "--out", str(out), "--resume"]
    )
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    said = " ".join(res.output.split())
    assert "stage 'kernels' recomputed" in said and reason in said
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["stages"]["kernels"]["status"] == "done"
    assert resumed["stages"]["infinite"]["status"] == "resumed"  # same kernels: still valid
    assert any(reason in n for n in resumed["notes"])
    assert _strip(resumed)["kernels"] == _strip(json.loads(json.dumps(clean)))["kernels"]
    assert resumed["finite"] == json.loads(json.dumps(clean))["finite"]
    # and the recomputed stage verifies on the next resume
    again = wn.study.run(small, out, resume=True)
    assert again["stages"]["kernels"]["status"] == "resumed"


def _toml_small(tmp_path):
    p = tmp_path / "small.toml"
    p.write_text(
        TOML.replace("seeds = 2", "seeds = 1").replace("sgd_batch_size = 20", "sgd_batch_size = 0")
        + "widths = [8]\nlinearize = false\n"
    )
    return p


def test_resume_recomputes_stages_that_used_a_changed_stage(tmp_path):
    """A stage is reused only with the very stages it was computed from: a different
    (though valid) infinite stage makes every network stage recompute."""
    small = dict(TINY, widths=[8], seeds=1, linearize=False, sgd_batch_size=0)
    out = tmp_path / "out"
    wn.study.run(small, out)
    js = out / "stages" / "infinite.json"
    record = json.loads(js.read_text())
    record["result"]["diag_reg"] = 0.5  # a valid file, checksummed anew, with other content
    record.pop("checksum")
    from widenets.study.store import _canonical, _sha256

    js.write_text(json.dumps({"checksum": _sha256(_canonical(record)), **record}))
    again = wn.study.run(small, out, resume=True)
    assert again["stages"]["kernels"]["status"] == "resumed"
    assert again["stages"]["infinite"]["status"] == "resumed"
    assert again["stages"]["finite/w8/s0"]["status"] == "done"
    assert any("another version of stage 'infinite'" in n for n in again["notes"])
