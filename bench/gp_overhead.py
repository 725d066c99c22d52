"""``gp_inference`` against a bare Cholesky solve (``bench/solver.py``'s ``dense_floor``) and
against its path before issue 18 (N x N checks and regularisation, copied here), on the
MNIST-1D NNGP (diag_reg 1e-2, 1,000 test examples), best of 3; also whether the current
and the previous predictions are bit-identical.

    flock /tmp/bench.lock python bench/gp_overhead.py [N]   # default 8000
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch

import widenets as wn
from solver import dense_floor, mnist1d
from widenets.predict import gp_inference
from widenets.predict._linalg import cholesky


def before(k, y, kt, reg):
    """gp_inference's mean for a float64 kernel as computed before (same operations)."""
    for t in (k, y, kt):
        if not torch.isfinite(t).all():
            raise ValueError("not finite")
    tol = math.sqrt(torch.finfo(k.dtype).eps) * float(k.abs().max())
    if float((k - k.T).abs().max()) > tol:
        raise ValueError("not symmetric")
    kr = (k + k.T) / 2
    kr = kr + (reg * float(torch.diagonal(kr).mean())) * torch.eye(len(k), dtype=kr.dtype)
    return kt @ torch.cholesky_solve(y, cholesky(kr))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    x, y, xt, _ = mnist1d(n, 1000)
    net = wn.architectures.fully_connected(depth=3, b_std=0.1)
    k = net.kernel(x, get="nngp", progress=False).nngp
    kt = net.kernel(xt, x, get="nngp", progress=False).nngp
    print(f"N = {n}, load {os.getloadavg()}", flush=True)
    cases = {
        "bare Cholesky": lambda: dense_floor(k, y, kt, 1e-2),
        "gp_inference before": lambda: before(k, y, kt, 1e-2),
        "gp_inference now": lambda: gp_inference(k, y, kt, diag_reg=1e-2)[0],
    }
    best, outs = {}, {}
    for _ in range(3):
        for name, fn in cases.items():
            start = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best.get(name, math.inf), time.perf_counter() - start)
    for name, t in best.items():
        print(f"{name}: {t:.2f} s ({t / best['bare Cholesky']:.2f}x the bare Cholesky)")
    same = torch.equal(outs["gp_inference now"], outs["gp_inference before"])
    print(f"now vs before: bit-identical {same}; load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
