"""Benchmark: one numba loop per Conv(3x3) + ReLU layer against widenets' eager and
torch.compile paths, on the networks of ``bench/kernel_cnn.py`` (issue 19).

The numba loop computes, for every output entry of a tile (inputs i, j and the position
pair), the convolution's window sum of K and Theta (the 3x3 taps on the pixel-pair
diagonal, zeros outside: "same" padding), K_c = w^2/9 sum K + b^2 and
Theta_c = w^2/9 sum Theta + K_c (NTK parameterisation), then the ReLU arc-cosine map
(Cho & Saul 2009) with the per-position variances q1 (of x1) and q2 (of x2):
-c = K_c / sqrt(q1 q2) clipped, phi = arccos(-c) snapped within sqrt(128 eps) of 0 or pi,
K' = (sin phi - phi (-c)) sqrt(q1 q2) / (2 pi) and Theta' = Theta_c phi / (2 pi).
The variances follow the same map on the diagonal (c = 1). Full (pixel-pair, GAP readout)
and diagonal (Flatten readout) layouts; prange over a tile's rows.

This is a measurement, not library code: the widenets kernels are computed with
``WIDENETS_FUSED=off`` (eager) and ``on`` (torch.compile) in fresh processes, the numba
network in another; all on the same inputs, the kernels compared (max relative difference
against eager). Needs numba (``pip install numba``); its compiled loops are cached on disk
(``cache=True``, in ``$NUMBA_CACHE_DIR`` when set), so "1st" of a second run is the warm
first call.

Neural Tangents (``/tmp/nt-venv``, the worker of ``bench/kernel_cnn.py``, jitted, timed
after its first call) runs on the same inputs in the same run when present: "NT/x" is its
steady-state time over each row's. ``--cold`` gives the numba and inductor caches fresh
empty folders, so that the first row of each in the run shows the cold first call (the
compilation); without it the default caches are used (warm after one run).

    python bench/fused_numba.py                       # gap:8:32, gap:16:24, vec:16:100 cross
    python bench/fused_numba.py --cold --configs gap:8:32 --threads 1
    python bench/fused_numba.py --first-call           # numba's compilation, cold and warm
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
W_STD, B_STD = 1.4, 0.1


def _masks(w, period, woff, dtype):
    """(2, period) 0/1: whether the tap dw = -1, +1 stays inside the (W, W') plane."""
    import numpy as np

    m = np.zeros((2, period), dtype)
    for q, dw in enumerate((-1, 1)):
        for e in range(period):
            if woff == 1:  # diagonal layout: e = w
                m[q, e] = 0 <= e + dw < w
            else:  # full layout: e = (w, w')
                a, b = divmod(e, w)
                m[q, e] = 0 <= a + dw < w and 0 <= b + dw < w
    return m


def numba_network(x1, x2, depth, full, threads, split=False):
    """NNGP and NTK of depth x [Conv(3x3, same, W_STD, B_STD) + Relu], readout (GAP when
    ``full``, else Flatten), Dense(1, W_STD, B_STD), by the numba loop. Variances (per
    input, 1/N of the work) by numpy; returns (nngp, ntk, seconds in the loops)."""
    import numba
    import numpy as np

    sys.path.insert(0, HERE)
    import _numba_loops as loops_mod

    cross = x2 is not None
    x2 = x1 if x2 is None else x2
    n1, c, h, w = x1.shape
    n2 = x2.shape[0]
    dt = x1.dtype
    coef = 1.0 / (2 * math.pi)
    tol = math.sqrt(2 * 64 * np.finfo(dt).eps)
    scale, bvar = W_STD**2 / 9, B_STD**2
    # the pairs: all for two sets, the upper triangle for a set with itself (as widenets)
    pi, pj = np.indices((n1, n2)).reshape(2, -1)
    if not cross:
        pi, pj = pi[pi <= pj], pj[pi <= pj]
    if full:  # (P, H, H', W, W') as rows r = h of L = H' W W' entries
        rows, length, rho, hoff, woff, period = h, h * w * w, 1, w * w, w + 1, w * w
    else:  # (P, H, W): one row of L = H W entries
        rows, length, rho, hoff, woff, period = 1, h * w, 0, w, 1, w
    k = np.empty((len(pi), rows, length), dt)
    for i in range(n1):  # the input Gram, one row of pairs at a time
        sel = pi == i
        a, b = x1[i], x2[pj[sel]]
        g = np.einsum("chw,jcgv->jhgwv" if full else "chw,jchw->jhw", a, b, optimize=True)
        k[sel] = (g / c).reshape(-1, rows, length)
    t = np.empty((0, 0, 0), dt)
    mask = _masks(w, period, woff, dt)
    v1 = (x1 * x1).sum(1) / c  # (n, H, W) variances per position
    v2 = (x2 * x2).sum(1) / c if cross else v1
    before = numba.get_num_threads()
    numba.set_num_threads(threads)  # restored below: nothing outlives the call
    loops = 0.0
    try:
        ko, to = np.empty_like(k), np.empty_like(k)
        for _ in range(depth):
            q = []
            for v in (v1, v2) if cross else (v1,):
                p = np.pad(v, ((0, 0), (1, 1), (1, 1)))
                s = sum(p[:, a : a + h, b : b + w] for a in range(3) for b in range(3))
                q.append((s * scale + bvar).astype(dt))
            q1, q2 = q[0], q[-1]
            r1 = np.maximum(np.sqrt(q1), np.finfo(dt).tiny)
            r2 = np.maximum(np.sqrt(q2), np.finfo(dt).tiny)
            if full:  # q1 at (h, w) over (h', w, w'); q2 at (h', w') over (h', w, w')
                f1n = np.broadcast_to((-1 / r1)[:, :, None, :, None], (n1, h, h, w, w))
                f1s = np.broadcast_to((r1 * coef)[:, :, None, :, None], (n1, h, h, w, w))
                f2i = np.broadcast_to((1 / r2)[:, :, None, :], (n2, h, w, w))
                f2r = np.broadcast_to(r2[:, :, None, :], (n2, h, w, w))
            else:
                f1n, f1s, f2i, f2r = -1 / r1, r1 * coef, 1 / r2, r2
            f1n, f1s = (np.ascontiguousarray(f.reshape(n1, rows, length), dt) for f in (f1n, f1s))
            f2i, f2r = (np.ascontiguousarray(f.reshape(n2, length), dt) for f in (f2i, f2r))
            tic = time.perf_counter()
            if split:  # two loops: the Conv layer's, then the ReLU's
                loops_mod.conv_only(k, t, mask, rho, hoff, woff, scale, bvar, ko, to)
                loops_mod.relu_only(ko, to, pi, pj, f1n, f1s, f2i, f2r, coef, 0.0, tol)
            else:
                loops_mod.conv_relu(k, t, pi, pj, f1n, f1s, f2i, f2r, mask, rho, hoff, woff, scale,
                                    bvar, coef, 0.0, tol, ko, to)  # fmt: skip
            loops += time.perf_counter() - tic
            if t.size == 0:
                t = np.empty_like(k)
            k, ko = ko, k
            t, to = to, t
            # the variances after the ReLU: the map at c = 1 (phi = pi: sin(pi) + pi)
            v1 = (q1 * (math.sin(math.pi) + math.pi) * coef).astype(dt)
            v2 = (q2 * (math.sin(math.pi) + math.pi) * coef).astype(dt) if cross else v1
    finally:
        numba.set_num_threads(before)
    nngp, ntk = np.empty((2, n1, n2))
    # GAP: the mean over all position pairs; Flatten: over the positions (the diagonal)
    k_ro, t_ro = k.mean((1, 2)), t.mean((1, 2))
    nngp[pi, pj] = W_STD**2 * k_ro + bvar
    ntk[pi, pj] = W_STD**2 * t_ro + nngp[pi, pj]
    if not cross:
        nngp[pj, pi], ntk[pj, pi] = nngp[pi, pj], ntk[pi, pj]
    return nngp, ntk, loops


FIRST_CALL = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np
import numba
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import _numba_loops as L
t1 = time.perf_counter()
dt = np.dtype(sys.argv[1])
k = np.random.rand(4, 2, 16).astype(dt)
t, ko, to = np.empty((0, 0, 0), dt), np.empty_like(k), np.empty_like(k)
pi = pj = np.arange(4)
f, g, mask = np.ones((4, 2, 16), dt), np.ones((4, 16), dt), np.ones((2, 4), dt)
L.conv_relu(k, t, pi, pj, -f, f, g, g, mask, 1, 4, 1, 0.2, 0.01, 0.16, 0.0, 1e-7, ko, to)
print(f"{t1 - t0:.2f} {time.perf_counter() - t1:.2f}")
"""


def first_call():
    """Seconds to import numba and the loops, and of the first conv_relu call, in fresh
    processes with an empty numba cache (cold), then again (warm)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=tmp)
        print(f"{'dtype':8} {'cache':5} {'import s':>8} {'1st call s':>10}")
        for dt in ("float64", "float32"):
            for state in ("cold", "warm"):
                cmd = [sys.executable, "-c", FIRST_CALL, dt, HERE, SRC]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                imp, call = out.stdout.split()
                print(f"{dt:8} {state:5} {imp:>8} {call:>10}")


