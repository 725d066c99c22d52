"""Accuracy of the quadrature rules behind the smooth activations, before and after.

    PYTHONPATH=src python bench/quadrature_accuracy.py [--large]

Against the stored nested adaptive quadrature (``tests/data/smooth_reference.json``, made by
``tests/_gauss_reference.py``: variances 1e-2 to 10, equal and unequal, c from -1 to 1 with
|c| within 1e-12 of 1), the worst error of NNGP and Kdot per activation, relative to the
value or, where the value is below 1e-3 of the Cauchy-Schwarz scale sqrt(E[f(u)^2] E[f(v)^2]),
to that (the criterion of ``tests/test_smooth_activations.py``), for three rules:
128-point Gauss-Hermite (``Elementwise``'s default), 16 uniform Gauss-Legendre panels of 16
points on [-9, 9] (the smooth activations' previous rule) and the split rule (now).

Then ``Elementwise`` on ReLU, Abs and LeakyRelu(0.2) against their closed forms (variances
1/64 to 16, equal and unequal; c from -1 to 1), same criterion with the scale sqrt(q1 q2)
for the NNGP and 1 for Kdot: Gauss-Hermite 128, ``panels=16`` and ``kinks=(0.0,)``.

``--large``: Tanh at variances 30, 100 and 300 with 1, 2 and 3 panels of the split rule,
against the same adaptive quadrature computed here (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import widenets as wn  # noqa: E402
from _gauss_reference import FUNCTIONS, PATH, reference  # noqa: E402
from widenets.layers.quadrature import (  # noqa: E402
    hermite_nodes,
    pair_by_rule,
    panel_nodes,
)


def rules(layer):
    def hermite(k, q1, q2):
        z, w = hermite_nodes(128, k.dtype, k.device)
        return pair_by_rule(layer.fn, layer.derivative, k, q1, q2, z, w, True)

    def uniform(k, q1, q2):
        z, w = panel_nodes(16, 16, 9.0, k.dtype, k.device)
        return pair_by_rule(layer.fn, layer.derivative, k, q1, q2, z, w, True)

    def split(k, q1, q2):
        return layer.pair(k, q1, q2, True)

    return {"Gauss-Hermite 128": hermite, "uniform 16x16": uniform, "split (now)": split}


def worst(values, stored, k_index):
    rows, self_ = stored["rows"], stored["self"]
    out, where = 0.0, None
    for row, got in zip(rows, values.tolist(), strict=True):
        ref = row[3 + k_index]
        scale = math.sqrt(self_[repr(row[0])][k_index] * self_[repr(row[1])][k_index])
        err = abs(got - ref) / max(abs(ref), 1e-3 * scale)
        if err > out:
            out, where = err, tuple(row[:3])
    return out, where


def stored_grid():
    data = json.loads(PATH.read_text())
    print("worst relative error over the stored grid (q1, q2, c where it occurs)")
    for name, (kw, _, _) in FUNCTIONS.items():
        layer = getattr(wn, name)(**kw)
        rows = torch.tensor(data["values"][name]["rows"], dtype=torch.float64)
        q1, q2, c = rows[:, 0], rows[:, 1], rows[:, 2]
        k = c * q1.sqrt() * q2.sqrt()
        for rule, pair in rules(layer).items():
            out, dot = pair(k, q1, q2)
            e0, w0 = worst(out, data["values"][name], 0)
            e1, w1 = worst(dot, data["values"][name], 1)
            print(f"  {layer!r:18s} {rule:18s} NNGP {e0:.1e} at {w0}  Kdot {e1:.1e} at {w1}")


KINK_VARIANCES = [(1 / 64, 1 / 64), (1.0, 1.0), (16.0, 16.0), (1 / 16, 16.0), (16.0, 1.0)]
KINK_CORRELATIONS = [-1.0, -1 + 1e-12, -0.9999, -0.9, 0.0, 0.5, 0.99, 0.9999, 1 - 1e-8, 1.0]


def kinked():
    print("Elementwise of a kinked function against its closed form, worst over the grid")
    cases = [
        ("relu", torch.relu, wn.Relu()),
        ("abs", torch.abs, wn.Abs()),
        ("leaky", lambda x: torch.where(x > 0, x, 0.2 * x), wn.LeakyRelu(0.2)),
    ]
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for name, fn, closed in cases:
        layers = {
            "Gauss-Hermite 128": wn.Elementwise(fn),
            "panels=16": wn.Elementwise(fn, panels=16),
            "kinks=(0.0,)": wn.Elementwise(fn, kinks=(0.0,)),
        }
        for rule, layer in layers.items():
            err = [0.0, 0.0]
            for q1, q2 in KINK_VARIANCES:
                for c in KINK_CORRELATIONS:
                    k = t(c * math.sqrt(q1 * q2))
                    got = layer.pair(k, t(q1), t(q2), True)
                    exact = closed.pair(k, t(q1), t(q2), True)
                    for i, scale in enumerate((math.sqrt(q1 * q2), 1.0)):
                        g, e = got[i].item(), exact[i].item()
                        err[i] = max(err[i], abs(g - e) / max(abs(e), 1e-3 * scale))
            print(f"  {name:6s} {rule:18s} NNGP {err[0]:.1e}  Kdot {err[1]:.1e}")


def large_variance():
    _, f, df = FUNCTIONS["Tanh"]
    print("Tanh at large variance, split rule, worst over c in (-0.9999, 0.3, 0.999, 1)")
    for q in (30.0, 100.0, 300.0):
        refs = {
            c: [(reference(g, q, q, c), reference(g, q, q, 1.0)) for g in (f, df)]
            for c in (-0.9999, 0.3, 0.999, 1.0)
        }
        for panels in (1, 2, 3):
            layer, err = wn.Tanh(panels=panels), 0.0
            for c, pairs in refs.items():
                got = layer.pair(
                    *(torch.tensor(v, dtype=torch.float64) for v in (c * q, q, q)), True
                )
                for g, (ref, scale) in zip(got, pairs, strict=True):
                    err = max(err, abs(g.item() - ref) / max(abs(ref), 1e-3 * scale))
            print(f"  q = {q:5.0f}  panels = {panels}: {err:.1e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", action="store_true")
    args = parser.parse_args()
    stored_grid()
    kinked()
    if args.large:
        large_variance()


if __name__ == "__main__":
    main()
