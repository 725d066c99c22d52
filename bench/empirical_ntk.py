"""Benchmark: empirical NTK of an MLP (16 x 16 inputs) and a small ResNet (3 x 32 x 32),
every widenets method against baselines measured in the same run.

Contestants (all compute the traced NTK, Theta(x, x) of shape (N, N), in float32):
- widenets ``jacobian``, ``ntk_vector``, ``structured`` and ``auto`` (tiles that hold at most
  ``widenets.empirical.ntk.MEMORY_SCALARS`` scalars), and ``jacobian_whole``: one tile for
  the whole batch (``batch_size=N``), as much memory as it takes;
- ``loop``: a per-example, per-output ``torch.autograd.grad`` loop building J, then J J^T;
- ``jjt_gemm``: only the product J J^T of a random (N, O P) matrix, the arithmetic floor of
  any Jacobian contraction (and the second half of ``loop``);
- ``tutorial_jac`` / ``tutorial_ntkvp``: the two methods of the torch.func NTK tutorial
  (vmap(jacrev) then a per-parameter einsum; vmap over pairs of vjp-then-jvp), untiled;
- ``nt_jac`` / ``nt_ntkvp`` / ``nt_structured``: Neural Tangents' ``empirical_ntk_fn`` with
  implementations 1/2/3 (MLP only; run in /tmp/nt-venv through a subprocess when present;
  time of the second, compiled call).

Each measurement runs in a fresh subprocess (``--repeat k``: k of them; the median time and
the largest peak are reported), after a warm-up call on two examples (Neural Tangents:
after the first, compiling call). "peak MiB" is the peak resident memory during the
measured call above the resident memory before it (the peak is reset through
/proc/self/clear_refs; CPU), or ``torch.cuda.max_memory_allocated`` (GPU); for Neural
Tangents the arrays kept by the first call (parameters, inputs) are in the base. The
tutorial's pairwise NTK-vector method holds N^2 O^2 products at once and is run only up to
--ntkvp-max-n.

    python bench/empirical_ntk.py                 # default sizes, a few minutes on a CPU
    python bench/empirical_ntk.py --full          # widths 512..4096, N 64..512
    python bench/empirical_ntk.py --widths 1024 --ns 128 --archs mlp --methods structured
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
NT_PYTHON = "/tmp/nt-venv/bin/python"
OURS = ("jacobian", "ntk_vector", "structured", "auto")
#: widenets methods with one tile for the whole batch (``batch_size=N``: no memory bound)
WHOLE = ("jacobian_whole",)
BASELINES = ("loop", "jjt_gemm", "tutorial_jac", "tutorial_ntkvp")
NT = ("nt_jac", "nt_ntkvp", "nt_structured")
MLP_IN, N_OUT = 256, 10  # MLP inputs: 16 x 16 images, flattened


# ----------------------------------------------------------------- models (plain torch)
def make_mlp(width: int):
    from torch import nn

    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(MLP_IN, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, N_OUT),
    )


def make_resnet(width: int):
    """A CIFAR ResNet: stem, three stages of one basic block each (widths w, 2w, 4w,
    strides 1, 2, 2), BatchNorm (eval), global average pool, linear readout."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.skip = None
            if stride != 1 or cin != cout:
                self.skip = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            h = torch.relu(self.b1(self.c1(x)))
            h = self.b2(self.c2(h))
            return torch.relu(h + (x if self.skip is None else self.skip(x)))

    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, 1, 1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        Block(w, w, 1),
        Block(w, 2 * w, 2),
        Block(2 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, N_OUT),
    )


# ----------------------------------------------------------------- baselines
def ntk_loop(model, x):
    import torch

    ps = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1]).reshape(-1)
        for a in range(out.numel()):
            g = torch.autograd.grad(out[a], ps, retain_graph=a < out.numel() - 1)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    j = torch.stack(rows).reshape(x.shape[0], -1, rows[0].numel())
    return torch.einsum("iap,jap->ij", j, j) / j.shape[1]


def jjt_gemm_fn(model, x):
    """J J^T for a random J of the model's Jacobian size (N, O P): the contraction alone
    (J is drawn before the clock starts)."""
    import torch

    n_p = sum(p.numel() for p in model.parameters())
    j = torch.randn(x.shape[0], N_OUT * n_p, dtype=x.dtype, device=x.device)

    def run(xx):
        jj = j[: xx.shape[0]]
        return jj @ jj.T / N_OUT

    return run


def _tutorial_fns(model):
    from torch.func import functional_call

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def fnet_single(p, x):
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).squeeze(0)

    return params, fnet_single


