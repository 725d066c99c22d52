"""One product K V (R columns) from K's upper triangle against the whole float32 copy.

    python bench/skinny_upper.py [N] [R] [THREADS] [WIDTHS, e.g. 128,256,512]

A random symmetric K (N x N, rank 64 plus the identity); calls interleaved, 15 rounds,
min and median printed: the whole float32 copy with float64 sums (``_skinny.matmul``, the
code before), the triangle with float32 and float64 sums (``_skinny_upper.matmul``) at
each block width.
"""

import os
import sys
import time

import numpy as np
import torch

from widenets.predict import _skinny, _skinny_upper

torch.manual_seed(0)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
r = int(sys.argv[2]) if len(sys.argv) > 2 else 10
th = int(sys.argv[3]) if len(sys.argv) > 3 else 2
widths = [int(w) for w in sys.argv[4].split(",")] if len(sys.argv) > 4 else [256]
a = torch.randn(n, 64, dtype=torch.float64)
k = a @ a.T / 64 + torch.eye(n, dtype=torch.float64)
k = (k + k.T) / 2
v = torch.randn(n, r, dtype=torch.float64)
k32 = k.float()
ku = torch.empty(n, n, dtype=torch.float32)
_skinny_upper.matmul(k, v, th, cast=ku)


def setw(w):
    _skinny_upper.WIDTH = w


variants = [("full f32 k, f64 sums (today)", lambda: _skinny.matmul(k32, v, th))]
for w in widths:
    variants.append(
        (
            f"upper f32 k, f32 sums w{w}",
            lambda w=w: (setw(w), _skinny_upper.matmul(ku, v, th, sums=torch.float32)),
        )
    )
    variants.append(
        (f"upper f32 k, f64 sums w{w}", lambda w=w: (setw(w), _skinny_upper.matmul(ku, v, th)))
    )
times = {name: [] for name, _ in variants}
print("load", os.getloadavg(), "threads", th)
with _skinny.torch_serial():
    for f in variants:
        f[1]()
    for _ in range(15):
        for name, f in variants:
            s = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - s)
for name, t in times.items():
    print(f"{name:36s} min {min(t) * 1e3:6.1f} ms  median {np.median(t) * 1e3:6.1f} ms")
print("load", os.getloadavg())
