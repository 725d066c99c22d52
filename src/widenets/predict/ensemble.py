"""Mean and covariance of an infinite ensemble of infinitely wide networks trained by
gradient flow on the MSE loss (Lee et al. 2019, "Wide Neural Networks of Any Depth Evolve
as Linear Models Under Gradient Descent", Sec. 2.3, eqs. 15-16)."""

from __future__ import annotations

import torch
from torch import Tensor

from widenets.predict import _validation as v
from widenets.predict._linalg import Spectrum, regularize, warn_if_ill_conditioned


def _train_kernel(k, g: str, n: int | None) -> Tensor:
    name = f"k_train_train.{g}"
    mat = v.as_train_kernel(v.kernel_attr(k, g, "k_train_train"), name)
    if n is not None and mat.shape[0] != n:
        raise ValueError(f"`{name}` has shape {tuple(mat.shape)}; expected ({n}, {n}).")
    return mat


def _matrix(k, g: str, name: str, device) -> Tensor:
    return v.as_matrix(v.kernel_attr(k, g, name), f"{name}.{g}", device=device)


def _finish(x: Tensor, shape: tuple[int, ...], is_vector: bool, dtype) -> Tensor:
    x = x.reshape((x.shape[0],) + shape).to(dtype)
    return x if is_vector else x[0]


def _symmetrise(cov: Tensor) -> Tensor:
    return (cov + cov.transpose(-1, -2)) / 2


