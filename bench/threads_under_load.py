"""Benchmark: kernels on a quiet machine and beside one busy process, widenets against
Neural Tangents, each case and setting in a fresh subprocess.

Cases (NNGP + NTK, float64):

- ``fc``: the README's fully-connected demo kernels, 3 x Dense(512) + ReLU on MNIST-5k
  (4,000 x 4,000 and 1,000 x 4,000);
- ``gap``: 5 x [Conv 3x3 + ReLU] + GlobalAvgPool + Dense, 8x8 images, N = 32 with itself;
- ``flatten``: the same with Flatten, 16x16 images, 64 against 64 others.

Settings:

- ``widenets``: the library as it is: on a quiet machine tiles one after another on torch's
  threads, or on the pool below when the call takes the (serial) numba loops
  (``widenets._fused.wants_pool``); when another process is running, tiles (sized for
  the cores) spread over a pool of one thread per core (pinned to its core when they
  cover all of them), each running torch with one intra-op thread, so that no thread
  spins waiting for a preempted one, and the steps outside the tiles also run on one torch
  thread (``widenets._pool``, ``widenets.compute._workers``);
- ``widenets, one pool thread``: tiles one after another with torch's own threads, whatever
  the load, as before the pool (``widenets.compute.TILE_WORKERS = 1``): the baseline;
- ``Neural Tangents`` 0.6.5 (jitted, its default threads), when /tmp/nt-venv exists.

The busy process (``--load``) is one CPU-bound pure-Python loop (``python``) or another torch
job doing elementwise work with torch's default threads (``torch``), started once and bounded
in time. Each worker makes a first call, then alternates quiet and busy calls: before each
it stops (SIGSTOP) or continues (SIGCONT) the busy process and waits ``--settle`` seconds
(longer than ``widenets.compute.LOAD_MAX_AGE``, so that a call sees the load as it is).
Quiet and busy calls thus share the same process and the same moments of the machine's
other activity. Each timing is the median of ``--repeats`` calls of a kind.

    flock /tmp/bench.lock python bench/threads_under_load.py
    flock /tmp/bench.lock python bench/threads_under_load.py --cases gap flatten --load torch
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

WORKER = r"""
import json, sys, time
import numpy as np
import torch
sys.path.insert(0, sys.argv[2])
import widenets as wn
import widenets.compute as compute
cfg = json.loads(sys.argv[1])
if cfg["workers"]:
    compute.TILE_WORKERS = cfg["workers"]
pooled = []  # whether each kernel evaluation ran on the pool
_decide = compute._pool_workers
def _pool_workers(*args):
    w = _decide(*args)
    pooled.append(w > 1)
    return w
compute._pool_workers = _pool_workers
rng = np.random.default_rng(0)
if cfg["case"] == "fc":
    layers = []
    for _ in range(3):
        layers += [wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu()]
    net = wn.serial(*layers, wn.Dense(10, w_std=1.5, b_std=0.05))
    data = wn.data.mnist5k(n_train=4000, n_test=1000, seed=0)
    def call():
        net.kernel(data.x_train)
        net.kernel(data.x_test, data.x_train)
else:
    layers = []
    for _ in range(5):
        layers += [wn.Conv(64, (3, 3), w_std=1.4, b_std=0.1), wn.Relu()]
    readout = wn.GlobalAvgPool() if cfg["case"] == "gap" else wn.Flatten()
    net = wn.serial(*layers, readout, wn.Dense(1, w_std=1.4, b_std=0.1))
    if cfg["case"] == "gap":
        x = torch.from_numpy(rng.standard_normal((32, 3, 8, 8)))
        call = lambda: net.kernel(x)
    else:
        x = torch.from_numpy(rng.standard_normal((64, 3, 16, 16)))
        x2 = torch.from_numpy(rng.standard_normal((64, 3, 16, 16)))
        call = lambda: net.kernel(x, x2)
call()
import os, signal
times = {"quiet": [], "busy": [], "pooled": {"quiet": 0, "busy": 0}}
for _ in range(cfg["repeats"]):
    for kind in ("quiet", "busy"):
        os.kill(cfg["busy_pid"], signal.SIGSTOP if kind == "quiet" else signal.SIGCONT)
        time.sleep(cfg["settle"])
        pooled.clear()
        t = time.perf_counter()
        call()
        times[kind].append(time.perf_counter() - t)
        times["pooled"][kind] += any(pooled)
os.kill(cfg["busy_pid"], signal.SIGSTOP)
print(json.dumps(times))
"""

NT_PYTHON = "/tmp/nt-venv/bin/python"
NT_WORKER = r"""
import json, sys, time
import numpy as np
import jax
from neural_tangents import stax
cfg = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
if cfg["case"] == "fc":
    layers = []
    for _ in range(3):
        layers += [stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(10, W_std=1.5, b_std=0.05))
    x_train, x_test = np.load(cfg["data"] + "/x_train.npy"), np.load(cfg["data"] + "/x_test.npy")
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    def call():
        jax.block_until_ready(kernel_fn(x_train, None, get=("nngp", "ntk")).ntk)
        jax.block_until_ready(kernel_fn(x_test, x_train, get=("nngp", "ntk")).ntk)
else:
    layers = []
    for _ in range(5):
        layers += [stax.Conv(64, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), stax.Relu()]
    readout = stax.GlobalAvgPool() if cfg["case"] == "gap" else stax.Flatten()
    _, _, kernel_fn = stax.serial(*layers, readout, stax.Dense(1, W_std=1.4, b_std=0.1))
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    if cfg["case"] == "gap":
        x = rng.standard_normal((32, 3, 8, 8)).transpose(0, 2, 3, 1)
        x2 = None
    else:
        x = rng.standard_normal((64, 3, 16, 16)).transpose(0, 2, 3, 1)
        x2 = rng.standard_normal((64, 3, 16, 16)).transpose(0, 2, 3, 1)
    def call():
        jax.block_until_ready(kernel_fn(x, x2, get=("nngp", "ntk")).ntk)
