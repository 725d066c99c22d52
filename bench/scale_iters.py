"""PCG iterations against the preconditioner's rank (1,000, 2,000, 3,000) and tol (1e-3,
1e-4) on the MNIST-1D NNGP held in memory (``bench/solver.py``'s data and network,
diag_reg 1e-2, 1,000 test examples): to choose the rank of a larger run.

    python bench/scale_iters.py [N]   # default 20000 (a 3.2 GB kernel)
"""

from __future__ import annotations

import os
import sys
import time

import widenets as wn
from solver import mnist1d
from widenets.predict import gp_mean_pcg


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    x, y, xt, yt = mnist1d(n, 1000)
    net = wn.architectures.fully_connected(depth=3, b_std=0.1)
    start = time.perf_counter()
    k = net.kernel(x, get="nngp", progress=False).nngp
    kt = net.kernel(xt, x, get="nngp", progress=False).nngp
    print(f"N = {n}: kernels {time.perf_counter() - start:.1f} s, load {os.getloadavg()}")
    for rank in (1000, 2000, 3000):
        for tol in (1e-3, 1e-4):
            start = time.perf_counter()
            r = gp_mean_pcg(k, y, kt, diag_reg=1e-2, rank=rank, tol=tol)
            acc = float((r.prediction.argmax(1) == yt).double().mean())
            print(
                f"rank {rank}, tol {tol:g}: {r.iterations} iterations, residual "
                f"{r.residual:.2g}, setup {r.solve.setup_seconds:.1f} s, total "
                f"{time.perf_counter() - start:.1f} s, test accuracy {acc:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