def ensemble_from_kernels(
    k_train_train,
    k_test_train,
    k_test_test,
    y_train,
    *,
    get=("nngp", "ntk"),
    t=None,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
):
    """Infinite-ensemble output distribution from precomputed kernels.

    With Theta the regularised train-train kernel of the chosen mode (NTK for "ntk", NNGP
    for "nngp", i.e. training only the readout), K the NNGP kernel, n = y_train.numel() and
    A(t) = Theta^{-1} (I - exp(-eta Theta t / n)) (Lee et al. 2019, eqs. 15-16):

        mean = Theta_* A y,
        cov  = K_** + Theta_* A K A^T Theta_*^T - (Theta_* A K_*^T + K_* A^T Theta_*^T).

    For "nngp" (Theta = K) this is evaluated as K_** - K_* K^{-1} (I - exp(-2 eta K t / n))
    K_*^T with the regularised K throughout, so at t = inf it is the GP posterior of
    :func:`gp_inference` with the same ``diag_reg``. For "ntk" the middle K and K_* are
    the un-regularised NNGP kernels (as in Neural Tangents). One eigendecomposition per
    regularised train kernel is used; at t = inf Theta^{-1} is the pseudo-inverse
    described in :class:`~widenets.predict.gradient_descent_mse.GradientDescentMSEPredictor`.

    Args:
        k_train_train: kernel object with ``.nngp`` / ``.ntk`` (N, N) for the train inputs.
        k_test_train: kernel object with (N_test, N) ``.nngp`` / ``.ntk``; None evaluates on
            the training inputs, where mean = (I - E) y and cov = E K_tt E^T with
            E = exp(-eta Theta t / n) (the outputs of the train dynamics).
        k_test_test: kernel object whose ``.nngp`` is (N_test, N_test) (or (N, N), the
            train-train kernel, when ``k_test_train`` is None); None skips the covariance.
        y_train: (N,) or (N, O) targets.
        get: "nngp", "ntk" or a tuple of them.
        t: training time >= 0, None / inf (converged), or a 1-D array (adds a leading
            time axis).
        learning_rate: eta > 0.
        diag_reg: non-negative diagonal regulariser of Theta, relative to its mean diagonal
            unless ``diag_reg_absolute_scale``.
        diag_reg_absolute_scale: treat ``diag_reg`` as absolute.

    Returns:
        ``(mean, cov)``: mean of shape (N_test,) + y_train.shape[1:] and cov (N_test, N_test)
        or None (each with a leading time axis for vector ``t``). If ``get`` is a string
        they are tensors; if a tuple, dicts keyed by the names in ``get``.
    """
    names = v.normalise_get(get)
    ts, is_vector = v.as_times(t)
    learning_rate = v.check_scalar(learning_rate, "learning_rate", positive=True)
    diag_reg = v.check_scalar(diag_reg, "diag_reg", positive=False)
    compute_cov = k_test_test is not None

    # Gather and check every kernel first.
    train = {g: _train_kernel(k_train_train, g, None) for g in names}
    n = train[names[0]].shape[0]
    for g in names[1:]:
        train[g] = _train_kernel(k_train_train, g, n)
    device = train[names[0]].device
    y = v.as_targets(y_train, n, device=device)
    nngp_dd = None
    if compute_cov and "ntk" in names:
        nngp_dd = train["nngp"] if "nngp" in train else _train_kernel(k_train_train, "nngp", n)
    test, nngp_td, nngp_tt = {}, None, None
    if k_test_train is not None:
        for g in names:
            test[g] = _matrix(k_test_train, g, "k_test_train", device)
            v.check_test_train(test[g], n, f"k_test_train.{g}")
        n_test = test[names[0]].shape[0]
        for g in names[1:]:
            if test[g].shape[0] != n_test:
                raise ValueError(
                    f"`k_test_train.{g}` has {test[g].shape[0]} rows but "
                    f"`k_test_train.{names[0]}` has {n_test}."
                )
        if compute_cov:
            nngp_td = test["nngp"] if "nngp" in test else None
            if nngp_td is None:
                nngp_td = _matrix(k_test_train, "nngp", "k_test_train", device)
                v.check_test_train(nngp_td, n, "k_test_train.nngp")
            nngp_tt = _matrix(k_test_test, "nngp", "k_test_test", device)
            v.check_test_test(nngp_tt, n_test, "k_test_test.nngp")
    elif compute_cov:
        n_test = n
        nngp_tt = _matrix(k_test_test, "nngp", "k_test_test", device)
        if tuple(nngp_tt.shape) != (n, n):
            raise ValueError(
                "With `k_test_train=None` the outputs are on the training inputs, so "
                f"`k_test_test.nngp` must be the ({n}, {n}) train-train NNGP kernel, got "
                f"{tuple(nngp_tt.shape)}."
            )
    dtype = v.result_dtype(y, nngp_dd, nngp_td, nngp_tt, *train.values(), *test.values())

    tau = ts * (learning_rate / y.numel())
    y2 = y.to(torch.float64).reshape(n, -1)
    mean_shape = ((n_test,) if k_test_train is not None else (n,)) + tuple(y.shape[1:])
    means, covs = {}, {}
    for g in names:
        spec = Spectrum(regularize(train[g], diag_reg, diag_reg_absolute_scale))
        vecs = spec.evecs
        r = vecs.T @ y2
        cov = None
        if k_test_train is None:
            mean = torch.einsum("ni,ti,io->tno", vecs, spec.growth(tau), r)
            if compute_cov:
                # E K_tt E^T with E = V diag(d) V^T.
                p = vecs.T @ nngp_tt.to(torch.float64) @ vecs
                d = spec.decay(tau)
                ve = vecs[None] * d[:, None, :]
                cov = ve @ p @ ve.transpose(1, 2)
        else:
            # a train kernel in reduced precision too ill-conditioned for the solve: warn
            kept = spec.evals[spec.evals > spec.cutoff]
            lam_max = float(spec.evals.max())
            warn_if_ill_conditioned(
                train[g].dtype,
                lam_max,
                float(kept.min()) if len(kept) else lam_max,
                float(train[g].diagonal().to(torch.float64).mean()),
                diag_reg=diag_reg,
                absolute=diag_reg_absolute_scale,
                name=f"k_train_train.{g}",
                tau=float(tau.max()),
            )
            kv = test[g].to(torch.float64) @ vecs
            h = spec.growth_over_e(tau)
            mean = torch.einsum("mi,ti,io->tmo", kv, h, r)
            if compute_cov:
                k_tt = nngp_tt.to(torch.float64)[None]
                if g == "nngp":
                    h2 = spec.growth_over_e(2 * tau)
                    cov = k_tt - torch.einsum("mi,ti,li->tml", kv, h2, kv)
                else:
                    # B = Theta_* A in the eigenbasis of Theta: (T, N_test, N).
                    b = kv[None] * h[:, None, :]
                    p = vecs.T @ regularize(nngp_dd, 0.0, True) @ vecs
                    cross = b @ (vecs.T @ nngp_td.to(torch.float64).T)
                    cov = k_tt + b @ p @ b.transpose(1, 2) - cross - cross.transpose(1, 2)
        means[g] = _finish(mean, mean_shape, is_vector, dtype)
        if cov is not None:
            covs[g] = _finish(_symmetrise(cov), (n_test, n_test), is_vector, dtype)
        else:
            covs[g] = None

    if isinstance(get, str):
        return means[get], covs[get]
    return means, covs