call()
import os, signal
times = {"quiet": [], "busy": []}
for _ in range(cfg["repeats"]):
    for kind in ("quiet", "busy"):
        os.kill(cfg["busy_pid"], signal.SIGSTOP if kind == "quiet" else signal.SIGCONT)
        time.sleep(cfg["settle"])
        t = time.perf_counter()
        call()
        times[kind].append(time.perf_counter() - t)
os.kill(cfg["busy_pid"], signal.SIGSTOP)
print(json.dumps(times))
"""

LOADS = {
    # one CPU-bound pure-Python process: takes a core without any waiting of its own
    "python": "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n",
    # another torch job: elementwise work on 8 MiB tensors with torch's default threads
    "torch": (
        "import time, torch\nx = torch.rand(1 << 20, dtype=torch.float64)\n"
        "end = time.time() + {seconds}\nwhile time.time() < end:\n    x = torch.acos(x).sin_()\n"
    ),
}

CASES = {
    "fc": "FC demo kernels (3 x Dense 512 + ReLU; 4000 x 4000 + 1000 x 4000 MNIST)",
    "gap": "CNN + GlobalAvgPool (5 conv layers, 8x8, N = 32 with itself)",
    "flatten": "CNN + Flatten (5 conv layers, 16x16, 64 against 64)",
}
SETTINGS = {"widenets": 0, "widenets, one pool thread": 1}  # 0: decided per call


def _nt_data() -> str:
    """MNIST-5k inputs as .npy files for Neural Tangents (the same rows widenets uses)."""
    import numpy as np

    sys.path.insert(0, SRC)
    import widenets as wn

    folder = "/tmp/widenets-bench-threads"
    os.makedirs(folder, exist_ok=True)
    data = wn.data.mnist5k(n_train=4000, n_test=1000, seed=0)
    np.save(folder + "/x_train.npy", data.x_train.numpy())
    np.save(folder + "/x_test.npy", data.x_test.numpy())
    return folder


def measure(case: str, setting: str, args, data: str | None, busy_pid: int) -> dict:
    """{"quiet": [s, ...], "busy": [s, ...]} of one case and setting, in a fresh process."""
    cfg = {"case": case, "repeats": args.repeats, "workers": SETTINGS.get(setting),
           "data": data, "busy_pid": busy_pid, "settle": args.settle}  # fmt: skip
    env = dict(os.environ)
    if setting == "Neural Tangents":
        env.update(JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [NT_PYTHON, "-c", NT_WORKER, json.dumps(cfg)]
    else:
        cmd = [sys.executable, "-c", WORKER, json.dumps(cfg), SRC]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{case} / {setting}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    p.add_argument("--repeats", type=int, default=3, help="timed calls of each kind")
    p.add_argument(
        "--settle", type=float, default=1.2, help="seconds between a change of load and a call"
    )
    p.add_argument("--busy-seconds", type=int, default=600, help="upper bound of the load")
    p.add_argument("--load", choices=sorted(LOADS), default="python", help="the busy process")
    p.add_argument(
        "--settings", nargs="+", choices=[*SETTINGS, "Neural Tangents"],
        default=[*SETTINGS, "Neural Tangents"], help="what to measure",
    )  # fmt: skip
    args = p.parse_args()
    settings = [s for s in args.settings if s in SETTINGS]
    data = None
    if "Neural Tangents" not in args.settings:
        pass
    elif os.path.exists(NT_PYTHON):
        settings.append("Neural Tangents")
        data = _nt_data()
    else:
        print(f"Neural Tangents: absent ({NT_PYTHON} not found)")
    code = LOADS[args.load].format(seconds=args.busy_seconds)
    busy = subprocess.Popen([sys.executable, "-c", code])
    os.kill(busy.pid, signal.SIGSTOP)
    results, pooled = {}, {}
    try:
        for case in args.cases:
            for s in settings:
                times = measure(case, s, args, data, busy.pid)
                for kind in ("quiet", "busy"):
                    results[(kind, case, s)] = times[kind]
                pooled[(case, s)] = times.get("pooled")
    finally:
        busy.kill()
        busy.wait()
    print(
        f"NNGP + NTK, float64; median of {args.repeats} calls of each kind after a first one, "
        f"quiet and busy alternating; {os.cpu_count()} CPUs; busy: one {args.load} process "
        "beside it"
    )
    print(f"{'case':8} | {'setting':26} | {'quiet s':>8} | {'busy s':>8} | busy/quiet")
    for case in args.cases:
        for s in settings:
            q = statistics.median(results[("quiet", case, s)])
            b = statistics.median(results[("busy", case, s)])
            p = pooled[(case, s)]
            on = "" if p is None else f" | pool in {p['quiet']}/{p['busy']} quiet/busy calls"
            print(f"{case:8} | {s:26} | {q:8.3f} | {b:8.3f} | {b / q:6.2f}{on}")
    for case in args.cases if {"widenets", "widenets, one pool thread"} <= set(settings) else []:
        base = statistics.median(results[("quiet", case, "widenets, one pool thread")])
        now = statistics.median(results[("quiet", case, "widenets")])
        print(f"{case}: quiet time against the one-pool-thread baseline: {now / base:.2f}")


if __name__ == "__main__":
    main()
