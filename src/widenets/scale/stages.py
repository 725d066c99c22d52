"""The work of one training-set size N: kernels, solves and test scores.

Both kernels of the training set and of (test, training) are computed at once (the NTK's
recursion carries the NNGP's), in memory or, with a store, into two zarr stores through
:func:`widenets.kernel_store.store_kernel` (resumable tile by tile). Each requested kernel K
then predicts the test set by K_* (K + mu I)^-1 Y with mu = diag_reg * mean(diag K):
the NNGP posterior mean, and for the NTK the mean prediction of gradient flow on the MSE
loss at t = infinity (Lee et al. 2019). The solve is a dense Cholesky
(:func:`widenets.predict.gp_inference`) for N <= ``dense_max``, else block PCG
(:func:`widenets.predict.gp_mean_pcg`) reading the kernels by row blocks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from widenets.architectures import fully_connected
from widenets.scale.config import ScaleConfig
from widenets.scale.data import N_CLASSES, targets
from widenets.scale.memory import PeakMemory


def network(cfg: ScaleConfig):
    """The fully-connected network of the configuration (NTK parameterisation)."""
    return fully_connected(
        cfg.depth, out_dim=N_CLASSES, w_std=cfg.w_std, b_std=cfg.b_std, activation=cfg.activation
    )


def store_paths(store, cfg: ScaleConfig, n: int) -> tuple[Path, Path]:
    """The stores of N's kernels: ``STORE/fc<depth>-<model digest>/n<N>/{train,test}``."""
    base = Path(store) / f"fc{cfg.depth}-{cfg.model_digest()}" / f"n{n}"
    return base / "train", base / "test"


def folder_bytes(path) -> int:
    """Bytes of the files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _kernels(net, x1, x2, names, *, executor, store, progress):
    """{name: kernel} in memory (tensors) or {name: StoredKernel} (and tiles computed)."""
    if store is None:
        from widenets.compute import evaluate_kernel  # net.kernel with an executor

        k = evaluate_kernel(net, x1, x2, get=tuple(names), executor=executor, progress=progress)
        return {name: getattr(k, name) for name in names}, None
    from widenets.kernel_store import store_kernel

    stored = store_kernel(
        net, store, x1, x2, get=tuple(names), executor=executor, progress=progress
    )
    return {name: stored for name in names}, stored.computed


def _dense(k, name):
    """The kernel as a float64 tensor (a stored one is read whole, every chunk checked)."""
    if isinstance(k, torch.Tensor):
        return k
    return torch.from_numpy(getattr(k, name).compute())


def _operator(k, name):
    from widenets.predict import DenseKernel

    return DenseKernel(k) if isinstance(k, torch.Tensor) else k.operator(name)


def solve(cfg: ScaleConfig, name: str, k, k_test, y) -> tuple[torch.Tensor, dict]:
    """Test predictions of kernel ``name`` and how they were solved."""
    import widenets as wn

    n = y.shape[0]
    t0 = time.perf_counter()
    if n <= cfg.dense_max:
        mean, _ = wn.predict.gp_inference(
            _dense(k, name), y, _dense(k_test, name), diag_reg=cfg.diag_reg
        )
        info = {"solver": "cholesky"}
    else:
        res = wn.predict.gp_mean_pcg(
            _operator(k, name),
            y,
            _operator(k_test, name),
            diag_reg=cfg.diag_reg,
            tol=cfg.tol,
            max_iter=cfg.max_iter,
            rank=min(cfg.rank, n),
            seed=cfg.seed,
        )
        mean = res.prediction
        info = {
            "solver": "pcg",
            "iterations": res.iterations,
            "residual": res.residual,
            "rank": res.solve.rank,
            "preconditioner_seconds": res.solve.setup_seconds,
        }
    info["solve_seconds"] = time.perf_counter() - t0
    return mean, info


def scores(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    """Test accuracy (argmax), error = 1 - accuracy, and MSE (mean over examples and
    classes of the squared difference from the centred one-hot targets)."""
    acc = (pred.argmax(-1) == labels).double().mean().item()
    mse = ((pred.double() - targets(labels)) ** 2).mean().item()
    return {"accuracy": acc, "error": 1.0 - acc, "mse": mse}


def run_n(cfg: ScaleConfig, pool: dict, n: int, *, executor=None, store=None, progress=False):
    """Kernels, solves and scores at training-set size ``n``: (result, predictions)."""
    net = network(cfg)
    x, y = pool["x_train"][:n], targets(pool["y_train"][:n])
    x_test, labels = pool["x_test"], pool["y_test"]
    paths = store_paths(store, cfg, n) if store is not None else (None, None)
    result: dict = {"n": n, "description": repr(net)}
    preds = {}
    t_start = time.perf_counter()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        k, computed = _kernels(
            net, x, None, cfg.kernels, executor=executor, store=paths[0], progress=progress
        )
        result["kernel_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        k_test, computed_test = _kernels(
            net, x_test, x, cfg.kernels, executor=executor, store=paths[1], progress=progress
        )
        result["test_kernel_seconds"] = time.perf_counter() - t0
        for name in cfg.kernels:
            pred, info = solve(cfg, name, k[name], k_test[name], y)
            if not torch.isfinite(pred).all():
                raise FloatingPointError(
                    f"the {name} prediction at N = {n} is not finite; increase `diag_reg`."
                )
            result[name] = {**scores(pred, labels), **info}
            preds[name] = pred.to(torch.float64)
        del k, k_test
    result["peak_memory_bytes"] = mem.bytes
    result["memory_source"] = mem.source
    result["wall_seconds"] = time.perf_counter() - t_start
    if store is not None:
        result["store"] = {
            "train": str(paths[0]),
            "test": str(paths[1]),
            "bytes": folder_bytes(paths[0]) + folder_bytes(paths[1]),
            "tiles_computed": (computed or 0) + (computed_test or 0),
        }
    return result, preds
