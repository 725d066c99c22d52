"""Parity of ``widenets.predict`` with Neural Tangents' ``predict`` on a small problem.

Both libraries predict from the same (7, 7) train and (3, 7) test NTK (a two-layer ReLU
network's, computed by widenets) for two-output targets:

- ``gradient_descent`` with heavy-ball momentum on the MSE and on the cross-entropy loss, and
  without momentum on the cross-entropy (Neural Tangents integrates its ODE with
  ``jax.experimental.ode.odeint`` at its default tolerances, rtol = atol = 1.4e-8);
- ``gradient_descent_mse`` with and without momentum (Neural Tangents: ``gradient_descent`` on
  its MSE loss, for the momentum case, since its ``gradient_descent_mse`` has none);
- ``max_learning_rate`` with and without momentum, with and without ``y_train_size``.

The losses are the same functions in both: 0.5 * mean((f - y)^2) and the mean over examples
of -sum_k y_k log softmax(f)_k (widenets' ``cross_entropy``). It prints max |wn - nt| per
case; ``--write-reference PATH`` stores the inputs and Neural Tangents' values as JSON
(``tests/data/nt_predict.json``, read by ``tests/test_momentum.py`` without Neural Tangents).

Usage::

    PYTHONPATH=src python bench/nt_predict.py            # needs /tmp/nt-venv (see bench/_nt.py)
    PYTHONPATH=src python bench/nt_predict.py --write-reference tests/data/nt_predict.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import widenets as wn  # noqa: E402
from _nt import NTUnavailable, run_nt  # noqa: E402
from widenets.predict import (  # noqa: E402
    cross_entropy,
    gradient_descent,
    gradient_descent_mse,
    max_learning_rate,
)

LEARNING_RATE = 0.3
TIMES = [0.5, 2.0, 10.0, 40.0]

#: name -> (loss, momentum); "mse_closed" is gradient_descent_mse on widenets' side
CASES = {
    "mse_m0.9": ("mse", 0.9),
    "mse_m0": ("mse", 0.0),
    "xent_m0.5": ("xent", 0.5),
    "xent": ("xent", None),
}

_NT_SCRIPT = r"""
import jax.numpy as jnp
from jax.nn import log_softmax
from neural_tangents import predict

k, kt, y, yc = load("k"), load("kt"), load("y"), load("yc")
f0, ft0, ts = load("f0"), load("ft0"), load("t")
losses = {
    "mse": lambda fx, yy: 0.5 * jnp.mean((fx - yy) ** 2),
    "xent": lambda fx, yy: -jnp.mean(jnp.sum(yy * log_softmax(fx, axis=-1), axis=-1)),
}
for name, (loss, m) in cases.items():
    target = y if loss == "mse" else yc
    fn = predict.gradient_descent(losses[loss], k, target, lr, momentum=m)
    train, test = fn(ts, f0, ft0, kt)
    save(name + "_train", train)
    save(name + "_test", test)
fn = predict.gradient_descent_mse(k, y, lr)
train, test = fn(ts, f0, ft0, kt)
save("mse_plain_train", train)
save("mse_plain_test", test)
report(
    max_lr=float(predict.max_learning_rate(k)),
    max_lr_size_m=float(predict.max_learning_rate(k, y.size, 0.9)),
)
"""


def problem() -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, dtype=torch.float64, generator=g)
    net = wn.serial(wn.Dense(16, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=1.5))
    k = net.kernel(x, get="ntk").ntk
    y = torch.randn(7, 2, dtype=torch.float64, generator=g)
    yc = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 1, 0, 0]), 2).to(torch.float64)
    f0 = 0.3 * torch.randn(7, 2, dtype=torch.float64, generator=g)
    ft0 = 0.3 * torch.randn(3, 2, dtype=torch.float64, generator=g)
    arrays = dict(k=k[:7, :7], kt=k[7:, :7], y=y, yc=yc, f0=f0, ft0=ft0)
    out = {name: a.numpy() for name, a in arrays.items()}
    out["t"] = np.asarray(TIMES)
    return out


def widenets_values(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """widenets' predictions of every case from the arrays of :func:`problem`."""
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    out = {}
    mse = lambda fx, yy: 0.5 * ((fx - yy) ** 2).mean()  # noqa: E731
    for name, (loss, m) in CASES.items():
        fn, target = (mse, t["y"]) if loss == "mse" else (cross_entropy, t["yc"])
        pred = gradient_descent(fn, t["k"], target, LEARNING_RATE, momentum=m)
        out[name + "_train"], out[name + "_test"] = pred(
            t["t"], t["kt"], fx_train_0=t["f0"], fx_test_0=t["ft0"]
        )
        if loss == "mse":
            closed = gradient_descent_mse(t["k"], t["y"], learning_rate=LEARNING_RATE, momentum=m)
            out[name + "_closed_train"] = closed(t["t"], fx_train_0=t["f0"])
            out[name + "_closed_test"] = closed(
                t["t"], t["kt"], fx_train_0=t["f0"], fx_test_0=t["ft0"]
            )
    plain = gradient_descent_mse(t["k"], t["y"], learning_rate=LEARNING_RATE)
    out["mse_plain_train"] = plain(t["t"], fx_train_0=t["f0"])
    out["mse_plain_test"] = plain(t["t"], t["kt"], fx_train_0=t["f0"], fx_test_0=t["ft0"])
    out["max_lr"] = max_learning_rate(t["k"])
    out["max_lr_size_m"] = max_learning_rate(t["k"], a["y"].size, 0.9)
    return {k: np.asarray(v) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-reference", metavar="PATH", default=None)
    args = ap.parse_args(argv)
    a = problem()
    cases = {name: [loss, m] for name, (loss, m) in CASES.items()}
    script = f"cases = {cases!r}\nlr = {LEARNING_RATE!r}\n" + _NT_SCRIPT
    try:
        nt, report = run_nt(script, a)
    except NTUnavailable as e:
        print(e)
        return 0
    nt.update({k: np.asarray(v) for k, v in report.items()})
    ours = widenets_values(a)
    print("widenets vs Neural Tangents 0.6.5, predict: max |wn - nt| (max |nt|)")
    for key in sorted(nt):
        closed = key.replace("_train", "_closed_train").replace("_test", "_closed_test")
        for mine in dict.fromkeys((key, closed)):  # the ODE, then the closed form (MSE)
            if mine in ours:
                diff = float(np.abs(ours[mine] - nt[key]).max())
                print(f"{mine:<24} {diff:9.2e}  ({float(np.abs(nt[key]).max()):.3g})")
    if args.write_reference:
        ref = dict(
            source="Neural Tangents 0.6.5 (bench/nt_predict.py --write-reference)",
            learning_rate=LEARNING_RATE,
            cases={name: {"loss": loss, "momentum": m} for name, (loss, m) in CASES.items()},
            inputs={k: v.tolist() for k, v in a.items()},
            nt={k: np.asarray(v).tolist() for k, v in sorted(nt.items())},
        )
        path = Path(args.write_reference)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(ref, indent=None, separators=(",", ":")) + "\n")
        tmp.replace(path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
