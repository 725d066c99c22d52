"""The computations of a study, one function per stage, each returning (result, tensors).

- :func:`data_and_targets`: the dataset and its centred one-hot (or centred value) targets.
- :func:`kernels_stage`: infinite-width NNGP and NTK, train-train and test-train, and the
  learning rate ("auto": lr_factor * n / lambda_max(NTK), n = y_train.numel(); gradient
  descent on L = ||f - y||^2 / (2n) is stable for lr < 2n / lambda_max).
- :func:`infinite_stage`: NNGP posterior mean (Lee et al. 2018) and NTK gradient flow
  (Lee et al. 2019) at t = inf over a diag_reg sweep, and along t; the closed-form test
  outputs at the finite networks' checkpoints.
- :func:`finite_stage`: one network of one width and seed, trained by full-batch gradient
  descent and by SGD (and its linearisation, when :func:`widenets.linearize` exists) on the
  same loss, compared with the closed form at the same training time at every checkpoint;
  regime measures (kernel distance of the empirical NTK, relative weight change).

Training time has one definition, :func:`training_time`: tau = lr * step, the time of the
gradient flow d theta / d tau = -grad L that ``step`` steps of gradient descent at learning
rate lr follow (Lee et al. 2019, Sec. 2). Every closed form of the study comes from
:func:`flow_predictor`, whose argument is that tau.
"""

from __future__ import annotations

import itertools
import math
import time

import torch

import widenets as wn
from widenets.study.architectures import build_description, is_convolutional


def data_and_targets(cfg):
    opts = {"n_train": cfg.n_train, "n_test": cfg.n_test, "seed": cfg.data_seed}
    if is_convolutional(cfg.arch) and cfg.data in ("mnist5k", "digits"):
        opts["flatten"] = False
    opts.update(cfg.data_options)
    ds = wn.data.load(cfg.data, **opts)
    y, y_test = ds.targets()
    return ds, y, y_test


def out_dim(ds) -> int:
    return ds.n_classes if ds.task == "classification" else 1


def accuracy(f: torch.Tensor, ds) -> float | None:
    """Test accuracy (argmax of the outputs against the labels), None for regression."""
    if ds.task != "classification":
        return None
    return (f.argmax(-1) == ds.y_test).double().mean().item()


def mse(f: torch.Tensor, target: torch.Tensor) -> float:
    return ((f.double() - target) ** 2).mean().item()