def ntk_tutorial_jac(model, x):
    """torch.func tutorial, Jacobian contraction (compute='trace')."""
    import torch
    from torch.func import jacrev, vmap

    params, f = _tutorial_fns(model)
    jac1 = vmap(jacrev(f), (None, 0))(params, x)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = jac1
    out = torch.stack(
        [torch.einsum("Naf,Maf->NM", j1, j2) for j1, j2 in zip(jac1, jac2, strict=True)]
    )
    return out.sum(0) / N_OUT


def ntk_tutorial_ntkvp(model, x):
    """torch.func tutorial, NTK-vector products over every pair (compute='trace')."""
    import torch
    from torch.func import jvp, vjp, vmap

    params, f = _tutorial_fns(model)

    def get_ntk(x1, x2):
        def func_x1(p):
            return f(p, x1)

        def func_x2(p):
            return f(p, x2)

        output, vjp_fn = vjp(func_x1, params)

        def get_ntk_slice(vec):
            vjps = vjp_fn(vec)
            _, jvps = jvp(func_x2, (params,), vjps)
            return jvps

        basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device)
        return vmap(get_ntk_slice)(basis)

    full = vmap(vmap(get_ntk, (None, 0)), (0, None))(x, x)
    return full.diagonal(dim1=2, dim2=3).mean(-1)


def n_params(arch, width) -> int:
    model = (make_mlp if arch == "mlp" else make_resnet)(width)
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------- one measurement
def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _start_peak() -> float:
    """Reset the peak resident memory to the current one (Linux clear_refs); the current
    resident memory, from which the peak of the measured call is counted."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_mib("VmRSS")
    except OSError:  # no reset: count from the peak so far (underestimates)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mib() -> float:
    try:
        return _status_mib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(arch, width, n, method, device):
    import torch

    sys.path.insert(0, SRC)
    import widenets as wn

    torch.manual_seed(0)
    model = (make_mlp if arch == "mlp" else make_resnet)(width).to(device).eval()
    shape = (1, 16, 16) if arch == "mlp" else (3, 32, 32)
    x = torch.randn(n, *shape, device=device)

    gemm = jjt_gemm_fn(model, x) if method == "jjt_gemm" else None

    def run(xx):
        if method in OURS:
            return wn.empirical.ntk(model, xx, method=method, progress=False)
        if method in WHOLE:
            name = method.removesuffix("_whole")
            return wn.empirical.ntk(model, xx, method=name, batch_size=xx.shape[0], progress=False)
        if gemm is not None:
            return gemm(xx)
        fn = {
            "loop": ntk_loop,
            "tutorial_jac": ntk_tutorial_jac,
            "tutorial_ntkvp": ntk_tutorial_ntkvp,
        }
        return fn[method](model, xx)

    run(x[:2])  # warm-up: dispatch, allocator, lazy imports
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = _start_peak()
    t0 = time.perf_counter()
    k = run(x)
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_mib() - base_rss
    extra = {}
    if method in ("auto", "structured"):
        rep = wn.empirical.explain(model, x)
        chose = rep.method if method == "auto" else "structured"
        if chose == "structured":
            chose += f" ({rep.cost('structured').variant})"
        extra["chose"] = chose
    return {"secs": secs, "peak_mib": peak, "checksum": float(k.double().trace()), **extra}


NT_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import jax, jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax
    width, n, impl = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    init, apply_fn, _ = stax.serial(
        stax.Flatten(), stax.Dense(width, parameterization="standard"), stax.Relu(),
        stax.Dense(width, parameterization="standard"), stax.Relu(),
        stax.Dense(10, parameterization="standard"))
    key = jax.random.PRNGKey(0)
    _, params = init(key, (1, 16, 16, 1))
    x = jax.random.normal(key, (n, 16, 16, 1), jnp.float32)
    fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), implementation=impl))
    def status(field):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    t0 = time.perf_counter()
    fn(x, None, params).block_until_ready()
    first = time.perf_counter() - t0
    with open("/proc/self/clear_refs", "w") as fh:  # peak of the second call only
        fh.write("5")
    base = status("VmRSS")
    t0 = time.perf_counter()
    k = fn(x, None, params).block_until_ready()
    secs = time.perf_counter() - t0
    peak = status("VmHWM") - base
    print(json.dumps({"secs": secs, "first_call_secs": first, "peak_mib": peak,
                      "checksum": float(jnp.trace(k) / 10)}))
    """
)


