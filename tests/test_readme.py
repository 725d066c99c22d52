"""Every command and snippet of the README runs as written (at reduced size where it must).

Each fenced ```bash block is split into commands (one a line, `#` comments dropped) and each
```python block is one snippet; a ```toml block whose first line is ``# NAME.toml`` is the
file NAME.toml the commands use, written into the folder they run in (a fresh temporary
folder holding a copy of ``examples/``). Every block is found anew from the README, so a
snippet added later is tested without editing this file.

How sizes are reduced (the commands and snippets otherwise run exactly as printed):

- ``widenets study`` commands get :data:`STUDY_SMALL` appended: two narrow widths, two seeds,
  four steps (flags given last win, so they replace the README's own ``--widths`` and
  ``--seeds``; the data sizes stay as written, so a README size beyond its dataset fails).
- ``widenets scale`` commands get :data:`SCALE_SMALL` appended (N = 40 and 80 on a test set
  of 100, one hidden layer, both solvers).
- ``widenets prune`` commands get :data:`PRUNE_SMALL` appended (the small CNN alone, one
  seed, two densities, a few hundred examples, one epoch).
- Python snippets have the texts of :data:`SNIPPET_SMALL` replaced (fewer examples and Monte
  Carlo samples); each text must occur in the README, so a reduction never silently stops.
- :data:`SKIP` lists the commands that are not run, with the reason; ``make demo`` is run as
  the command its Makefile recipe runs, reduced like any study.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

STUDY_SMALL = [
    "--widths", "8,16", "--seeds", "2", "--steps", "4",
    "--set", "n_checkpoints=3", "--set", "n_times=3", "--set", "regime_points=10",
    "--set", "linearize_seeds=1", "--set", "zca_regularizers=[0.0, 1.0]",
    "--set", "lr_factors=[1.0, 3.0]", "--set", "l2_values=[1e-3]",
]  # fmt: skip
#: appended to ``widenets scale`` commands: tiny sizes, both solvers
SCALE_SMALL = ["--n", "40,80", "--n-test", "100", "--depth", "1", "--dense-max", "40"]
PRUNE_SMALL = [
    "--archs", "small_cnn", "--seeds", "1", "--densities", "1,0.1", "--epochs", "1",
    "--set", "n_train=200", "--set", "n_test=50", "--set", "score_examples=50",
    "--set", "synflow_iterations=2", "--set", "kernel_points=3",
]  # fmt: skip
SNIPPET_SMALL = {
    "n_train=4000, n_test=1000": "n_train=200, n_test=50",
    "n_samples=64": "n_samples=4",
    "n=[500, 1000], n_test=1000": "n=[40, 80], n_test=100, depth=1, dense_max=40",
}
#: commands not run (a command starting with a key is skipped), with the reason
SKIP = {
    "make test": "runs this test suite (it would run itself)",
    "widenets scale --scheduler": "needs a running Dask scheduler at the address shown "
    "(the Python snippet runs the same path on a LocalCluster)",
    "python bench/": "benchmarks (minutes each; the nt_* methods need Neural Tangents in its "
    "own environment, bench/_nt.py); their output is the README's tables",
}


def _skipped(command: str) -> str | None:
    return next((why for start, why in SKIP.items() if command.startswith(start)), None)


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def _commands() -> list[str]:
    out = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(" ".join(shlex.quote(w) for w in words))
    return out


def _makefile_recipe(target: str) -> list[str]:
    """The commands of a Makefile target, with $(BIN)/ (the venv's bin) dropped."""
    text = (ROOT / "Makefile").read_text()
    body = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, flags=re.M).group(1)
    return [line.strip().replace("$(BIN)/", "") for line in body.splitlines()]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "120"
    return env


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for block in _blocks("toml"):
        first = block.splitlines()[0]
        m = re.fullmatch(r"#\s*(\S+\.toml)\s*", first)
        if m:
            (tmp_path / m.group(1)).write_text(block)
    return tmp_path


