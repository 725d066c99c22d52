"""Running the scaling job: stages in order, each saved as it finishes, then the report.

Stages: ``data`` (the MNIST-1D pool), one ``n<N>`` per training-set size (kernels, solves,
scores; see :mod:`widenets.scale.stages`), then the report (always rebuilt from the finished
stages: fits, figures, tables). Stage files are the study's (:class:`StageStore`: checksums,
the configuration's digest, and the checksum of the ``data`` stage each ``n<N>`` used), so
``resume=True`` reuses exactly the stages that are intact and of the same configuration and
recomputes the others. With ``store`` the kernels also resume tile by tile inside a stage.
"""

from __future__ import annotations

import time
from pathlib import Path

from widenets.scale import report
from widenets.scale.config import ScaleConfig, resolve
from widenets.scale.data import fingerprint, generate, standardize
from widenets.scale.fit import fit_power_law
from widenets.scale.stages import run_n
from widenets.study.run import versions
from widenets.study.store import (
    StageStore,
    StaleStage,
    atomic_json,
    atomic_write,
    check_output,
    check_writable,
)

GIB = 2**30


class ScaleError(RuntimeError):
    """A stage of the scaling job failed; ``stage`` names it."""

    def __init__(self, stage: str, err: BaseException):
        self.stage = stage
        super().__init__(f"stage {stage!r} failed: {type(err).__name__}: {err}")


def connect(scheduler):
    """A ``dask.distributed.Client`` for a scheduler address (``tcp://host:8786``), or the
    client given; ValueError if Dask is missing or the scheduler does not answer in 10 s."""
    if scheduler is None:
        return None
    try:
        from distributed import Client
    except ImportError:
        raise ValueError(
            "`scheduler` needs dask.distributed: pip install 'widenets[scale]'."
        ) from None
    if isinstance(scheduler, Client):
        return scheduler
    if not isinstance(scheduler, str):
        raise ValueError(
            "`scheduler` must be a scheduler address such as 'tcp://host:8786' or a "
            f"dask.distributed.Client, got {type(scheduler).__name__}."
        )
    try:
        return Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as err:
        raise ValueError(
            f"could not connect to the Dask scheduler `scheduler`={scheduler!r}: "
            f"{' '.join(str(err).split()) or type(err).__name__}"
        ) from None


def _check_store(store):
    if store is None:
        return None
    try:
        import zarr  # noqa: F401
    except ImportError:
        raise ValueError("`store` needs zarr: pip install 'widenets[scale]'.") from None
    try:
        return check_writable(store)
    except ValueError as err:
        raise ValueError(str(err).replace("`out`", "`store`")) from None


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write(text)


def _line(res: dict) -> str:
    parts = [
        f"{name.upper()} {100 * res[name]['accuracy']:.2f}% (MSE {res[name]['mse']:.4g}, "
        f"{res[name]['solver']})"
        for name in ("nngp", "ntk")
        if name in res
    ]
    mem = res.get("peak_memory_bytes")
    peak = f", peak {mem / GIB:.2f} GiB" if mem else ""
    return f"N = {res['n']}: " + ", ".join(parts) + f"; {res['wall_seconds']:.1f} s{peak}"


def fits(cfg: ScaleConfig, points: list[dict]) -> dict:
    """Power-law fits of test error and test MSE against N, per kernel."""
    out = {}
    for name in cfg.kernels:
        rows = [p for p in points if name in p]
        ns = [p["n"] for p in rows]
        out[name] = {
            key: fit_power_law(ns, [p[name][key] for p in rows]) for key in ("error", "mse")
        }
    return out


def run(
    config: ScaleConfig | dict | str | Path | None = None,
    out: str | Path = "runs/scale",
    *,
    scheduler=None,
    store: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    **overrides,
) -> dict:
    """Run the scaling job and write its report into ``out``.

    Args:
        config: a :class:`ScaleConfig`, a dict of config keys, a TOML path or None for the
            defaults; ``overrides`` (config keys) take precedence.
        out: output folder: ``config.toml``, ``results.json``, ``points.csv``,
            ``figures/``, ``index.html`` and ``stages/``.
        scheduler: a Dask scheduler address (``"tcp://host:8786"``) or a
            ``dask.distributed.Client``: the kernels' tiles run on its workers
            (:class:`widenets.dask_executor.DaskExecutor`). None: in this process.
        store: a folder for zarr kernel stores (:mod:`widenets.kernel_store`; with a
            scheduler, one every worker sees); None keeps the kernels in memory.
        resume: reuse the intact stages of the same configuration found in ``out``.
        overwrite: replace the results in a non-empty ``out``.
        quiet: no progress bars or lines.

    Returns:
        The content of ``results.json``.

    Raises:
        ValueError / TypeError: a bad configuration, scheduler, store or output folder
            (before any work). ScaleError: a stage failed (finished stages are kept).
    """
    cfg = resolve(config, **overrides)
    store = _check_store(store)
    client = connect(scheduler)
    own_client = client is not None and not _is_client(scheduler)
    try:
        out = check_output(out, resume=resume, overwrite=overwrite)
        return _run(cfg, out, client, store, resume, quiet)
    finally:
        if own_client:
            client.close()


