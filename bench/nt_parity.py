"""Parity of widenets' analytic NNGP and NTK with Neural Tangents', activation by activation.

For every activation with a closed form in widenets (and ``Elementwise(tanh)`` against Neural
Tangents' ``ElementwiseNumerical``) the network

    Dense(width, w_std, b_std) -> act -> Dense(width, w_std, b_std) -> act -> Dense(1, ...)

is evaluated by both libraries in both parameterisations ("ntk" and "standard"), with and
without bias, on random inputs, for a pair of sets (x1, x2) and for x1 with itself. Two
activation layers check the per-input variances that the second one consumes, and the
standard parameterisation checks the finite-width factors of its NTK.

The error reported is ``max |K_wn - K_nt| / max |K_nt|`` over all entries (relative to the
kernel's scale, so near-zero entries do not dominate).

Conventions matched (read from Neural Tangents 0.6.5's source):
- input kernel: x1 . x2 / d over the feature axis (both libraries);
- ``Erf(a, b, c)`` = a erf(b x) + c, ``Sin(a, b, c)`` = a sin(b x + c) in NT, which is
  widenets' ``Sin(amplitude=a, frequency=b, phase=c)``; ``Cos`` is ``Sin`` with phase + pi/2;
- ``Gaussian(a, b)`` = a exp(b x^2) in both, but the defaults differ (NT b = -1, widenets
  b = -0.5): the script passes both arguments explicitly;
- ``ABRelu(a, b)``: slope a for x < 0 and b for x > 0 in both; ``LeakyRelu(alpha)``;
- standard parameterisation: NTK gets n_in K (+1 with bias), n_in the finite input width.

With ``--structures`` it compares instead the graph (``Aggregate``, dense and sparse
patterns, 1-D and 2-D vertex axes) and masking (``mask_constant``: Conv + GlobalAvgPool,
attention, Flatten, AvgPool) networks of ``tests/_nt_structures.py``; ``--write-references`` then
also stores their inputs and Neural Tangents' values in ``tests/data/nt_structures.json``,
the references of ``tests/test_graph.py`` and ``tests/test_masking.py``.
With ``--layers`` it compares instead the networks of ``bench/nt_layer_cases.py`` (SumPool,
GlobalSumPool, FanInProd, repeat, Index, ConvTranspose, ConvLocal, ...) on small images, and
``--write-reference PATH`` saves Neural Tangents' kernels of those networks with their inputs
(``tests/data/nt_layers.npz``, which ``tests/test_nt_layers.py`` compares against without
Neural Tangents).

Usage::

    PYTHONPATH=src python bench/nt_parity.py            # needs /tmp/nt-venv (see bench/_nt.py)
    PYTHONPATH=src python bench/nt_parity.py --tol 1e-8 # exit status 1 if any error exceeds it
    PYTHONPATH=src python bench/nt_parity.py --structures [--write-references]
    PYTHONPATH=src python bench/nt_parity.py --layers --tol 1e-13
    PYTHONPATH=src python bench/nt_parity.py --layers --write-reference tests/data/nt_layers.npz
    PYTHONPATH=src python bench/nt_parity.py --only Exp,Gabor,Rbf,Sigmoid_like,\
RectifiedMonomial,Polynomial,Hermite --save-reference tests/data/nt_activations.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import widenets as wn  # noqa: E402
from _nt import NTUnavailable, nt_missing_reason, run_nt  # noqa: E402
from widenets.layers.quadrature import DEFAULT_DEGREE  # noqa: E402

#: Gauss-Hermite points per dimension for both libraries' numerical tanh (set by --deg)
DEGREE = DEFAULT_DEGREE

#: Hermite needs unit-variance pre-activations: unit-norm inputs (||x||^2 / d = 1), w_std 1,
#: no bias (every Dense then keeps variance 1, and so does He_n / sqrt(n!))
UNIT = {"unit": True}
#: Neural Tangents 0.6.5's RectifiedMonomial is NaN where the correlation is 1 (theta = 0 in
#: its (pi - theta) / sin(theta) recursion): the diagonal of K(x1, x1), and through a second
#: layer's variances everything. Its networks have one activation layer; entries where Neural
#: Tangents is NaN are left out (marked ``*``, or "NT nan"), and its diagonal, where it is
#: finite only because its correlation is a few ulp off 1 (its NTK there: O(1) off, the
#: derivative of its recursion at theta ~ 1e-8), is printed but not counted in the worst.
ONE_LAYER = {"layers": 1, "nt_diagonal": False}

#: (label, widenets layer factory, NT stax name, NT positional args[, options])
ACTIVATIONS = [
    ("Relu", lambda: wn.Relu(), "Relu", []),
    ("LeakyRelu(0.1)", lambda: wn.LeakyRelu(0.1), "LeakyRelu", [0.1]),
    ("ABRelu(-0.3,0.7)", lambda: wn.ABRelu(-0.3, 0.7), "ABRelu", [-0.3, 0.7]),
    ("Abs", lambda: wn.Abs(), "Abs", []),
    ("Erf", lambda: wn.Erf(), "Erf", []),
    ("Erf(1.3,0.6,0.2)", lambda: wn.Erf(1.3, 0.6, 0.2), "Erf", [1.3, 0.6, 0.2]),
    ("Gelu", lambda: wn.Gelu(), "Gelu", []),
    ("Sin", lambda: wn.Sin(), "Sin", []),
    ("Sin(1.2,0.8,0.3)", lambda: wn.Sin(1.2, 0.8, 0.3), "Sin", [1.2, 0.8, 0.3]),
    ("Cos", lambda: wn.Cos(), "Cos", []),
    ("Cos(0.9,1.5,-0.4)", lambda: wn.Cos(0.9, 1.5, -0.4), "Cos", [0.9, 1.5, -0.4]),
    ("Gaussian(1,-1)", lambda: wn.Gaussian(1.0, -1.0), "Gaussian", [1.0, -1.0]),
    ("Gaussian(1.2,-0.3)", lambda: wn.Gaussian(1.2, -0.3), "Gaussian", [1.2, -0.3]),
    ("Gaussian(0.8,0.05)", lambda: wn.Gaussian(0.8, 0.05), "Gaussian", [0.8, 0.05]),
    ("Sign", lambda: wn.Sign(), "Sign", []),
    *[(f"Monomial({d})", (lambda d=d: wn.Monomial(d)), "Monomial", [d]) for d in range(6)],
    ("Identity", lambda: wn.Identity(), "Identity", []),
    ("Exp(0.3,0.5)", lambda: wn.Exp(0.3, 0.5), "Exp", [0.3, 0.5]),
    ("Exp(0.8,-0.4)", lambda: wn.Exp(0.8, -0.4), "Exp", [0.8, -0.4]),
    ("Gabor", lambda: wn.Gabor(), "Gabor", []),
    ("Rbf", lambda: wn.Rbf(), "Rbf", []),
    ("Rbf(0.3)", lambda: wn.Rbf(0.3), "Rbf", [0.3]),
    ("Sigmoid_like", lambda: wn.Sigmoid_like(), "Sigmoid_like", []),
    *[
        (
            f"RectifiedMonomial({d})",
            (lambda d=d: wn.RectifiedMonomial(d)),
            "RectifiedMonomial",
            [d],
            ONE_LAYER,
        )
        for d in range(5)
    ],
    (
        "Polynomial(0.3,-1,0.5,0.2)",
        lambda: wn.Polynomial([0.3, -1, 0.5, 0.2]),
        "Polynomial",
        [[0.3, -1.0, 0.5, 0.2]],
    ),
    (
        "Polynomial(0,0,0,0,0.7)",
        lambda: wn.Polynomial([0, 0, 0, 0, 0.7]),
        "Polynomial",
        [[0.0, 0.0, 0.0, 0.0, 0.7]],
    ),
    *[(f"Hermite({d})", (lambda d=d: wn.Hermite(d)), "Hermite", [d], UNIT) for d in range(5)],
    ("ExpNormalized", lambda: wn.ExpNormalized(), "ExpNormalized", []),
    (
        "ExpNormalized(0.7,-0.4)",
        lambda: wn.ExpNormalized(0.7, -0.4),
        "ExpNormalized",
        [0.7, -0.4, True],
    ),
    (
        "Elementwise(tanh)",
        lambda: wn.Elementwise(torch.tanh, degree=DEGREE),
        "ElementwiseNumerical:tanh",
        [],
    ),
]

_NT_SCRIPT = r"""
import json
import jax.numpy as jnp
from neural_tangents import stax

