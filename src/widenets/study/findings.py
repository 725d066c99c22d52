"""Findings of Lee et al. 2020 ("Finite Versus Infinite Neural Networks: an Empirical
Study") as optional stages of the study, each with a figure and a statement of what the run
found. Switched on by the config key ``findings`` (a list of names of :data:`FINDINGS`).

- ``"zca"``: regularised ZCA whitening of the inputs (:func:`widenets.data.zca_whiten`,
  Sigma + eps tr(Sigma)/d I with Sigma the uncentred second moment of the training inputs,
  as in Lee et al.'s implementation, so that eps -> inf gives back the unwhitened,
  per-example normalised inputs; fitted on the training set) for each eps of
  ``zca_regularizers`` against no whitening: the infinite-width NNGP posterior, the NTK
  prediction at t = inf and at the networks' training time, all with the kernels of the same
  description recomputed on the whitened inputs, and finite networks (width
  ``finding_width``, seeds 0..seeds-1, gradient descent for ``steps`` steps at the
  learning rate of that kernel, as the ``kernels`` stage computes it). Paper: regularised
  ZCA improves kernels and networks; unregularised whitening does not.
- ``"parameterization"``: fully-connected networks in the standard parameterisation (SP)
  at every width of ``widths``, trained like the NTK-parameterisation networks of the main
  stages (same seeds, steps and ``lr_factor``) at lr = lr_factor * n / lambda_max of the SP
  network's own analytic NTK at that width. That NTK grows like the width (its readout
  term is width * NNGP), so the learning rate falls like 1 / width, the usual SP scaling;
  the SP kernel at a very wide width (:data:`SP_WIDE`) gives the SP prediction at large
  width. Paper: the NTK parameterisation outperforms the standard one at large width.
- ``"large_lr_l2"``: networks of width ``finding_width`` trained by gradient descent at
  lr = f * n / lambda_max(infinite-width NTK) for each f of ``lr_factors`` (above 2 the
  kernel model's gradient descent diverges, a finite network may still converge: the
  catapult phase of Lewkowycz et al. 2020), and at the study's learning rate with L2
  regularisation lambda/2 ||theta||^2 of all trainable parameters (weight decay lambda) for
  each lambda of ``l2_values`` (plus lambda = 0). Each is compared with the infinite-width
  prediction at the same training time tau = lr * step. Paper: large learning rates and L2
  break the correspondence with the kernel and can improve the networks beyond it.

Interface used by :mod:`widenets.study.run` and :mod:`widenets.study.report`:

- ``run(name, cfg, ds, y, y_test, K, lr, tick) -> (result: dict, tensors: dict | None)``
- ``total_steps(name, cfg) -> int`` (training steps, for the progress bar)
- ``statements(results) -> list[tuple[str, str]]``: (finding, what this run found)
- ``make_figures(results, folder) -> list[Path]``
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path

import torch

import widenets as wn
from widenets.study import stages
from widenets.study.architectures import ACTIVATIONS, build_description

FINDINGS = ("zca", "parameterization", "large_lr_l2")
PAPER = "Lee et al. 2020, Finite Versus Infinite Neural Networks"
#: width of the standard-parameterisation kernel standing for "very wide" SP networks
SP_WIDE = 2**20
#: gradient descent of the kernel (linear) model is stable for lr < 2 n / lambda_max
KERNEL_GD_LIMIT = 2.0

CLAIMS = {
    "zca": "Regularised ZCA whitening improves kernels and networks",
    "parameterization": "NTK parameterisation beats the standard one at large width",
    "large_lr_l2": "Large learning rates and L2 take networks away from the kernel",
}

CAPTIONS = {
    "finding_zca": "Regularised ZCA whitening (Lee et al. 2020): test score of the "
    "infinite-width NNGP posterior, the NTK prediction at τ = ∞ and at the networks' training "
    "time, and of finite networks (mean ± std over seeds), against the ZCA regulariser ε "
    "(Σ + ε tr(Σ)/d I); the dotted lines are the same without whitening.",
    "finding_parameterization": "Standard against NTK parameterisation (Lee et al. 2020): "
    "test score of finite networks against width (mean ± std over seeds), each trained at "
    "lr_factor × n / λ_max of its own analytic NTK; horizontal lines: the infinite-width NTK "
    "prediction (NTK parameterisation) and the SP kernel at a very large width, at the same "
    "number of steps. Right: the SP learning rate falls like 1/width.",
    "finding_large_lr_l2": "Large learning rate and L2 regularisation (Lee et al. 2020): "
    "test score and distance ‖f − f_∞‖/‖f_∞‖ from the infinite-width prediction at the same "
    "training time, against the learning rate in units of n/λ_max (kernel gradient descent "
    "diverges right of the dotted line at 2) and against the L2 coefficient λ; the dashed "
    "line is the kernel prediction at the same time. Diverged runs are marked ×.",
}


# ---------------------------------------------------------------------------------------------
# shared helpers


def finding_width(cfg) -> int:
    """The width of the networks of "zca" and "large_lr_l2" (0 in the config: the largest)."""
    return cfg.finding_width or max(cfg.widths)


def _l2_grid(cfg) -> list[float]:
    return sorted(set(cfg.l2_values) | {0.0})


def total_steps(name, cfg) -> int:
    per_run = cfg.seeds * cfg.steps
    if name == "zca":
        return (len(cfg.zca_regularizers) + 1) * per_run
    if name == "parameterization":
        return len(cfg.widths) * per_run if cfg.arch == "fc" else 0
    if name == "large_lr_l2":
        return (len(cfg.lr_factors) + len(_l2_grid(cfg))) * per_run
    raise ValueError(f"unknown finding {name!r}; known: {list(FINDINGS)}.")


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values):
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)


def _task_key(ds_or_task) -> str:
    task = ds_or_task if isinstance(ds_or_task, str) else ds_or_task.task
    return "accuracy" if task == "classification" else "mse"


def _lambda_max(k) -> float:
    return torch.linalg.eigvalsh(k)[-1].item()


def _kernel_scores(cfg, ds, y, y_test, k, lr):
    """NNGP posterior and NTK t = inf (diag_reg of the config), and the NTK gradient flow at
    the checkpoints of training at lr (no regulariser, f(0) = 0, as the networks train)."""
    out = {}
    try:
        mean, _ = wn.predict.gp_inference(k["nngp"], y, k["nngp_test"], diag_reg=cfg.diag_reg)
        out["nngp"] = stages._scores(mean, ds, y_test)
    except ValueError as err:
        out["nngp"] = {"accuracy": None, "mse": None, "error": str(err)}
    pred = stages.flow_predictor(k["ntk"], y, diag_reg=cfg.diag_reg)
    out["ntk_t_inf"] = stages._scores(pred(math.inf, k["ntk_test"]), ds, y_test)
    ref = stages.flow_predictor(k["ntk"], y)(stages.checkpoint_times(cfg, lr), k["ntk_test"])
    out["ntk_at_training_time"] = {
        "time": stages.training_time(lr, cfg.steps),
        **stages._scores(ref[-1], ds, y_test),
    }
    return out, ref


def _train(cfg, ds, y, y_test, net, lr, ref, tick, *, weight_decay=0.0, seeds=None):
    """Gradient descent of ``net`` for seeds 0..seeds-1: the final checkpoint of each (or
    that it diverged) and the means over the seeds that did not diverge."""
    dtype = getattr(torch, cfg.dtype)
    trainer = stages._Trainer(cfg, ds, y, y_test, lr, ref, dtype, lambda n: None)
    runs = []
    for seed in range(cfg.seeds if seeds is None else seeds):
        done = 0

        def count(n):
            nonlocal done
            done += n
            tick(n)

        trainer.tick = count
        model = net.build(ds.input_shape, seed=seed, dtype=dtype)
        try:
            records, _ = trainer.run(model, weight_decay=weight_decay)
        except stages.TrainingDiverged as err:
            runs.append({"seed": seed, "diverged": True, "error": str(err)})
        else:
            last = records[-1]
            runs.append(
                {
                    "seed": seed,
                    "diverged": False,
                    **{
                        k: last[k]
                        for k in ("accuracy", "mse", "train_loss", "distance_to_infinite")
                    },
                }
            )
        tick(cfg.steps - done)
    ok = [r for r in runs if not r["diverged"]]
    summary = {"runs": runs, "n_diverged": len(runs) - len(ok)}
    for key in ("accuracy", "mse", "train_loss", "distance_to_infinite"):
        summary[key] = _mean([r[key] for r in ok])
        summary[f"{key}_std"] = _std([r[key] for r in ok])
    return summary


def _auto_lr(cfg, k_ntk, n: int) -> float:
    """The learning rate of the kernels stage for this NTK."""
    if cfg.learning_rate == "auto":
        return cfg.lr_factor * n / _lambda_max(k_ntk)
    return float(cfg.learning_rate)


def run(name, cfg, ds, y, y_test, K, lr, tick):
    fns = {"zca": run_zca, "parameterization": run_parameterization, "large_lr_l2": run_large_lr}
    if name not in fns:
        raise ValueError(f"unknown finding {name!r}; known: {list(FINDINGS)}.")
    t0 = time.perf_counter()
    result, tensors = fns[name](cfg, ds, y, y_test, K, lr, tick)
    result["seconds"] = time.perf_counter() - t0
    result["paper"] = PAPER
    return result, tensors


# ---------------------------------------------------------------------------------------------
# ZCA whitening


def _per_example_normalized(x: torch.Tensor) -> bool:
    flat = x.reshape(x.shape[0], -1)
    return bool(
        torch.allclose(flat.mean(1), torch.zeros(()).double(), atol=1e-6)
        and torch.allclose((flat**2).mean(1), torch.ones(()).double(), atol=1e-6)
    )


def run_zca(cfg, ds, y, y_test, K, lr, tick):
    width = finding_width(cfg)
    out_dim = stages.out_dim(ds)
    net = build_description(cfg, width, out_dim)
    normalize = "per_example" if _per_example_normalized(ds.x_train) else None
    rows = []
    kernels, ref = _kernel_scores(cfg, ds, y, y_test, K, lr)
    rows.append(
        {
            "regularizer": None,
            "label": "no ZCA",
            "learning_rate": lr,
            "training_time": stages.training_time(lr, cfg.steps),
            "kernels": kernels,
            "networks": _train(cfg, ds, y, y_test, net, lr, ref, tick),
        }
    )
    for eps in cfg.zca_regularizers:
        xtr, xte = wn.data.zca_whiten(ds.x_train, ds.x_test, eps, center=False, normalize=normalize)
        dsw = dataclasses.replace(
            ds, x_train=xtr, x_test=xte, source=f"{ds.source}; ZCA eps={eps:g}"
        )
        kd = net.kernel(xtr, progress=False)
        kt = net.kernel(xte, xtr, progress=False)
        kw = {"nngp": kd.nngp, "ntk": kd.ntk, "nngp_test": kt.nngp, "ntk_test": kt.ntk}
        lr_eps = _auto_lr(cfg, kw["ntk"], y.numel())
        kernels, ref = _kernel_scores(cfg, dsw, y, y_test, kw, lr_eps)
        rows.append(
            {
                "regularizer": eps,
                "label": f"ZCA eps={eps:g}",
                "learning_rate": lr_eps,
                "training_time": stages.training_time(lr_eps, cfg.steps),
                "kernels": kernels,
                "networks": _train(cfg, dsw, y, y_test, net, lr_eps, ref, tick),
            }
        )
    result = {
        "width": width,
        "score": _task_key(ds),
        "whitening": "x -> x (Sigma + eps * tr(Sigma)/d * I)^(-1/2), Sigma = X^T X / N the "
        "uncentred second moment of the training inputs (as Lee et al.'s implementation), "
        + (
            "then every example renormalised to mean 0 and norm sqrt(d)"
            if normalize
            else "no renormalisation"
        ),
        "description": repr(net),
        "rows": rows,
    }
    return result, None


# ---------------------------------------------------------------------------------------------
# standard against NTK parameterisation


def standard_fc(cfg, width: int, out_dim: int):
    """The "fc" description of the study in the standard parameterisation."""
    layers = []
    for _ in range(cfg.depth):
        layers += [
            wn.Dense(width, w_std=cfg.w_std, b_std=cfg.b_std, parameterization="standard"),
            ACTIVATIONS[cfg.activation](),
        ]
    return wn.serial(
        *layers, wn.Dense(out_dim, w_std=cfg.w_std, b_std=cfg.b_std, parameterization="standard")
    )


def _sp_kernels(cfg, ds, width, out_dim):
    net = standard_fc(cfg, width, out_dim)
    kd = net.kernel(ds.x_train, progress=False)
    kt = net.kernel(ds.x_test, ds.x_train, progress=False)
    return net, {"nngp": kd.nngp, "ntk": kd.ntk, "nngp_test": kt.nngp, "ntk_test": kt.ntk}


def run_parameterization(cfg, ds, y, y_test, K, lr, tick):
    if cfg.arch != "fc":
        return {
            "skipped": f"the standard-parameterisation comparison is built for arch = 'fc' "
            f"only (this run: arch = {cfg.arch!r})"
        }, None
    out_dim = stages.out_dim(ds)
    n = y.numel()
    rows = []
    for width in cfg.widths:
        net, k = _sp_kernels(cfg, ds, width, out_dim)
        lam = _lambda_max(k["ntk"])
        lr_sp = cfg.lr_factor * n / lam
        kernels, ref = _kernel_scores(cfg, ds, y, y_test, k, lr_sp)
        rows.append(
            {
                "width": width,
                "ntk_lambda_max": lam,
                "learning_rate": lr_sp,
                "learning_rate_times_width": lr_sp * width,
                "training_time": stages.training_time(lr_sp, cfg.steps),
                "sp_kernel": kernels,
                "networks": _train(cfg, ds, y, y_test, net, lr_sp, ref, tick),
            }
        )
    _, k = _sp_kernels(cfg, ds, SP_WIDE, out_dim)
    lr_wide = cfg.lr_factor * n / _lambda_max(k["ntk"])
    wide, _ = _kernel_scores(cfg, ds, y, y_test, k, lr_wide)
    ntk_kernels, _ = _kernel_scores(cfg, ds, y, y_test, K, lr)
    result = {
        "score": _task_key(ds),
        "input_dim": ds.x_train[0].numel(),
        "lr_rule": "standard: lr_factor * n / lambda_max of the SP network's analytic NTK at "
        "its width (distance_to_infinite: from that kernel's prediction at the same time)",
        "lr_factor": cfg.lr_factor,
        "rows": rows,
        "sp_wide": {"width": SP_WIDE, "learning_rate": lr_wide, **wide},
        "ntk_parameterization_kernel": {"learning_rate": lr, **ntk_kernels},
    }
    return result, None


# ---------------------------------------------------------------------------------------------
# large learning rates and L2


def run_large_lr(cfg, ds, y, y_test, K, lr, tick):
    width = finding_width(cfg)
    net = build_description(cfg, width, stages.out_dim(ds))
    n = y.numel()
    lam = _lambda_max(K["ntk"])
    lr_rows = []
    for f in cfg.lr_factors:
        lr_f = f * n / lam
        kernels, ref = _kernel_scores(cfg, ds, y, y_test, K, lr_f)
        lr_rows.append(
            {
                "lr_factor": f,
                "learning_rate": lr_f,
                "training_time": stages.training_time(lr_f, cfg.steps),
                "kernel_gd_stable": f < KERNEL_GD_LIMIT,
                "kernel": kernels["ntk_at_training_time"],
                "networks": _train(cfg, ds, y, y_test, net, lr_f, ref, tick),
            }
        )
    kernels, ref = _kernel_scores(cfg, ds, y, y_test, K, lr)
    tau = stages.training_time(lr, cfg.steps)
    l2_rows = []
    for l2 in _l2_grid(cfg):
        l2_rows.append(
            {
                "l2": l2,
                "l2_times_training_time": l2 * tau,
                "networks": _train(cfg, ds, y, y_test, net, lr, ref, tick, weight_decay=l2),
            }
        )
    result = {
        "width": width,
        "score": _task_key(ds),
        "ntk_lambda_max": lam,
        "study_learning_rate": lr,
        "study_lr_factor": lr * lam / n,
        "training_time": tau,
        "kernel": kernels["ntk_at_training_time"],
        "ntk_t_inf": kernels["ntk_t_inf"],
        "l2_definition": "loss + l2/2 * ||theta||^2 over every trainable parameter (torch "
        "weight decay; NTK parameterisation: theta are the N(0, 1) parameters)",
        "lr_rows": lr_rows,
        "l2_rows": l2_rows,
    }
    return result, None


# ---------------------------------------------------------------------------------------------
# statements


def _fmt(x, key) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}%" if key == "accuracy" else f"{x:.4g}"


def _better(a, b, key) -> bool:
    """a is better than b (higher accuracy, lower MSE)."""
    return a > b if key == "accuracy" else a < b


def _best(rows, get, key):
    pts = [(r, get(r)) for r in rows if get(r) is not None]
    if not pts:
        return None, None
    pick = max if key == "accuracy" else min
    return pick(pts, key=lambda p: p[1])


def _verdict(held: list[str], not_held: list[str]) -> str:
    if held and not not_held:
        return "The claim held here."
    if not held:
        return "The claim did not hold here."
    return f"The claim held here for {', '.join(held)}; not for {', '.join(not_held)}."


def _zca_statement(res) -> str:
    key = res["score"]
    base, zca = res["rows"][0], res["rows"][1:]
    regularised = [r for r in zca if r["regularizer"] > 0] or zca
    parts, held, not_held = [], [], []
    for label, get, spread in (
        ("NNGP", lambda r: r["kernels"]["nngp"][key], None),
        ("NTK (τ = ∞)", lambda r: r["kernels"]["ntk_t_inf"][key], None),
        (
            f"networks of width {res['width']}",
            lambda r: r["networks"][key],
            lambda r: r["networks"][f"{key}_std"],
        ),
    ):
        b = get(base)
        row, v = _best(regularised, get, key)
        if b is None or row is None:
            continue
        if _better(v, b, key):
            held.append(label)
            word = "better"
        else:
            not_held.append(label)
            word = "no better" if v == b else "worse"
        pm = ""
        if spread is not None and spread(base) is not None and spread(row) is not None:
            pm = f", std over seeds {_fmt(spread(base), key)} and {_fmt(spread(row), key)}"
        parts.append(
            f"{label} {_fmt(b, key)} → {_fmt(v, key)} (ε = {row['regularizer']:g}, {word}{pm})"
        )
    unreg = next((r for r in zca if r["regularizer"] == 0), None)
    extra = ""
    if unreg is not None:
        extra = (
            f" Unregularised whitening (ε = 0) gives NNGP "
            f"{_fmt(unreg['kernels']['nngp'][key], key)}, networks "
            f"{_fmt(unreg['networks'][key], key)}."
        )
    return (
        f"Test {key} without ZCA → with the best regularised ZCA: "
        + "; ".join(parts)
        + f". {_verdict(held, not_held)}{extra}"
    )


def _ntk_param_networks(results) -> dict[int, list[float]]:
    out: dict[int, dict[str, list]] = {}
    for r in results.get("finite", []):
        gd = r.get("gd", {})
        out.setdefault(r["width"], {"accuracy": [], "mse": []})
        for k in ("accuracy", "mse"):
            if gd.get(k) is not None:
                out[r["width"]][k].append(gd[k])
    return out


def _param_statement(res, results) -> str:
    if "skipped" in res:
        return f"Not run: {res['skipped']}."
    key = res["score"]
    ntk = _ntk_param_networks(results)
    rows = res["rows"]
    pairs = [
        (r["width"], _mean(ntk[r["width"]][key]), r["networks"][key])
        for r in rows
        if r["width"] in ntk and ntk[r["width"]][key] and r["networks"][key] is not None
    ]
    text = []
    if pairs:
        w, ntk_v, sp = pairs[-1]
        wins = sum(_better(a, b, key) for _, a, b in pairs)
        held = _better(ntk_v, sp, key)
        text.append(
            f"At width {w}, test {key}: NTK parameterisation {_fmt(ntk_v, key)}, standard "
            f"{_fmt(sp, key)} (each at lr_factor {res['lr_factor']:g} × n/λ_max of its own "
            f"NTK, mean over seeds); the claim {'held' if held else 'did not hold'} here "
            f"(NTK parameterisation ahead at {wins} of {len(pairs)} widths)."
        )
    else:
        text.append("No NTK-parameterisation networks to compare with in this run.")
    if len(rows) >= 2:
        (w1, l1), (w2, l2) = [(r["width"], r["learning_rate"]) for r in rows[-2:]]
        slope = math.log(l2 / l1) / math.log(w2 / w1)
        text.append(
            f"The SP learning rate fell like width^{slope:.2f} between widths {w1} and {w2} "
            f"(→ −1 once the width outgrows the input dimension {res.get('input_dim', '?')}, "
            "whose fixed fan-in adds a width-independent part to the SP NTK)."
        )
    wide = res["sp_wide"]["ntk_at_training_time"][key]
    inf = res["ntk_parameterization_kernel"]["ntk_at_training_time"][key]
    text.append(
        f"After the same number of steps the infinite-width NTK-parameterisation kernel gives "
        f"{_fmt(inf, key)}, the SP kernel at width 2^20 {_fmt(wide, key)}."
    )
    return " ".join(text)


def _large_lr_statement(res) -> str:
    key = res["score"]
    lr_rows, l2_rows = res["lr_rows"], res["l2_rows"]
    base = l2_rows[0]["networks"]  # l2 = 0 at the study's learning rate
    kern = res["kernel"][key]
    d0 = base["distance_to_infinite"]
    text = [
        f"At the study's learning rate ({res['study_lr_factor']:.3g} n/λ_max), without L2, "
        f"networks of width {res['width']} reach {_fmt(base[key], key)} against "
        f"{_fmt(kern, key)} for the kernel at the same time (distance {d0:.3g})."
    ]
    away, above = [], []
    small = [r for r in lr_rows if r["kernel_gd_stable"] and r["networks"][key] is not None]
    large = [r for r in lr_rows if not r["kernel_gd_stable"]]
    trained = [r for r in large if r["networks"][key] is not None]
    if trained:
        d_small = max((r["networks"]["distance_to_infinite"] for r in small), default=d0)
        items = []
        for r in trained:
            n = r["networks"]
            away.append(n["distance_to_infinite"] > d_small)
            above.append(_better(n[key], r["kernel"][key], key))
            items.append(
                f"at lr = {r['lr_factor']:g} n/λ_max {_fmt(n[key], key)} against "
                f"{_fmt(r['kernel'][key], key)}, distance {n['distance_to_infinite']:.3g}"
            )
        text.append(
            "Above the kernel's stability limit 2 n/λ_max: "
            + "; ".join(items)
            + f" (largest distance below the limit: {d_small:.3g})."
        )
    diverged = [
        r["lr_factor"] for r in lr_rows if r["networks"]["n_diverged"] == len(r["networks"]["runs"])
    ]
    if diverged:
        text.append("Training diverged at lr factor " + ", ".join(f"{f:g}" for f in diverged) + ".")
    l2_ok = [r for r in l2_rows[1:] if r["networks"][key] is not None]
    if l2_ok:
        items = []
        for r in l2_ok:
            n = r["networks"]
            away.append(n["distance_to_infinite"] > d0)
            above.append(_better(n[key], kern, key))
            items.append(
                f"λ = {r['l2']:g} (λτ = {r['l2_times_training_time']:.3g}): {_fmt(n[key], key)}, "
                f"distance {n['distance_to_infinite']:.3g}"
            )
        text.append("With L2 at the study's learning rate: " + "; ".join(items) + ".")
    if away:
        text.append(
            f"Away from the kernel prediction: {sum(away)} of {len(away)} large-lr/L2 settings"
            f" ({'held' if all(away) else 'partly held' if any(away) else 'did not hold'}); "
            f"better than it: {sum(above)} of {len(above)}"
            f" ({'held' if all(above) else 'partly held' if any(above) else 'did not hold'})."
        )
    return " ".join(text)


def statements(results: dict) -> list[tuple[str, str]]:
    out = []
    for name in FINDINGS:
        res = (results.get("findings") or {}).get(name)
        if not res:
            continue
        try:
            if name == "zca":
                text = _zca_statement(res)
            elif name == "parameterization":
                text = _param_statement(res, results)
            else:
                text = _large_lr_statement(res)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:  # partial result
            text = f"no statement: the result is incomplete ({err!r})"
        out.append((CLAIMS[name], text))
    return out


# ---------------------------------------------------------------------------------------------
# figures


def _label(key):
    return "test accuracy" if key == "accuracy" else "test MSE"


def _symlog(ax, xs):
    """A symlog x axis for values >= 0 (0 included), showing no negative decades."""
    positive = [x for x in xs if x > 0]
    if not positive:
        return
    lo = min(positive)
    ax.set_xscale("symlog", linthresh=lo)
    ax.set_xlim(-0.3 * lo if min(xs) <= 0 else lo / 2, max(positive) * 2)


def _zca_figure(res, path):
    from widenets._plot import figure, legend, reference_lines
    from widenets.study.figures import save

    key = res["score"]
    base, zca = res["rows"][0], res["rows"][1:]
    fig, ax = figure(size=(7.5, 3.6))
    eps = [r["regularizer"] for r in zca]
    series = (
        ("NNGP posterior", "C3", "o", lambda r: r["kernels"]["nngp"][key]),
        ("NTK, τ = ∞", "C4", "s", lambda r: r["kernels"]["ntk_t_inf"][key]),
        ("NTK, same τ", "C5", "^", lambda r: r["kernels"]["ntk_at_training_time"][key]),
    )
    for name, color, marker, get in series:
        ys = [get(r) for r in zca]
        ax.plot(eps, ys, color=color, marker=marker, label=f"{name} (∞ width)")
    ys = [r["networks"][key] for r in zca]
    es = [r["networks"][f"{key}_std"] or 0.0 for r in zca]
    ax.errorbar(
        eps,
        [float("nan") if v is None else v for v in ys],
        yerr=es,
        color="C0",
        marker="D",
        capsize=3,
        label=f"networks, width {res['width']}",
    )
    # the same models without ZCA whitening, as horizontal lines
    refs = [(get(base), f"{name}, no ZCA", color) for name, color, _, get in series]
    reference_lines(ax, [*refs, (base["networks"][key], "networks, no ZCA", "C0")], lw=1)
    _symlog(ax, eps)
    ax.set_xlabel("ZCA regulariser ε  (Σ + ε tr(Σ)/d I)")
    ax.set_ylabel(_label(key))
    if key == "mse":
        ax.set_yscale("log")
    ax.set_title("ZCA whitening")
    legend(ax, outside=True)
    return save(fig, path)


def _param_figure(res, results, path):
    from widenets._plot import figure, legend, reference_lines, width_axis
    from widenets.study.figures import save

    key = res["score"]
    fig, axes = figure(1, 2, size=(10, 3.8))
    ax = axes[0]
    ntk = _ntk_param_networks(results)
    ws = sorted(w for w in ntk if ntk[w][key])
    if ws:
        ax.errorbar(
            ws,
            [_mean(ntk[w][key]) for w in ws],
            yerr=[_std(ntk[w][key]) for w in ws],
            color="C0",
            marker="o",
            capsize=3,
            label="networks, NTK param.",
        )
    rows = [r for r in res["rows"] if r["networks"][key] is not None]
    ax.errorbar(
        [r["width"] for r in rows],
        [r["networks"][key] for r in rows],
        yerr=[r["networks"][f"{key}_std"] or 0.0 for r in rows],
        color="C1",
        marker="s",
        capsize=3,
        label="networks, standard param.",
    )
    inf = res["ntk_parameterization_kernel"]
    reference_lines(
        ax,
        [
            (inf["ntk_at_training_time"][key], "NTK param. kernel, same τ (∞ width)", "C0"),
            (inf["nngp"][key], "NNGP posterior (∞ width)", "C3"),
            (res["sp_wide"]["ntk_at_training_time"][key], "SP kernel, width 2^20", "C1"),
        ],
        lw=1,
    )
    width_axis(ax, [r["width"] for r in res["rows"]])
    ax.set_ylabel(_label(key))
    if key == "mse":
        ax.set_yscale("log")
    legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
    ax = axes[1]
    w = [r["width"] for r in res["rows"]]
    lrs = [r["learning_rate"] for r in res["rows"]]
    ax.plot(w, lrs, color="C1", marker="s", label="standard param. (own λ_max)")
    ax.plot(w, [lrs[0] * w[0] / x for x in w], "k:", label="∝ 1/width")
    ax.axhline(inf["learning_rate"], color="C0", ls="--", label="NTK param.")
    ax.set_yscale("log")
    width_axis(ax, w)
    ax.set_ylabel("learning rate")
    legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    axes[0].set_title("standard vs NTK parameterisation")
    axes[1].set_title("learning rate = lr_factor × n / λ_max")
    return save(fig, path)


def _large_lr_figure(res, path):
    from widenets._plot import figure, legend, plain_log_ticks, reference_lines, width_axis
    from widenets.study.figures import save

    key = res["score"]
    fig, axes = figure(2, 2, size=(10, 7))
    for col, (rows, xkey, xlabel) in enumerate(
        (
            (res["lr_rows"], "lr_factor", "learning rate × λ_max / n"),
            (res["l2_rows"], "l2", "L2 coefficient λ"),
        )
    ):
        ok = [r for r in rows if r["networks"][key] is not None]
        bad = [r for r in rows if r["networks"][key] is None]
        for row_i, (ykey, ylabel) in enumerate(
            ((key, _label(key)), ("distance_to_infinite", "‖f − f_∞‖ / ‖f_∞‖ (test)"))
        ):
            ax = axes[row_i, col]
            ax.errorbar(
                [r[xkey] for r in ok],
                [r["networks"][ykey] for r in ok],
                yerr=[r["networks"][f"{ykey}_std"] or 0.0 for r in ok],
                color="C0",
                marker="o",
                capsize=3,
                label=f"networks, width {res['width']}",
            )
            if bad:
                top = max((r["networks"][ykey] for r in ok), default=1.0)
                ax.plot([r[xkey] for r in bad], [top] * len(bad), "rx", ms=9, label="diverged")
            if ykey == key:
                kernel = None
                if col == 0:
                    ax.plot(
                        [r[xkey] for r in rows],
                        [r["kernel"][key] for r in rows],
                        "k--",
                        label="kernel prediction, same τ",
                    )
                else:
                    kernel = res["kernel"][key]
                reference_lines(
                    ax,
                    [(kernel, "kernel, same τ", "k"), (res["ntk_t_inf"][key], "NTK, τ = ∞", "C4")],
                )
                if key == "mse":
                    ax.set_yscale("log")
            else:
                ax.set_yscale("log")
            if col == 0:
                ax.axvline(KERNEL_GD_LIMIT, color="gray", ls=":", lw=1)
                width_axis(ax, [r[xkey] for r in rows], xlabel)
            else:
                _symlog(ax, [r[xkey] for r in rows])
                ax.set_xlabel(xlabel)
            if ax.get_yscale() == "log":
                plain_log_ticks(ax)
            ax.set_ylabel(ylabel)
            legend(ax)
    axes[0, 0].set_title("learning rate (no L2)")
    axes[0, 1].set_title("L2 at the study's learning rate")
    return save(fig, path)


def make_figures(results: dict, folder) -> list:
    folder = Path(folder)
    made = []
    found = results.get("findings") or {}
    for name in FINDINGS:
        res = found.get(name)
        if not res or "skipped" in res:
            continue
        path = folder / f"finding_{name}.png"
        if name == "zca":
            made.append(_zca_figure(res, path))
        elif name == "parameterization":
            made.append(_param_figure(res, results, path))
        else:
            made.append(_large_lr_figure(res, path))
    return made