def _run_widenets(words: list[str], cwd: Path):
    assert words[0] == "widenets", words
    args = words[1:]
    if args[:1] == ["study"] and "--help" not in args:
        args = [*args, *STUDY_SMALL, "--quiet"]
    if args[:1] == ["scale"] and "--help" not in args:
        args = [*args, *SCALE_SMALL, "--quiet"]
    if args[:1] == ["prune"] and "--help" not in args:
        args = [*args, *PRUNE_SMALL, "--quiet"]
    cmd = [sys.executable, "-m", "widenets.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


def test_readme_has_blocks_and_reductions_apply():
    assert len(_commands()) >= 5 and len(_blocks("python")) >= 2
    for text in SNIPPET_SMALL:
        assert text in README, f"the reduction {text!r} no longer matches the README"
    for start in SKIP:
        assert any(c.startswith(start) for c in _commands()), f"skip entry {start!r} unused"


@pytest.mark.slow
@pytest.mark.parametrize("command", _commands())
def test_readme_command_runs(command, workdir):
    if _skipped(command):
        pytest.skip(_skipped(command))
    words = shlex.split(command)
    if words[:2] == ["make", "demo"]:
        (recipe,) = _makefile_recipe("demo")
        words = shlex.split(recipe)
    res = _run_widenets(words, workdir)
    assert res.returncode == 0, f"{command}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr, res.stderr
    if ("study" in words or "scale" in words or "prune" in words) and "--help" not in words:
        out = workdir / words[words.index("--out") + 1]
        assert (out / "index.html").is_file() and (out / "results.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_snippet_runs(index, workdir):
    code = _blocks("python")[index]
    for text, small in SNIPPET_SMALL.items():
        code = code.replace(text, small)
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, f"snippet {index}:\n{code}\n{res.stderr}"


def _study_commands() -> list[str]:
    return [c for c in _commands() if shlex.split(c)[:2] == ["widenets", "study"]]


@pytest.mark.parametrize("command", _study_commands())
def test_readme_study_command_is_valid_as_written(command, workdir, monkeypatch):
    """Fast check of each README study command as printed (no reduction): its flags parse,
    its configuration resolves, its sizes fit the dataset and its architecture the inputs
    (the checks a run makes before any work); the run itself is the slow test above."""
    from typer.testing import CliRunner

    import widenets.study
    from widenets.cli import app
    from widenets.study.run import prepare

    checked = []
    monkeypatch.setattr(widenets.study, "run", lambda cfg, out, **kw: checked.append(prepare(cfg)))
    monkeypatch.chdir(workdir)
    res = CliRunner().invoke(app, shlex.split(command)[1:])
    assert res.exit_code == 0, f"{command}\n{res.output}"
    assert len(checked) == ("--help" not in command)


def _scale_commands() -> list[str]:
    return [
        c for c in _commands() if shlex.split(c)[:2] == ["widenets", "scale"] and not _skipped(c)
    ]


@pytest.mark.parametrize("command", _scale_commands())
def test_readme_scale_command_is_valid_as_written(command, workdir, monkeypatch):
    """Fast check of each README scale command as printed: its flags parse and its
    configuration resolves (the run itself is the slow test above)."""
    from typer.testing import CliRunner

    import widenets.scale
    from widenets.cli import app

    checked = []
    monkeypatch.setattr(widenets.scale, "run", lambda cfg, out, **kw: checked.append(cfg))
    monkeypatch.chdir(workdir)
    res = CliRunner().invoke(app, shlex.split(command)[1:])
    assert res.exit_code == 0, f"{command}\n{res.output}"
    assert len(checked) == ("--help" not in command)


def _prune_commands() -> list[str]:
    return [c for c in _commands() if shlex.split(c)[:2] == ["widenets", "prune"]]


def test_readme_has_a_prune_command():
    assert _prune_commands()


@pytest.mark.parametrize("command", _prune_commands())
def test_readme_prune_command_is_valid_as_written(command, workdir, monkeypatch):
    """Fast check of each README prune command as printed: its flags parse and its
    configuration resolves (the run itself is the slow test above)."""
    from typer.testing import CliRunner

    import widenets.prune.study
    from widenets.cli import app

    checked = []
    monkeypatch.setattr(widenets.prune.study, "run", lambda cfg, out, **kw: checked.append(cfg))
    monkeypatch.chdir(workdir)
    res = CliRunner().invoke(app, shlex.split(command)[1:])
    assert res.exit_code == 0, f"{command}\n{res.output}"
    assert len(checked) == ("--help" not in command)