inputs = {False: (load("x1"), load("x2")), True: (load("u1"), load("u2"))}

def act(name, args):
    if name.startswith("ElementwiseNumerical:"):
        fn = {"tanh": jnp.tanh}[name.split(":")[1]]
        return stax.ElementwiseNumerical(fn, deg=spec["nt_deg"])
    return getattr(stax, name)(*args)

for i, case in enumerate(spec["cases"]):
    unit = case.get("unit", False)
    x1, x2 = inputs[unit]
    kw = dict(W_std=1.0 if unit else spec["w_std"],
              b_std=spec["b_std"] if case["bias"] else None,
              parameterization=case["param"])
    a = case["act"]
    hidden = [l for _ in range(case["layers"]) for l in (stax.Dense(spec["width"], **kw), act(*a))]
    _, _, kernel_fn = stax.serial(*hidden, stax.Dense(1, **kw))
    k12 = kernel_fn(x1, x2, ("nngp", "ntk"))
    k11 = kernel_fn(x1, None, ("nngp", "ntk"))
    save(f"{i}_nngp12", k12.nngp); save(f"{i}_ntk12", k12.ntk)
    save(f"{i}_nngp11", k11.nngp); save(f"{i}_ntk11", k11.ntk)
report(done=len(spec["cases"]))
"""


_NT_LAYERS_SCRIPT = r"""
import json
import numpy as np
from neural_tangents import stax

