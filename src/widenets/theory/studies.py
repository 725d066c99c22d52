"""Experiments as functions: each a short call returning its data and a matplotlib figure."""

from __future__ import annotations

import numpy as np
import torch

from widenets.errors import check_positive_int
from widenets.theory import regime, signal


def critical_init_depth_study(
    activation=None,
    b_std: float = 0.05,
    depth: int = 30,
    width: int = 500,
    factors=(0.8, 1.0, 1.25),
    c0: float = 0.5,
    n_samples: int = 3,
    seed: int = 0,
):
    """Correlation propagation through depth below, at and above the edge of chaos.

    For w_std = factor * w_crit(b_std), the pre-activation correlation c^l of two inputs is
    measured on finite random networks of ``width`` (:func:`signal.propagate`) and set
    against the iterated correlation map; the ordered phase drives c^l -> 1, the chaotic
    phase to c* < 1, and at criticality the approach is slowest (sub-exponential).

    Returns:
        (data, figure), data a dict with ``w_crit``, ``w_std`` (per factor), ``c_empirical``,
        ``c_se``, ``c_map`` (n_factors, depth), ``c_star`` and ``xi_c`` (per factor).
    """
    from widenets._plot import figure, legend
    from widenets.layers.activations import Erf

    act = signal.as_activation(Erf() if activation is None else activation)
    w_crit = signal.edge_of_chaos(act, b_std)
    if not np.isfinite(w_crit):
        raise ValueError(f"no edge of chaos found for {act!r} at b_std={b_std}.")
    ws = [f * w_crit for f in factors]
    runs = [
        signal.propagate(act, w, b_std, depth, c0=c0, width=width, n_samples=n_samples, seed=seed)
        for w in ws
    ]
    data = {
        "w_crit": w_crit,
        "w_std": np.array(ws),
        "c_empirical": np.stack([r["c_empirical"] for r in runs]),
        "c_se": np.stack([r["c_se"] for r in runs]),
        "c_map": np.stack([r["c_map"] for r in runs]),
        "c_star": np.array([signal.c_star(act, w, b_std) for w in ws]),
        "xi_c": np.array([signal.depth_scales(act, w, b_std).xi_c for w in ws]),
    }
    from matplotlib.lines import Line2D

    fig, ax = figure(size=(5.5, 3.5))
    layers = np.arange(1, depth + 1)
    for i, f in enumerate(factors):
        (line,) = ax.plot(layers, data["c_map"][i], label=f"map, w_std = {f:g} w_crit")
        ax.errorbar(
            layers,
            data["c_empirical"][i],
            yerr=data["c_se"][i],
            fmt="o",
            ms=3,
            color=line.get_color(),
        )
    handles = ax.get_legend_handles_labels()[0]
    handles.append(
        Line2D([], [], color="0.3", marker="o", ms=3, ls="", label=f"width {width}, ± s.e.")
    )
    ax.set_xlabel("layer")
    ax.set_ylabel("correlation c")
    ax.set_title(f"{act!r}, b_std = {b_std}")
    legend(ax, handles=handles, outside=True)
    return data, fig


def default_schemes():
    from widenets import init

    return {
        "gaussian": init.Gaussian(),
        "orthogonal": init.Orthogonal(),
        "low-rank 1/4": init.LowRank(fraction=0.25),
        "sparse 0.2": init.Sparse(0.2),
        "block-sparse 0.2": init.Sparse(0.2, block=(4, 4)),
    }


