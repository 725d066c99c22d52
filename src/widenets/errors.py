"""Argument checks shared by the whole library: each error names the argument."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def check_positive_int(value, name: str) -> int:
    """An integer >= 1, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def check_nonnegative(value, name: str, *, allow_none: bool = False) -> float | None:
    """A finite real number >= 0 (or None if allowed), else a ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a non-negative number, got {value!r}.") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be a finite non-negative number, got {value!r}.")
    return v


def check_finite_real(value, name: str) -> float:
    """A finite real number, else a ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a real number, got {value!r}.") from None
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    return v


def as_tensor(x, name: str, dtype: torch.dtype, *, min_ndim: int = 2) -> Tensor:
    """Convert an array-like input to a tensor of ``dtype``; reject NaN/inf and bad ndim."""
    if x is None:
        raise ValueError(f"`{name}` must be an array of inputs, got None.")
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"`{name}` must hold real numbers, got an array of dtype {arr.dtype}.")
        t = torch.as_tensor(arr)
    if t.device.type == "meta":
        raise ValueError(
            f"`{name}` is on the meta device (a shape without values); kernels need values: "
            "create it on the CPU or a GPU."
        )
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"`{name}` must hold real numbers, got dtype {t.dtype}.")
    if t.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimensions (a batch axis first, then "
            f"features/channels), got shape {tuple(t.shape)}. For a single example use "
            f"x[None]; for scalar features use x[:, None]."
        )
    if t.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (batch size 0).")
    t = t.to(dtype)
    # one reduction first (no temporary); only if it is not finite, locate the bad entry
    if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"`{name}` contains NaN or inf (first at index {tuple(bad)}).")
    return t


def check_get(get) -> tuple[str, ...]:
    """Normalise ``get`` to a tuple of kernel names out of ("nngp", "ntk")."""
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise ValueError(f'`get` must be "nngp", "ntk" or a tuple of them, got {get!r}.')
    return names


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
