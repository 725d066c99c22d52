"""Issue 18's scale targets, each as a ratio against a baseline measured in the same run.

    python bench/scale.py solver [--n 8000] [--diag-reg 1e-2] [--tol 1e-3] [--rank 500 1000]
    python bench/scale.py dask [--n 20000] [--chunk 1024]

``solver``: MNIST-1D (``bench/solver.py``'s data: generated locally, standardised, centred
one-hot targets), fully-connected NNGP (3 hidden ReLU layers, b_std = 0.1), float64, 1,000
test examples. Baseline: the bare dense solve (``torch.linalg.cholesky`` of K + mu I,
``cholesky_solve``, K_* times the solution) and ``gp_inference``; against it
``gp_mean_pcg`` at each rank (RPCholesky preconditioner, stopping tolerance ``--tol``).
Printed: times, iterations, the final relative residual, the PCG predictions' relative
difference to the dense ones, both test accuracies, the share of test examples whose
predicted class agrees, and the speed-up (dense time / PCG time; target 3x).

``dask``: a fully-connected kernel (NNGP + NTK, random inputs of dimension 40) into a zarr
store by ``store_kernel`` in this process (baseline) and on a ``LocalCluster(n_workers=2,
threads_per_worker=1)``; printed: both times and their ratio (target at most 1.3x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch

import widenets as wn
from widenets.predict import gp_inference, gp_mean_pcg


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def solver(args) -> None:
    from solver import dense_floor, mnist1d

    x, y, xt, yt = mnist1d(args.n, args.n_test)
    net = wn.architectures.fully_connected(depth=3, b_std=0.1)
    k = net.kernel(x, get="nngp", progress=False).nngp
    kt = net.kernel(xt, x, get="nngp", progress=False).nngp
    for reg in args.diag_reg:
        t_floor, floor = _timed(lambda reg=reg: dense_floor(k, y, kt, reg))
        t_gp, (dense, _) = _timed(lambda reg=reg: gp_inference(k, y, kt, diag_reg=reg))
        acc_d = float((dense.argmax(1) == yt).double().mean())
        print(
            f"N = {args.n}, diag_reg {reg:g}: dense Cholesky {t_floor:.2f} s (gp_inference "
            f"{t_gp:.2f} s), test accuracy {acc_d:.4f}"
        )
        for rank in args.rank:
            t, pcg = _timed(
                lambda reg=reg, rank=rank: gp_mean_pcg(
                    k, y, kt, diag_reg=reg, rank=rank, tol=args.tol
                )
            )
            p = pcg.prediction
            acc = float((p.argmax(1) == yt).double().mean())
            same = float((p.argmax(1) == dense.argmax(1)).double().mean())
            diff = float((p - dense).norm() / dense.norm())
            print(
                f"  PCG rank {pcg.solve.rank}, tol {args.tol:g}: {t:.2f} s (setup "
                f"{pcg.solve.setup_seconds:.2f} s, {pcg.iterations} iterations, residual "
                f"{pcg.residual:.2g}); predictions vs dense {diff:.2g} relative, same class "
                f"{same:.4f}, test accuracy {acc:.4f}; speed-up {t_floor / t:.2f}x the "
                f"Cholesky, {t_gp / t:.2f}x gp_inference (target 3x)"
            )


def dask(args) -> None:
    from distributed import Client, LocalCluster

    from widenets.dask_executor import DaskExecutor
    from widenets.kernel_store import store_kernel

    net = wn.architectures.fully_connected(3, activation="relu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 40, generator=gen, dtype=torch.float64)
    root = tempfile.mkdtemp(prefix="widenets-scale-", dir=args.dir)
    try:
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc,
            Client(lc) as client,
        ):
            local, _ = _timed(
                lambda: store_kernel(
                    net, os.path.join(root, "local"), x, chunk=args.chunk, progress=False
                )
            )
            shutil.rmtree(os.path.join(root, "local"))
            remote, _ = _timed(
                lambda: store_kernel(
                    net, os.path.join(root, "dask"), x, chunk=args.chunk,
                    executor=DaskExecutor(client), progress=False,
                )
            )  # fmt: skip
        print(
            f"N = {args.n}, chunk {args.chunk}, NNGP + NTK: store in process {local:.2f} s, "
            f"LocalCluster 2x1 {remote:.2f} s: {remote / local:.2f}x (target at most 1.3x)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="target", required=True)
    s = sub.add_parser("solver")
    s.add_argument("--n", type=int, default=8000)
    s.add_argument("--n-test", type=int, default=1000)
    s.add_argument("--diag-reg", type=float, nargs="+", default=[1e-2])
    s.add_argument("--tol", type=float, default=1e-3)
    s.add_argument("--rank", type=int, nargs="+", default=[500, 1000])
    d = sub.add_parser("dask")
    d.add_argument("--n", type=int, default=20000)
    d.add_argument("--chunk", type=int, default=1024)
    d.add_argument("--dir", default=None, help="where the stores go (default: the temp dir)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    solver(args) if args.target == "solver" else dask(args)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
