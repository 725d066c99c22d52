"""Benchmark: CNN-VEC (Flatten readout) and CNN-GAP (GlobalAvgPool readout) NNGP + NTK
kernels, widenets against Neural Tangents on the same inputs in the same run.

Each configuration runs in its own subprocess so that its peak memory (max RSS) is its
own. Neural Tangents is run from /tmp/nt-venv (JAX, float64, jitted kernel_fn, timed after
a warm-up call) when that virtual environment exists; otherwise its columns say "absent".

    python bench/kernel_cnn.py            # the comparison table (a few minutes on 2 cores)
    python bench/kernel_cnn.py --quick    # smaller sizes
    python bench/kernel_cnn.py --cross    # N inputs against N others (a test-train kernel)
    python bench/kernel_cnn.py --mnist-gap [--n 1000]   # CNN-GAP NNGP of N x N digits at
                                          # 14x14, bounded memory, with a progress bar
    python bench/kernel_cnn.py --tile-sweep   # full-layout tile budgets (compute.py)
    python bench/kernel_cnn.py --cross --configs myrtle5:32:4,myrtle10:32:2
                                          # Myrtle-5 and -10 on 32x32x3, with the projected
                                          # CIFAR-10 kernel's hours (60,000 x 50,000)
    python bench/kernel_cnn.py --fused on     # only the fused loops (default: both, one
                                          # row each, fused on and off, ``widenets._fused``)
    python bench/kernel_cnn.py --fused auto,off   # the default switch against the eager path
    python bench/kernel_cnn.py --dtype float32    # widenets in float32 (NT in float64)

Network: ``depth`` x [Conv(3x3, same, w_std=1.4, b_std=0.1) + ReLU], readout, Dense(1).
Each library computes the kernel 1 + ``--repeats`` (default 3) times on the same inputs in
a fresh process: the first call (for NT it includes the jit compilation for these shapes),
then the steady state, of which the fastest call is kept for both libraries (the others
were slowed by whatever else ran on the machine). Reported: steady-state wall seconds,
milliseconds per kernel entry (N^2 entries of each of NNGP and NTK), peak RSS in MiB, the
ratio NT time / widenets time in the steady state, the same ratio of CPU (process) times
(the fairer one on a machine that other jobs keep busy), and the ratio of first calls
("1st": what a user calling each library once waits). With ``--fused both`` widenets runs
twice per configuration (``WIDENETS_FUSED=on`` and ``off``, each in a fresh process; the
first call of the fused one includes loading or compiling its loops): "wn 1st" is that
first call in seconds and "off/on" the steady-state time with the fused loops off over on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

NT_PYTHON = "/tmp/nt-venv/bin/python"
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

NT_WORKER = r"""
import json, resource, sys, time
import numpy as np
import jax
from neural_tangents import stax
cfg = json.loads(sys.argv[1])
x = np.load(cfg["x"]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
x2 = np.load(cfg["x2"]).transpose(0, 2, 3, 1) if cfg.get("x2") else None
layers = []
if cfg["readout"] in ("myrtle5", "myrtle10"):  # Shankar et al. 2020, as widenets'
    w = 2 ** 0.5                                # architectures.myrtle(5 | 10)
    groups = (1, 1, 1) if cfg["readout"] == "myrtle5" else (3, 3, 3)
    def block():
        return [stax.Conv(cfg["channels"], (3, 3), padding="SAME", W_std=w, b_std=0.0),
                stax.Relu()]
    layers += block()
    for i, n in enumerate(groups):
        for _ in range(n):
            layers += block()
        if i < 2:
            layers.append(stax.AvgPool((2, 2), strides=(2, 2)))
    layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=w, b_std=0.0)]
else:
    for _ in range(cfg["depth"]):
        layers += [stax.Conv(cfg["channels"], (3, 3), padding="SAME", W_std=1.4, b_std=0.1),
                   stax.Relu()]
    readout = stax.Flatten() if cfg["readout"] == "vec" else stax.GlobalAvgPool()
    layers += [readout, stax.Dense(1, W_std=1.4, b_std=0.1)]