x1 = load("x1").transpose(0, 2, 3, 1)  # NCHW -> NHWC
x2 = load("x2").transpose(0, 2, 3, 1)
for i, expr in enumerate(spec["exprs"]):
    _, _, kernel_fn = eval(expr)
    k12 = kernel_fn(x1, x2, ("nngp", "ntk"))
    k11 = kernel_fn(x1, None, ("nngp", "ntk"))
    save(f"{i}_nngp12", k12.nngp); save(f"{i}_ntk12", k12.ntk)
    save(f"{i}_nngp11", k11.nngp); save(f"{i}_ntk11", k11.ntk)
report(done=len(spec["exprs"]))
"""

LAYER_SHAPE = (2, 6, 5)  # per-example (C, H, W) of the --layers inputs


def layer_inputs(n1: int, n2: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of different norms, so the per-input variances differ."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((n1, *LAYER_SHAPE)) * rng.uniform(0.5, 1.5, (n1, 1, 1, 1))
    x2 = rng.standard_normal((n2, *LAYER_SHAPE)) * rng.uniform(0.5, 1.5, (n2, 1, 1, 1))
    return x1, x2


def widenets_layer_kernels(make, x1: np.ndarray, x2: np.ndarray) -> dict[str, np.ndarray]:
    net = make()
    k12 = net.kernel(torch.from_numpy(x1), torch.from_numpy(x2))
    k11 = net.kernel(torch.from_numpy(x1))
    return {
        "nngp12": k12.nngp.numpy(),
        "ntk12": k12.ntk.numpy(),
        "nngp11": k11.nngp.numpy(),
        "ntk11": k11.ntk.numpy(),
    }


def layer_errors(ours: dict, theirs: dict) -> list[float]:
    """Relative errors: K(x1, x2), K(x1, x1) off its diagonal, and its diagonal (NNGP, NTK)."""
    errs = [rel_err(ours[n], theirs[n]) for n in ("nngp12", "ntk12")]
    errs += [rel_err(off_diagonal(ours[n]), off_diagonal(theirs[n])) for n in ("nngp11", "ntk11")]
    errs += [rel_err(np.diag(ours[n]), np.diag(theirs[n])) for n in ("nngp11", "ntk11")]
    return errs


def layers_main(args) -> int:
    from nt_layer_cases import CASES

    cases = [c for c in CASES if args.only is None or args.only in c[0]]
    x1, x2 = layer_inputs(args.n1, args.n2, args.seed)
    spec = dict(exprs=[c[2] for c in cases])
    script = f"import json\nspec = json.loads({json.dumps(spec)!r})\n" + _NT_LAYERS_SCRIPT
    try:
        nt_out, _ = run_nt(script, {"x1": x1, "x2": x2})
    except NTUnavailable as e:
        print(e)
        return 0
    print(
        f"widenets vs Neural Tangents 0.6.5, layers: max|wn - nt| / max|nt|, inputs "
        f"{args.n1} and {args.n2} images {LAYER_SHAPE} (NCHW; NHWC for NT)"
    )
    names = ("nngp12", "ntk12", "nngp11", "ntk11")
    cols = (*names[:2], "nngp11 off", "ntk11 off", "nngp diag", "ntk diag")
    header = f"{'network':<32} " + " ".join(f"{n:>11}" for n in cols)
    print(header)
    print("-" * len(header))
    worst, saved = 0.0, {"x1": x1, "x2": x2}
    for i, (label, make, _) in enumerate(cases):
        ours = widenets_layer_kernels(make, x1, x2)
        errs = layer_errors(ours, {n: nt_out[f"{i}_{n}"] for n in names})
        worst = max(worst, *[math.inf if math.isnan(e) else e for e in errs])
        print(f"{label:<32} " + " ".join(f"{e:11.2e}" for e in errs))
        for n in names:
            saved[f"{label}/{n}"] = nt_out[f"{i}_{n}"]
    print(f"\nworst relative difference: {worst:.2e} over {len(cases)} networks")
    print(
        "off: entries of K(x1, x1) off its diagonal; diag: its diagonal, where Neural Tangents'\n"
        "correlation is a few ulp off 1 (see the activation table's note) and the ReLU NTK's\n"
        "arccos amplifies that to ~1e-9."
    )
    if args.write_reference:
        if args.only is not None:
            print("--write-reference needs every case (drop --only).")
            return 2
        path = Path(args.write_reference)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **saved)
        tmp.replace(path)  # never a half-written reference
        print(f"wrote Neural Tangents' kernels of {len(cases)} networks to {path}")
    if args.tol is not None and worst > args.tol:
        print(f"FAIL: above --tol {args.tol:g}")
        return 1
    return 0


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (0 when both vanish)."""
    scale = np.abs(b).max()
    diff = np.abs(a - b).max()
    if scale == 0:
        return float(diff)
    return float(diff / scale)


