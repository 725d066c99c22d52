"""PCG's float32 pass from the upper triangle of K against the whole copy, alternating.

    python bench/pcg_upper.py [--n 8000] [--rank 750] [--rounds 4] [--diag-reg 1e-2]

``bench/scale.py solver``'s problem (MNIST-1D, fully-connected NNGP, float64, tol 1e-3).
Each round, in one process on the same kernel: the dense Cholesky solve (``solver.
dense_floor``), ``gp_mean_pcg`` with the triangle (``pcg._Float32Copy.UPPER = True``, the
default) and with the whole float32 copy (``UPPER = False``: the code before), in turns,
so both meet the same machine state. Printed per round: the three times, iterations and
the two speed-ups against that round's Cholesky; then the minimum and median of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import widenets as wn
from widenets.predict import gp_mean_pcg, pcg


def main() -> None:
    from solver import dense_floor, mnist1d

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8000)
    p.add_argument("--rank", type=int, default=750)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--diag-reg", type=float, default=1e-2)
    p.add_argument("--tol", type=float, default=1e-3)
    a = p.parse_args()
    x, y, xt, _ = mnist1d(a.n, 1000)
    net = wn.architectures.fully_connected(depth=3, b_std=0.1)
    k = net.kernel(x, get="nngp", progress=False).nngp
    kt = net.kernel(xt, x, get="nngp", progress=False).nngp

    def solve(upper: bool):
        pcg._Float32Copy.UPPER = upper
        start = time.perf_counter()
        out = gp_mean_pcg(k, y, kt, diag_reg=a.diag_reg, rank=a.rank, tol=a.tol)
        return time.perf_counter() - start, out

    solve(True), solve(False)  # compiled, warmed
    times = {"cholesky": [], "upper": [], "whole": []}
    print(f"N = {a.n}, rank {a.rank}, diag_reg {a.diag_reg:g}, tol {a.tol:g}, "
          f"load {os.getloadavg()}")  # fmt: skip
    for i in range(a.rounds):
        start = time.perf_counter()
        dense_floor(k, y, kt, a.diag_reg)
        times["cholesky"].append(time.perf_counter() - start)
        order = (True, False) if i % 2 == 0 else (False, True)
        row = {}
        for upper in order:
            t, out = solve(upper)
            times["upper" if upper else "whole"].append(t)
            row[upper] = (t, out)
        c = times["cholesky"][-1]
        (tu, ou), (tw, ow) = row[True], row[False]
        print(
            f"round {i}: Cholesky {c:.2f} s; triangle {tu:.2f} s ({ou.iterations} it., setup "
            f"{ou.solve.setup_seconds:.2f} s, iterations {ou.solve.solve_seconds:.2f} s) "
            f"{c / tu:.2f}x; whole copy {tw:.2f} s ({ow.iterations} it., setup "
            f"{ow.solve.setup_seconds:.2f} s, iterations {ow.solve.solve_seconds:.2f} s) "
            f"{c / tw:.2f}x; residuals {ou.residual:.2g} / {ow.residual:.2g}"
        )
    for name, t in times.items():
        print(f"{name}: min {min(t):.2f} s, median {statistics.median(t):.2f} s")
    ratios_u = [c / u for c, u in zip(times["cholesky"], times["upper"], strict=True)]
    ratios_w = [c / w for c, w in zip(times["cholesky"], times["whole"], strict=True)]
    print(f"speed-up per round: triangle {[round(r, 2) for r in ratios_u]}, "
          f"whole copy {[round(r, 2) for r in ratios_w]}; load {os.getloadavg()}")  # fmt: skip


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