_, _, kernel_fn = stax.serial(*layers)
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
times = []
for _ in range(1 + cfg["repeats"]):  # the first call on these shapes compiles
    t, c = time.perf_counter(), time.process_time()
    k = kernel_fn(x, x2, get=("nngp", "ntk"))
    jax.block_until_ready(k.ntk)
    times.append((time.perf_counter() - t, time.process_time() - c))
np.save(cfg["out"], np.asarray(k.nngp))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
first, (dt, cpu) = times[0][0], min(times[1:])
print(json.dumps({"first": first, "seconds": dt, "cpu": cpu, "rss_mib": rss}))
"""


def network(depth, channels, readout):
    import widenets as wn

    if readout in ("myrtle5", "myrtle10"):
        return wn.architectures.myrtle(int(readout[6:]), channels=channels, out_dim=1)
    layers = []
    for _ in range(depth):
        layers += [wn.Conv(channels, (3, 3), w_std=1.4, b_std=0.1), wn.Relu()]
    ro = wn.Flatten() if readout == "vec" else wn.GlobalAvgPool()
    return wn.serial(*layers, ro, wn.Dense(1, w_std=1.4, b_std=0.1))


def worker(cfg):
    import resource

    import numpy as np
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    x = torch.from_numpy(np.load(cfg["x"]))
    x2 = torch.from_numpy(np.load(cfg["x2"])) if cfg.get("x2") else None
    dtype = getattr(torch, cfg.get("dtype", "float64"))
    net = network(cfg["depth"], cfg["channels"], cfg["readout"])
    times = []
    for _ in range(1 + cfg["repeats"]):  # first call in a fresh process, then steady state
        t, c = time.perf_counter(), time.process_time()
        k = net.kernel(x, x2, progress=cfg.get("progress", False), dtype=dtype)
        times.append((time.perf_counter() - t, time.process_time() - c))
    np.save(cfg["out"], k.nngp.double().numpy())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first, (dt, cpu) = times[0][0], min(times[1:])
    print(json.dumps({"first": first, "seconds": dt, "cpu": cpu, "rss_mib": rss}))


def run(cmd, cfg, env=None):
    out = subprocess.run(
        [*cmd, json.dumps(cfg)], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(
    configs, depth, channels, threads=None, repeats=3, cross=False, fused="both", dtype="float64"
):
    import numpy as np

    have_nt = os.path.exists(NT_PYTHON)
    if not have_nt:
        print(f"Neural Tangents: absent ({NT_PYTHON} not found); widenets only.\n")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nt_env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if threads == 1:
        nt_env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    import torch

    print(f"threads: {threads or 'default'} (torch default here: {torch.get_num_threads()})")
    modes = ["on", "off"] if fused == "both" else fused.split(",")
    header = (
        f"{'readout':7} {'size':>5} {'N':>5} {'fused':>5} | {'wn s':>8} {'wn ms/entry':>11}"
        f" {'wn MiB':>7} {'wn 1st':>7} | {'NT s':>8} {'NT ms/entry':>11} {'NT MiB':>7} |"
        f" {'NT/wn':>6} {'cpu':>6} {'1st':>6} {'off/on':>6} {'max|diff|':>9}"
    )
    what = "N inputs against N others" if cross else "N inputs with themselves"
    print(
        f"CNN: {depth} x [Conv 3x3 + ReLU], {channels} channels (finite face only), NNGP+NTK, "
        f"{what}; widenets in {dtype} (Neural Tangents in float64)"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for readout, size, n in configs:
            x = rng.standard_normal((n, 3, size, size))
            path = os.path.join(tmp, "x.npy")
            np.save(path, x)
            path2 = None
            if cross:
                path2 = os.path.join(tmp, "x2.npy")
                np.save(path2, rng.standard_normal((n, 3, size, size)))
            cfg = dict(
                x=path,
                x2=path2,
                depth=depth,
                channels=channels,
                readout=readout,
                threads=threads,
                repeats=repeats,
                dtype=dtype,
            )
            ours_by = {
                mode: run(
                    [sys.executable, __file__, "--worker"],
                    dict(cfg, out=os.path.join(tmp, f"wn_{mode}.npy")),
                    dict(env, WIDENETS_FUSED=mode),
                )
                for mode in modes
            }
            nan = float("nan")
            nt = {"first": nan, "seconds": nan, "cpu": nan, "rss_mib": nan}
            if have_nt:
                nt = run(
                    [NT_PYTHON, "-c", NT_WORKER], dict(cfg, out=os.path.join(tmp, "nt.npy")), nt_env
                )
            off = ours_by.get("off", {}).get("seconds", nan)
            for mode, ours in ours_by.items():
                if "error" in ours or "error" in nt:
                    print(
                        f"{readout:7} {size:>5} {n:>5} {mode:>5} | error: {ours.get('error')} "
                        f"{nt.get('error')}"
                    )
                    continue
                diff = float("nan")
                if have_nt:
                    a = np.load(os.path.join(tmp, f"wn_{mode}.npy"))
                    b = np.load(os.path.join(tmp, "nt.npy"))
                    diff = float(np.abs(a - b).max())
                per = 1e3 / (n * n)
                cifar = 60_000 * 50_000 / (n * n) / 3600  # hours per second of this kernel
                if readout.startswith("myrtle"):
                    print(
                        f"  Myrtle-{readout[6:]} CIFAR-10 projection (60,000 x 50,000 entries), "
                        f"widenets "
                        f"fused {mode}: {ours['seconds'] * cifar:.0f} wall-hours, "
                        f"{ours['cpu'] * cifar:.0f} CPU-hours on this machine; Neural Tangents "
                        f"{nt['seconds'] * cifar:.0f} wall-hours, {nt['cpu'] * cifar:.0f} "
                        "CPU-hours"
                    )
                print(
                    f"{readout:7} {size:>3}^2 {n:>5} {mode:>5} | {ours['seconds']:8.3f} "
                    f"{ours['seconds'] * per:11.4f} {ours['rss_mib']:7.0f} {ours['first']:7.2f} |"
                    f" {nt['seconds']:8.3f} {nt['seconds'] * per:11.4f} {nt['rss_mib']:7.0f} | "
                    f"{nt['seconds'] / ours['seconds']:6.2f} {nt['cpu'] / ours['cpu']:6.2f} "
                    f"{nt['first'] / ours['first']:6.2f} {off / ours['seconds']:6.2f} "
                    f"{diff:9.2e}",
                    flush=True,
                )


def mnist_gap(n, depth, channels, size=14):
    """CNN-GAP NNGP of n x n digits at size x size, tiled, with a progress bar."""
    import resource

    import torch
    import torch.nn.functional as F

    x = None
    try:
        from widenets.data import load

        data = load("mnist5k")
        x = torch.as_tensor(data.x_train[:n], dtype=torch.float64)
        x = x.reshape(len(x), 1, 28, 28) if x.ndim == 2 else x
        source = "MNIST-5k"
    except Exception as e:  # noqa: BLE001 - the data module may be absent: say so
        print(f"widenets.data MNIST-5k unavailable ({type(e).__name__}: {e}); random digits.")
        x = torch.randn(n, 1, 28, 28, dtype=torch.float64)
        source = "random 28x28"
    x = F.interpolate(x, size=(size, size), mode="area")
    x = (x - x.mean()) / x.std()
    net = network(depth, channels, "gap")
    t = time.perf_counter()
    k = net.kernel(x, get="nngp", progress=True)
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full_pairs_gib = n * n * (size**2) ** 2 * 8 / 2**30
    print(
        f"CNN-GAP ({depth} conv layers) NNGP of {n} x {n} {source} digits at {size}x{size}: "
        f"{dt:.1f} s, peak RSS {rss:.0f} MiB (the whole pixel-pair tensor would be "
        f"{full_pairs_gib:.0f} GiB); kernel {tuple(k.nngp.shape)}, "
        f"torch threads {torch.get_num_threads()}"
    )


def tile_sweep(threads=None):
    """Steady-state time of CNN-GAP kernels for several full-layout tile budgets."""
    import numpy as np
    import torch

    import widenets.compute as compute

    if threads:
        torch.set_num_threads(threads)
    cases = [(32, 3, 8, ("nngp", "ntk")), (40, 1, 14, ("nngp",)), (24, 3, 16, ("nngp", "ntk"))]
    default = (compute.TILE_NUMEL_FULL, compute.MIN_PAIRS_FULL)
    print(
        f"torch threads {torch.get_num_threads()}; default budget 2^"
        f"{default[0].bit_length() - 1}, at least {default[1]} pairs a tile"
    )
    for n, c, size, get in cases:
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((n, c, size, size)))
        net = network(5, 1, "gap")
        row = []
        for log2 in (18, 19, 20, 21):
            compute.TILE_NUMEL_FULL, compute.MIN_PAIRS_FULL = 1 << log2, 1
            net.kernel(x, get=get)  # warm-up
            times = []
            for _ in range(2):
                t = time.perf_counter()
                net.kernel(x, get=get)
                times.append(time.perf_counter() - t)
            row.append(f"2^{log2}: {min(times):.3f}-{max(times):.3f} s")
        compute.TILE_NUMEL_FULL, compute.MIN_PAIRS_FULL = default
        print(f"{size}x{size} N={n} {'+'.join(get)}: " + ", ".join(row), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--mnist-gap", action="store_true", help="the bounded-memory CNN-GAP run")
    p.add_argument("--n", type=int, default=1000, help="digits for --mnist-gap")
    p.add_argument("--tile-sweep", action="store_true", help="time full-layout tile budgets")
    p.add_argument("--cross", action="store_true", help="kernels of N inputs against N others")
    p.add_argument(
        "--repeats", type=int, default=3, help="steady-state calls per library (fastest kept)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for both libraries (1: single-threaded; use it on a busy machine, "
        "where multithreaded runs wait on each other's cores)",
    )
    p.add_argument(
        "--fused",
        default="both",
        help="widenets' fused loops (WIDENETS_FUSED): on, off, auto, both (on,off) or a "
        "comma-separated list of those, each a row of the same run (e.g. auto,off)",
    )
    p.add_argument(
        "--dtype",
        default="float64",
        choices=("float64", "float32"),
        help="widenets' dtype (Neural Tangents stays float64: max|diff| is then the float32 error)",
    )
    p.add_argument(
        "--configs",
        default=None,
        help="readout:size:N,... (e.g. gap:8:32,vec:16:100) instead of the default list",
    )
    args, rest = p.parse_known_args()
    modes = args.fused.split(",")
    if args.fused != "both" and not all(m in ("on", "off", "auto") for m in modes):
        p.error(f"--fused must be both or a comma-separated list of on, off, auto: {args.fused}")
    if args.worker:
        worker(json.loads(rest[0]))
        return
    if args.tile_sweep:
        sys.path.insert(0, SRC)
        tile_sweep(args.threads)
        return
    if args.mnist_gap:
        sys.path.insert(0, SRC)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        mnist_gap(args.n, args.depth, 1)
        return
    if args.quick:
        configs = [("vec", 8, 64), ("gap", 8, 16), ("vec", 16, 32), ("gap", 16, 8)]
    else:
        configs = [
            ("vec", 8, 100),
            ("vec", 8, 400),
            ("gap", 8, 32),
            ("gap", 8, 96),
            ("vec", 16, 100),
            ("vec", 16, 200),
            ("gap", 16, 12),
            ("gap", 16, 24),
        ]
    if args.configs:
        configs = [
            (r, int(size), int(n)) for r, size, n in (c.split(":") for c in args.configs.split(","))
        ]
    compare(configs, args.depth, 1, args.threads, args.repeats, args.cross, args.fused, args.dtype)


if __name__ == "__main__":
    main()
