"""Issue 18's scale targets, each as a ratio against a baseline measured in the same run.

    python bench/scale.py solver [--n 8000] [--diag-reg 1e-2] [--tol 1e-3] [--rank 500 1000]
                                 [--repeat 2]
    python bench/scale.py dask [--n 20000] [--chunk 1024]
    python bench/scale.py e2e [--n 50000] [--n-test 10000] [--rank 2000] [--tol 1e-3] [--dir D]

``solver``: MNIST-1D (``bench/solver.py``'s data: generated locally, standardised, centred
one-hot targets), fully-connected NNGP (3 hidden ReLU layers, b_std = 0.1), float64, 1,000
test examples. Baseline: the bare dense solve (``torch.linalg.cholesky`` of K + mu I,
``cholesky_solve``, K_* times the solution) and ``gp_inference``; against it
``gp_mean_pcg`` at each rank (RPCholesky preconditioner, stopping tolerance ``--tol``).
Both timed as the best of ``--repeat`` calls (the first call of each pays page faults).
Printed: one product K V alone (torch's ``k @ v``, the solver's ``DenseKernel.matmul`` and
the same on a float32 copy, which the first CG pass uses for tol >= 1e-4); per rank the PCG
time split into the preconditioner's setup, the iterations (with the final residual check)
and the rest (the test product K_* A), one preconditioner application alone, the final
relative residual, the PCG predictions' relative difference to the dense ones, both test
accuracies, the share of test examples whose predicted class agrees, and the speed-up
(dense time / PCG time; target 3x).

``dask``: a fully-connected kernel (NNGP + NTK, random inputs of dimension 40) into a zarr
store by ``store_kernel`` in this process (baseline) and on a ``LocalCluster(n_workers=2,
threads_per_worker=1)``; printed: both times and their ratio (target at most 1.3x).

``e2e``: the N = 50,000 target end to end on ``solver``'s data and network (NNGP,
float64): the train kernel into a zarr store (``store_kernel``, resumable: rerun with the
same ``--dir`` to finish it), then ``gp_mean_pcg`` streaming the stored tiles (checked
``StoredKernel.operator``; the RPCholesky preconditioner's columns recomputed by
``NetworkKernel``) and predicting the test set with the test-train kernel recomputed tile
by tile (``NetworkKernel(net, x_test, x_train)``: it enters one product). Printed: time
per phase, iterations, final relative residual, test accuracy, peak resident memory (target
at most 4 GiB), CPU time and the load average (sampled every 30 s: the machine may be
shared). The store is deleted after a successful run unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import threading
import time

import torch

import widenets as wn
from widenets.predict import gp_inference, gp_mean_pcg


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _best(fn, repeats: int):
    """(least seconds, output) over ``repeats`` calls (the first one pays page faults)."""
    runs = [_timed(fn) for _ in range(max(1, repeats))]
    return min(runs, key=lambda r: r[0])


def solver(args) -> None:
    from solver import dense_floor, mnist1d
    from widenets.predict import DenseKernel
    from widenets.predict.pcg import make_preconditioner

    x, y, xt, yt = mnist1d(args.n, args.n_test)
    net = wn.architectures.fully_connected(depth=3, b_std=0.1)
    k = net.kernel(x, get="nngp", progress=False).nngp
    kt = net.kernel(xt, x, get="nngp", progress=False).nngp
    v = torch.randn(args.n, y.shape[1], dtype=torch.float64)
    t_prod, _ = _best(lambda: k @ v, 5)
    gb = k.numel() * 8 / 1e9
    print(
        f"one product K V (N = {args.n}, R = {y.shape[1]}): {t_prod:.4f} s ({gb:.2f} GB: "
        f"{gb / t_prod:.1f} GB/s, {2 * k.numel() * y.shape[1] / t_prod / 1e9:.0f} GFlop/s)"
    )
    t_skinny, _ = _best(lambda: DenseKernel(k).matmul(v), 5)
    k32 = k.float()
    t_32, _ = _best(lambda: DenseKernel(k32).matmul(v), 5)
    print(
        f"  the solver's product (DenseKernel.matmul: the skinny loop where numba is "
        f"installed): {t_skinny:.4f} s; with a float32 copy of K: {t_32:.4f} s"
    )
    for reg in args.diag_reg:
        t_floor, floor = _best(lambda reg=reg: dense_floor(k, y, kt, reg), args.repeat)
        t_gp, (dense, _) = _timed(lambda reg=reg: gp_inference(k, y, kt, diag_reg=reg))
        acc_d = float((dense.argmax(1) == yt).double().mean())
        print(
            f"N = {args.n}, diag_reg {reg:g}: dense Cholesky {t_floor:.2f} s (gp_inference "
            f"{t_gp:.2f} s), test accuracy {acc_d:.4f}"
        )
        mu = reg * float(k.diagonal().mean())
        for rank in args.rank:
            t, pcg = _best(
                lambda reg=reg, rank=rank: gp_mean_pcg(
                    k, y, kt, diag_reg=reg, rank=rank, tol=args.tol
                ),
                args.repeat,
            )
            pre = make_preconditioner(DenseKernel(k), mu, rank=rank)
            t_pre, _ = _best(lambda pre=pre: pre(v), 5)
            s = pcg.solve
            p = pcg.prediction
            acc = float((p.argmax(1) == yt).double().mean())
            same = float((p.argmax(1) == dense.argmax(1)).double().mean())
            diff = float((p - dense).norm() / dense.norm())
            rest = t - s.setup_seconds - s.solve_seconds
            print(
                f"  PCG rank {s.rank}, tol {args.tol:g}: {t:.2f} s = setup "
                f"{s.setup_seconds:.2f} s + {pcg.iterations} iterations and the residual "
                f"check {s.solve_seconds:.2f} s ({s.solve_seconds / (pcg.iterations + 1):.4f} "
                f"s per product; alone: K V {t_prod:.4f} s, preconditioner {t_pre:.4f} s) + "
                f"the rest {rest:.2f} s; residual {pcg.residual:.2g}; predictions vs dense "
                f"{diff:.2g} relative, same class {same:.4f}, test accuracy {acc:.4f}; "
                f"speed-up {t_floor / t:.2f}x the Cholesky, {t_gp / t:.2f}x gp_inference "
                "(target 3x)"
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


class _Load:
    """The 1-minute load average sampled every ``every`` seconds in a thread."""

    def __init__(self, every: float = 30.0):
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> str:
        self._stop.set()
        s = self.samples
        return f"load (1 min) mean {sum(s) / len(s):.2f}, min {min(s):.2f}, max {max(s):.2f}"


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def e2e(args) -> None:
    from solver import mnist1d
    from widenets.kernel_store import store_kernel
    from widenets.predict import NetworkKernel

    load, wall0, cpu0 = _Load(), time.perf_counter(), os.times()
    phases = {}

    def phase(name, fn):
        t, out = _timed(fn)
        phases[name] = t
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {t:.1f} s, peak RSS so far "
              f"{_rss_gib():.2f} GiB, load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        return out

    x, y, xt, yt = phase("data", lambda: mnist1d(args.n, args.n_test))
    net = wn.architectures.fully_connected(depth=3, b_std=0.1)
    path = os.path.join(args.dir, f"mnist1d-fc3-nngp-{args.n}")
    stored = phase(
        "store train kernel",
        lambda: store_kernel(net, path, x, get="nngp", chunk=args.chunk, progress=False),
    )
    size = sum(
        os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs
    )  # fmt: skip
    print(f"  store {path}: {stored.computed} of {stored.meta['tiles']} tiles computed by this "
          f"call, {size / 1e9:.1f} GB on disk", flush=True)  # fmt: skip
    op = stored.operator("nngp", columns_from=NetworkKernel(net, x, get="nngp"))
    k_star = NetworkKernel(net, xt, x, get="nngp")
    res = phase(
        "solve + predict",
        lambda: gp_mean_pcg(
            op, y, k_star, diag_reg=args.diag_reg, rank=args.rank, tol=args.tol,
            max_iter=args.max_iter,
        ),
    )  # fmt: skip
    s = res.solve
    acc = float((res.prediction.argmax(1) == yt).double().mean())
    cpu = os.times()
    wall = time.perf_counter() - wall0
    print(
        f"N = {args.n}, N_test = {args.n_test}, diag_reg {args.diag_reg:g}: preconditioner "
        f"RPCholesky rank {s.rank} {s.setup_seconds:.1f} s, PCG {s.iterations} iterations "
        f"{s.solve_seconds:.1f} s (residual {s.residual:.2g}, tol {args.tol:g}), predict "
        f"{phases['solve + predict'] - s.setup_seconds - s.solve_seconds:.1f} s; "
        f"test accuracy {acc:.4f}"
    )
    print(
        f"end to end {wall:.1f} s ({wall / 60:.1f} min, goal < 60 min), CPU "
        f"{cpu.user - cpu0.user + cpu.system - cpu0.system:.0f} s, peak RSS {_rss_gib():.2f} "
        f"GiB (target <= 4 GiB); {load.stop()}"
    )
    if not args.keep:
        shutil.rmtree(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="target", required=True)
    s = sub.add_parser("solver")
    s.add_argument("--n", type=int, default=8000)
    s.add_argument("--n-test", type=int, default=1000)
    s.add_argument("--diag-reg", type=float, nargs="+", default=[1e-2])
    s.add_argument("--tol", type=float, default=1e-3)
    s.add_argument("--rank", type=int, nargs="+", default=[500, 1000])
    s.add_argument("--repeat", type=int, default=2, help="best of this many (dense and PCG)")
    d = sub.add_parser("dask")
    d.add_argument("--n", type=int, default=20000)
    d.add_argument("--chunk", type=int, default=1024)
    d.add_argument("--dir", default=None, help="where the stores go (default: the temp dir)")
    e = sub.add_parser("e2e")
    e.add_argument("--n", type=int, default=50000)
    e.add_argument("--n-test", type=int, default=10000)
    e.add_argument("--diag-reg", type=float, default=1e-2)
    e.add_argument("--rank", type=int, default=2000)
    e.add_argument("--tol", type=float, default=1e-3)
    e.add_argument("--max-iter", type=int, default=500)
    e.add_argument("--chunk", type=int, default=1024)
    e.add_argument("--dir", default=tempfile.gettempdir(), help="where the store goes")
    e.add_argument("--keep", action="store_true", help="keep the store after the run")
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    {"solver": solver, "dask": dask, "e2e": e2e}[args.target](args)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