def worker(cfg):
    import numpy as np

    x1 = np.load(cfg["x"]).astype(cfg["dtype"])
    x2 = np.load(cfg["x2"]).astype(cfg["dtype"]) if cfg.get("x2") else None
    full = cfg["readout"] == "gap"
    times = []
    for _ in range(1 + cfg["repeats"]):
        tic = time.perf_counter()
        if cfg["lib"] in ("numba", "split"):
            nngp, ntk, loops = numba_network(
                x1, x2, cfg["depth"], full, cfg["threads"], split=cfg["lib"] == "split"
            )
        else:
            import torch

            sys.path.insert(0, SRC)
            import widenets as wn

            torch.set_num_threads(cfg["threads"])
            layers = []
            for _ in range(cfg["depth"]):
                layers += [wn.Conv(1, (3, 3), w_std=W_STD, b_std=B_STD), wn.Relu()]
            ro = wn.GlobalAvgPool() if full else wn.Flatten()
            net = wn.serial(*layers, ro, wn.Dense(1, w_std=W_STD, b_std=B_STD))
            t2 = None if x2 is None else torch.from_numpy(x2)
            kern = net.kernel(torch.from_numpy(x1), t2, dtype=getattr(torch, cfg["dtype"]))
            nngp, ntk, loops = kern.nngp.numpy(), kern.ntk.numpy(), float("nan")
        times.append((time.perf_counter() - tic, loops))
    np.save(cfg["out"], np.stack([nngp, ntk]))
    best = min(times[1:])
    layer = ""
    if cfg["lib"] in ("numba", "split"):
        import numba

        layer = numba.threading_layer()
    print(json.dumps({"first": times[0][0], "seconds": best[0], "loops": best[1], "layer": layer}))


