"""Kernel time of the smooth activations' split rule against the rule it replaced, and of
``Elementwise`` with declared kinks against Gauss-Hermite, measured in the same run.

    python bench/quadrature_rules.py [--n 100] [--width 512] [--repeats 3]

A set of n random inputs (dimension 10) with itself, NNGP and NTK, float64. Smooth: two
hidden ``Dense(width)`` layers of Tanh and of Mish; baseline the same activation with the
previous rule (16 uniform Gauss-Legendre panels of 16 points on [-9, 9] per direction,
``pair_by_rule``). Kinks: one hidden layer of ``Elementwise(torch.relu)``, baseline its
default 128-point Gauss-Hermite rule. Printed: best of ``--repeats`` times and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

import widenets as wn
from widenets.layers.quadrature import pair_by_rule, panel_nodes


def uniform(cls):
    """``cls`` with the previous rule (an undeclared subclass: equal only to itself)."""

    class Uniform(cls):
        def pair(self, nngp, q1, q2, want_dot):
            z, w = panel_nodes(16, 16, 9.0, nngp.dtype, nngp.device)
            return pair_by_rule(self.fn, self.derivative, nngp, q1, q2, z, w, want_dot)

    return Uniform()


def best(net, x, repeats=3):
    net.kernel(x[:4], progress=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net.kernel(x, progress=False)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x = torch.randn(args.n, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def deep(act):
        dense = wn.Dense(args.width, w_std=1.5, b_std=0.1)
        return wn.serial(dense, act, dense, act, wn.Dense(1))

    def shallow(act):
        return wn.serial(wn.Dense(args.width, w_std=1.5, b_std=0.1), act, wn.Dense(1))

    cases = [
        ("Tanh", deep(wn.Tanh()), deep(uniform(wn.Tanh))),
        ("Mish", deep(wn.Mish()), deep(uniform(wn.Mish))),
        (
            "Elementwise(relu) kinks=(0,) vs Gauss-Hermite",
            shallow(wn.Elementwise(torch.relu, kinks=(0.0,))),
            shallow(wn.Elementwise(torch.relu)),
        ),
    ]
    print(f"n={args.n} width={args.width} threads={torch.get_num_threads()}")
    for name, new, base in cases:
        t_base, t_new = best(base, x, args.repeats), best(new, x, args.repeats)
        print(f"{name}: baseline {t_base:.2f} s, now {t_new:.2f} s, ratio {t_base / t_new:.2f}x")


if __name__ == "__main__":
    main()