def ensemble(
    net,
    x_train,
    y_train,
    x_test=None,
    *,
    get=("nngp", "ntk"),
    t=None,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    compute_cov: bool = False,
    batch_size=None,
):
    """Mean (and covariance) of the infinite ensemble of wide networks ``net`` trained by
    gradient flow on the MSE loss for time ``t`` (Lee et al. 2019, eqs. 15-16).

    mean = Theta_* Theta^{-1} (I - exp(-eta Theta t / n)) y, with the covariance of
    :func:`ensemble_from_kernels`; Theta is the NTK for get="ntk" and the NNGP kernel for
    get="nngp" (readout-only training, whose t = inf limit is the NNGP posterior).

    Args:
        net: object with ``net.kernel(x1, x2=None, get=...)`` returning a kernel object with
            ``.nngp`` and ``.ntk`` (N1, N2) tensors. Called as ``net.kernel(x_train)``,
            ``net.kernel(x_test, x_train)`` and, if ``compute_cov``, ``net.kernel(x_test)``.
        x_train: training inputs; y_train: (N,) or (N, O) targets.
        x_test: test inputs; None gives the outputs on the training inputs.
        get, t, learning_rate, diag_reg, diag_reg_absolute_scale: as in
            :func:`ensemble_from_kernels`.
        compute_cov: also return the (N_test, N_test) covariance.
        batch_size: passed on as ``net.kernel(..., batch_size=batch_size)`` when not None
            (the net then computes its kernels in blocks); None does not pass it.

    Returns:
        ``(mean, cov)`` as in :func:`ensemble_from_kernels` (cov None unless
        ``compute_cov``).
    """
    # Validate the cheap arguments before computing any kernel.
    names = v.normalise_get(get)
    v.as_times(t)
    v.check_scalar(learning_rate, "learning_rate", positive=True)
    v.check_scalar(diag_reg, "diag_reg", positive=False)
    if not callable(getattr(net, "kernel", None)):
        raise TypeError(
            f"`net` must have a method `kernel(x1, x2=None, get=...)`, got {type(net).__name__}."
        )
    needed = tuple(g for g in v.KERNEL_NAMES if g in names or (compute_cov and g == "nngp"))
    kwargs = {} if batch_size is None else {"batch_size": batch_size}

    k_dd = net.kernel(x_train, get=needed, **kwargs)
    k_td = k_tt = None
    if x_test is not None:
        k_td = net.kernel(x_test, x_train, get=needed, **kwargs)
        if compute_cov:
            k_tt = net.kernel(x_test, get=("nngp",), **kwargs)
    elif compute_cov:
        k_tt = k_dd
    return ensemble_from_kernels(
        k_dd,
        k_td,
        k_tt,
        y_train,
        get=get if isinstance(get, str) else names,
        t=t,
        learning_rate=learning_rate,
        diag_reg=diag_reg,
        diag_reg_absolute_scale=diag_reg_absolute_scale,
    )
