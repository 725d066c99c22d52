"""Benchmark: kernel predictions by PCG against dense Cholesky on the same kernel, and the
cost of a product K V by streaming stored tiles against recomputing them.

Data: MNIST-1D generated locally by ``mnist1d.data.make_dataset`` with its default
arguments except ``num_samples`` (N train + N test, never downloaded), every position
standardised with the training statistics; centred one-hot targets (10 classes).
Network: fully-connected, 3 hidden ReLU layers (``architectures.fully_connected(3)``,
b_std = 0.1), NNGP, float64.

Per ``diag_reg``:

- ``dense``: ``gp_inference(k, y, k_test, diag_reg=...)`` (the library's dense path:
  regularise, Cholesky, solve), and the bare ``torch.linalg.cholesky`` + ``cholesky_solve``
  of the regularised kernel (a floor for any dense solve);
- ``pcg``: ``gp_mean_pcg(k, y, k_test, diag_reg=..., rank=...)`` (randomly pivoted
  Cholesky preconditioner, tolerance ``--tol``), with its iterations, final relative
  residual and agreement with the dense prediction;
- ``plain CG`` (``--plain``): the same without a preconditioner, for the iteration count.

Products (one K V with R = 10 columns, the cost of one CG iteration):

- in memory: the dense tensor;
- stored: the kernel saved to a .npy file, its pages dropped from the OS cache
  (posix_fadvise DONTNEED), read back by row blocks (``DenseKernel`` of a memmap): a cold
  read, as for a kernel larger than RAM;
- recomputed: ``NetworkKernel(net, x)`` tiles computed from the inputs and dropped.

Usage (the machine is shared: run under the benchmark lock and say so with the numbers)::

    flock /tmp/bench.lock env PYTHONPATH=src python bench/solver.py            # N = 8000
    flock /tmp/bench.lock env PYTHONPATH=src python bench/solver.py --n 2000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import numpy as np
import torch

import widenets as wn
from widenets.predict import DenseKernel, NetworkKernel, gp_inference, gp_mean_pcg, pcg_solve


def mnist1d(n_train: int, n_test: int):
    import mnist1d.data as md

    args = md.get_dataset_args()
    args.num_samples = n_train + n_test
    args.train_split = n_train / (n_train + n_test)
    state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        ds = md.make_dataset(args)
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])  # noqa: NPY002
    x, xt = (torch.as_tensor(a, dtype=torch.float64) for a in (ds["x"], ds["x_test"]))
    mean, std = x.mean(0), x.std(0)
    x, xt = (x - mean) / std, (xt - mean) / std
    y, yt = torch.as_tensor(ds["y"]), torch.as_tensor(ds["y_test"])
    onehot = torch.nn.functional.one_hot(y, 10).to(torch.float64) - 0.1
    return x[:n_train], onehot[:n_train], xt[:n_test], yt[:n_test]


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def dense_floor(k: torch.Tensor, y: torch.Tensor, kt: torch.Tensor, diag_reg: float):
    mu = diag_reg * float(k.diagonal().mean())
    k_reg = k.clone()
    k_reg.diagonal().add_(mu)
    chol = torch.linalg.cholesky(k_reg)
    return kt @ torch.cholesky_solve(y, chol)


def cold_stream_seconds(k: torch.Tensor, v: torch.Tensor, directory: str) -> float:
    """One K v pass reading K from a .npy file whose pages were dropped from the cache."""
    path = os.path.join(directory, "k.npy")
    np.save(path, k.numpy())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    op = DenseKernel(np.load(path, mmap_mode="r"))
    seconds, _ = timed(lambda: op.matmul(v))
    os.remove(path)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8000, help="training examples")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--diag-reg", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--rank", type=int, default=None, help="preconditioner rank")
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--plain", action="store_true", help="also run unpreconditioned CG")
    parser.add_argument("--no-streaming", action="store_true", help="skip the K V timings")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    x, y, xt, yt = mnist1d(args.n, args.n_test)
    net = wn.architectures.fully_connected(depth=3, b_std=0.1)
    t_k, k = timed(lambda: net.kernel(x, get="nngp").nngp)
    t_kt, kt = timed(lambda: net.kernel(xt, x, get="nngp").nngp)
    print(f"N = {args.n}, N_test = {args.n_test}: kernels {t_k:.1f} s + {t_kt:.1f} s")
    results = {"n": args.n, "n_test": args.n_test, "kernel_seconds": t_k, "cases": []}

    for reg in args.diag_reg:
        t_dense, (dense, _) = timed(lambda reg=reg: gp_inference(k, y, kt, diag_reg=reg))
        t_floor, floor = timed(lambda reg=reg: dense_floor(k, y, kt, reg))
        t_pcg, pcg = timed(
            lambda reg=reg: gp_mean_pcg(k, y, kt, diag_reg=reg, rank=args.rank, tol=args.tol)
        )
        agree = float((pcg.prediction - dense).norm() / dense.norm())
        acc = float((pcg.prediction.argmax(1) == yt).double().mean())
        case = {
            "diag_reg": reg,
            "dense_seconds": t_dense,
            "cholesky_floor_seconds": t_floor,
            "pcg_seconds": t_pcg,
            "pcg_setup_seconds": pcg.solve.setup_seconds,
            "pcg_iterations": pcg.iterations,
            "pcg_residual": pcg.residual,
            "rank": pcg.solve.rank,
            "rel_diff_to_dense": agree,
            "floor_rel_diff_to_dense": float((floor - dense).norm() / dense.norm()),
            "test_accuracy": acc,
            "speedup_vs_gp_inference": t_dense / t_pcg,
            "speedup_vs_cholesky_floor": t_floor / t_pcg,
        }
        print(
            f"diag_reg {reg:g}: gp_inference {t_dense:.2f} s, bare Cholesky {t_floor:.2f} s, "
            f"PCG {t_pcg:.2f} s (setup {pcg.solve.setup_seconds:.2f} s, rank "
            f"{pcg.solve.rank}, {pcg.iterations} iterations, residual {pcg.residual:.2g}); "
            f"speed-up {t_dense / t_pcg:.2f}x (vs bare Cholesky {t_floor / t_pcg:.2f}x); "
            f"PCG vs dense {agree:.2g} relative; test accuracy {acc:.4f}"
        )
        if args.plain:
            t_plain, plain = timed(
                lambda reg=reg: pcg_solve(
                    k,
                    y,
                    diag_reg=reg,
                    tol=args.tol,
                    preconditioner=None,
                    max_iter=5000,
                    on_no_convergence="warn",
                )
            )
            case.update(plain_iterations=plain.iterations, plain_seconds=t_plain)
            print(f"  plain CG: {plain.iterations} iterations, {t_plain:.2f} s")
        results["cases"].append(case)

    if not args.no_streaming:
        v = torch.randn(args.n, 10, dtype=torch.float64)
        t_mem, ref = timed(lambda: DenseKernel(k).matmul(v), repeats=3)
        t_blocks, _ = timed(lambda: DenseKernel(k, block_rows=1024).matmul(v), repeats=3)
        op = NetworkKernel(net, x, get="nngp")
        op.diagonal()  # computed once per operator, not per product
        t_re, out = timed(lambda: op.matmul(v))
        with tempfile.TemporaryDirectory() as tmp:
            t_cold = cold_stream_seconds(k, v, tmp)
        diff = float((out - ref).norm() / ref.norm())
        gb = k.numel() * 8 / 1e9
        results["matvec"] = {
            "in_memory_seconds": t_mem,
            "in_memory_row_blocks_seconds": t_blocks,
            "recompute_seconds": t_re,
            "cold_stream_seconds": t_cold,
            "kernel_gb": gb,
            "recompute_rel_diff": diff,
        }
        print(
            f"one K V pass (R = 10, K {gb:.2f} GB): in memory {t_mem:.3f} s (row blocks "
            f"{t_blocks:.3f} s), stored and read cold from disk {t_cold:.2f} s "
            f"({gb / t_cold:.2f} GB/s), recomputed from the network {t_re:.2f} s "
            f"(agrees to {diff:.1g}); recompute / cold read = {t_re / t_cold:.1f}"
        )
    print(f"load after: {os.getloadavg()}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
