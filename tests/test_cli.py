"""The `widenets` command as a user meets it: defaults in --help, a flag or `--set` for every
key, TOML sections, one-line errors (exit 2) before any work, an output folder in use
refused, Ctrl-C (exit 130) saying what was kept and how to resume, no warnings."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import widenets as wn
import widenets.study
from _tiny_study import TINY
from widenets.cli import FLAGS, app
from widenets.study.config import DEFAULTS, KEYS
from widenets.study.store import OutputNotEmpty

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: a study that finishes in a few seconds: one narrow network, four steps
SMALL = dict(TINY, widths=[8], seeds=1, steps=4, linearize=False, sgd_batch_size=0)


def _toml(path: Path, cfg: dict) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(cfg))
    return path


@pytest.fixture
def captured(monkeypatch):
    """Replace the study's run by a recorder: the CLI's resolved config, nothing computed."""
    seen = {}

    def fake_run(cfg, out, **kwargs):
        seen.update(cfg=cfg, out=out, **kwargs)
        return {}

    monkeypatch.setattr(widenets.study, "run", fake_run)
    return seen


def _invoke(args, **kw):
    return runner.invoke(app, args, env={"COLUMNS": "200"}, **kw)


# ------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("command", ["study", "kernel"])
def test_help_shows_every_default(command):
    res = _invoke([command, "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    cmd = get_command(app).commands[command]
    shown = 0
    for p in cmd.params:
        if p.name in ("help", "quiet", "resume", "overwrite", "config", "settings", "ctx"):
            continue
        default = p.default
        if isinstance(default, bool):
            expected = f"[default: {p.name if default else 'no-' + p.name}]"
        elif default in ("", None):
            expected = "[default: (none)]"
        else:
            expected = f"[default: {default}]"
        assert expected in text, (p.name, expected)
        shown += 1
    assert shown >= (20 if command == "study" else 9)


def test_every_flag_is_a_config_key_and_sets_it(captured):
    """Each study flag, given a non-default value, lands in the resolved configuration."""
    assert set(FLAGS) <= set(KEYS)
    values = {
        "arch": "fc", "depth": 3, "activation": "erf", "w_std": 1.3, "b_std": 0.2,
        "data": "digits", "n_train": 300, "n_test": 200, "data_seed": 5, "diag_reg": 0.01,
        "widths": "16,8", "seeds": 3, "steps": 7, "learning_rate": "0.5", "lr_factor": 1.5,
        "sgd_batch_size": 30, "dtype": "float64", "findings": "zca,parameterization",
    }  # fmt: skip
    args = ["study", "--no-center", "--no-linearize"]
    for key, value in values.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    res = _invoke(args)
    assert res.exit_code == 0, res.output
    cfg = captured["cfg"]
    assert set(values) | {"center", "linearize"} == set(FLAGS)
    expected = dict(values, widths=[8, 16], learning_rate=0.5, findings=["zca", "parameterization"])
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    assert cfg.center is False and cfg.linearize is False


def test_precedence_defaults_config_set_flags(tmp_path, captured):
    cfg_file = _toml(tmp_path / "c.toml", {"seeds": 2, "steps": 9, "n_times": 7, "depth": 4})
    res = _invoke(
        ["study", "--config", str(cfg_file), "--set", "steps=11", "--set", "n_times=5"]
        + ["--set", "depth=5", "--depth", "3", "--set", "diag_reg_sweep=[0.0, 0.5]"]
    )
    assert res.exit_code == 0, res.output
    cfg = captured["cfg"]
    assert cfg.seeds == 2  # config file over the default (4)
    assert cfg.steps == 11 and cfg.n_times == 5  # --set over the file
    assert cfg.depth == 3  # a flag over --set
    assert cfg.diag_reg_sweep == [0.0, DEFAULTS["diag_reg"], 0.5]  # TOML value, ridge added
    assert cfg.widths == DEFAULTS["widths"]  # untouched keys keep their defaults


def test_toml_sections_are_read_as_groups(tmp_path, captured):
    text = """
        findings = ["zca"]
        [model]
        depth = 3
        [data]
        name = "digits"
        n_train = 120
        [data_options]
        normalize = false
        [finite]
        sgd_batch_size = 30
    """
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(text))
    res = _invoke(["study", "--config", str(path)])
    assert res.exit_code == 0, res.output
    cfg = captured["cfg"]
    assert (cfg.data, cfg.n_train, cfg.depth, cfg.sgd_batch_size) == ("digits", 120, 3, 30)
    assert cfg.data_options == {"normalize": False} and cfg.findings == ["zca"]
    # `data = ...` inside [data] works as well; a key given twice is an error
    assert (
        wn.study.resolve({"data": {"data": "iris", "n_train": 50}, "sgd_batch_size": 0}).data
        == "iris"
    )
    with pytest.raises(ValueError, match="`n_train` is given twice"):
        wn.study.resolve({"n_train": 50, "data": {"n_train": 60}})


def test_written_config_toml_reads_back_identically(tmp_path):
    """config.toml (written by tomli-w) gives back the same configuration, tables included."""
    from widenets.study.config import load_toml

    cfg = wn.study.resolve(
        dict(TINY, data_options={"normalize": False}, findings=["zca"], learning_rate=0.25)
    )
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert tomllib.loads(path.read_text())["data_options"] == {"normalize": False}
    assert wn.study.resolve(load_toml(path)) == cfg
    assert wn.study.resolve(path).digest() == cfg.digest()


# ------------------------------------------------------------------------------ errors

BAD_TOML = "data = 'digits'\nn_train = [\n"

ERRORS = [
    (["study", "--sed", "3"], r"No such option: --sed.*--seeds"),
    (["study", "--seeds", "abc"], r"'--seeds'.*integer"),
    (["study", "--widths", "64,abc"], r"`widths` must be positive integers.*--widths"),
    (["study", "--data", "nope"], r"unknown dataset .*'nope'.*known.*digits.*--data"),
    (["study", "--set", "widht=3"], r"unknown config key.*'widht'.*did you mean 'widths'"),
    (["study", "--set", "n_times"], r"`--set` takes KEY=VALUE"),
    (["study", "--config", "missing.toml"], r"config file 'missing.toml' does not exist"),
    (["study", "--config", "bad.toml"], r"'bad.toml' is not valid TOML"),
    (["study", "--data", "digits", "--n-train", "50"], r"`sgd_batch_size`.*--sgd-batch-size"),
    (["study", "--data", "digits", "--n-train", "1000"], r"exceeds the 1797.*--n-train, --n-test"),
    (["kernel", "--data", "iris"], r"500 \+ 100 = 600 exceeds the 150.*--n-train, --n-test"),
    (
        ["study", "--arch", "cnn-gap", "--data", "iris", "--n-train", "50", "--n-test", "20"]
        + ["--sgd-batch-size", "0"],
        r"`arch`='cnn-gap' does not fit dataset `data`='iris' \(inputs of shape \(4,\)\).*--arch",
    ),
    (
        ["kernel", "--arch", "myrtle5", "--data", "mnist1d", "--n-train", "20", "--n-test", "5"],
        r"`arch`='myrtle5' does not fit .*'mnist1d'.*2-D window",
    ),
    (["kernel", "--n-train", "20", "--out", "."], r"`--out` '.' is a directory"),
    (["study", "--out", "used"], r"'used' is not empty; add --resume .* --overwrite"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_user_errors_are_one_line_exit_2_before_any_work(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text(BAD_TOML)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = _invoke([*args, "--quiet"] if args[0] == "study" else args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"


def test_user_error_from_the_installed_command_has_no_traceback(tmp_path):
    """The same through a real process (the entry point, stderr as a terminal user sees it)."""
    res = subprocess.run(
        [sys.executable, "-m", "widenets.cli", "kernel", "--data", "iris"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert "--n-train" in res.stderr and not list(tmp_path.iterdir())


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env | extra


# ------------------------------------------------------------------------------ output folder


def test_second_run_into_a_folder_is_refused_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "out"
    wn.study.run(SMALL, out)
    stage_files = sorted(p.name for p in (out / "stages").iterdir())
    assert stage_files
    with pytest.raises(OutputNotEmpty):
        wn.study.run(SMALL, out)
    cfg = _toml(tmp_path / "small.toml", SMALL)
    res = _invoke(["study", "--config", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert sorted(p.name for p in (out / "stages").iterdir()) == stage_files  # kept
    res = _invoke(["study", "--config", str(cfg), "--out", str(out), "--quiet", "--overwrite"])
    assert res.exit_code == 0, res.output
    res = _invoke(["study", "--config", str(cfg), "--out", str(out), "--quiet", "--resume"])
    assert res.exit_code == 0, res.output


def test_failed_stage_says_what_was_kept_and_how_to_resume(tmp_path, monkeypatch):
    from widenets.study import stages

    def boom(*args, **kwargs):
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(stages, "finite_stage", boom)
    out = tmp_path / "out"
    res = _invoke(
        ["study", "--config", str(_toml(tmp_path / "s.toml", SMALL)), "--out", str(out), "-q"]
    )
    assert res.exit_code == 1
    (line,) = res.stderr.splitlines()
    assert "finite/w8/s0" in line and "out of cheese" in line and "2 finished stages" in line
    assert line.endswith(
        f"resume with: widenets study --config {out}/config.toml --out {out} --resume"
    )


# ------------------------------------------------------------------------------ Ctrl-C

INTERRUPT = """
import signal, sys, threading, time
import widenets.study.stages as stages
# Python's own Ctrl-C handler, even if this process inherited SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
real = stages.finite_stage
def finite_stage(*args, **kwargs):
    if args[-2] == 1:  # the second network (seed 1): Ctrl-C, as a real signal, to the main
        # thread (as a terminal's would reach it; sent to the process, another thread of it
        # may take the signal and the sleep below is not cut short)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(5)
    return real(*args, **kwargs)
