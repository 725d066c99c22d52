"""Issue 18, N = 50,000: stream stored tiles or recompute them? One product K V (R = 10)
over ROWS x 50,000 rows of the MNIST-1D NNGP (``bench/solver.py``'s data and network):
recomputed by ``NetworkKernel``, against the same rows stored by ``store_kernel`` and read
back cold (pages dropped) and warm, through the zarr array and the checked operator.

    python bench/scale_slice.py [ROWS]   # default 5000; a 2 GB store in the temp dir
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
import sys
import tempfile
import time

import torch

import widenets as wn
from solver import mnist1d
from widenets.kernel_store import store_kernel
from widenets.predict import DenseKernel, NetworkKernel

N = 50000


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def drop_pages(path: str) -> None:
    for f in glob.glob(path + "/**", recursive=True):
        if os.path.isfile(f):
            fd = os.open(f, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    print("load", os.getloadavg(), "threads", torch.get_num_threads(), flush=True)
    x, _, _, _ = mnist1d(N, 10000)
    net = wn.architectures.fully_connected(depth=3, b_std=0.1)
    v = torch.randn(N, 10, dtype=torch.float64)
    passes = N / rows
    t_re, ref = timed(lambda: NetworkKernel(net, x[:rows], x).matmul(v))
    print(f"recomputed {rows} x {N}: {t_re:.2f} s, a full pass ~{t_re * passes:.0f} s")
    path = os.path.join(tempfile.gettempdir(), "widenets-slice-store")
    shutil.rmtree(path, ignore_errors=True)
    try:
        t_st, st = timed(lambda: store_kernel(net, path, x[:rows], x, get="nngp", progress=False))
        print(f"store_kernel {rows} x {N}: {t_st:.2f} s")
        ops = {
            "zarr array": lambda: DenseKernel(st.zarr("nngp"), block_rows=1024),
            "checked operator": lambda: st.operator("nngp"),
        }
        for name, make in ops.items():
            drop_pages(path)
            op = make()
            t_cold, out = timed(lambda op=op: op.matmul(v))
            t_warm, _ = timed(lambda op=op: op.matmul(v))
            diff = float((out - ref).norm() / ref.norm())
            print(
                f"{name}: cold {t_cold:.2f} s, warm {t_warm:.2f} s; a full pass cold "
                f"~{t_cold * passes:.0f} s warm ~{t_warm * passes:.0f} s (vs recomputed {diff:.0e})"
            )
    finally:
        shutil.rmtree(path, ignore_errors=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {rss:.2f} GiB, load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
