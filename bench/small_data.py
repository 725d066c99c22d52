"""Small-data classification benchmark after Arora et al. 2020 ("Harnessing the Power of
Infinitely Wide Deep Nets on Small-data Tasks", ICLR 2020).

Every classification table bundled with scikit-learn (iris, wine, breast cancer, digits)
and MNIST-1D (generated locally by the ``mnist1d`` package; ``--mnist1d-n`` examples drawn
stratified). For each dataset, ``--repeats`` stratified random splits (75% train / 25% test).
On each split every method is a ``Pipeline`` tuned by ``GridSearchCV`` (3-fold stratified
inner cross-validation on the training part only; the test part is used once, to score the
refitted best setting) over a grid of the same size (6 settings each):

- NTK classifier  (widenets.sklearn.NTKClassifier): on the tables StandardScaler + a
  fully-connected ReLU network (w_std 1.5, b_std 0.05), depth {1, 3} x diag_reg {1e-3, 1e-1, 1};
  on MNIST-1D (length-40 signals whose digits sit at random shifts) the raw rows read as one
  channel (``input_shape=(1, 40)``) by a 1-D CNN-GAP: Conv(5, stride 2) + ReLU, then
  {1, 2} x [Conv(5) + ReLU] ({2, 3} convolutions), global average pooling, Dense; the same
  diag_reg values (``--mnist1d-kernel fc`` uses the tables' network instead)
- NNGP classifier (widenets.sklearn.NNGPClassifier): the same networks and grids
- RandomForest (200 trees): max_features {sqrt, 0.5} x min_samples_leaf {1, 2, 5}
- RBF-SVM: C {1, 10, 100} x gamma {1/d, 0.1/d} (d features, after standardisation)
- MLP (sklearn MLPClassifier, Adam, ``--mlp-iter`` epochs, early stopping off): hidden
  {(128,), (128, 128)} x alpha {1e-4, 1e-2, 1}
- RandomForest, RBF-SVM and MLP: StandardScaler first, on every dataset

The MNIST-1D network was chosen on MNIST-1D examples outside the benchmark's subsample
(never on its splits). Each kernel method has its own ``KernelCache``, new for every split:
within that split's grid search each kernel entry is computed once (the settings differ in
diag_reg or share rows across folds; on the tables the per-fold StandardScaler makes each
fold's rows new, so there only the settings of a fold share). Times include all kernel work.

It prints a Markdown table of mean test accuracy +- standard error over the splits and the
mean wall time per split (tuning, refit and prediction), then the mean accuracy across
datasets and whether the NTK or NNGP classifier is at least as accurate as RandomForest.

    python bench/small_data.py                 # default: 3 splits, MNIST-1D subsampled to 1000
    python bench/small_data.py --repeats 10 --mnist1d-n 5000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import (  # noqa: E402
    GridSearchCV,
    StratifiedKFold,
    StratifiedShuffleSplit,
)
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

import widenets as wn  # noqa: E402
from widenets.sklearn import KernelCache, NNGPClassifier, NTKClassifier  # noqa: E402

METHODS = ("NTK", "NNGP", "RandomForest", "RBF-SVM", "MLP")
DIAG_REG = [1e-3, 1e-1, 1.0]
KERNEL_GRID = {"depth": [1, 3], "diag_reg": DIAG_REG}
MNIST1D_LENGTH = 40


def cnn_gap_1d(n_conv: int, w_std: float = 1.5, b_std: float = 0.05):
    """1-D CNN-GAP for sequences (1, L): Conv(5, stride 2) + ReLU, then n_conv - 1 x
    [Conv(5) + ReLU], global average pooling, Dense readout (same padding throughout)."""
    layers = [wn.Conv(256, 5, stride=2, w_std=w_std, b_std=b_std), wn.Relu()]
    for _ in range(n_conv - 1):
        layers += [wn.Conv(256, 5, w_std=w_std, b_std=b_std), wn.Relu()]
    return wn.serial(*layers, wn.GlobalAvgPool(), wn.Dense(1, w_std, b_std))


def kernel_setup(name: str, mnist1d_kernel: str):
    """(steps before the estimator, estimator keyword arguments, grid) of the kernel methods.

    Tables: StandardScaler, then a fully-connected ReLU network of depth {1, 3}. MNIST-1D
    (a translation-structured signal): the rows as they are (no per-position scaling, which
    would weigh positions differently and is fitted per fold), each read as one channel of
    length 40 by a 1-D CNN-GAP with {2, 3} convolutions. Both grids: 2 x 3 = 6 settings.
    """
    if name.startswith("mnist1d") and mnist1d_kernel == "cnn":
        grid = {"architecture": [cnn_gap_1d(2), cnn_gap_1d(3)], "diag_reg": DIAG_REG}
        return [], {"input_shape": (1, MNIST1D_LENGTH)}, grid
    return [("scale", StandardScaler())], {}, KERNEL_GRID


def load_datasets(names, mnist1d_n: int, seed: int):
    loaders = {
        "iris": load_iris,
        "wine": load_wine,
        "breast_cancer": load_breast_cancer,
        "digits": load_digits,
    }
    out = {}
    for name in names:
        if name == "mnist1d":
            try:
                from widenets.data import mnist1d
            except ImportError as e:  # pragma: no cover
                print(f"skipping mnist1d: {e}", file=sys.stderr)
                continue
            try:
                ds = mnist1d(n_train=4000, n_test=1000, seed=seed, standardize=False)
            except ImportError as e:
                print(f"skipping mnist1d: {e}", file=sys.stderr)
                continue
            x = np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()])
            y = np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()])
            if mnist1d_n < len(x):
                keep = StratifiedShuffleSplit(1, train_size=mnist1d_n, random_state=seed)
                idx, _ = next(keep.split(x, y))
                x, y = x[idx], y[idx]
            out[f"mnist1d (n={len(x)})"] = (x, y)
        else:
            x, y = loaders[name](return_X_y=True)
            out[name] = (np.asarray(x, dtype=np.float64), y)
    return out


def make_searches(
    name: str, n_features: int, seed: int, mnist1d_kernel: str = "cnn", mlp_iter: int = 200
):
    inner = StratifiedKFold(3, shuffle=True, random_state=seed)

    def search(model, grid, steps=None):
        steps = [("scale", StandardScaler())] if steps is None else steps
        pipe = Pipeline([*steps, ("model", model)])
        grid = {f"model__{k}": v for k, v in grid.items()}
        return GridSearchCV(pipe, grid, cv=inner, n_jobs=1)

    g = 1.0 / n_features
    steps, kw, kgrid = kernel_setup(name, mnist1d_kernel)
    # each kernel method has its own cache (its time includes all its kernel computations);
    # it is new for every split, so nothing computed on one split is reused on another
    return {
        "NTK": search(NTKClassifier(kernel_cache=KernelCache(), **kw), kgrid, steps),
        "NNGP": search(NNGPClassifier(kernel_cache=KernelCache(), **kw), kgrid, steps),
        "RandomForest": search(
            RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
            {"max_features": ["sqrt", 0.5], "min_samples_leaf": [1, 2, 5]},
        ),
        "RBF-SVM": search(SVC(kernel="rbf"), {"C": [1, 10, 100], "gamma": [g, 0.1 * g]}),
        "MLP": search(
            MLPClassifier(max_iter=mlp_iter, random_state=seed),
            {"hidden_layer_sizes": [(128,), (128, 128)], "alpha": [1e-4, 1e-2, 1.0]},
        ),
    }


def run(datasets, repeats: int, seed: int, methods, mnist1d_kernel: str = "cnn", mlp_iter=200):
    results = {}
    for name, (x, y) in datasets.items():
        splits = StratifiedShuffleSplit(repeats, test_size=0.25, random_state=seed)
        acc = {m: [] for m in methods}
        secs = {m: [] for m in methods}
        for r, (tr, te) in enumerate(splits.split(x, y)):
            searches = make_searches(name, x.shape[1], seed + r, mnist1d_kernel, mlp_iter)
            for m in methods:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    fitted = searches[m].fit(x[tr], y[tr])
                    acc[m].append(fitted.score(x[te], y[te]))
                secs[m].append(time.perf_counter() - t0)
            print(
                f"  {name} split {r + 1}/{repeats}: "
                + ", ".join(f"{m} {acc[m][-1]:.3f}" for m in methods),
                file=sys.stderr,
                flush=True,
            )
        results[name] = {
            m: (
                np.mean(acc[m]),
                np.std(acc[m], ddof=1) / np.sqrt(len(acc[m])) if repeats > 1 else float("nan"),
                np.mean(secs[m]),
            )
            for m in methods
        }
    return results


def markdown(results, methods, repeats: int) -> str:
    lines = [
        "| dataset | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for name, row in results.items():
        cells = [
            f"{100 * a:.1f} ± {100 * s:.1f} ({t:.1f} s)" for a, s, t in (row[m] for m in methods)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = {m: np.mean([row[m][0] for row in results.values()]) for m in methods}
    times = {m: np.sum([row[m][2] for row in results.values()]) for m in methods}
    lines.append(
        "| **mean** | "
        + " | ".join(f"**{100 * means[m]:.1f}** ({times[m]:.1f} s)" for m in methods)
        + " |"
    )
    lines.append("")
    lines.append(
        f"Test accuracy (%) ± standard error over {repeats} stratified 75/25 splits; in "
        "brackets the mean wall time per split (inner 3-fold grid search over 6 settings, "
        "refit, predict); the mean row sums the times."
    )
    if "RandomForest" in means:
        best = max((m for m in ("NTK", "NNGP") if m in means), key=means.get, default=None)
        if best is not None:
            verdict = (
                "at least as accurate as"
                if means[best] >= means["RandomForest"]
                else ("less accurate than")
            )
            lines.append(
                f"Mean over datasets: {best} {100 * means[best]:.2f}% vs RandomForest "
                f"{100 * means['RandomForest']:.2f}%: the best infinite-width classifier is "
                f"{verdict} RandomForest."
            )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="stratified splits per dataset")
    p.add_argument("--mnist1d-n", type=int, default=1000, help="MNIST-1D examples used")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--datasets", nargs="+", default=["iris", "wine", "breast_cancer", "digits", "mnist1d"]
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--mnist1d-kernel",
        choices=("cnn", "fc"),
        default="cnn",
        help="network of the kernel methods on MNIST-1D: 1-D CNN-GAP, or fc as on the tables",
    )
    p.add_argument("--mlp-iter", type=int, default=200, help="max_iter (epochs) of the MLP")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    datasets = load_datasets(args.datasets, args.mnist1d_n, args.seed)
    results = run(
        datasets, args.repeats, args.seed, args.methods, args.mnist1d_kernel, args.mlp_iter
    )
    print(markdown(results, args.methods, args.repeats))
    import torch

    print(
        f"\nTotal {time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPUs "
        f"(torch threads {torch.get_num_threads()}); command: python bench/small_data.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )


if __name__ == "__main__":
    main()
