"""What one PCG iteration's product K V costs on this machine, against what streaming K costs.

    python bench/skinny_product.py [--n 8000]

K: the N x N MNIST-1D NNGP of ``bench/scale.py solver`` (float64, 0.51 GB at N = 8,000).
Printed (best of 7): ``K.sum()`` (one read of K: the memory bandwidth the product could
use), ``K @ V`` through torch (MKL) for R = 1 ... 16 columns, in float32, and through
numpy (its own OpenBLAS) for R = 10, and a large product for the machine's peak; then ten
PCG-like iterations (a product, then a rank 1,000 preconditioner's two products in torch)
with the K product in torch or in numpy: the two libraries' thread pools in one loop.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import widenets as wn


def _best(fn, repeats=7):
    least = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        least = min(least, time.perf_counter() - start)
    return least


def main() -> None:
    from solver import mnist1d

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8000)
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    x, _, _, _ = mnist1d(args.n, 10)
    k = wn.architectures.fully_connected(depth=3, b_std=0.1).kernel(x, get="nngp").nngp
    n = args.n
    gb = k.numel() * 8 / 1e9
    t = _best(lambda: k.sum())
    print(f"K.sum(): {t:.4f} s ({gb / t:.0f} GB/s)")
    for r in (1, 4, 8, 10, 12, 16):
        v = torch.randn(n, r, dtype=torch.float64)
        t = _best(lambda v=v: k @ v)
        print(
            f"K @ V, R = {r:2d}: {t:.4f} s ({gb / t:.1f} GB/s, "
            f"{2 * k.numel() * r / t / 1e9:.0f} GFlop/s)"
        )
    a, b = k[:, :2000].contiguous(), torch.randn(2000, 2000, dtype=torch.float64)
    t = _best(lambda: a @ b, 3)
    print(f"a large product ({n} x 2000 x 2000): {t:.3f} s ({2 * n * 4e6 / t / 1e9:.0f} GFlop/s)")
    v = torch.randn(n, 10, dtype=torch.float64)
    k32, v32 = k.float(), v.float()
    t_copy = _best(lambda: k.float(), 3)
    print(f"float32 K @ V, R = 10: {_best(lambda: k32 @ v32):.4f} s (the copy {t_copy:.3f} s)")
    kn, vn = k.numpy(), v.numpy()
    print(f"numpy (OpenBLAS) K @ V, R = 10: {_best(lambda: kn @ vn):.4f} s")
    f = torch.randn(1000, n, dtype=torch.float64)

    def loop(product):
        for _ in range(10):
            q = product()
            c = (f @ q).contiguous()
            torch.addmm(q, f.T, c, alpha=-1.0)

    t_torch = _best(lambda: loop(lambda: k @ v), 3)
    t_numpy = _best(lambda: loop(lambda: torch.from_numpy(kn @ vn)), 3)
    print(f"10 iterations, product in torch: {t_torch:.3f} s, in numpy: {t_numpy:.3f} s")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
