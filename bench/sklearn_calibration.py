"""Calibration of the regressors' ``return_std`` on ``load_diabetes``, against scikit-learn's
``GaussianProcessRegressor``.

On ``--splits`` random 70/30 splits (``random_state`` 0, 1, ...; inputs standardised on the
training part) it prints, for each model, the pooled fraction of test targets inside the
central 50%, 80%, 95% and 99% predictive intervals (mean +- z std), and the mean negative
log predictive density per test target (lower is better):

- ``NNGPRegressor`` / ``NTKRegressor`` (depth 2, ReLU), ``diag_reg`` chosen on each training
  part by ``log_marginal_likelihood()`` among {1e-2, 1e-1, 1, 10}, and at the default
  ``diag_reg`` (1e-4, no selection);
- ``GaussianProcessRegressor`` with ``ConstantKernel * RBF + WhiteKernel`` (isotropic length
  scale), ``normalize_y=True``, hyperparameters fitted by maximum marginal likelihood.

    flock /tmp/bench.lock python bench/sklearn_calibration.py
    flock /tmp/bench.lock python bench/sklearn_calibration.py --splits 10
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
from scipy.stats import norm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.gaussian_process import GaussianProcessRegressor  # noqa: E402
from sklearn.gaussian_process.kernels import RBF, WhiteKernel  # noqa: E402
from sklearn.gaussian_process.kernels import ConstantKernel as C  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from widenets.sklearn import KernelCache, NNGPRegressor, NTKRegressor  # noqa: E402

LEVELS = (0.5, 0.8, 0.95, 0.99)
REGS = (1e-2, 1e-1, 1.0, 10.0)


def by_likelihood(cls):
    def fit(xt, yt):
        cache = KernelCache()
        fits = [cls(depth=2, diag_reg=r, kernel_cache=cache).fit(xt, yt) for r in REGS]
        return max(fits, key=lambda m: m.log_marginal_likelihood())

    return fit


def gpr(xt, yt):
    kernel = C() * RBF(1.0) + WhiteKernel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianProcessRegressor(kernel, normalize_y=True, random_state=0).fit(xt, yt)


MODELS = {
    "NNGPRegressor, diag_reg by likelihood": by_likelihood(NNGPRegressor),
    "NTKRegressor, diag_reg by likelihood": by_likelihood(NTKRegressor),
    "NNGPRegressor, default diag_reg": lambda xt, yt: NNGPRegressor(depth=2).fit(xt, yt),
    "NTKRegressor, default diag_reg": lambda xt, yt: NTKRegressor(depth=2).fit(xt, yt),
    "GaussianProcessRegressor (RBF + white)": gpr,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=5, help="random 70/30 splits")
    args = parser.parse_args(argv)
    if args.splits < 1:
        parser.error(f"--splits must be at least 1, got {args.splits}")
    x, y = load_diabetes(return_X_y=True)
    z = np.array([norm.ppf(0.5 + level / 2) for level in LEVELS])
    print(f"load_diabetes, {args.splits} random 70/30 splits, pooled test targets\n")
    head = " | ".join(f"{level:.0%} interval" for level in LEVELS)
    print(f"| model | {head} | NLPD per target |")
    print("|---|" + "---:|" * (len(LEVELS) + 1))
    for name, fit in MODELS.items():
        inside, nlpd = [], []
        for seed in range(args.splits):
            xt, xs, yt, ys = train_test_split(x, y, test_size=0.3, random_state=seed)
            scaler = StandardScaler().fit(xt)
            mean, std = fit(scaler.transform(xt), yt).predict(scaler.transform(xs), return_std=True)
            inside.append(np.abs(ys - mean)[:, None] <= z * std[:, None])
            nlpd.append(-norm.logpdf(ys, mean, std))
        cover = np.concatenate(inside).mean(0)
        cells = " | ".join(f"{c:.3f}" for c in cover)
        print(f"| {name} | {cells} | {np.concatenate(nlpd).mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()
