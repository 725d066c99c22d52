"""The RPCholesky preconditioner of the N = 50,000 end-to-end run (``bench/scale.py e2e``):
MNIST-1D, fully-connected NNGP (3 hidden ReLU layers, b_std = 0.1), float64, columns
recomputed by ``NetworkKernel``, rank 2,000, diag_reg 1e-2; optionally an earlier
``preconditioners.py`` after it in the same run (see ``bench/precond_setup.py``).

    python bench/precond_network.py [--n 50000] [--rank 2000] [--before /tmp/before.py]

Printed: the diagonal, RPCholesky (kernel columns and updates) and the preconditioner build.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

import widenets as wn
from widenets.predict import NetworkKernel, preconditioners


def main() -> None:
    from solver import mnist1d

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--rank", type=int, default=2000)
    p.add_argument("--before", default=None)
    args = p.parse_args()
    versions = [("after", preconditioners)]
    if args.before:
        spec = importlib.util.spec_from_file_location("before", args.before)
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
        versions.append(("before", before))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    x, _, _, _ = mnist1d(args.n, 10)
    op = NetworkKernel(wn.architectures.fully_connected(depth=3, b_std=0.1), x)
    start = time.perf_counter()
    mu = 1e-2 * float(op.diagonal().mean())
    print(f"N = {args.n}: diagonal {time.perf_counter() - start:.1f} s")
    for name, m in versions:
        start = time.perf_counter()
        f, _ = m.rpcholesky(op, args.rank)
        t_f = time.perf_counter() - start
        start = time.perf_counter()
        m.LowRankPreconditioner(f, mu)
        t_p = time.perf_counter() - start
        print(f"rank {args.rank} {name}: RPCholesky {t_f:.1f} s, build {t_p:.1f} s", flush=True)
        del f
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
