"""Running a study: stages in order, each saved as it finishes, then the report.

Stages: ``kernels`` (infinite-width kernels), ``infinite`` (closed-form predictions), one
``finite/w<width>/s<seed>`` per network, then ``report`` (always rebuilt from the finished
stages). With ``resume=True`` finished stages of the same configuration are loaded, not
recomputed. A failing stage raises :class:`StudyError` naming it, after writing
``status.json`` and a partial report of what finished.
"""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path

import numpy as np
import torch

import widenets as wn
from widenets.study import findings, report, stages, theory_checks
from widenets.study.config import StudyConfig, resolve
from widenets.study.store import StageStore, StaleStage, atomic_json, check_writable


class StudyError(RuntimeError):
    """A stage of a study failed; ``stage`` names it."""

    def __init__(self, stage: str, err: BaseException):
        self.stage = stage
        super().__init__(f"stage {stage!r} failed: {type(err).__name__}: {err}")


def versions() -> dict:
    return {
        "widenets": wn.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


class _Progress:
    """A rich progress bar over training steps, or nothing when quiet."""

    def __init__(self, quiet: bool, console=None):
        self.quiet = quiet
        self.console = console
        self._bar = None
        self._task = None

    def __enter__(self):
        if not self.quiet:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def stage(self, name: str, total: int | None):
        if self._bar is None:
            return lambda n: None
        self._task = self._bar.add_task(name, total=total or 1)
        return lambda n: self._bar.advance(self._task, n)

    def say(self, text: str) -> None:
        """A line above the bars (or on the console when there are none)."""
        if self._bar is not None:
            self._bar.console.print(text, markup=False)

    def finish(self, note: str = ""):
        if self._bar is not None and self._task is not None:
            task = self._bar.tasks[-1]
            self._bar.update(self._task, completed=task.total, description=task.description + note)


def run(
    config: StudyConfig | dict | str | Path | None = None,
    out: str | Path = "runs/study",
    *,
    resume: bool = False,
    quiet: bool = True,
    console=None,
    **overrides,
) -> dict:
    """Run the finite-versus-infinite-width study and write its report into ``out``.

    Args:
        config: a :class:`StudyConfig`, a dict of config keys, a TOML path, or None for
            the defaults; ``overrides`` (config keys) take precedence.
        out: output folder (created); receives ``config.toml``, ``results.json``,
            ``runs.csv``, ``figures/*.png``, ``index.html`` and ``stages/``.
        resume: reuse the finished stages found in ``out`` (same configuration only).
        quiet: no progress bars or tables.

    Returns:
        The content of ``results.json`` as a dict.

    Raises:
        ValueError / TypeError: bad configuration or output folder (before any work).
        StudyError: a stage failed (finished stages stay on disk, readable).
    """
    cfg = resolve(config, **overrides)
    out = check_writable(out)
    store = StageStore(out, cfg.digest(), resume)
    atomic_json(out / "config.json", cfg.to_dict())
    from widenets.study.store import atomic_write

    atomic_write(out / "config.toml", cfg.to_toml())
    results = {
        "status": "running",
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "versions": versions(),
        "stages": {},
        "notes": [],
    }
    ds, y, y_test = stages.data_and_targets(cfg)
    results["dataset"] = {
        "name": ds.name,
        "task": ds.task,
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "input_shape": list(ds.input_shape),
        "n_classes": ds.n_classes,
        "source": ds.source,
    }
    tensors: dict = {}

    with _Progress(quiet, console) as progress:

        def stage(name, fn, total=None, depends=()):
            t0 = time.perf_counter()
            recomputed = None
            if resume:
                try:
                    res, tens = store.load(name, depends)
                except StaleStage as why:
                    if store.has_file(name):
                        recomputed = f"--resume: stage {name!r} recomputed: {why}."
                        results["notes"].append(recomputed)
                        if not quiet:
                            progress.say(recomputed)
                else:
                    progress.stage(name, total)
                    progress.finish(" (resumed)")
                    results["stages"][name] = {"status": "resumed", "seconds": 0.0}
                    return res, tens
            tick = progress.stage(name, total)
            try:
                res, tens = fn(tick)
            except Exception as err:
                results["stages"][name] = {"status": "failed", "error": f"{err!r}"}
                _fail(out, results, name, err)
                raise StudyError(name, err) from err
            except KeyboardInterrupt:
                results["stages"][name] = {"status": "interrupted"}
                _fail(out, results, name, KeyboardInterrupt("interrupted"))
                raise
            store.save(name, res, tens, depends)
            progress.finish()
            results["stages"][name] = {"status": "done", "seconds": time.perf_counter() - t0}
            if recomputed:
                results["stages"][name]["recomputed"] = recomputed
            return res, tens

        res, K = stage(
            "kernels", lambda tick: stages.kernels_stage(cfg, ds, y, False if quiet else None)
        )
        results["kernels"] = res
        lr = res["learning_rate"]
        res, inf_t = stage(
            "infinite",
            lambda tick: stages.infinite_stage(cfg, ds, y, y_test, K, lr),
            depends=("kernels",),
        )
        results["infinite"] = res
        tensors["infinite"] = inf_t
        finite = {}
        results["finite"] = []
        per_net = cfg.steps * (2 if cfg.sgd_batch_size else 1)
        for width in cfg.widths:
            for seed in range(cfg.seeds):
                res, tens = stage(
                    f"finite/w{width}/s{seed}",
                    lambda tick, w=width, s=seed: stages.finite_stage(
                        cfg, ds, y, y_test, K, inf_t, lr, w, s, tick
                    ),
                    total=per_net,
                    depends=("kernels", "infinite"),
                )
                finite[(width, seed)] = (res, tens)
                results["finite"].append(res)
        results["ensembles"] = {
            str(w): v for w, v in stages.ensemble_summary(finite, inf_t, ds, y_test).items()
        }
        results["ensemble_scaling"] = stages.ensemble_scaling(finite, inf_t)
        results["findings"] = {}
        for name in cfg.findings:
            res, _ = stage(
                f"finding/{name}",
                lambda tick, n=name: findings.run(n, cfg, ds, y, y_test, K, lr, tick),
                total=findings.total_steps(name, cfg),
                depends=("kernels",),
            )
            results["findings"][name] = res
    results["theory"] = theory_checks.evaluate(results)
    results["notes"] = results["notes"] + _notes(cfg, results)
    results["summary"] = report.summarize(results)
    results["status"] = "complete"
    report.write(out, results)
    if not quiet:
        report.print_summary(results, console)
    return results


def _notes(cfg, results) -> list[str]:
    notes = []
    lin = [r.get("linearized", {}) for r in results.get("finite", [])]
    skipped = {x["skipped"] for x in lin if "skipped" in x}
    if not cfg.linearize:
        notes.append("Linearised networks: not requested (linearize = false).")
    elif skipped:
        notes.append("Linearised networks left out: " + "; ".join(sorted(skipped)) + ".")
    sources = {r["regime"]["source"] for r in results.get("finite", []) if "regime" in r}
    notes += [f"Regime measures: {s}." for s in sorted(sources)]
    return notes


def _fail(out: Path, results: dict, name: str, err: BaseException) -> None:
    """Record the failure and write a partial report of what finished (best effort)."""
    results["status"] = f"failed in stage {name!r}: {type(err).__name__}: {err}"
    atomic_json(out / "status.json", {"failed_stage": name, "error": repr(err)})
    with contextlib.suppress(Exception):
        results["summary"] = report.summarize(results)
        report.write(out, results)
