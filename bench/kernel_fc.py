"""Benchmark: NNGP and NTK of the fully-connected network of issue 2, against three baselines.

The network (Dense 512, ReLU, Dense 512, ReLU, Dense 1; w_std = 1.5, b_std = 0.05, NTK
parameterisation) on random standard-normal inputs of dimension 784, float64:

- square cases: ``net.kernel(x)`` for N = 2,000 to 8,000 (an N x N NNGP and NTK);
- the demo's shape: ``net.kernel(x_train)`` (4,000 x 4,000) plus ``net.kernel(x_test,
  x_train)`` (1,000 x 4,000), timed together.

Implementations, each case of each run in a fresh subprocess:

- ``widenets``: ``net.kernel(..., get=("nngp", "ntk"))`` with the library's defaults;
- ``fused``: the same with the fused loops on (``widenets._fused.FUSED = True``: the
  fully-connected run folded in one numba pass, ``widenets._fc_chain``), on torch's threads;
- ``fusedpool``: the same on the tile pool (``compute.TILE_WORKERS`` = torch's threads);
- ``numpy``: a plain NumPy implementation of the same recursion on the whole matrix
  (K' = w^2 K + b^2, Theta' = K' + w^2 Theta; ReLU by the arc-cosine kernel, Cho & Saul 2009,
  Theta' = Theta (pi - theta) / (2 pi));
- ``gram``: the bare input Gram matmul ``x1 @ x2.T`` of the same shapes in torch float64,
  the floor no implementation can beat (every kernel starts with it);
- ``nt``: Neural Tangents 0.6.5's ``jax.jit(kernel_fn)`` (jax_enable_x64, block_until_ready),
  run with ``/tmp/nt-venv/bin/python`` (or ``$WIDENETS_NT_PYTHON``) through ``bench/_nt.py``;
  its compile time (first call minus the best call) is reported separately, not in its time.

Time is the best of ``--repeats`` calls after one warm-up call (median also shown). Peak
memory is the rise of the subprocess's VmHWM (/proc/self/status) over its value after the
imports, loading the inputs and one call on 4 inputs (lazy initialisation), so it counts
this case's outputs and intermediates (and, for Neural Tangents, its compilation).
The first rows of every output are compared across implementations (max relative
difference to widenets, off the diagonal of K(x, x): see ``max_rel``).

Usage::

    PYTHONPATH=src python bench/kernel_fc.py            # N = 2000, 4000, 8000 and the demo
    PYTHONPATH=src python bench/kernel_fc.py --quick    # small shapes, a smoke test
    PYTHONPATH=src python bench/kernel_fc.py --out results.json
    PYTHONPATH=src python bench/kernel_fc.py --impls gram,widenets,fused,fusedpool \
        --sizes , --profile    # the demo case only, with a cProfile of one call of each

Nothing is written outside a temporary directory unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _nt import NTUnavailable, nt_missing_reason, run_nt, single_thread_env  # noqa: E402

DIM = 784
WIDTH = 512
W_STD = 1.5
B_STD = 0.05
#: (kind, w_std, b_std, out_dim) or ("relu",): the network above
LAYERS = [
    ("dense", W_STD, B_STD, WIDTH),
    ("relu",),
    ("dense", W_STD, B_STD, WIDTH),
    ("relu",),
    ("dense", W_STD, B_STD, 1),
]
#: rows of each output kept to compare implementations
CHECK_ROWS = 128
IMPLS = ("gram", "widenets", "fused", "fusedpool", "numpy", "nt")
DEFAULT_IMPLS = ("gram", "widenets", "fused", "numpy", "nt")
#: the implementations that run widenets
WIDENETS = ("widenets", "fused", "fusedpool")


# ----- measuring inside a worker ------------------------------------------------------------
def vmhwm_mib() -> float:
    """Peak resident memory of this process so far (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def time_calls(fn, repeats: int) -> tuple[list[float], float, object]:
    """One warm-up call (its time returned), then ``repeats`` timed calls."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        del out  # do not hold the previous result while computing the next
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, first, out


def numpy_kernel(x1: np.ndarray, x2: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """NNGP and NTK of LAYERS by the plain recursion on whole matrices (no tiling)."""
    same = x2 is None
    x2 = x1 if same else x2
    d = x1.shape[1]
    k = x1 @ x2.T
    k /= d
    q1 = np.einsum("ij,ij->i", x1, x1) / d
    q2 = q1 if same else np.einsum("ij,ij->i", x2, x2) / d
    if same:
        np.fill_diagonal(k, q1)
    t = np.zeros_like(k)
    for layer in LAYERS:
        if layer[0] == "dense":
            w2, b2 = layer[1] ** 2, layer[2] ** 2
            k = w2 * k + b2
            t = k + w2 * t
            q1, q2 = w2 * q1 + b2, w2 * q2 + b2
        else:  # relu: arc-cosine kernel of degree 1
            s = np.sqrt(q1)[:, None] * np.sqrt(q2)[None, :]
            c = np.clip(k / s, -1.0, 1.0)
            theta = np.arccos(c)
            k = s * (np.sin(theta) + (np.pi - theta) * c) / (2 * np.pi)
            t = t * ((np.pi - theta) / (2 * np.pi))
            q1, q2 = q1 / 2, q2 / 2
    return k, t


def worker(impl: str, data_dir: str, repeats: int, profile: bool = False) -> dict:
    """Run one implementation on the inputs in ``data_dir``; return its measurements."""
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    x_train = np.load(os.path.join(data_dir, "x_train.npy"))
    test_path = os.path.join(data_dir, "x_test.npy")
    x_test = np.load(test_path) if os.path.exists(test_path) else None
    info = {"threads": torch.get_num_threads()}

    if impl in WIDENETS:
        import widenets as wn
        from widenets import _fused, compute

        if impl != "widenets":
            _fused.FUSED = True
        if impl == "fusedpool":
            compute.TILE_WORKERS = torch.get_num_threads()

        net = wn.serial(
            wn.Dense(WIDTH, w_std=W_STD, b_std=B_STD),
            wn.Relu(),
            wn.Dense(WIDTH, w_std=W_STD, b_std=B_STD),
            wn.Relu(),
            wn.Dense(1, w_std=W_STD, b_std=B_STD),
        )
        xt = torch.from_numpy(x_train)
        xs = None if x_test is None else torch.from_numpy(x_test)

        def run():
            k = net.kernel(xt, progress=False)
            out = [k.nngp, k.ntk]
            if xs is not None:
                k2 = net.kernel(xs, xt, progress=False)
                out += [k2.nngp, k2.ntk]
            return out

    elif impl == "numpy":

        def run():
            out = list(numpy_kernel(x_train, None))
            if x_test is not None:
                out += list(numpy_kernel(x_test, x_train))
            return out

    elif impl == "gram":
        xt = torch.from_numpy(x_train)
        xs = None if x_test is None else torch.from_numpy(x_test)

        def run():
            out = [xt @ xt.T]
            if xs is not None:
                out.append(xs @ xt.T)
            return out

    else:
        raise ValueError(f"unknown implementation {impl!r}")

    # libraries initialise lazily on their first call: do that on a tiny input before the
    # memory baseline, so the peak counts this case's arrays only
    tiny = x_train[:4]
    if impl in WIDENETS:
        net.kernel(torch.from_numpy(tiny), progress=False)
        net.kernel(torch.from_numpy(tiny), torch.from_numpy(tiny), progress=False)
    elif impl == "numpy":
        numpy_kernel(tiny, None)
    else:
        torch.from_numpy(tiny) @ torch.from_numpy(tiny).T
    base = vmhwm_mib()
    times, first, out = time_calls(run, repeats)
    peak = vmhwm_mib() - base
    if profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        run()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        with open(os.path.join(data_dir, f"{impl}_profile.txt"), "w") as f:
            f.write(buf.getvalue())
    for i, a in enumerate(out):
        a = a.numpy() if hasattr(a, "numpy") else a
        np.save(os.path.join(data_dir, f"{impl}_{i}.npy"), np.ascontiguousarray(a[:CHECK_ROWS]))
    return {"times": times, "first": first, "peak_mib": peak, **info}


_NT_SCRIPT = r"""
import time
import jax
import jax.numpy as jnp
import numpy as np
from neural_tangents import stax

cfg = CFG
layers = []
for layer in cfg["layers"]:
    if layer[0] == "dense":
        layers.append(stax.Dense(layer[3], W_std=layer[1], b_std=layer[2]))
    else:
        layers.append(stax.Relu())
_, _, kernel_fn = stax.serial(*layers)
kf = jax.jit(kernel_fn, static_argnames=("get",))

x_train = jnp.asarray(load("x_train"))
x_test = jnp.asarray(load("x_test")) if cfg["has_test"] else None
block((x_train, x_test))

def run():
    out = [kf(x_train, None, get=("nngp", "ntk"))]
    if x_test is not None:
        out.append(kf(x_test, x_train, get=("nngp", "ntk")))
    return block(out)

tiny = x_train[:4]
block(kf(tiny, None, get=("nngp", "ntk")))  # runtime initialisation, before the baseline
base = vmhwm_mib()
t0 = time.perf_counter(); out = run(); first = time.perf_counter() - t0
times = []
for _ in range(cfg["repeats"]):
    del out
    t0 = time.perf_counter(); out = run(); times.append(time.perf_counter() - t0)
peak = vmhwm_mib() - base
i = 0
for k in out:
    for a in (k.nngp, k.ntk):
        save(f"nt_{i}", np.asarray(a[: cfg["rows"]])); i += 1
report(times=times, first=first, peak_mib=peak, jax=jax.__version__,
       devices=str(jax.devices()))
"""


def thread_env(threads: int | None) -> dict:
    """Environment of the workers: unchanged, or every library on ``threads`` threads."""
    if threads is None:
        return {}
    env = {k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads == 1:
        env.update(single_thread_env())
    return env


def nt_worker(
    data_dir: str, repeats: int, has_test: bool, threads: int | None
) -> tuple[dict, list[np.ndarray]]:
    cfg = {"layers": LAYERS, "repeats": repeats, "has_test": has_test, "rows": CHECK_ROWS}
    inputs = {"x_train": np.load(os.path.join(data_dir, "x_train.npy"))}
    if has_test:
        inputs["x_test"] = np.load(os.path.join(data_dir, "x_test.npy"))
    script = f"import json\nCFG = json.loads({json.dumps(cfg)!r})\n" + _NT_SCRIPT
    arrays, rep = run_nt(script, inputs, timeout=3600, env=thread_env(threads))
    outs = [arrays[f"nt_{i}"] for i in range(len(arrays))]
    return rep, outs


# ----- the driver ----------------------------------------------------------------------------
def run_case(impl, data_dir, repeats, has_test, threads, profile=False):
    """Measurements of one implementation on one case, in a fresh subprocess."""
    if impl == "nt":
        rep, outs = nt_worker(data_dir, repeats, has_test, threads)
        return rep, outs
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--data", data_dir]
    cmd += ["--repeats", str(repeats)] + (["--profile"] if profile else [])
    env = {**os.environ, **thread_env(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise RuntimeError(f"{impl} worker failed:\n{tail}")
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    prof = os.path.join(data_dir, f"{impl}_profile.txt")
    if os.path.exists(prof):
        with open(prof) as f:
            print(f"--- cProfile of one call of {impl} (tottime) ---\n{f.read()}")
        os.remove(prof)
    outs = []
    i = 0
    while os.path.exists(p := os.path.join(data_dir, f"{impl}_{i}.npy")):
        outs.append(np.load(p))
        os.remove(p)
        i += 1
    return rep, outs


def max_rel(outs, ref) -> float:
    """max |a - b| / max |b| over the kept rows, leaving out the diagonal of K(x, x).

    On that diagonal the correlation is 1 up to round-off, where arccos has infinite slope:
    widenets snaps it to 1 (exact), the plain NumPy recursion and Neural Tangents do not and
    are off by ~1e-8 there, which would hide the agreement everywhere else.
    """
    if len(outs) != len(ref):
        return math.nan
    worst = 0.0
    for i, (a, b) in enumerate(zip(outs, ref, strict=True)):
        diff = np.abs(a - b)
        if i < 2:  # K(x_train, x_train): rows 0..r-1 hold the diagonal entries (r, r)
            r = np.arange(min(diff.shape))
            diff[r, r] = 0.0
        worst = max(worst, float(diff.max() / np.abs(b).max()))
    return worst


def fmt_s(t):
    return "-" if t is None or math.isnan(t) else f"{t:8.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 2000,4000,8000)")
    ap.add_argument("--no-demo", action="store_true", help="skip the 4000 + 1000 demo case")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls after a warm-up")
    ap.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"subset of {','.join(IMPLS)}")
    ap.add_argument(
        "--profile", action="store_true", help="print a cProfile of one call of each impl"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for every library (torch, BLAS, XLA when 1); default: their own",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.repeats, args.profile)))
        return 0

    if args.quick:
        sizes = [500, 1000]
        demo = (800, 200)
        repeats = args.repeats or 2
    else:
        sizes = [2000, 4000, 8000]
        demo = (4000, 1000)
        repeats = args.repeats or 3
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    impls = [s for s in args.impls.split(",") if s]
    for s in impls:
        if s not in IMPLS:
            ap.error(f"--impls: unknown implementation {s!r}; choose from {IMPLS}")
    cases = [(f"N={n}", n, 0) for n in sizes]
    if not args.no_demo:
        cases.append((f"demo {demo[0]}+{demo[1]}", *demo))

    nt_reason = nt_missing_reason() if "nt" in impls else None
    if nt_reason:
        print(nt_reason + " Reporting the other baselines only.")
        impls = [s for s in impls if s != "nt"]

    import torch

    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": args.threads or torch.get_num_threads(),
        "repeats": repeats,
        "dim": DIM,
        "network": "Dense(512,1.5,0.05) Relu Dense(512,1.5,0.05) Relu Dense(1,1.5,0.05)",
    }
    print(
        f"kernel_fc: {meta['network']}, float64, dim {DIM}; best of {repeats} after a warm-up; "
        f"{meta['cpus']} CPUs, load average {meta['loadavg_start'][0]:.1f}, "
        f"torch {meta['torch']} ({meta['torch_threads']} threads), numpy {meta['numpy']}"
    )

    rng = np.random.default_rng(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="widenets-bench-") as tmp:
        for label, n, m in cases:
            np.save(os.path.join(tmp, "x_train.npy"), rng.standard_normal((n, DIM)))
            test_path = os.path.join(tmp, "x_test.npy")
            if m:
                np.save(test_path, rng.standard_normal((m, DIM)))
            elif os.path.exists(test_path):
                os.remove(test_path)
            case_outs = {}
            for impl in impls:
                row = {"case": label, "n": n, "m": m, "impl": impl}
                try:
                    rep, outs = run_case(impl, tmp, repeats, bool(m), args.threads, args.profile)
                except NTUnavailable as e:
                    print(e)
                    continue
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"{label} {impl}: FAILED: {e}")
                    row["error"] = str(e)
                    results.append(row)
                    continue
                times = rep["times"]
                row.update(
                    best_s=min(times),
                    median_s=statistics.median(times),
                    first_s=rep["first"],
                    peak_mib=rep["peak_mib"],
                )
                if impl == "nt":
                    row["compile_s"] = rep["first"] - min(times)
                case_outs[impl] = outs
                results.append(row)
                print(
                    f"  {label:<16} {impl:<9} best {row['best_s']:.3f} s, "
                    f"peak {row['peak_mib']:.0f} MiB",
                    flush=True,
                )
            ref = case_outs.get("widenets")
            for row in results:
                compared = ("numpy", "nt", "fused", "fusedpool")
                if row["case"] == label and row["impl"] in compared and ref is not None:
                    if row["impl"] in case_outs:
                        row["max_rel_diff_vs_widenets"] = max_rel(case_outs[row["impl"]], ref)

    print_table(results, cases)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        print(f"wrote {args.out}")
    return 0


def print_table(results, cases):
    by = {(r["case"], r["impl"]): r for r in results if "best_s" in r}
    print()
    header = (
        f"{'case':<17} {'impl':<9} {'best s':>8} {'median s':>9} {'peak MiB':>9} "
        f"{'compile s':>9} {'x widenets':>10} {'max rel diff':>12}"
    )
    print(header)
    print("-" * len(header))
    for label, _, _ in cases:
        wn_row = by.get((label, "widenets"))
        for impl in IMPLS:
            r = by.get((label, impl))
            if r is None:
                continue
            ratio = r["best_s"] / wn_row["best_s"] if wn_row else math.nan
            diff = r.get("max_rel_diff_vs_widenets")
            print(
                f"{label:<17} {impl:<9} {r['best_s']:8.3f} {r['median_s']:9.3f} "
                f"{r['peak_mib']:9.0f} {fmt_s(r.get('compile_s')):>9} {ratio:10.2f} "
                f"{'' if diff is None else f'{diff:12.1e}'}"
            )
    print("(x widenets: the implementation's best time over widenets'; compile not included)")
    print()
    print("ratios (best times):")
    for label, _, _ in cases:
        w = by.get((label, "widenets"))
        if w is None:
            continue
        parts = []
        if (g := by.get((label, "gram"))) is not None:
            parts.append(f"widenets / gram floor = {w['best_s'] / g['best_s']:.2f}")
        for impl in ("fused", "fusedpool"):
            if (f := by.get((label, impl))) is not None and g is not None:
                parts.append(f"{impl} / gram floor = {f['best_s'] / g['best_s']:.2f}")
        if (n := by.get((label, "numpy"))) is not None:
            parts.append(f"numpy / widenets = {n['best_s'] / w['best_s']:.2f}")
        if (t := by.get((label, "nt"))) is not None:
            parts.append(f"NT / widenets = {t['best_s'] / w['best_s']:.2f}")
        print(f"  {label:<17} " + ", ".join(parts))
    print(
        "targets (demo case): NT / widenets >= 2, widenets / gram floor <= 3; "
        "timings on a shared machine are noisy"
    )


if __name__ == "__main__":
    sys.exit(main())
