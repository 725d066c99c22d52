"""BoTorch acquisition-optimisation step: widenets' NetworkKernel against BoTorch's own
``InfiniteWidthBNNKernel`` on the same inputs, in the same run.

What acquisition optimisation does at every gradient step: the posterior mean and variance
of a ``SingleTaskGP`` at a batch of q=1 candidates, shape (batch, 1, d), and the backward
pass to the candidates. Both models are fitted to the same ``--n-train`` points of the 6-D
unit cube and hold the same hyperparameters (weight variance w^2, bias variance b^2, noise),
so they define the same kernel: the NNGP of a ReLU network with ``--depth`` hidden layers
(BoTorch's ``depth``). The script checks that the two posteriors agree, then times each step
(median of ``--repeats``, after a warm-up) and prints the ratio widenets / BoTorch, of the
wall time and of the process's CPU time (the steadier of the two on a shared machine).

    python bench/gpytorch_botorch.py                  # batch 1024, 30 training points
    python bench/gpytorch_botorch.py --batch 4096 --depth 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.kernels import InfiniteWidthBNNKernel  # noqa: E402

import widenets as wn  # noqa: E402
from widenets.gpytorch import NetworkKernel  # noqa: E402


def network(depth: int) -> wn.Layer:
    """The ReLU network of BoTorch's InfiniteWidthBNNKernel(depth): depth + 1 Dense layers."""
    layers = [wn.Dense(512, 1.0, 1.0)]
    for _ in range(depth):
        layers += [wn.Relu(), wn.Dense(512, 1.0, 1.0)]
    return wn.serial(*layers)


def step(model: SingleTaskGP, xq: torch.Tensor) -> torch.Tensor:
    """Posterior mean and variance at the candidates, and the backward pass to them."""
    xq = xq.detach().requires_grad_(True)
    post = model.posterior(xq)
    (post.mean.sum() + post.variance.sum()).backward()
    return xq.grad


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time of the process (all threads) of ``fn()``."""
    fn()  # warm-up (also fills GPyTorch's caches of the training covariance)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024, help="q=1 candidates (default 1024)")
    parser.add_argument("--n-train", type=int, default=30, help="training points (default 30)")
    parser.add_argument("--dim", type=int, default=6, help="input dimension (default 6)")
    parser.add_argument("--depth", type=int, default=3, help="hidden ReLU layers (default 3)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats (default 20)")
    args = parser.parse_args()

    torch.manual_seed(0)
    dtype = torch.float64
    x = torch.rand(args.n_train, args.dim, dtype=dtype)
    y = (torch.sin(5 * x).sum(-1, keepdim=True) + 0.1 * torch.randn(args.n_train, 1)).to(dtype)
    xq = torch.rand(args.batch, 1, args.dim, dtype=dtype)
    w_std, b_std = 1.4, 0.3

    ours = NetworkKernel(network(args.depth), get="nngp").to(dtype)
    ours.w_std, ours.b_std = w_std, b_std
    theirs = InfiniteWidthBNNKernel(depth=args.depth, acos_eps=1e-15).to(dtype)
    theirs.weight_var = torch.tensor(w_std**2, dtype=dtype)
    theirs.bias_var = torch.tensor(b_std**2, dtype=dtype)
    models = {}
    for name, kernel in (("widenets", ours), ("botorch", theirs)):
        model = SingleTaskGP(x, y, covar_module=kernel)
        model.likelihood.noise = 1e-2
        model.eval()
        models[name] = model

    with torch.no_grad():
        p1, p2 = models["widenets"].posterior(xq), models["botorch"].posterior(xq)
        dmean = float((p1.mean - p2.mean).abs().max() / p2.mean.abs().max())
        dvar = float(((p1.variance - p2.variance) / p2.variance).abs().max())
    print(
        f"same kernel check: max relative difference of the posterior mean {dmean:.1e}, "
        f"of the variance {dvar:.1e}"
    )
    g1, g2 = step(models["widenets"], xq), step(models["botorch"], xq)
    dgrad = float((g1 - g2).abs().max() / g2.abs().max())
    print(f"max relative difference of the candidates' gradient {dgrad:.1e}")

    print(
        f"posterior mean + variance + backward at {args.batch} q=1 candidates, "
        f"{args.n_train} training points, d={args.dim}, depth {args.depth}, float64, "
        f"{torch.get_num_threads()} threads (median of {args.repeats}):"
    )
    times = {name: timed(lambda m=m: step(m, xq), args.repeats) for name, m in models.items()}
    for name, (wall, cpu) in times.items():
        print(f"  {name:9s} wall {1e3 * wall:8.2f} ms   cpu {1e3 * cpu:8.2f} ms")
    (w1, c1), (w2, c2) = times["widenets"], times["botorch"]
    print(f"  ratio widenets / botorch: wall {w1 / w2:.2f}x, cpu {c1 / c2:.2f}x")


if __name__ == "__main__":
    main()