def _is_client(obj) -> bool:
    return type(obj).__name__ == "Client"


def _run(cfg, out, client, store, resume, quiet) -> dict:
    executor = None
    if client is not None:
        from widenets.dask_executor import DaskExecutor

        executor = DaskExecutor(client)
    stages = StageStore(out, cfg.digest(), resume)
    atomic_json(out / "config.json", cfg.to_dict())
    atomic_write(out / "config.toml", cfg.to_toml())
    results = {
        "status": "running",
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "versions": versions(),
        "executor": _executor_text(client),
        "store": str(store) if store is not None else None,
        "stages": {},
        "notes": [],
        "points": [],
    }

    def stage(name, fn, depends=()):
        recomputed = None
        if resume:
            try:
                res, tens = stages.load(name, depends)
            except StaleStage as why:
                if stages.has_file(name):
                    recomputed = f"--resume: stage {name!r} recomputed: {why}."
                    results["notes"].append(recomputed)
                    _say(quiet, recomputed)
            else:
                results["stages"][name] = {"status": "resumed"}
                _say(quiet, f"{name}: resumed")
                return res, tens
        t0 = time.perf_counter()
        try:
            res, tens = fn()
        except Exception as err:
            results["stages"][name] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            _fail(out, results, cfg, name, err)
            raise ScaleError(name, err) from err
        except KeyboardInterrupt:
            results["stages"][name] = {"status": "interrupted"}
            _fail(out, results, cfg, name, KeyboardInterrupt("interrupted"))
            raise
        stages.save(name, res, tens, depends)
        results["stages"][name] = {"status": "done", "seconds": time.perf_counter() - t0}
        if recomputed:
            results["stages"][name]["recomputed"] = recomputed
        return res, tens

    def data_stage():
        t0 = time.perf_counter()
        pool = standardize(generate(max(cfg.n), cfg.n_test, cfg.data_seed), min(cfg.n))
        return {
            "source": "mnist1d.data.make_dataset (generated locally, never downloaded), "
            f"seed {cfg.data_seed}",
            "n_pool": int(pool["x_train"].shape[0]),
            "n_test": int(pool["x_test"].shape[0]),
            "length": int(pool["x_train"].shape[1]),
            "test_class_counts": pool["y_test"].bincount(minlength=10).tolist(),
            "sha256": fingerprint(pool),
            "generate_seconds": time.perf_counter() - t0,
        }, pool

    res, pool = stage("data", data_stage)
    results["data"] = res
    progress = False if quiet else None
    for n in cfg.n:
        res, _ = stage(
            f"n{n}",
            lambda n=n: run_n(cfg, pool, n, executor=executor, store=store, progress=progress),
            depends=("data",),
        )
        results["points"].append(res)
        _say(quiet, _line(res))
    results["fits"] = fits(cfg, results["points"])
    results["status"] = "complete"
    report.write(out, results)
    return results


def _executor_text(client) -> str:
    if client is None:
        return "this process (widenets.executors.LocalExecutor)"
    workers = client.nthreads()
    return (
        f"Dask cluster at {client.scheduler.address}: {len(workers)} workers, "
        f"{sum(workers.values())} threads (widenets.dask_executor.DaskExecutor)"
    )


def _fail(out: Path, results: dict, cfg, name: str, err: BaseException) -> None:
    """Record the failure and write a partial report of what finished (best effort)."""
    import contextlib

    results["status"] = f"failed in stage {name!r}: {type(err).__name__}: {err}"
    atomic_json(out / "status.json", {"failed_stage": name, "error": repr(err)})
    with contextlib.suppress(Exception):
        results["fits"] = fits(cfg, results["points"])
        report.write(out, results)
