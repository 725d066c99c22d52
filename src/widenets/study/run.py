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
from widenets.study.store import (
    StageStore,
    StaleStage,
    atomic_json,
    atomic_write,
    check_output,
)


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
    """One tqdm bar per stage over its training steps (on stderr), or nothing when quiet.

    tqdm, as for the kernels' tile bars (:mod:`widenets.compute`), so a study draws one
    kind of bar; rich is used only for the summary tables.
    """

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close()

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def stage(self, name: str, total: int | None):
        self._close()
        if self.quiet:
            return lambda n: None
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total or 1, desc=name, unit="step", leave=True)
        return self._bar.update

    def say(self, text: str) -> None:
        """A line above the bars."""
        self._close()
        if not self.quiet:
            from tqdm.auto import tqdm

            tqdm.write(text)

    def finish(self):
        if self._bar is not None:
            self._bar.n = self._bar.total
            self._close()


def fit_error(cfg: StudyConfig, ds) -> str | None:
    """Why the architecture cannot run on the dataset's inputs, or None if it can.

    Computes the infinite-width kernel of two training inputs and builds the narrowest
    network and runs it on them: a shape mismatch shows here, before any real work.
    """
    from widenets.study.architectures import build_description

    x = ds.x_train[:2]
    try:
        net = build_description(cfg, min(cfg.widths), stages.out_dim(ds))
        net.kernel(x, get="nngp", progress=False)
        with torch.no_grad():
            net.build(ds.input_shape, seed=0, dtype=getattr(torch, cfg.dtype))(
                x.to(getattr(torch, cfg.dtype))
            )
    except (ValueError, TypeError, RuntimeError, IndexError) as err:
        return " ".join(str(err).split())
    return None


def prepare(cfg: StudyConfig):
    """The dataset and its targets (:func:`stages.data_and_targets`), after checking that
    the architecture fits its inputs; ValueError naming the keys otherwise."""
    try:
        ds, y, y_test = stages.data_and_targets(cfg)
    except TypeError as err:  # an option the dataset's loader does not take
        raise ValueError(
            f"dataset `data`={cfg.data!r} cannot be loaded with these settings: {err}"
        ) from None
    why = fit_error(cfg, ds)
    if why is not None:
        raise ValueError(
            f"architecture `arch`={cfg.arch!r} does not fit dataset `data`={cfg.data!r} "
            f"(inputs of shape {tuple(ds.input_shape)}): {why.rstrip('.')}. Choose another "
            "`arch` or `data`."
        )
    return ds, y, y_test


def run(
    config: StudyConfig | dict | str | Path | None = None,
    out: str | Path = "runs/study",
    *,
    resume: bool = False,
    overwrite: bool = False,
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
        overwrite: replace the results in a non-empty ``out`` (refused without it or
            ``resume``, see :func:`store.check_output`).
        quiet: no progress bars or tables.

    Returns:
        The content of ``results.json`` as a dict.

    Raises:
        ValueError / TypeError: bad configuration, an architecture that does not fit the
            dataset, or an output folder that is not writable or not empty (before any work).
        StudyError: a stage failed (finished stages stay on disk, readable).
    """
    cfg = resolve(config, **overrides)
    ds, y, y_test = prepare(cfg)
    out = check_output(out, resume=resume, overwrite=overwrite)
    store = StageStore(out, cfg.digest(), resume)
    atomic_json(out / "config.json", cfg.to_dict())
    atomic_write(out / "config.toml", cfg.to_toml())
    results = {
        "status": "running",
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "versions": versions(),
        "stages": {},
        "notes": [],
    }
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

    with _Progress(quiet) as progress:

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
                    progress.say(f"{name}: resumed")
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

        def per_net(seed):  # training runs of one network: GD, SGD, the linearisation
            lin = cfg.linearize and seed < cfg.linearize_seeds
            return cfg.steps * (1 + bool(cfg.sgd_batch_size) + lin)

        for width in cfg.widths:
            for seed in range(cfg.seeds):
                res, tens = stage(
                    f"finite/w{width}/s{seed}",
                    lambda tick, w=width, s=seed: stages.finite_stage(
                        cfg, ds, y, y_test, K, inf_t, lr, w, s, tick
                    ),
                    total=per_net(seed),
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
