"""Nanoseconds per entry of the fully-connected chain's loop, one thread, one tile.

    python bench/fc_chain_entry.py [ROWS] [COLS]

The demo network (Dense 512, Relu, Dense 512, Relu, Dense 1; w_std 1.5, b_std 0.05), NNGP
and NTK, on a (ROWS x COLS) float64 tile (default 500 x 3,500, a stripe of the demo's
4,000 x 4,000 kernel) of random input-kernel values with unit variances:

- ``chain``: ``_numba_fc.chain`` writing the tile only;
- ``chain + mirror``: the same also writing its mirror image into (N, N) results, N =
  ROWS + COLS, as for a tile above the diagonal of a set with itself
  (``_numba_fc.MIRROR_ROWS`` rows at a time);
- ``relu chunk``, ``relu chunk, watched``: one ABRelu layer's loop on a 1,024-entry chunk
  (``_numba_fc._relu_chunk``) without and with the float32 flags (the chunk copied
  afresh in each call, included).

Best of 7 calls after a warm-up, interleaved; run it under ``flock /tmp/bench.lock``.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

import widenets as wn
from widenets import _numba_fc
from widenets._chain_runs import encode
from widenets.layers.dense import Dense


def best_ns(fn, entries: int, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) / entries * 1e9


def main() -> None:
    n1 = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    n2 = int(sys.argv[2]) if len(sys.argv) > 2 else 3500
    net = wn.serial(
        wn.Dense(512, w_std=1.5, b_std=0.05),
        wn.Relu(),
        wn.Dense(512, w_std=1.5, b_std=0.05),
        wn.Relu(),
        wn.Dense(1, w_std=1.5, b_std=0.05),
    )
    kinds, params = encode(net.layers, Dense)
    tol = math.sqrt(2 * 64 * np.finfo(np.float64).eps)
    rng = np.random.default_rng(0)
    k = rng.uniform(-0.3, 0.3, (n1, n2))
    rowf = np.zeros((len(kinds), 4, n1))
    colf = np.zeros((len(kinds), 4, n2))
    _numba_fc.variances(np.ones(n1), kinds, params, 1e-300, tol, rowf, np.empty(n1))
    _numba_fc.variances(np.ones(n2), kinds, params, 1e-300, tol, colf, np.empty(n2))
    ko, to = np.empty((n1, n2)), np.empty((n1, n2))
    none2, flags = np.empty((0, 0)), np.zeros((0, 0), np.uint8)
    # the (N, N) results of a set with itself, N = n1 + n2: the tile is rows [0, n1),
    # columns [n1, N); its mirror image rows [n1, N), columns [0, n1)
    res_k, res_t = np.zeros((n1 + n2, n1 + n2)), np.zeros((n1 + n2, n1 + n2))

    def chain(mirror: bool):
        mk, mt = (res_k[n1:, :n1], res_t[n1:, :n1]) if mirror else (none2, none2)
        args = (kinds, params, rowf, colf, tol, 1e-5, False, ko, to, flags, mk, mt)
        return lambda: _numba_fc.chain(k, none2, 1, 0.0, 0, n1, *args, 0 if mirror else n2)

    m = 1024
    kb, tb = rng.uniform(-0.3, 0.3, m), rng.uniform(0.5, 1.0, m)
    fb = np.zeros(m, np.uint8)
    i2, r2 = np.ones(m), np.ones(m)

    def relu(watch: bool):
        args = (-1.0, 1.0, i2, r2, params[1, 0], params[1, 1], tol, 1e-5, True, watch)
        return lambda: _numba_fc._relu_chunk(kb.copy(), tb.copy(), fb, m, *args)

    cases = {
        "chain": (chain(False), n1 * n2),
        "chain + mirror": (chain(True), n1 * n2),
        "relu chunk": (relu(False), m),
        "relu chunk, watched": (relu(True), m),
    }
    rows = getattr(_numba_fc, "MIRROR_ROWS", 1)  # 1: the code before, entry by entry
    print(f"fc chain, one thread, tile {n1} x {n2}, MIRROR_ROWS {rows}")
    results = {name: [] for name in cases}
    for _ in range(2):  # interleaved rounds
        for name, (fn, entries) in cases.items():
            results[name].append(best_ns(fn, entries))
    for name, ns in results.items():
        print(f"  {name:22s} {min(ns):6.2f} ns per entry")


if __name__ == "__main__":
    main()
