"""Time of a fully-connected kernel computed into a zarr store, against the in-memory kernel.

    python bench/kernel_store.py [--n 8000] [--chunk 1024] [--get nngp,ntk]

Rows: ``net.kernel`` in memory (the baseline), ``store_kernel`` in this process, and
``store_kernel`` on a Dask ``LocalCluster`` of 2 workers with 1 thread each; each as a
ratio to the baseline measured in the same run, and the store's size on disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch

from widenets.architectures import fully_connected
from widenets.dask_executor import DaskExecutor
from widenets.kernel_store import store_kernel


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8000)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--get", default="nngp,ntk")
    a = p.parse_args()
    get = tuple(a.get.split(","))
    net = fully_connected(3, activation="relu")
    x = torch.randn(a.n, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    root = tempfile.mkdtemp(prefix="widenets-bench-")
    try:
        t = time.perf_counter()
        net.kernel(x, get=get, progress=False)
        base = time.perf_counter() - t
        print(f"N = {a.n}, chunk {a.chunk}, {get}: in memory {base:.2f} s (baseline)")

        t = time.perf_counter()
        store_kernel(net, os.path.join(root, "local"), x, get=get, chunk=a.chunk, progress=False)
        local = time.perf_counter() - t
        size = _size(os.path.join(root, "local"))
        print(f"store, in process: {local:.2f} s ({local / base:.2f}x), {size / 2**30:.2f} GiB")

        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc,
            Client(lc) as client,
        ):
            t = time.perf_counter()
            store_kernel(
                net, os.path.join(root, "dask"), x, get=get, chunk=a.chunk,
                executor=DaskExecutor(client), progress=False,
            )  # fmt: skip
            dask = time.perf_counter() - t
        print(
            f"store, LocalCluster 2x1: {dask:.2f} s ({dask / base:.2f}x baseline, "
            f"{dask / local:.2f}x in process)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