stages.finite_stage = finite_stage
from widenets.cli import app
app(sys.argv[1:], prog_name="widenets")
"""


def test_ctrl_c_says_what_was_kept_and_the_resume_command_works(tmp_path):
    """SIGINT in the middle of a study: exit 130, one line on stderr (no warnings either: the
    first network has trained, by GD and SGD) naming the kept stages and the command that
    resumes; that command, run as printed, finishes the study reusing the kept stages."""
    cfg = _toml(tmp_path / "s.toml", dict(SMALL, seeds=2, sgd_batch_size=20))
    out = tmp_path / "out dir"
    args = ["study", "--config", str(cfg), "--out", str(out), "--quiet"]
    res = subprocess.run(
        [sys.executable, "-c", INTERRUPT, *args], capture_output=True, text=True, env=_env()
    )
    assert res.returncode == 130, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith("Interrupted: 3 finished stages kept in "), line
    command = line.split("resume with: ")[1]
    words = shlex.split(command)
    assert words[:2] == ["widenets", "study"] and "--resume" in words
    again = _invoke([*words[1:], "--quiet"])
    assert again.exit_code == 0, again.output
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["stages"]["finite/w8/s0"]["status"] == "resumed"
    assert results["stages"]["finite/w8/s1"]["status"] == "done"