def measure(arch, width, n, method, device, timeout):
    """Run one measurement in a fresh subprocess; a dict, or one with an "error"."""
    if method in NT:
        if not os.path.exists(NT_PYTHON):
            return {"error": "Neural Tangents venv absent"}
        impl = {"nt_jac": 1, "nt_ntkvp": 2, "nt_structured": 3}[method]
        cmd = [NT_PYTHON, "-c", NT_SCRIPT, str(width), str(n), str(impl)]
        env = {**os.environ, "JAX_PLATFORMS": "cpu" if device == "cpu" else ""}
    else:
        cmd = [sys.executable, __file__, "--one", arch, str(width), str(n), method, device]
        env = os.environ
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout}s"}
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines() or ["?"]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        return {"error": (errors or lines)[-1][:120]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    """The run of median time, with the spread of times and the largest peak memory."""
    order = sorted(runs, key=lambda r: r["secs"])
    out = dict(order[len(order) // 2])
    out.update(
        secs_min=order[0]["secs"],
        secs_max=order[-1]["secs"],
        peak_mib=max(r["peak_mib"] for r in runs),
        runs=len(runs),
    )
    return out


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--full", action="store_true", help="widths 512..4096, N 64..512, ResNet N 64..256"
    )
    ap.add_argument("--archs", nargs="+", default=["mlp", "resnet"], choices=["mlp", "resnet"])
    ap.add_argument("--widths", nargs="+", type=int, help="MLP widths")
    ap.add_argument("--ns", nargs="+", type=int, help="MLP batch sizes N")
    ap.add_argument("--resnet-width", type=int, default=16)
    ap.add_argument("--resnet-ns", nargs="+", type=int)
    ap.add_argument("--methods", nargs="+", default=list(OURS + WHOLE + BASELINES + NT))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--timeout", type=int, default=600, help="seconds per measurement")
    ap.add_argument(
        "--repeat", type=int, default=1, help="measurements per case (each in a fresh process)"
    )
    ap.add_argument("--loop-max-n", type=int, default=256, help="skip the slow loop above this N")
    ap.add_argument("--ntkvp-max-n", type=int, default=16, help="skip tutorial_ntkvp above this N")
    ap.add_argument(
        "--max-jac-gib",
        type=float,
        default=8.0,
        help="skip untiled baselines whose Jacobians would need more memory than this",
    )
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        arch, width, n, method, device = args.one
        print(json.dumps(measure_one(arch, int(width), int(n), method, device)))
        return
    widths = args.widths or ([512, 1024, 2048, 4096] if args.full else [512, 2048])
    ns = args.ns or ([64, 128, 256, 512] if args.full else [64, 256])
    rns = args.resnet_ns or ([64, 128, 256] if args.full else [64])
    configs = []
    if "mlp" in args.archs:
        configs += [("mlp", w, n) for w in widths for n in ns]
    if "resnet" in args.archs:
        configs += [("resnet", args.resnet_width, n) for n in rns]
    has_nt = "present" if os.path.exists(NT_PYTHON) else "absent"
    print(f"device {args.device}; Neural Tangents: {has_nt}")
    print(f"{'arch':<7}{'width':>6}{'N':>5}  {'method':<15}{'secs':>9}{'peak MiB':>10}  note")
    results = []
    for arch, w, n in configs:
        for method in args.methods:
            if method in NT and arch != "mlp":
                continue
            if method == "loop" and n > args.loop_max_n:
                continue
            if method == "tutorial_ntkvp" and n > args.ntkvp_max_n:
                continue
            if method in ("loop", "jjt_gemm", "tutorial_jac", "tutorial_ntkvp") + WHOLE:
                gib = 2 * n * N_OUT * n_params(arch, w) * 4 / 2**30
                if gib > args.max_jac_gib:
                    print(f"{arch:<7}{w:>6}{n:>5}  {method:<15}  skipped: J needs {gib:.0f} GiB")
                    continue
            runs = []
            for _ in range(args.repeat):
                runs.append(measure(arch, w, n, method, args.device, args.timeout))
                if "error" in runs[-1]:
                    break
            r = runs[-1] if "error" in runs[-1] else _median(runs)
            r.update(arch=arch, width=w, n=n, method=method)
            results.append(r)
            if "error" in r:
                print(f"{arch:<7}{w:>6}{n:>5}  {method:<15}{'-':>9}{'-':>10}  {r['error']}")
            else:
                note = f"chose {r['chose']}" if "chose" in r else ""
                if "first_call_secs" in r:
                    note = f"first call (compile) {r['first_call_secs']:.2f}s"
                if len(runs) > 1:
                    spread = f"{r['secs_min']:.3f}-{r['secs_max']:.3f}s"
                    note = f"median of {len(runs)} ({spread}) {note}"
                row = f"{arch:<7}{w:>6}{n:>5}  {method:<15}"
                print(f"{row}{r['secs']:>9.3f}{r['peak_mib']:>10.1f}  {note}")
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