def pseudo_iid_study(
    net=None,
    x=None,
    widths=(32, 128, 512),
    schemes=None,
    n_samples: int = 20,
    seed: int = 0,
):
    """Empirical NNGPs of pseudo-IID networks converging to the Gaussian NNGP with width.

    For each scheme and width, the Monte-Carlo NNGP (``wn.empirical.monte_carlo``) of the
    network built with that scheme is compared with the analytic NNGP of ``net``: the
    relative Frobenius error and the largest deviation in standard errors.

    Returns:
        (data, figure), data with ``widths``, ``error[scheme]`` and ``max_z[scheme]`` arrays.
    """
    import widenets as wn
    from widenets._plot import figure, legend, width_axis

    if net is None:
        net = wn.serial(
            wn.Dense(64, 1.5, 0.1),
            wn.Relu(),
            wn.Dense(64, 1.5, 0.1),
            wn.Relu(),
            wn.Dense(64, 1.5, 0.1),
        )
    if x is None:
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    schemes = default_schemes() if schemes is None else dict(schemes)
    widths = [check_positive_int(w, "widths") for w in widths]
    exact = net.kernel(x, get="nngp").nngp
    data = {"widths": np.array(widths), "error": {}, "max_z": {}}
    for name, scheme in schemes.items():
        errs, zs = [], []
        for w in widths:
            mc = wn.empirical.monte_carlo(
                net, x, n_samples=n_samples, seed=seed, width=w, get="nngp", init=scheme
            )
            errs.append(float((mc.nngp - exact).norm() / exact.norm()))
            zs.append(float(((mc.nngp - exact).abs() / mc.nngp_se.clamp_min(1e-300)).max()))
        data["error"][name] = np.array(errs)
        data["max_z"][name] = np.array(zs)
    fig, ax = figure(size=(6, 3.5))
    for name in schemes:
        ax.plot(widths, data["error"][name], "o-", label=name)
    ax.set_yscale("log")
    width_axis(ax, widths)
    ax.set_ylabel("relative error of the Monte-Carlo NNGP")
    ax.set_title(f"pseudo-IID initialisations, {n_samples} networks each")
    legend(ax, outside=True)
    return data, fig


def make_task(n: int = 16, dim: int = 4, seed: int = 0):
    """A small regression task: y = sign(x_1 x_2) on Gaussian inputs (a non-linear target)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = torch.sign(x[:, 0] * x[:, 1])[:, None]
    return x, y


def train_scaled(net, x, y, alpha, *, width=None, steps=200, lr=0.5, seed=0, dtype=None):
    """Full-batch gradient descent on 1/2 mean (alpha (f - f0) - y)^2 with lr / alpha^2.

    Returns (initial snapshot, trained module), both the centred, scaled modules.
    """
    from widenets.init import scaled

    if width is not None:
        net = net.with_widths(width)
    model = scaled(net.build(tuple(x.shape[1:]), seed=seed, dtype=x.dtype), alpha)
    initial = regime.snapshot(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr / alpha**2)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return initial, model


def lazy_rich_study(
    net=None,
    alphas=(0.1, 1.0, 10.0),
    widths=(32, 128, 512),
    steps: int = 200,
    lr: float = 0.5,
    task=None,
    seed: int = 0,
):
    """Regime measures against the output scale alpha and the width, after training.

    Each network (``net`` re-widthed, built, wrapped by ``wn.init.scaled(., alpha)``) is
    trained by full-batch gradient descent on a small task (``make_task`` by default);
    the relative weight change, NTK distance and final kernel-target alignment are
    recorded. Lazy training (large alpha, wide) leaves them small.

    Returns:
        (data, figure), data with ``alphas``, ``widths`` and arrays (n_alpha, n_width)
        ``kernel_distance``, ``weight_change``, ``alignment``, ``train_loss``.
    """
    import widenets as wn
    from widenets._plot import figure, legend

    if net is None:
        net = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(64), wn.Relu(), wn.Dense(1))
    x, y = make_task(seed=seed) if task is None else task
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    shape = (len(alphas), len(widths))
    out = {
        k: np.zeros(shape) for k in ("kernel_distance", "weight_change", "alignment", "train_loss")
    }
    for i, a in enumerate(alphas):
        for j, w in enumerate(widths):
            m0, mt = train_scaled(net, x, y, a, width=w, steps=steps, lr=lr, seed=seed)
            r = regime.compare(m0, mt, x, y)
            out["kernel_distance"][i, j] = r.kernel_distance
            out["weight_change"][i, j] = r.mean_relative_weight_change
            out["alignment"][i, j] = r.alignment_final
            with torch.no_grad():
                out["train_loss"][i, j] = float(0.5 * ((mt(x) - y) ** 2).mean())
    data = {"alphas": np.array(alphas, dtype=float), "widths": np.array(widths), **out}
    fig, axes = figure(1, 2, size=(8, 3.5))
    for j, w in enumerate(widths):
        axes[0].loglog(alphas, out["kernel_distance"][:, j], "o-", label=f"width {w}")
        axes[1].loglog(alphas, out["weight_change"][:, j], "o-", label=f"width {w}")
    axes[0].set_ylabel("NTK distance 1 − ⟨K₀, K_t⟩ / (‖K₀‖ ‖K_t‖)")
    axes[1].set_ylabel("mean relative weight change")
    for ax in axes:
        ax.set_xlabel("output scale α")
        legend(ax)
    fig.suptitle("lazy (large α) versus rich (small α) training")
    return data, fig
