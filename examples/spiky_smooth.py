"""Benign overfitting with spiky-smooth kernels and activations (Haas et al. 2023).

A noisy regression task in two dimensions: y = f*(x) + noise. Four infinitely wide
networks (kernels), each fitted to the training data without a ridge (they interpolate the
noise; train error ~0), except the reference:

- plain ReLU NTK (two-layer net, gradient flow to t = inf): interpolates and generalises
  poorly in fixed dimension;
- ReLU NTK + rho * narrow Gaussian spike (the spiky-smooth kernel): interpolates, yet
  predicts almost like ...
- ... the ReLU NTK with ridge rho (the reference; does not interpolate);
- the NTK of the same net with the spiky-smooth activation relu(x) + a sin(w x + pi/4),
  whose sine part adds a Gaussian spike of height ~ a^2 w^2 q / 2 and width ~ 1/w.

Run: ``python examples/spiky_smooth.py`` (prints the test errors; about 30 s on a CPU).
"""

from __future__ import annotations

import argparse
import math

import torch

import widenets as wn


def task(n_train: int, n_test: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    d = 2

    def f_star(x):
        return torch.sin(3 * x[:, 0]) + torch.cos(2 * x[:, 1]) * x[:, 0]

    x_train = torch.rand(n_train, d, generator=g, dtype=torch.float64) * 2 - 1
    x_test = torch.rand(n_test, d, generator=g, dtype=torch.float64) * 2 - 1
    y_train = f_star(x_train) + noise * torch.randn(n_train, generator=g, dtype=torch.float64)
    return x_train, y_train, x_test, f_star(x_test)


def fit(k_train, y, k_test_train, ridge=0.0):
    """Kernel (ridge) regression: the t = inf gradient-flow predictor of the NTK."""
    mean, _ = wn.predict.gp_inference(
        k_train, y, k_test_train, diag_reg=ridge, diag_reg_absolute_scale=True
    )
    train, _ = wn.predict.gp_inference(k_train, y, diag_reg=ridge, diag_reg_absolute_scale=True)
    return mean, train


def run(
    n_train=400,
    n_test=2000,
    noise=1.0,
    rho=0.1,
    gamma=0.003,
    amplitude=None,
    frequency=400.0,
    seed=0,
    verbose=True,
):
    x_train, y_train, x_test, y_test = task(n_train, n_test, noise, seed)
    x_all = torch.cat([x_train, x_test])
    n = n_train

    def net(act):
        return wn.serial(wn.Dense(512, w_std=1.0, b_std=0.5), act, wn.Dense(1, w_std=1.0))

    relu = net(wn.Relu()).kernel(x_all, get="ntk").ntk
    spike = wn.spike_kernel(x_all, gamma=gamma)
    spiky = relu + rho * spike
    # the activation's spike height is ~ a^2 w^2 q / 2, q = E[h^2] the pre-activation
    # variance (x.x / d + b_std^2): choose a to match rho
    q = float((x_all.pow(2).mean(1) + 0.25).mean())
    if amplitude is None:
        amplitude = math.sqrt(2 * rho / q) / frequency
    act_k = net(wn.SpikySmooth(amplitude, frequency)).kernel(x_all, get="ntk").ntk

    results = {}
    for name, k, ridge in (
        ("ReLU NTK, ridgeless", relu, 0.0),
        ("spiky-smooth kernel, ridgeless", spiky, 0.0),
        ("spiky-smooth activation NTK, ridgeless", act_k, 0.0),
        (f"ReLU NTK, ridge {rho:g} (reference)", relu, rho),
    ):
        pred, train = fit(k[:n, :n], y_train, k[n:, :n], ridge)
        results[name] = (
            float(((train - y_train) ** 2).mean()),
            float(((pred - y_test) ** 2).mean()),
        )
    if verbose:
        print(
            f"n_train={n_train}, noise sd={noise}, spike rho={rho}, gamma={gamma}; "
            f"activation relu(x) + {amplitude:.3g} sin({frequency:g} x + pi/4)"
        )
        print(f"{'estimator':42s} {'train MSE':>10s} {'test MSE (vs f*)':>17s}")
        for name, (tr, te) in results.items():
            print(f"{name:42s} {tr:10.2e} {te:17.4f}")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    run(n_train=a.n_train, noise=a.noise, seed=a.seed)


if __name__ == "__main__":
    main()
