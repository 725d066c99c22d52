"""Bayesian optimisation of the 6-D Hartmann function with widenets' NNGP and NTK kernels.

Each run starts from ``--n-init`` scrambled Sobol points of the unit cube and takes
``--steps`` steps of analytic LogEI (q=1), refitting the GP's hyperparameters by maximum
marginal likelihood (with their priors) before every step. The final simple regret is
f* - max f(x) over the points evaluated (f* = 3.32237, Hartmann negated to a maximisation).
Every method starts from the same Sobol points for a given seed. Methods:

- ``stgp``: BoTorch's default ``SingleTaskGP`` (Matern-5/2 with ARD and BoTorch's priors);
- ``ibnn``: BoTorch's ``InfiniteWidthBNNKernel(depth=3)``, otherwise the same defaults;
- ``nngp-raw``: widenets' NNGP on the unit cube with no priors (the fit that collapses);
- ``nngp``, ``ntk``: widenets' NNGP and NTK with the recommended set-up
  (docs/bayesian_optimisation.md): inputs centred to [-1, 1]^d, a LogNormal prior on
  ``w_std`` starting at its mode, and the noise variance bounded above by ``--max-noise``
  (in units of the standardised outcome) besides BoTorch's LogNormal(-4, 1) noise prior;
- ``nngp-ard``, ``ntk-ard``: the same with a learnable lengthscale per input
  (``ard_num_dims=6``, LogNormal(0, 1) prior).

All seven methods take about half an hour on a loaded 2-core machine (``--methods`` picks
some); docs/bayesian_optimisation.md has the table they produce.

The network is BoTorch's: 3 hidden ReLU layers (4 Dense layers sharing w_std and b_std).

    python examples/botorch_hartmann.py                      # 5 seeds x 25 steps, all methods
    python examples/botorch_hartmann.py --seeds 1 --steps 2 --methods nngp,ntk   # a smoke run
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import gpytorch
import torch
from botorch.acquisition import LogExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.kernels import InfiniteWidthBNNKernel
from botorch.models.transforms import Normalize
from botorch.models.utils.gpytorch_modules import MIN_INFERRED_NOISE_LEVEL
from botorch.optim import optimize_acqf
from botorch.test_functions import Hartmann
from gpytorch.constraints import Interval
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.priors import LogNormalPrior
from torch.quasirandom import SobolEngine

import widenets as wn
from widenets.gpytorch import NetworkKernel

DTYPE = torch.float64
METHODS = ("stgp", "ibnn", "nngp-raw", "nngp", "ntk", "nngp-ard", "ntk-ard")
LABELS = {
    "stgp": "SingleTaskGP (Matern-5/2 ARD, BoTorch defaults)",
    "ibnn": "BoTorch InfiniteWidthBNNKernel (depth 3)",
    "nngp-raw": "widenets NNGP, unit cube, no priors",
    "nngp": "widenets NNGP, recommended set-up",
    "ntk": "widenets NTK, recommended set-up",
    "nngp-ard": "widenets NNGP, recommended set-up + a lengthscale per input",
    "ntk-ard": "widenets NTK, recommended set-up + a lengthscale per input",
}
#: the prior on w_std: LogNormal(log 1.5, 0.5), mode 1.5 x e^-0.25 ~ 1.17, 90% within [0.66, 3.4]
W_STD_PRIOR = (math.log(1.5), 0.5)


def relu_network(depth: int = 3, w_std: float = 1.5, b_std: float = 0.1) -> wn.Layer:
    """depth hidden ReLU layers between depth + 1 Dense layers (BoTorch's architecture)."""
    layers = [wn.Dense(512, w_std, b_std)]
    for _ in range(depth):
        layers += [wn.Relu(), wn.Dense(512, w_std, b_std)]
    return wn.serial(*layers)


def centred(d: int) -> Normalize:
    """An input transform mapping the unit cube onto [-1, 1]^d: x -> (x - 0.5) / 0.5."""
    bounds = torch.stack([torch.full((d,), 0.5), torch.ones(d)]).to(DTYPE)
    return Normalize(d=d, bounds=bounds)


def recommended_kernel(get: str, ard_num_dims: int | None = None) -> NetworkKernel:
    """The NNGP or NTK with a LogNormal prior on w_std, starting at the prior's mode; with
    ``ard_num_dims`` also a lengthscale per input (LogNormal(0, 1) prior, starting at 1)."""
    loc, scale = W_STD_PRIOR
    prior = LogNormalPrior(loc, scale)
    ard = {}
    if ard_num_dims is not None:
        ard = {"ard_num_dims": ard_num_dims, "lengthscale_prior": LogNormalPrior(0.0, 1.0)}
    w0 = math.exp(loc - scale**2)
    return NetworkKernel(relu_network(), get=get, w_std=w0, w_std_prior=prior, **ard)


def bounded_noise(max_noise: float) -> GaussianLikelihood:
    """BoTorch's noise prior, LogNormal(-4, 1), with the noise variance also kept below
    ``max_noise``: the fit can no longer explain the data as all noise."""
    prior = LogNormalPrior(-4.0, 1.0)
    return GaussianLikelihood(
        noise_prior=prior,
        noise_constraint=Interval(MIN_INFERRED_NOISE_LEVEL, max_noise, initial_value=prior.mode),
    )


def make_model(method: str, x: torch.Tensor, y: torch.Tensor, max_noise: float):
    d = x.shape[-1]
    if method == "stgp":
        return SingleTaskGP(x, y)
    if method == "ibnn":
        return SingleTaskGP(x, y, covar_module=InfiniteWidthBNNKernel(depth=3))
    if method == "nngp-raw":
        return SingleTaskGP(x, y, covar_module=NetworkKernel(relu_network(), get="nngp"))
    if method in ("nngp", "ntk", "nngp-ard", "ntk-ard"):
        get, ard = method.split("-")[0], method.endswith("-ard")
        return SingleTaskGP(
            x,
            y,
            covar_module=recommended_kernel(get, d if ard else None),
            likelihood=bounded_noise(max_noise),
            input_transform=centred(d),
        )
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")


def run(method: str, seed: int, args) -> tuple[float, float]:
    """One Bayesian-optimisation run: (final simple regret, fitted noise variance)."""
    f = Hartmann(dim=6, negate=True).to(DTYPE)
    d = f.dim
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(DTYPE)
    x = SobolEngine(d, scramble=True, seed=seed).draw(args.n_init).to(DTYPE)
    y = f(x).unsqueeze(-1)
    torch.manual_seed(seed)  # the restarts of optimize_acqf
    noise = float("nan")
    for _ in range(args.steps):
        model = make_model(method, x, y, args.max_noise)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
        fit_gpytorch_mll(mll)
        noise = float(model.likelihood.noise.detach().mean())
        acqf = LogExpectedImprovement(model, best_f=y.max())
        cand, _ = optimize_acqf(
            acqf,
            bounds=bounds,
            q=1,
            num_restarts=args.restarts,
            raw_samples=args.raw_samples,
            options={"maxiter": args.maxiter},
        )
        x = torch.cat([x, cand])
        y = torch.cat([y, f(cand).unsqueeze(-1)])
    return f.optimal_value - float(y.max()), noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="runs per method (default 5)")
    parser.add_argument("--steps", type=int, default=25, help="LogEI steps (default 25)")
    parser.add_argument("--n-init", type=int, default=10, help="Sobol points (default 10)")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--max-noise",
        type=float,
        default=0.05,
        help="upper bound on the noise variance of the recommended set-up (default 0.05)",
    )
    parser.add_argument("--restarts", type=int, default=2, help="optimize_acqf restarts (2)")
    parser.add_argument("--raw-samples", type=int, default=64, help="raw samples (64)")
    parser.add_argument("--maxiter", type=int, default=100, help="L-BFGS-B iterations (100)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the GP's matrices are tiny, extra threads only wait)",
    )
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            parser.error(f"--methods: unknown method {m!r}; expected some of {', '.join(METHODS)}")
    if args.seeds < 1 or args.steps < 0 or args.n_init < 2:
        parser.error("--seeds must be >= 1, --steps >= 0 and --n-init >= 2")

    warnings.filterwarnings("ignore", category=gpytorch.utils.warnings.NumericalWarning)
    torch.set_num_threads(args.threads)
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        results = [run(method, seed, args) for seed in range(args.seeds)]
        regrets = torch.tensor([r for r, _ in results])
        noises = [n for _, n in results]
        mean = float(regrets.mean())
        se = float(regrets.std() / math.sqrt(len(regrets))) if len(regrets) > 1 else float("nan")
        elapsed = time.perf_counter() - t0
        rows.append((LABELS[method], mean, se, sorted(noises)[len(noises) // 2], elapsed))
        print(
            f"{method}: regrets {[round(float(r), 3) for r in regrets]}, "
            f"fitted noise {[f'{n:.2g}' for n in noises]}, {elapsed:.0f} s",
            flush=True,
        )
    print(
        f"\nHartmann-6: {args.n_init} Sobol points + {args.steps} LogEI steps, "
        f"{args.seeds} seeds (optimize_acqf: {args.restarts} restarts, "
        f"{args.raw_samples} raw samples, maxiter {args.maxiter}; {args.threads} thread(s))\n"
    )
    print("| model | final simple regret (mean ± s.e.) | median fitted noise | time |")
    print("|---|---|---|---|")
    for label, mean, se, noise, elapsed in rows:
        print(f"| {label} | {mean:.3f} ± {se:.3f} | {noise:.2g} | {elapsed:.0f} s |")


if __name__ == "__main__":
    main()
