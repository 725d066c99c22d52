"""The computations of the pruning study, one function per stage, each returning
(result, tensors): the dense network, one pruning method at every density, and IMP (with
its random-reinitialisation baseline), for one architecture and seed.

Every network of seed s starts from the same draw (``build(arch, s)``) and sees the
minibatches in the same order, so methods are compared on paired runs. The kernel
distance of a network is ||Theta(m * theta) - Theta(theta)||_F / ||Theta(theta)||_F, the
empirical NTK (:func:`widenets.prune.kernel_distance`) of the masked network against the
dense one at the weights training starts from, on the first ``kernel_points`` test inputs.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import torch
import torch.nn.functional as F

from widenets import prune as P
from widenets.prune.study.networks import build, input_shape, inputs
from widenets.prune.targets import LayerCollapseWarning

REINIT_SEED = 1000  # imp_reinit of seed s draws its weights with seed REINIT_SEED + s


def steps_per_epoch(cfg) -> int:
    return math.ceil(cfg.n_train / cfg.batch_size)


def train(model, arch: str, data: dict, cfg, seed: int, on_step=None) -> dict:
    """Adam on the cross-entropy for ``cfg.epochs`` passes over the training set in
    minibatches (order drawn from ``seed``); test accuracy and the last epoch's mean loss."""
    x, y = inputs(arch, data["x_train"]), data["y_train"]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        total, count = 0.0, 0
        for i in range(0, x.shape[0], cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
            if on_step is not None:
                on_step(step)
    return {"accuracy": evaluate(model, arch, data), "train_loss": total / count}


@torch.no_grad()
def evaluate(model, arch: str, data: dict) -> float:
    model.eval()
    out = model(inputs(arch, data["x_test"]))
    return float((out.argmax(-1) == data["y_test"]).double().mean())


def kernel_inputs(arch: str, data: dict, cfg) -> torch.Tensor:
    return inputs(arch, data["x_test"][: cfg.kernel_points])


def dense_kernel(model, arch, data, cfg) -> torch.Tensor:
    return P.empirical_kernel(model, kernel_inputs(arch, data, cfg), "ntk").double()


def describe(model) -> dict:
    """Overall and per-layer kept fractions, and the layers pruned to nothing."""
    ms = P.masks(model)
    return {
        "actual_density": P.density(model),
        "layer_densities": {n: float(m.double().mean()) for n, m in ms.items()},
        "collapsed": [n for n, m in ms.items() if not bool(m.any())],
    }


def _prune(model, method: str, density: float, arch: str, data: dict, cfg, seed: int) -> None:
    kw: dict = {"seed": seed}
    if method in ("snip", "grasp"):
        n = cfg.score_examples
        kw["data"] = (inputs(arch, data["x_train"][:n]), data["y_train"][:n])
    if method == "synflow":
        kw.update(input_shape=input_shape(arch), iterations=cfg.synflow_iterations)
    name, scope = {"random": ("random", "layer"), "erk": ("random", "erk")}.get(
        method, (method, "global")
    )
    with warnings.catch_warnings():  # collapse is recorded per row (describe), not warned
        warnings.simplefilter("ignore", LayerCollapseWarning)
        P.prune(model, name, density, scope=scope, **kw)


def _row(arch, method, seed, density, model, kd, t0, trained) -> dict:
    return {
        "arch": arch,
        "method": method,
        "seed": seed,
        "density": density,
        **describe(model),
        "kernel_distance": kd,
        **trained,
        "seconds": time.perf_counter() - t0,
    }


def dense_stage(cfg, data, arch: str, seed: int, tick):
    """The dense network: its NTK at initialisation (the reference of every kernel distance
    of this seed) and its accuracy after training."""
    t0 = time.perf_counter()
    model = build(arch, seed)
    k = dense_kernel(model, arch, data, cfg)
    row = {
        "arch": arch,
        "method": "dense",
        "seed": seed,
        "density": 1.0,
        "actual_density": 1.0,
        "layer_densities": {n: 1.0 for n in P.prunable(model)},
        "collapsed": [],
        "kernel_distance": 0.0,
        **train(model, arch, data, cfg, seed),
    }
    row["seconds"] = time.perf_counter() - t0
    tick(1)
    return {"rows": [row]}, {"ntk_init": k}


def method_stage(cfg, data, arch: str, seed: int, method: str, k_dense, tick):
    """One pruning-at-initialisation method at every density below 1."""
    xk = kernel_inputs(arch, data, cfg)
    rows = []
    for d in cfg.sparse_densities:
        t0 = time.perf_counter()
        model = build(arch, seed)
        _prune(model, method, d, arch, data, cfg, seed)
        kd = P.kernel_distance(k_dense, model, xk)  # at initialisation, before training
        trained = train(model, arch, data, cfg, seed)
        rows.append(_row(arch, method, seed, d, model, kd, t0, trained))
        tick(1)
    return {"rows": rows}, None


def _unmasked_kernel(model, xk) -> torch.Tensor:
    """The NTK of ``model`` with every mask set to ones (the dense network at its weights)."""
    dense = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerCollapseWarning)
        P.apply_masks(dense, {n: torch.ones_like(m) for n, m in P.masks(dense).items()})
    return P.empirical_kernel(dense, xk, "ntk").double()


def imp_stage(cfg, data, arch: str, seed: int, k_dense, tick):
    """Iterative magnitude pruning through the densities (one round each, global magnitude,
    rewinding to step ``cfg.rewind_step``); each ticket trained from the rewound weights,
    and, with "imp_reinit", its mask trained from a fresh draw."""
    xk = kernel_inputs(arch, data, cfg)
    reinit = "imp_reinit" in cfg.methods
    k_reinit = dense_kernel(build(arch, REINIT_SEED + seed), arch, data, cfg) if reinit else None
    schedule = cfg.sparse_densities
    rows: list[dict] = []

    def evaluate_ticket(model, density, on_step=None):
        t0 = time.perf_counter()
        k_ref = k_dense if cfg.rewind_step == 0 else _unmasked_kernel(model, xk)
        kd = P.kernel_distance(k_ref, model, xk)
        if reinit:
            t1 = time.perf_counter()
            other = P.reinit(copy.deepcopy(model), seed=REINIT_SEED + seed)
            kr = P.kernel_distance(k_reinit, other, xk)
            trained = train(other, arch, data, cfg, seed)
            rows.append(_row(arch, "imp_reinit", seed, density, other, kr, t1, trained))
            tick(1)
            t0 += time.perf_counter() - t1
        trained = train(model, arch, data, cfg, seed, on_step)
        rows.append(_row(arch, "imp", seed, density, model, kd, t0, trained))
        tick(1)

    rounds = [0]

    def train_round(model, on_step):
        rounds[0] += 1
        if rounds[0] == 1:  # the dense network, as in the dense stage (same seed and order)
            train(model, arch, data, cfg, seed, on_step)
            tick(1)
        else:  # round r trains the ticket of round r - 1
            evaluate_ticket(model, schedule[rounds[0] - 2], on_step)

    model = build(arch, seed)
    P.imp(model, train_round, schedule=schedule, rewind_step=cfg.rewind_step)
    evaluate_ticket(model, schedule[-1])
    return {"rows": rows}, None


def stage_trainings(cfg) -> dict[str, int]:
    """Trainings per stage kind (the progress bars' totals)."""
    n = len(cfg.sparse_densities)
    return {
        "dense": 1,
        "method": n,
        "imp": 1 + n * (2 if "imp_reinit" in cfg.methods else 1),
    }
