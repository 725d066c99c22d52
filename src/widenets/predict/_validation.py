"""Argument checks for ``widenets.predict``: every error names the offending argument."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

from widenets.errors import real_tensor

KERNEL_NAMES = ("nngp", "ntk")


def result_dtype(*tensors: Tensor | None) -> torch.dtype:
    """Promoted floating dtype of the floating tensors given; float64 if there are none."""
    dtype = None
    for t in tensors:
        if t is not None and t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return torch.float64 if dtype is None else dtype


def as_real_tensor(x, name: str) -> Tensor:
    """A detached real tensor from a tensor, numpy array or nested sequence of numbers."""
    return real_tensor(x, name)


def check_finite(t: Tensor, name: str) -> None:
    # a finite sum has no NaN or inf among its terms: one reduction, no N^2 mask (the
    # mask is built only when the sum is not finite, to find the first bad entry)
    if not t.is_floating_point() or t.numel() == 0 or math.isfinite(float(t.sum())):
        return
    if not torch.isfinite(t).all():
        bad = tuple((~torch.isfinite(t)).nonzero()[0].tolist())
        raise ValueError(f"`{name}` contains NaN or inf (first at index {bad}).")


def as_matrix(x, name: str, *, device: torch.device | None = None) -> Tensor:
    """A finite 2-D real tensor (on ``device`` if given)."""
    t = as_real_tensor(x, name)
    if t.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D kernel matrix, got shape {tuple(t.shape)}.")
    check_finite(t, name)
    return t if device is None else t.to(device)


def as_train_kernel(x, name: str = "k_train_train") -> Tensor:
    """A finite, square, (numerically) symmetric, non-empty kernel matrix."""
    k = as_matrix(x, name)
    n1, n2 = k.shape
    if n1 != n2:
        raise ValueError(f"`{name}` must be square (N, N), got shape {(n1, n2)}.")
    if n1 == 0:
        raise ValueError(f"`{name}` is empty (N = 0).")
    if k.is_floating_point():
        lo, hi = torch.aminmax(k)
        tol = math.sqrt(torch.finfo(k.dtype).eps) * max(-float(lo), float(hi))
        asym = max_asymmetry(k)
        if asym > tol:
            raise ValueError(
                f"`{name}` must be symmetric (a train-train kernel), but max |K - K^T| = "
                f"{asym:.3g} exceeds {tol:.3g}."
            )
    return k


def max_asymmetry(k: Tensor, block_bytes: int = 32 * 2**20) -> float:
    """max |K - K^T| of a square matrix, comparing the lower triangle with the upper by
    row blocks (block x N temporaries, not N x N)."""
    n = k.shape[0]
    step = max(1, block_bytes // (k.element_size() * max(n, 1)))
    worst = 0.0
    for s in range(0, n, step):
        e = min(s + step, n)
        worst = max(worst, float((k[s:e, :e] - k[:e, s:e].T).abs().max()))
    return worst


def as_targets(y, n_train: int, *, device: torch.device, name: str = "y_train") -> Tensor:
    """Finite targets of shape (N,) or (N, O) matching ``n_train``."""
    t = as_real_tensor(y, name)
    if t.ndim not in (1, 2):
        raise ValueError(f"`{name}` must have shape (N,) or (N, O), got {tuple(t.shape)}.")
    if t.shape[0] != n_train:
        raise ValueError(
            f"`{name}` has {t.shape[0]} rows but `k_train_train` is {n_train} x {n_train}; "
            f"they must describe the same N training points."
        )
    check_finite(t, name)
    return t.to(device)


def check_test_train(k: Tensor, n_train: int, name: str = "k_test_train") -> None:
    if k.shape[1] != n_train:
        raise ValueError(
            f"`{name}` must have shape (N_test, N_train) with N_train = {n_train} "
            f"(the size of `k_train_train`), got {tuple(k.shape)}."
        )


def check_test_test(k: Tensor, n_test: int, name: str = "k_test_test") -> None:
    if tuple(k.shape) != (n_test, n_test):
        raise ValueError(
            f"`{name}` must have shape (N_test, N_test) = {(n_test, n_test)} to match "
            f"`k_test_train`, got {tuple(k.shape)}."
        )


def check_scalar(value, name: str, *, positive: bool) -> float:
    """A finite real number that is > 0 (``positive``) or >= 0."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, Tensor)):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.") from None
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"`{name}` must be a finite {kind} number, got {value!r}.")
    return v


