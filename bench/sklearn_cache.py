"""GridSearchCV with and without a shared ``KernelCache``, with and without a StandardScaler.

A ``KernelCache`` must never make a grid search slower than no cache. This times
``GridSearchCV`` (3-fold, shuffled) over typical grids of an NTK estimator, in the four
combinations of {no scaler, ``StandardScaler`` inside the pipeline} x {no cache, one
``KernelCache`` shared by every clone}, and prints each cached search's time as a ratio to
the uncached one measured in the same run (repeats interleaved, in alternating order; the
ratio of the medians of ``--repeats``, the quartiles of the per-repeat ratios as its spread,
and the ratio of median process CPU times, less sensitive to other people's load).

Grids (``NTKRegressor`` on ``load_diabetes``, ``NTKClassifier`` on ``load_breast_cancer``):

- ``typical``: diag_reg {1e-3, 1e-1, 1} x depth {1, 3} x w_std {1.0, 1.5} (12 settings; the
  three diag_reg values share one network, the folds share rows unless a scaler moves them);
- ``networks``: depth {1, 2, 3} x w_std {1.0, 1.5} (6 settings, every one a new network: with
  a scaler no entry is ever reused; a deeper network can start from the kept kernel of the
  shallower one's hidden layers, ``widenets.serial_prefix``);
- ``scales``: w_std {1.0, 1.5, 2.0} x b_std {0.0, 0.1, 0.5} at depth 2 (9 settings, every one
  a new network sharing no layer with another: with a scaler nothing at all is shared, the
  cache's worst case).

With a scaler the rows reaching the estimator differ between folds (each fold is scaled by
its own training statistics), so the cache can only share between the settings of a fold.

    flock /tmp/bench.lock python bench/sklearn_cache.py            # 3 repeats
    flock /tmp/bench.lock python bench/sklearn_cache.py --repeats 7 --threads 1

``--threads 1`` runs torch on one thread: on a shared machine torch's intra-op threads wait
for each other on every small operation, which adds more noise than either arm's own cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from widenets.sklearn import KernelCache, NTKClassifier, NTKRegressor  # noqa: E402

GRIDS = {
    "typical": {"m__diag_reg": [1e-3, 1e-1, 1.0], "m__depth": [1, 3], "m__w_std": [1.0, 1.5]},
    "networks": {"m__depth": [1, 2, 3], "m__w_std": [1.0, 1.5]},
    "scales": {"m__w_std": [1.0, 1.5, 2.0], "m__b_std": [0.0, 0.1, 0.5]},
}
TASKS = {
    "diabetes (NTKRegressor)": (load_diabetes, NTKRegressor, KFold),
    "breast_cancer (NTKClassifier)": (load_breast_cancer, NTKClassifier, StratifiedKFold),
}


def search_seconds(load, cls, split, grid, scaler: bool, cache) -> tuple[float, float, int]:
    """Wall and process CPU time of one GridSearchCV fit, and the pairs the cache computed
    (0 without)."""
    x, y = load(return_X_y=True)
    steps = [("s", StandardScaler())] if scaler else []
    pipe = Pipeline(steps + [("m", cls(kernel_cache=cache))])
    start, cpu = time.perf_counter(), time.process_time()
    GridSearchCV(pipe, grid, cv=split(3, shuffle=True, random_state=0)).fit(x, y)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, 0 if cache is None else cache.pairs_computed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per cell")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument("--tasks", default=None, help="comma-separated task prefixes (default all)")
    parser.add_argument("--grids", default=None, help="comma-separated grids (default all)")
    parser.add_argument(
        "--scaler", choices=("both", "yes", "no"), default="both", help="which scaler cells"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    print(
        f"torch threads: {torch.get_num_threads()}; os.cpu_count(): {os.cpu_count()}; "
        f"load average: {os.getloadavg()[0]:.1f}; median of {args.repeats} repeats\n"
    )
    print(
        "| task | grid | scaler | no cache (s) | cache (s) | cache / no cache | "
        "per-repeat ratios (quartiles) | CPU time ratio | pairs computed (cache) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    tasks = {
        t: v
        for t, v in TASKS.items()
        if args.tasks is None or any(t.startswith(p) for p in args.tasks.split(","))
    }
    grids = {g: v for g, v in GRIDS.items() if args.grids is None or g in args.grids.split(",")}
    scalers = {"both": (False, True), "yes": (True,), "no": (False,)}[args.scaler]
    if not tasks or not grids:
        parser.error(f"no cell selected: --tasks {args.tasks!r} --grids {args.grids!r}")
    for task, (load, cls, split) in tasks.items():
        for gname, grid in grids.items():
            for scaler in scalers:
                plain, cached, pairs = [], [], 0
                for i in range(args.repeats):  # interleaved, so that load drifts hit both
                    arms = [None, KernelCache()]
                    for cache in arms if i % 2 == 0 else arms[::-1]:  # alternating order
                        sec, cpu, n = search_seconds(load, cls, split, grid, scaler, cache)
                        (plain if cache is None else cached).append((sec, cpu))
                        pairs = n or pairs
                a = statistics.median(s for s, _ in plain)
                b = statistics.median(s for s, _ in cached)
                ratios = [c[0] / p[0] for p, c in zip(plain, cached, strict=True)]
                q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
                cpu = statistics.median(c for _, c in cached) / statistics.median(
                    c for _, c in plain
                )
                print(
                    f"| {task} | {gname} | {'yes' if scaler else 'no'} | {a:.3f} | {b:.3f} "
                    f"| {b / a:.2f} | {q1:.2f}-{q3:.2f} | {cpu:.2f} | {pairs:,} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