def run(cfg, env):
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--configs", default="gap:8:32,gap:16:24,vec:16:100")
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--libs", default="eager,compile,numba,split,nt")
    p.add_argument("--cold", action="store_true", help="empty numba and inductor caches")
    p.add_argument("--first-call", action="store_true", help="numba's compile time, cold/warm")
    args, rest = p.parse_known_args()
    if args.worker:
        worker(json.loads(rest[0]))
        return
    if args.first_call:
        first_call()
        return
    import numpy as np

    threads = args.threads or os.cpu_count()
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    sys.path.insert(0, HERE)
    from kernel_cnn import NT_PYTHON, NT_WORKER

    nt_env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if threads == 1:
        nt_env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    cold = tempfile.TemporaryDirectory() if args.cold else None
    if cold is not None:
        env["NUMBA_CACHE_DIR"] = os.path.join(cold.name, "numba")
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cold.name, "inductor")
    rng = np.random.default_rng(0)
    libs = args.libs.split(",")
    print(f"{args.depth} x [Conv 3x3 + ReLU], NNGP+NTK, {args.dtype}, {threads} threads")
    print("cold caches" if args.cold else "default caches (warm after a first run)")
    print(
        f"{'case':14} {'lib':8} {'1st s':>7} {'s':>8} {'loops s':>8} {'eager/x':>8} {'NT/x':>6}"
        f" {'rel diff':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.configs.split(","):
            readout, size, n = spec.split(":")
            size, n = int(size), int(n)
            x = rng.standard_normal((n, 3, size, size))
            np.save(os.path.join(tmp, "x.npy"), x)
            x2 = None
            if readout == "vec":  # the cross-set case: N against N others
                x2 = os.path.join(tmp, "x2.npy")
                np.save(x2, rng.standard_normal((n, 3, size, size)))
            cfg = dict(
                x=os.path.join(tmp, "x.npy"), x2=x2, readout=readout, depth=args.depth,
                repeats=args.repeats, threads=threads, dtype=args.dtype,
            )  # fmt: skip
            res, ref = {}, None
            nt = float("nan")
            if "nt" in libs and os.path.exists(NT_PYTHON):  # first: its time is each row's NT/x
                ntc = dict(cfg, channels=1, out=os.path.join(tmp, "nt.npy"))
                out = subprocess.run(
                    [NT_PYTHON, "-c", NT_WORKER, json.dumps(ntc)],
                    capture_output=True, text=True, env=nt_env, check=False,
                )  # fmt: skip
                if out.returncode == 0:
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    nt = r["seconds"]
                    print(f"{spec:14} {'NT':8} {r['first']:7.2f} {nt:8.3f}", flush=True)
                else:
                    print(f"{spec:14} NT       error: {out.stderr.strip().splitlines()[-1:]}")
            for lib in (x for x in libs if x != "nt"):
                out = os.path.join(tmp, f"{lib}.npy")
                mode = {"eager": "off", "compile": "on"}.get(lib, "off")
                lib_name = lib if lib in ("numba", "split") else "widenets"
                res[lib] = run(dict(cfg, lib=lib_name, out=out), dict(env, WIDENETS_FUSED=mode))
                if "error" in res[lib]:
                    print(f"{spec:14} {lib:8} error: {res[lib]['error']}")
                    continue
                val = np.load(out)
                if ref is None and lib == "eager":
                    ref = val
                diff = float((np.abs(val - ref) / np.abs(ref)).max()) if ref is not None else 0
                e = res.get("eager", {}).get("seconds", float("nan"))
                r = res[lib]
                print(
                    f"{spec:14} {lib:8} {r['first']:7.2f} {r['seconds']:8.3f} {r['loops']:8.3f}"
                    f" {e / r['seconds']:8.2f} {nt / r['seconds']:6.2f} {diff:9.1e} {r['layer']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