def as_times(t) -> tuple[Tensor, bool]:
    """Training times as a float64 1-D tensor and whether ``t`` was a vector.

    ``None`` means ``inf`` (converged). Times must be >= 0 (``inf`` allowed) and not NaN.
    """
    if t is None:
        return torch.tensor([math.inf], dtype=torch.float64), False
    if isinstance(t, bool):
        raise TypeError(f"`t` must be a number >= 0, None, or a 1-D array of times, got {t!r}.")
    if isinstance(t, numbers.Real):
        ts = torch.tensor([float(t)], dtype=torch.float64)
        is_vector = False
    elif isinstance(t, (str, bytes)):
        raise TypeError(f"`t` must be a number >= 0, None, or a 1-D array of times, got {t!r}.")
    else:
        ts = as_real_tensor(t, "t")
        if ts.ndim > 1:
            raise ValueError(
                f"`t` must be a scalar or a 1-D array of times, got {tuple(ts.shape)}."
            )
        is_vector = ts.ndim == 1
        ts = ts.detach().to("cpu", torch.float64).reshape(-1)
    if torch.isnan(ts).any():
        raise ValueError("`t` must not be NaN.")
    if (ts < 0).any():
        raise ValueError(f"`t` must be >= 0 (training time), got min {float(ts.min())}.")
    return ts, is_vector


def normalise_get(get) -> tuple[str, ...]:
    """``get`` as a tuple of distinct names from ("nngp", "ntk")."""
    if isinstance(get, str):
        names = (get,)
    elif isinstance(get, (tuple, list)):
        names = tuple(get)
    else:
        raise TypeError(f'`get` must be "nngp", "ntk" or a tuple of them, got {get!r}.')
    if not names or any(not isinstance(g, str) or g not in KERNEL_NAMES for g in names):
        raise ValueError(f'`get` must be "nngp", "ntk" or a tuple of them, got {get!r}.')
    if len(set(names)) != len(names):
        raise ValueError(f"`get` must not repeat names, got {get!r}.")
    return names


def kernel_attr(k, attr: str, name: str):
    """The raw ``k.<attr>`` of a kernel object (validated by the caller)."""
    if not hasattr(k, attr):
        raise TypeError(
            f"`{name}` must be a kernel object with an `.{attr}` attribute (e.g. the result "
            f"of `net.kernel(...)`), got {type(k).__name__}."
        )
    value = getattr(k, attr)
    if value is None:
        raise ValueError(f"`{name}.{attr}` is None; request it with get=... when computing it.")
    return value


def as_initial_outputs(fx, shape: tuple[int, ...], name: str, *, device: torch.device) -> Tensor:
    """Initial network outputs broadcast to ``shape``, as float64."""
    t = as_real_tensor(fx, name)
    check_finite(t, name)
    try:
        t = torch.broadcast_to(t, shape)
    except RuntimeError:
        raise ValueError(
            f"`{name}` must be a scalar or broadcastable to shape {tuple(shape)}, "
            f"got shape {tuple(t.shape)}."
        ) from None
    return t.to(device, torch.float64)


def posterior_inputs(k_train_train, y_train, k_test_train, k_test_test, diag_reg):
    """Checked inputs of a posterior given kernels: (k_dd, y, k_td, k_tt, diag_reg, dtype).

    ``k_test_train`` None means the training points themselves; ``k_tt`` is None when
    ``k_test_test`` is; ``dtype`` is the promoted dtype of the results.
    """
    k_dd = as_train_kernel(k_train_train)
    n = k_dd.shape[0]
    device = k_dd.device
    y = as_targets(y_train, n, device=device)
    diag_reg = check_scalar(diag_reg, "diag_reg", positive=False)
    k_td = k_dd if k_test_train is None else as_matrix(k_test_train, "k_test_train", device=device)
    check_test_train(k_td, n)
    k_tt = None
    if k_test_test is not None:
        k_tt = as_matrix(k_test_test, "k_test_test", device=device)
        check_test_test(k_tt, k_td.shape[0])
    return k_dd, y, k_td, k_tt, diag_reg, result_dtype(k_dd, y, k_td, k_tt)
