"""Setup cost of the RPCholesky preconditioner at N = 8,000 (MNIST-1D, fully-connected NNGP,
``bench/scale.py solver``'s kernel), optionally against an earlier version of
``widenets/predict/preconditioners.py`` in the same run.

    python bench/precond_setup.py [--n 8000] [--rank 500 1000 2000]
    git show bc45a38:src/widenets/predict/preconditioners.py > /tmp/before.py
    python bench/precond_setup.py --before /tmp/before.py     # before / after, same run

Printed per rank: RPCholesky's time, the preconditioner's build (Woodbury), one application
to R = 10 columns (best of 5), and the residual trace tr(K - F F^T) / tr(K) (the factor's
quality: the same law before and after).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

import widenets as wn
from widenets.predict import preconditioners
from widenets.predict.operators import DenseKernel


def _best(fn, repeats):
    out, least = None, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        least = min(least, time.perf_counter() - start)
    return least, out


def main() -> None:
    from solver import mnist1d

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8000)
    p.add_argument("--rank", type=int, nargs="+", default=[500, 1000, 2000])
    p.add_argument("--diag-reg", type=float, default=1e-2)
    p.add_argument("--before", default=None, help="an earlier preconditioners.py to compare")
    args = p.parse_args()
    versions = [("after", preconditioners)]
    if args.before:
        spec = importlib.util.spec_from_file_location("before", args.before)
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
        versions.insert(0, ("before", before))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    x, _, _, _ = mnist1d(args.n, 10)
    k = wn.architectures.fully_connected(depth=3, b_std=0.1).kernel(x, get="nngp").nngp
    op = DenseKernel(k)
    trace = float(k.diagonal().sum())
    mu = args.diag_reg * float(k.diagonal().mean())
    v = torch.randn(args.n, 10, dtype=torch.float64)
    for rank in args.rank:
        for name, m in versions:
            t_f, (f, _) = _best(lambda m=m, rank=rank: m.rpcholesky(op, rank), 2)
            t_p, pre = _best(lambda m=m, f=f: m.LowRankPreconditioner(f, mu), 2)
            t_a, _ = _best(lambda pre=pre: pre(v), 5)
            resid = (trace - float((f**2).sum())) / trace
            print(
                f"rank {rank} {name}: RPCholesky {t_f:.2f} s, preconditioner build {t_p:.2f} s,"
                f" one application {t_a:.4f} s, residual trace {resid:.4f}",
                flush=True,
            )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
