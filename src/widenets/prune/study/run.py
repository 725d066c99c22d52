"""Running the pruning study: stages in order, each saved as it finishes, then the report.

Per architecture and seed: ``<arch>/s<seed>/dense``, one ``<arch>/s<seed>/<method>`` per
pruning-at-initialisation method, and ``<arch>/s<seed>/imp`` (IMP and its reinitialised
baseline). Stages are stored, checksummed and resumed by the finite-width study's
:class:`widenets.study.store.StageStore`; a failing stage raises
:class:`widenets.study.run.StudyError` naming it, after writing a partial report.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from widenets.prune.study import report, stages
from widenets.prune.study.config import PruneConfig, resolve
from widenets.prune.study.networks import load_data
from widenets.study.run import StudyError, _Progress, versions
from widenets.study.store import StageStore, StaleStage, atomic_json, atomic_write, check_output

ONE_SHOT = ("random", "erk", "magnitude", "snip", "grasp", "synflow")


def plan(cfg: PruneConfig) -> list[tuple[str, str, int, str]]:
    """(stage name, kind, seed, method) in the order they run, per architecture."""
    out = []
    for arch in cfg.archs:
        for seed in range(cfg.seeds):
            out.append((f"{arch}/s{seed}/dense", "dense", seed, "dense"))
            for m in ONE_SHOT:
                if m in cfg.methods:
                    out.append((f"{arch}/s{seed}/{m}", "method", seed, m))
            if "imp" in cfg.methods:
                out.append((f"{arch}/s{seed}/imp", "imp", seed, "imp"))
    return out


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(
    config: PruneConfig | dict | str | Path | None = None,
    out: str | Path = "runs/prune",
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    console=None,
    **overrides,
) -> dict:
    """Run the pruning study and write its report into ``out``.

    Args:
        config: a :class:`PruneConfig`, a dict of config keys, a TOML path, or None (the
            defaults); ``overrides`` (config keys) take precedence.
        out: output folder: ``config.toml``, ``results.json``, ``runs.csv``,
            ``figures/*``, ``index.html`` and ``stages/``.
        resume: reuse the finished stages in ``out`` (same configuration only).
        overwrite: replace the results in a non-empty ``out``.
        quiet: no progress bars or tables.

    Returns:
        The content of ``results.json``.

    Raises:
        ValueError / TypeError: bad configuration or output folder (before any work).
        StudyError: a stage failed (finished stages stay on disk).
    """
    cfg = resolve(config, **overrides)
    data = load_data(cfg)
    out = check_output(out, resume=resume, overwrite=overwrite)
    store = StageStore(out, cfg.digest(), resume)
    atomic_json(out / "config.json", cfg.to_dict())
    atomic_write(out / "config.toml", cfg.to_toml())
    results = {
        "status": "running",
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "versions": versions(),
        "dataset": {"source": data["source"], "n_train": cfg.n_train, "n_test": cfg.n_test},
        "stages": {},
        "notes": [],
        "rows": [],
    }
    totals = stages.stage_trainings(cfg)
    t_start = time.perf_counter()
    with _threads(cfg.threads), _Progress(quiet) as progress:

        def stage(name, fn, total, depends=()):
            t0 = time.perf_counter()
            if resume:
                try:
                    res, tens = store.load(name, depends)
                except StaleStage as why:
                    if store.has_file(name):
                        note = f"--resume: stage {name!r} recomputed: {why}."
                        results["notes"].append(note)
                        progress.say(note)
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
            return res, tens

        k_dense = {}
        for name, kind, seed, method in plan(cfg):
            arch = name.split("/")[0]
            dense = f"{arch}/s{seed}/dense"
            if kind == "dense":
                res, tens = stage(
                    name, lambda t, a=arch, s=seed: stages.dense_stage(cfg, data, a, s, t), 1
                )
                k_dense[(arch, seed)] = tens["ntk_init"]
            elif kind == "method":
                k = k_dense[(arch, seed)]
                res, _ = stage(
                    name,
                    lambda t, a=arch, s=seed, m=method, k=k: stages.method_stage(
                        cfg, data, a, s, m, k, t
                    ),
                    totals["method"],
                    depends=(dense,),
                )
            else:
                k = k_dense[(arch, seed)]
                res, _ = stage(
                    name,
                    lambda t, a=arch, s=seed, k=k: stages.imp_stage(cfg, data, a, s, k, t),
                    totals["imp"],
                    depends=(dense,),
                )
            results["rows"].extend(res["rows"])
            _partial(out, results)
    results["seconds"] = time.perf_counter() - t_start
    results["status"] = "complete"
    report.write(out, results)
    if not quiet:
        report.print_summary(results, console)
    return results


def _partial(out: Path, results: dict) -> None:
    """results.json after each stage (the report is written once, at the end)."""
    atomic_json(out / "results.json", results)


def _fail(out: Path, results: dict, name: str, err: BaseException) -> None:
    """Record the failure and write a partial report of what finished (best effort)."""
    results["status"] = f"failed in stage {name!r}: {type(err).__name__}: {err}"
    atomic_json(out / "status.json", {"failed_stage": name, "error": repr(err)})
    with contextlib.suppress(Exception):
        report.write(out, results)
