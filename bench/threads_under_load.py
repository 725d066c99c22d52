"""Benchmark: a CNN-GAP kernel on a quiet machine and beside a busy process, for three
thread settings of torch (the OpenMP wait policy matters on a shared machine).

torch splits every elementwise operation over its threads and, by default, OpenMP threads
spin while they wait for each other; when another process holds a core, each of the
thousands of operations of a kernel evaluation waits for a time slice. This script measures
that in one run, each setting in a fresh subprocess (the policy is read when OpenMP starts):

- ``default``: torch's threads (all cores), OpenMP's default wait policy;
- ``passive``: the same threads with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep);
- ``1 thread``: ``torch.set_num_threads(1)``;
- Neural Tangents (jitted, its default threads), when /tmp/nt-venv exists.

The busy process (``--load``) is by default another torch job at the same priority
(elementwise operations on 8 MiB tensors with torch's default threads, as a second kernel
evaluation or a training run would do); ``--load python`` is one pure-Python loop per core
instead, ``--load-nice 19`` runs it at the lowest priority. It is bounded in time and
stopped at the end.

    python bench/threads_under_load.py              # 5 x [Conv 3x3 + ReLU] + GAP, 8x8, N=32
    python bench/threads_under_load.py --n 48 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
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
cfg = json.loads(sys.argv[1])
if cfg["threads"]:
    torch.set_num_threads(cfg["threads"])
layers = []
for _ in range(5):
    layers += [wn.Conv(1, (3, 3), w_std=1.4, b_std=0.1), wn.Relu()]
net = wn.serial(*layers, wn.GlobalAvgPool(), wn.Dense(1, w_std=1.4, b_std=0.1))
x = torch.from_numpy(np.random.default_rng(0).standard_normal((cfg["n"], 3, 8, 8)))
net.kernel(x)  # warm-up
times = []
for _ in range(cfg["repeats"]):
    t = time.perf_counter()
    net.kernel(x)
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""

NT_PYTHON = "/tmp/nt-venv/bin/python"
NT_WORKER = r"""
import json, sys, time
import numpy as np
import jax
from neural_tangents import stax
cfg = json.loads(sys.argv[1])
layers = []
for _ in range(5):
    layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), stax.Relu()]
_, _, kernel_fn = stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(1, W_std=1.4, b_std=0.1))
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
x = np.random.default_rng(0).standard_normal((cfg["n"], 3, 8, 8)).transpose(0, 2, 3, 1)
jax.block_until_ready(kernel_fn(x, None, get=("nngp", "ntk")).ntk)  # compile
times = []
for _ in range(cfg["repeats"]):
    t = time.perf_counter()
    jax.block_until_ready(kernel_fn(x, None, get=("nngp", "ntk")).ntk)
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""

LOADS = {
    # another torch job: elementwise work on 8 MiB tensors with torch's default threads
    "torch": (
        "import time, torch\nx = torch.rand(1 << 20, dtype=torch.float64)\n"
        "end = time.time() + {seconds}\nwhile time.time() < end:\n    x = torch.acos(x).sin_()\n"
    ),
    # pure Python, one loop per CPU: takes cores without any waiting of its own
    "python": "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n",
}

SETTINGS = {
    "default": ({}, None),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "1 thread": ({}, 1),
}


def measure(n: int, repeats: int, env_extra: dict, threads) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra)
    cfg = json.dumps({"n": n, "repeats": repeats, "threads": threads})
    if threads == "nt":
        env.update(JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [NT_PYTHON, "-c", NT_WORKER, cfg]
    else:
        cmd = [sys.executable, "-c", WORKER, cfg, SRC]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=32, help="inputs (8x8 images, 3 channels)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    p.add_argument("--busy-seconds", type=int, default=300, help="upper bound of the load")
    p.add_argument("--load", choices=sorted(LOADS), default="torch", help="the busy process")
    p.add_argument("--load-nice", type=int, default=0, help="niceness of the busy process")
    args = p.parse_args()
    settings = dict(SETTINGS)
    if os.path.exists(NT_PYTHON):
        settings["Neural Tangents"] = ({}, "nt")
    else:
        print(f"Neural Tangents: absent ({NT_PYTHON} not found)")
    results = {}
    for name, (env_extra, threads) in settings.items():
        results[("quiet", name)] = measure(args.n, args.repeats, env_extra, threads)
    code = LOADS[args.load].format(seconds=args.busy_seconds)
    copies = 1 if args.load == "torch" else os.cpu_count() or 1
    busy = [
        subprocess.Popen(["nice", "-n", str(args.load_nice), sys.executable, "-c", code])
        for _ in range(copies)
    ]
    try:
        for name, (env_extra, threads) in settings.items():
            results[("busy", name)] = measure(args.n, args.repeats, env_extra, threads)
    finally:
        for b in busy:
            b.kill()
            b.wait()
    print(
        f"CNN-GAP NNGP+NTK, 5 conv layers, {args.n} inputs 8x8; median (min-max) seconds of "
        f"{args.repeats} calls; {os.cpu_count()} CPUs; busy: {args.load} load at nice "
        f"{args.load_nice}"
    )
    print(f"{'setting':15} | {'quiet':>22} | {'busy':>22} | busy / quiet")
    for name in settings:
        row = []
        for machine in ("quiet", "busy"):
            t = results[(machine, name)]
            row.append(f"{statistics.median(t):7.3f} ({min(t):.3f}-{max(t):.3f})")
        ratio = statistics.median(results[("busy", name)]) / statistics.median(
            results[("quiet", name)]
        )
        print(f"{name:15} | {row[0]:>22} | {row[1]:>22} | {ratio:6.1f}")


if __name__ == "__main__":
    main()