def off_diagonal(a: np.ndarray) -> np.ndarray:
    return a[~np.eye(a.shape[0], dtype=bool)]


def widenets_net(make_act, width, w_std, b_std, param, layers=2):
    """``layers`` x [Dense(width) -> act] -> Dense(1), as the Neural Tangents script builds."""
    kw = dict(w_std=w_std, b_std=b_std, parameterization=param)
    hidden = [m for _ in range(layers) for m in (wn.Dense(width, **kw), make_act())]
    return wn.serial(*hidden, wn.Dense(1, **kw))


def finite_rel_err(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    """``rel_err`` over the entries where ``b`` (Neural Tangents) is finite, and whether it
    left any out (NaN when none is finite)."""
    ok = np.isfinite(b)
    if ok.all():
        return rel_err(a, b), False
    if not ok.any():
        return math.nan, True
    return rel_err(a[ok], b[ok]), True


_NT_STRUCTURES = r"""
import jax.numpy as jnp
import numpy as np
from neural_tangents import stax

for name, case in spec["cases"].items():
    _, _, kernel_fn = eval(case["nt"])
    x1, x2 = load(name + "_x1"), load(name + "_x2")
    if case["kind"] == "masked":
        kw12 = kw11 = dict(mask_constant=spec["pad"])
    else:
        p1, p2 = load(name + "_p1"), load(name + "_p2")
        kw12, kw11 = dict(pattern=(p1, p2)), dict(pattern=(p1, p1))
    k12 = kernel_fn(x1, x2, ("nngp", "ntk"), **kw12)
    k11 = kernel_fn(x1, None, ("nngp", "ntk"), **kw11)
    save(name + "_nngp12", k12.nngp); save(name + "_ntk12", k12.ntk)
    save(name + "_nngp11", k11.nngp); save(name + "_ntk11", k11.ntk)
report(done=len(spec["cases"]))
"""

REFERENCES = Path(__file__).resolve().parents[1] / "tests" / "data" / "nt_structures.json"


def structures(write: bool, tol: float | None) -> int:
    """The graph and masking cases of tests/_nt_structures.py in both libraries."""
    sys.path.insert(0, str(REFERENCES.parents[1]))
    from _nt_structures import CASES, PAD, inputs, kernel_kwargs

    arrays, spec = {}, {"pad": PAD, "cases": {}}
    for name, (_, nt_src, kind) in CASES.items():
        spec["cases"][name] = {"nt": nt_src, "kind": kind}
        for key, a in inputs(kind).items():
            arrays[f"{name}_{key}"] = a
    script = f"import json\nspec = json.loads({json.dumps(spec)!r})\n" + _NT_STRUCTURES
    try:
        nt_out, _ = run_nt(script, arrays)
    except NTUnavailable as e:
        print(e)
        return 0
    print("widenets vs Neural Tangents 0.6.5, graphs and masks: max|wn - nt| / max|nt|")
    header = f"{'case':<24} {'nngp12':>9} {'ntk12':>9} {'nngp11':>9} {'ntk11':>9}"
    print(header)
    print("-" * len(header))
    worst, refs = 0.0, {}
    for name, (make, _, kind) in CASES.items():
        a = {k[len(name) + 1 :]: v for k, v in arrays.items() if k.startswith(name + "_")}
        net = make()
        x1, x2 = torch.from_numpy(a["x1"]), torch.from_numpy(a["x2"])
        k12 = net.kernel(x1, x2, **kernel_kwargs(kind, a, False))
        k11 = net.kernel(x1, **kernel_kwargs(kind, a, True))
        got = {"nngp12": k12.nngp, "ntk12": k12.ntk, "nngp11": k11.nngp, "ntk11": k11.ntk}
        errs = [rel_err(got[f].numpy(), nt_out[f"{name}_{f}"]) for f in got]
        worst = max(worst, *errs)
        print(f"{name:<24} " + " ".join(f"{e:9.2e}" for e in errs))
        refs[name] = {
            "inputs": {k: v.tolist() for k, v in a.items()},
            "nt": {f: nt_out[f"{name}_{f}"].tolist() for f in got},
        }
    print(f"\nworst relative difference: {worst:.2e} over {len(CASES)} cases")
    if write:
        REFERENCES.parent.mkdir(exist_ok=True)
        tmp = REFERENCES.with_suffix(".tmp")
        tmp.write_text(json.dumps(refs, indent=None, separators=(",", ":")) + "\n")
        tmp.replace(REFERENCES)
        print(f"wrote {REFERENCES}")
    if tol is not None and worst > tol:
        print(f"FAIL: above --tol {tol:g}")
        return 1
    return 0


def save_reference(args, cases, nt_out, x1, x2, u1, u2) -> None:
    """Write the inputs, settings and Neural Tangents' kernels of every case as JSON (floats
    by repr, so they read back bit for bit), by rename so no half-written file is left."""
    ref = dict(
        source="Neural Tangents 0.6.5 (bench/nt_parity.py --save-reference)",
        width=args.width,
        w_std=args.w_std,
        b_std=args.b_std,
        inputs={k: v.tolist() for k, v in dict(x1=x1, x2=x2, u1=u1, u2=u2).items()},
        cases=[
            dict(
                label=c["label"],
                param=c["param"],
                bias=c["bias"],
                unit=c["unit"],
                layers=c["layers"],
                **{k: nt_out[f"{i}_{k}"].tolist() for k in ("nngp12", "ntk12", "nngp11", "ntk11")},
            )
            for i, c in enumerate(cases)
        ],
    )
    path = Path(args.save_reference)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ref, separators=(",", ":")) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n1", type=int, default=6)
    ap.add_argument("--n2", type=int, default=5)
    ap.add_argument("--dim", type=int, default=7, help="input dimension")
    ap.add_argument("--width", type=int, default=3, help="finite widths (standard NTK)")
    ap.add_argument("--w-std", type=float, default=1.3)
    ap.add_argument("--b-std", type=float, default=0.4)
    ap.add_argument(
        "--deg",
        type=int,
        default=DEFAULT_DEGREE,
        help="Gauss-Hermite degree of Elementwise(tanh) in both libraries",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=None, help="fail (exit 1) above this error")
    ap.add_argument(
        "--only", default=None, help="comma-separated substrings of the activation labels to run"
    )
    ap.add_argument("--structures", action="store_true", help="the graph and masking cases instead")
    ap.add_argument(
        "--write-references",
        action="store_true",
        help="with --structures: store inputs and NT values in tests/data/nt_structures.json",
    )
    ap.add_argument(
        "--layers", action="store_true", help="compare the networks of nt_layer_cases.py"
    )
    ap.add_argument(
        "--write-reference",
        default=None,
        metavar="PATH",
        help="with --layers: save Neural Tangents' kernels and the inputs (.npz)",
    )
    ap.add_argument(
        "--save-reference",
        default=None,
        metavar="JSON",
        help="also write the inputs and Neural Tangents' kernels to this file (the reference "
        "of tests/test_nt_activations.py, so that the tests need no Neural Tangents)",
    )
    args = ap.parse_args(argv)
    if args.structures:
        return structures(args.write_references, args.tol)
    global DEGREE
    DEGREE = args.deg

    reason = nt_missing_reason()
    if reason:
        print(reason)
        print("Nothing to compare: this script only checks widenets against Neural Tangents.")
        return 0
    if args.layers:
        if args.n1 == 6 and args.n2 == 5:  # smaller defaults: full pixel-pair kernels
            args.n1, args.n2 = 3, 2
        return layers_main(args)

    rng = np.random.default_rng(args.seed)
    # rows of different norms, so the per-input variances differ
    x1 = rng.standard_normal((args.n1, args.dim)) * rng.uniform(0.5, 1.5, (args.n1, 1))
    x2 = rng.standard_normal((args.n2, args.dim)) * rng.uniform(0.5, 1.5, (args.n2, 1))

    # unit-norm rows (||x||^2 / d = 1), for activations that need unit variances
    u1 = x1 / np.sqrt((x1**2).mean(1, keepdims=True))
    u2 = x2 / np.sqrt((x2**2).mean(1, keepdims=True))

    only = None if args.only is None else args.only.split(",")
    acts = [a for a in ACTIVATIONS if only is None or any(o in a[0] for o in only)]
    cases = []
    for label, make, nt_name, nt_args, *opts in acts:
        unit = bool(opts and opts[0].get("unit"))
        layers = opts[0].get("layers", 2) if opts else 2
        nt_diagonal = opts[0].get("nt_diagonal", True) if opts else True
        for param in ("ntk", "standard"):
            for bias in (False,) if unit else (True, False):
                cases.append(
                    dict(
                        label=label,
                        make=make,
                        act=[nt_name, nt_args],
                        param=param,
                        bias=bias,
                        unit=unit,
                        layers=layers,
                        nt_diagonal=nt_diagonal,
                    )
                )
    spec = dict(
        width=args.width,
        w_std=args.w_std,
        b_std=args.b_std,
        nt_deg=args.deg,
        cases=[{k: c[k] for k in ("act", "param", "bias", "unit", "layers")} for c in cases],
    )
    script = f"import json\nspec = json.loads({json.dumps(spec)!r})\n" + _NT_SCRIPT
    try:
        nt_out, _ = run_nt(script, {"x1": x1, "x2": x2, "u1": u1, "u2": u2})
    except NTUnavailable as e:
        print(e)
        return 0

    header = (
        f"{'activation':<20} {'param':<8} {'bias':<5} "
        f"{'nngp(x1,x2)':>11} {'ntk(x1,x2)':>11} {'nngp(x1)':>11} {'ntk(x1)':>11} "
        f"{'nngp diag':>11} {'ntk diag':>11}"
    )
    print(
        f"widenets vs Neural Tangents 0.6.5: max|wn - nt| / max|nt|, "
        f"inputs {args.n1}x{args.dim} and {args.n2}x{args.dim}, w_std={args.w_std}, "
        f"b_std={args.b_std}, widths {args.width}, Gauss-Hermite degree {args.deg}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    rows = []
    for i, c in enumerate(cases):
        a1, a2 = (u1, u2) if c["unit"] else (x1, x2)
        w_std = 1.0 if c["unit"] else args.w_std
        net = widenets_net(
            c["make"],
            args.width,
            w_std,
            args.b_std if c["bias"] else None,
            c["param"],
            layers=c["layers"],
        )
        k12 = net.kernel(torch.from_numpy(a1), torch.from_numpy(a2))
        k11 = net.kernel(torch.from_numpy(a1))
        nt = {n: nt_out[f"{i}_{n}"] for n in ("nngp12", "ntk12", "nngp11", "ntk11")}
        pairs = [
            (k12.nngp.numpy(), nt["nngp12"]),
            (k12.ntk.numpy(), nt["ntk12"]),
            (off_diagonal(k11.nngp.numpy()), off_diagonal(nt["nngp11"])),
            (off_diagonal(k11.ntk.numpy()), off_diagonal(nt["ntk11"])),
            (np.diag(k11.nngp.numpy()), np.diag(nt["nngp11"])),
            (np.diag(k11.ntk.numpy()), np.diag(nt["ntk11"])),
        ]
        cells, errs = [], []
        for j, (ours, theirs) in enumerate(pairs):
            e, skipped = finite_rel_err(ours, theirs)
            if not np.isfinite(ours).all():  # widenets never returns NaN / inf
                e, skipped = math.inf, False
            errs.append(e)
            counted = j < 4 or c["nt_diagonal"] or math.isinf(e)
            mark = ("*" if skipped else "") + ("" if counted else "x")
            cells.append("NT nan" if math.isnan(e) else f"{e:.2e}" + mark)
            if counted and not math.isnan(e):
                worst = max(worst, e)
        rows.append((c["label"], c["param"], c["bias"], errs))
        print(
            f"{c['label']:<20} {c['param']:<8} {str(c['bias']):<5} "
            + " ".join(f"{cell:>11}" for cell in cells)
        )
    if args.save_reference:
        save_reference(args, cases, nt_out, x1, x2, u1, u2)
    print(f"\nworst relative difference: {worst:.2e} over {len(cases)} cases")
    print(
        "nngp(x1), ntk(x1): off-diagonal entries of K(x1, x1); diag: its diagonal. On the\n"
        "diagonal widenets sets the input kernel to the exact variances, so the correlation is\n"
        "exactly 1 there; Neural Tangents computes x.x/d twice (matmul and sum) and its c is a\n"
        "few ulp off 1. Without bias that round-off survives to the nonlinearity, where arccos\n"
        "(ReLU family: ~1e-10) and arcsin (Sign, applied twice: ~1e-4) amplify it by\n"
        "1/sqrt(1 - c): differences in those columns are Neural Tangents' round-off.\n"
        "Elementwise(tanh) off the diagonal of K(x1, x1): widenets computes the upper triangle\n"
        "and mirrors it, so K[j, i] is the quadrature with the roles of x_i and x_j swapped;\n"
        "the two orders differ by the quadrature error (shrinks with --deg).\n"
        "RectifiedMonomial (one activation layer): Neural Tangents 0.6.5 returns NaN where the\n"
        'correlation is 1 (the diagonal of K(x1, x1)); "NT nan": no finite entry to compare,\n'
        "*: compared where Neural Tangents is finite; x: not counted in the worst (its NTK there\n"
        "is the derivative of its recursion at theta ~ 1e-8, O(1) off; widenets: the limit)."
    )
    if args.tol is not None and worst > args.tol:
        print(f"FAIL: above --tol {args.tol:g}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
