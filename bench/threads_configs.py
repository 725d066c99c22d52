"""Thread-pool configurations of one case, interleaved in one process, quiet and then beside
one busy Python process; per configuration the median wall and CPU time and the mean time
of each step (input checks, variances, tiles, final checks).

    quiet python bench/threads_configs.py flatten 21 serial,pool2 serial,pool2-old,pool3-p2

Configurations: ``serial`` (tiles on torch's threads), ``auto`` (the library's choice),
``poolN`` (N pool threads) with ``-old`` (the steps outside the tiles on torch's threads),
``-pM`` (tiles planned for M workers), ``-tK`` (K tiles a worker). Cases as in
``threads_under_load.py``; the last lines give busy time over the quiet serial time."""

import collections
import contextlib
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import widenets as wn
import widenets.compute as C
import widenets.executors as E

case, reps = sys.argv[1], int(sys.argv[2])
acc = collections.defaultdict(float)


def wrap(mod, name, key=None):
    f = getattr(mod, name)

    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            acc[key or name] += time.perf_counter() - t

    setattr(mod, name, g)


wrap(C, "prepare_kernel", "prep")
wrap(C, "_checked", "check")
wrap(C, "_workers", "decide")
wrap(E.LocalExecutor, "run", "run")
orig_init = C.KernelWork.__init__


def init(self, *a, **k):
    t = time.perf_counter()
    orig_init(self, *a, **k)
    acc["var"] += time.perf_counter() - t


C.KernelWork.__init__ = init
rng = np.random.default_rng(0)
if case == "fc":
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
    readout = wn.GlobalAvgPool() if case == "gap" else wn.Flatten()
    net = wn.serial(*layers, readout, wn.Dense(1, w_std=1.4, b_std=0.1))
    if case == "gap":
        x, x2 = torch.from_numpy(rng.standard_normal((32, 3, 8, 8))), None
    else:
        x = torch.from_numpy(rng.standard_normal((64, 3, 16, 16)))
        x2 = torch.from_numpy(rng.standard_normal((64, 3, 16, 16)))

    def call():
        net.kernel(x, x2)


real_one = C.one_intra_op_thread
real_plan = C._plan_workers


def config(name):
    # name: serial | auto | poolN | poolN-old | poolN-tK
    C.one_intra_op_thread = real_one
    C.TASKS_PER_WORKER = 4
    C.TILE_WORKERS = None
    C._plan_workers = real_plan
    if name == "serial":
        C.TILE_WORKERS = 1
        return
    if name == "auto":
        return
    parts = name[4:].split("-")
    C.TILE_WORKERS = int(parts[0])
    for p in parts[1:]:
        if p == "old":
            C.one_intra_op_thread = contextlib.nullcontext
        elif p.startswith("t"):
            C.TASKS_PER_WORKER = int(p[1:])
        elif p.startswith("p"):
            C._plan_workers = (lambda m: lambda e: m)(int(p[1:]))


def run(names, label):
    res = {n: ([], [], collections.defaultdict(float)) for n in names}
    for n in names:
        config(n)
        call()
    for _ in range(reps):
        for n in names:
            config(n)
            acc.clear()
            t, c = time.perf_counter(), time.process_time()
            call()
            res[n][0].append(time.perf_counter() - t)
            res[n][1].append(time.process_time() - c)
            for k, v in acc.items():
                res[n][2][k] += v / reps
    out = {}
    for n, (w, c, ph) in res.items():
        out[n] = (statistics.median(w), statistics.median(c))
        wall, cpu = statistics.median(w) * 1e3, statistics.median(c) * 1e3
        print(
            f"{case} {label:5} {n:12} wall {wall:8.1f} ms  cpu {cpu:8.1f} ms  "
            + " ".join(f"{k} {v * 1e3:.1f}" for k, v in sorted(ph.items())),
            flush=True,
        )
    return out


quiet_cfg = sys.argv[3].split(",")
busy_cfg = sys.argv[4].split(",")
q = run(quiet_cfg, "quiet")
busy = subprocess.Popen(
    [
        sys.executable,
        "-c",
        "import time\nend = time.time() + 300\nwhile time.time() < end:\n    pass\n",
    ]
)
time.sleep(0.5)
try:
    b = run(busy_cfg, "busy")
finally:
    busy.kill()
    busy.wait()
base = q["serial"][0]
for n in busy_cfg:
    print(f"{case} busy {n:12} / quiet serial: {b[n][0] / base:.2f}")