def rel_distance(f: torch.Tensor, ref: torch.Tensor) -> float:
    """||f - ref||_F / ||ref||_F."""
    ref = ref.double()
    return ((f.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def checkpoint_steps(cfg) -> list[int]:
    """0 and about ``n_checkpoints - 1`` log-spaced steps up to ``steps``."""
    n = cfg.n_checkpoints - 1
    grid = {0, cfg.steps}
    for i in range(n):
        grid.add(round(math.exp(math.log(cfg.steps) * i / max(n - 1, 1))))
    return sorted(grid)


def training_time(lr: float, step: int | float) -> float:
    """tau = lr * step: the gradient-flow time reached by ``step`` steps at learning rate lr."""
    return lr * step


def flow_predictor(k_train_train, y, diag_reg: float = 0.0):
    """Gradient flow on L = ||f - y||^2 / (2 y.numel()) as a function of tau = lr * step:
    f_train(tau) - y = exp(-Theta tau / n) (f_train(0) - y) (Lee et al. 2019, Sec. 2.2).

    The learning rate is already in tau, so the predictor is built with learning rate 1;
    giving it lr as well would count it twice.
    """
    return wn.predict.gradient_descent_mse(k_train_train, y, learning_rate=1.0, diag_reg=diag_reg)


def checkpoint_times(cfg, lr: float) -> torch.Tensor:
    """Training times tau of the checkpoint steps, float64."""
    return torch.tensor([training_time(lr, s) for s in checkpoint_steps(cfg)], dtype=torch.float64)


def kernels_stage(cfg, ds, y, progress: bool | None = None):
    t0 = time.perf_counter()
    net = build_description(cfg, cfg.widths[-1], out_dim(ds))
    k = net.kernel(ds.x_train, progress=progress)
    kt = net.kernel(ds.x_test, ds.x_train, progress=progress)
    evals = torch.linalg.eigvalsh(k.ntk)
    lam_max = evals[-1].item()
    if cfg.learning_rate == "auto":
        lr = cfg.lr_factor * y.numel() / lam_max
    else:
        lr = float(cfg.learning_rate)
    result = {
        "seconds": time.perf_counter() - t0,
        "description": repr(net),
        "ntk_lambda_max": lam_max,
        "ntk_lambda_min": evals[0].item(),
        "nngp_diag_mean": k.nngp.diagonal().mean().item(),
        "ntk_diag_mean": k.ntk.diagonal().mean().item(),
        "learning_rate": lr,
        "lr_stability_limit": 2 * y.numel() / lam_max,
        "training_time": training_time(lr, cfg.steps),
    }
    tensors = {"nngp": k.nngp, "ntk": k.ntk, "nngp_test": kt.nngp, "ntk_test": kt.ntk}
    return result, tensors


def _scores(f, ds, y_test) -> dict:
    return {"accuracy": accuracy(f, ds), "mse": mse(f, y_test)}


def infinite_stage(cfg, ds, y, y_test, K, lr):
    t0 = time.perf_counter()
    sweep = []
    for reg in cfg.diag_reg_sweep:
        row = {"diag_reg": reg}
        try:
            mean, _ = wn.predict.gp_inference(K["nngp"], y, K["nngp_test"], diag_reg=reg)
            row["nngp"] = _scores(mean, ds, y_test)
        except ValueError as err:  # not positive definite without regulariser
            row["nngp"] = {"accuracy": None, "mse": None, "error": str(err)}
        pred = flow_predictor(K["ntk"], y, diag_reg=reg)
        row["ntk_t_inf"] = _scores(pred(math.inf, K["ntk_test"]), ds, y_test)
        sweep.append(row)
    chosen = next(r for r in sweep if r["diag_reg"] == cfg.diag_reg)

    # gradient flow along t (no regulariser: what the finite networks do), f(0) = 0
    flow = flow_predictor(K["ntk"], y)
    t_end = training_time(lr, cfg.steps)
    n = cfg.n_times
    times = [t_end * 10 ** (-2 + 4 * i / (n - 1)) for i in range(n)]
    f_test = flow(torch.tensor(times), K["ntk_test"])
    f_train = flow(torch.tensor(times))
    along = [
        {"time": t, "train_loss": _loss(ft, y), **_scores(fs, ds, y_test)}
        for t, fs, ft in zip(times, f_test, f_train, strict=True)
    ]
    steps = checkpoint_steps(cfg)
    ck_times = checkpoint_times(cfg, lr)
    ck_test = flow(ck_times, K["ntk_test"])
    ck_train = flow(ck_times)
    checkpoints = [
        {
            "step": s,
            "time": training_time(lr, s),
            "train_loss": _loss(ft, y),
            **_scores(fs, ds, y_test),
        }
        for s, fs, ft in zip(steps, ck_test, ck_train, strict=True)
    ]
    result = {
        "seconds": time.perf_counter() - t0,
        "diag_reg": cfg.diag_reg,
        "nngp": chosen["nngp"],
        "ntk_t_inf": chosen["ntk_t_inf"],
        "ntk_at_training_time": checkpoints[-1],
        "diag_reg_sweep": sweep,
        "along_t": along,
        "checkpoints": checkpoints,
    }
    return result, {"checkpoint_test": ck_test}


def _loss(f, y) -> float:
    return (((f.double() - y) ** 2).sum() / (2 * y.numel())).item()


def _linearize_fn():
    return getattr(wn, "linearize", None) or getattr(wn.empirical, "linearize", None)


def _regime_fn(name):
    theory = getattr(wn, "theory", None)
    regime = getattr(theory, "regime", None)
    return getattr(regime, name, None)


def kernel_distance(k0: torch.Tensor, kt: torch.Tensor) -> float:
    """1 - <K0, Kt> / (|K0| |Kt|) (Frobenius), 0 when the kernel did not move."""
    fn = _regime_fn("kernel_distance")
    if fn is not None:
        try:
            return float(fn(k0, kt))
        except Exception:  # noqa: BLE001 - an API other than expected: use the formula
            pass
    k0, kt = k0.double(), kt.double()
    return (1 - (k0 * kt).sum() / (k0.norm() * kt.norm())).item()


def relative_kernel_change(k0: torch.Tensor, kt: torch.Tensor) -> float:
    """||Kt - K0||_F / ||K0||_F: how far the empirical NTK moved (Lee et al. 2019 bound it by
    O(width^-1/2) over training in the NTK parameterisation)."""
    return rel_distance(kt, k0)


def relative_weight_change(p0: list[torch.Tensor], pt: list[torch.Tensor]) -> float:
    """||theta_t - theta_0|| / ||theta_0|| over all trainable parameters."""
    num = sum(((a.double() - b.double()) ** 2).sum() for a, b in zip(pt, p0, strict=True))
    den = sum((b.double() ** 2).sum() for b in p0)
    return math.sqrt(float(num) / float(den))


class TrainingDiverged(RuntimeError):
    """Gradient descent blew up: the learning rate exceeds 2n / lambda_max of the model's
    own (empirical) NTK, which at small width can be far above the infinite-width one."""


class _Trainer:
    """Trains ``fn`` (a module) on L = ||f - y||^2 / (2 y.numel()) with torch.optim.SGD and
    records the test outputs and scores at the checkpoint steps (:func:`training_time`)."""

    def __init__(self, cfg, ds, y, y_test, lr, ref_test, dtype, tick):
        self.cfg, self.ds, self.lr, self.tick = cfg, ds, lr, tick
        self.x = ds.x_train.to(dtype)
        self.xt = ds.x_test.to(dtype)
        self.y, self.y_test = y.to(dtype), y_test
        self.ref_test = ref_test  # closed-form test outputs at the checkpoints, f(0) = 0
        self.steps = checkpoint_steps(cfg)

    def run(self, module, batch_size=0, generator=None, own_ref=None, weight_decay=0.0):
        """``weight_decay`` lambda: torch.optim.SGD's weight decay, i.e. gradient descent on
        L + lambda/2 ||theta||^2 (L2 regularisation of every trainable parameter)."""
        with torch.no_grad():
            f0, f0t = module(self.x), module(self.xt)
        if not self.cfg.center:
            f0, f0t = torch.zeros_like(f0), torch.zeros_like(f0t)
        opt = torch.optim.SGD(
            [p for p in module.parameters() if p.requires_grad],
            lr=self.lr,
            weight_decay=weight_decay,
        )
        records, outputs, n = [], [], self.x.shape[0]
        order, pos, first_loss = None, 0, None
        for step in range(self.cfg.steps + 1):
            if step in self.steps:
                with torch.no_grad():
                    ftr = module(self.x) - f0
                    fte = (module(self.xt) - f0t).double()
                k = len(records)
                rec = {
                    "step": step,
                    "time": training_time(self.lr, step),
                    "train_loss": _loss(ftr, self.y.double()),
                    **_scores(fte, self.ds, self.y_test),
                    "distance_to_infinite": rel_distance(fte, self.ref_test[k]),
                }
                if own_ref is not None:
                    rec["distance_to_own_closed_form"] = rel_distance(fte, own_ref[k])
                records.append(rec)
                outputs.append(fte)
            if step == self.cfg.steps:
                break
            if batch_size:
                if order is None or pos + batch_size > n:
                    order, pos = torch.randperm(n, generator=generator), 0
                idx = order[pos : pos + batch_size]
                pos += batch_size
                xb, yb, fb = self.x[idx], self.y[idx], f0[idx]
            else:
                xb, yb, fb = self.x, self.y, f0
            opt.zero_grad()
            loss = ((module(xb) - fb - yb) ** 2).sum() / (2 * yb.numel())
            value = loss.item()  # float(loss) warns on a tensor that requires grad
            first_loss = value if first_loss is None else first_loss
            if not math.isfinite(value) or value > 1e6 * max(first_loss, 1e-12):
                raise TrainingDiverged(
                    f"diverged at step {step} (loss {value:.3g} from {first_loss:.3g}) with "
                    f"learning rate {self.lr:.4g}"
                )
            loss.backward()
            opt.step()
            self.tick(1)
        self.outputs = outputs  # the test outputs at every checkpoint
        return records, outputs[-1]


def finite_stage(cfg, ds, y, y_test, K, inf_tensors, lr, width, seed, tick=lambda n: None):
    """One network (width, seed): gradient descent, SGD, linearisation, regime measures."""
    t0 = time.perf_counter()
    dtype = getattr(torch, cfg.dtype)
    net = build_description(cfg, width, out_dim(ds))
    ref = inf_tensors["checkpoint_test"]
    trainer = _Trainer(cfg, ds, y, y_test, lr, ref, dtype, tick)
    result = {"width": width, "seed": seed}
    tensors = {}

    model = net.build(ds.input_shape, seed=seed, dtype=dtype)
    own_ref = None
    if not cfg.center:  # the closed form started from this network's own f(0) (Lee et al. 2019)
        with torch.no_grad():
            f0, f0t = model(ds.x_train.to(dtype)), model(ds.x_test.to(dtype))
        flow = flow_predictor(K["ntk"], y)
        own_ref = flow(
            checkpoint_times(cfg, lr), K["ntk_test"], fx_train_0=f0.double(), fx_test_0=f0t.double()
        )
        tensors["own_reference_test"] = own_ref
    xr = ds.x_train[: cfg.regime_points].to(dtype)
    k0 = wn.empirical.ntk(model, xr)
    p0 = [p.detach().clone() for p in model.parameters()]
    records, f_gd = trainer.run(model, own_ref=own_ref)
    gd_outputs = trainer.outputs
    kt = wn.empirical.ntk(model, xr)
    k_inf = K["ntk"][: xr.shape[0], : xr.shape[0]]  # the same inputs: x_train[:regime_points]
    result["gd"] = {"checkpoints": records, **records[-1]}
    result["regime"] = {
        "kernel_distance": kernel_distance(k0, kt),
        "relative_kernel_change": relative_kernel_change(k0, kt),
        "ntk_init_distance": rel_distance(k0, k_inf),
        "relative_weight_change": relative_weight_change(
            p0, [p.detach() for p in model.parameters()]
        ),
        "source": "widenets.theory.regime"
        if _regime_fn("kernel_distance") is not None
        else "computed by the study (widenets.theory.regime not present)",
    }
    tensors["gd_test"] = f_gd

    if cfg.sgd_batch_size:
        model = net.build(ds.input_shape, seed=seed, dtype=dtype)
        gen = torch.Generator().manual_seed(10_007 * seed + 1)
        records, f_sgd = trainer.run(model, cfg.sgd_batch_size, gen, own_ref)
        result["sgd"] = {"checkpoints": records, **records[-1]}
        tensors["sgd_test"] = f_sgd

    linearize = _linearize_fn()
    if cfg.linearize and seed < cfg.linearize_seeds:
        if linearize is None:
            result["linearized"] = {"skipped": "widenets.linearize is not available"}
        else:
            model = net.build(ds.input_shape, seed=seed, dtype=dtype)
            try:
                records, f_lin = trainer.run(linearize(model), own_ref=own_ref)
                records[-1]["distance_to_network"] = rel_distance(f_lin, f_gd)
                records[-1]["max_distance_to_network"] = linearization_gap(
                    gd_outputs, trainer.outputs
                )
                result["linearized"] = {"checkpoints": records, **records[-1]}
                tensors["linearized_test"] = f_lin
            except TrainingDiverged as err:
                result["linearized"] = {"skipped": f"linearised network {err}"}
            except Exception as err:  # noqa: BLE001 - report, do not lose the stage
                result["linearized"] = {"skipped": f"widenets.linearize failed: {err!r}"}
    result["seconds"] = time.perf_counter() - t0
    return result, tensors


def linearization_gap(network: list, linear: list) -> float:
    """sup over checkpoints of ||f(t) - f_lin(t)||_F, relative to ||f_lin(T)||_F at the end
    of training: the quantity Lee et al. 2019 (Theorem 2.1) bound by O(width^-1/2)."""
    scale = linear[-1].double().norm().clamp_min(1e-300)
    gap = max(float((a.double() - b.double()).norm()) for a, b in zip(network, linear, strict=True))
    return gap / float(scale)


def _subsets(n: int, m: int, limit: int = 64) -> list[tuple[int, ...]]:
    """All size-m subsets of range(n), or ``limit`` of them spread evenly when more."""
    subsets = list(itertools.combinations(range(n), m))
    if len(subsets) <= limit:
        return subsets
    step = len(subsets) / limit
    return [subsets[int(i * step)] for i in range(limit)]


def ensemble_curve(outputs: list[torch.Tensor], ref: torch.Tensor) -> list[float]:
    """Mean over subsets of M members of the distance of their average from ``ref``, for
    M = 1..len(outputs): the ensemble's distance falls like M^-1/2 when the members'
    deviations are independent and their mean (the finite-width bias) is small."""
    out = []
    for m in range(1, len(outputs) + 1):
        ds = [
            rel_distance(torch.stack([outputs[i] for i in sub]).mean(0), ref)
            for sub in _subsets(len(outputs), m)
        ]
        out.append(sum(ds) / len(ds))
    return out


def ensemble_scaling(finite: dict, inf_tensors) -> dict:
    """Per width, the GD networks' ensemble distance from the infinite-width prediction for
    M = 1..seeds members, and the same curve with each seed left out in turn (for a
    jackknife estimate of the fitted exponent's uncertainty)."""
    ref = inf_tensors["checkpoint_test"][-1]
    by_width: dict[int, list] = {}
    for (width, _seed), (_res, tens) in sorted(finite.items()):
        if tens and "gd_test" in tens:
            by_width.setdefault(width, []).append(tens["gd_test"])
    out = {}
    for width, fs in by_width.items():
        leave_one_out = (
            [ensemble_curve(fs[:i] + fs[i + 1 :], ref) for i in range(len(fs))]
            if len(fs) > 2
            else []
        )
        out[str(width)] = {
            "members": list(range(1, len(fs) + 1)),
            "distance": ensemble_curve(fs, ref),
            "leave_one_out": leave_one_out,
        }
    return out


def ensemble_summary(finite: dict, inf_tensors, ds, y_test) -> dict:
    """Per width: the mean of the seeds' test outputs (an ensemble) against the closed form."""
    ref = inf_tensors["checkpoint_test"][-1]
    out = {}
    by_width: dict[int, list] = {}
    for (width, _seed), (_res, tens) in sorted(finite.items()):
        by_width.setdefault(width, []).append(tens)
    for width, items in by_width.items():
        row = {"n_members": len(items)}
        for method in ("gd", "sgd"):
            fs = [t[f"{method}_test"] for t in items if f"{method}_test" in t]
            if fs:
                f = torch.stack(fs).mean(0)
                row[method] = {
                    **_scores(f, ds, y_test),
                    "distance_to_infinite": rel_distance(f, ref),
                }
        out[width] = row
    return out
