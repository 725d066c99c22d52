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


INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def real_tensor(
    x, name: str, *, bools: bool = False, none_error: type = TypeError, needs: str = "values"
) -> Tensor:
    """The library's one input converter: a detached tensor of real numbers (floating or
    integer; bool too if ``bools``) from a tensor, numpy array or nested sequence, with
    one-line errors naming ``name`` for None, non-numeric or complex data and tensors on the
    meta device (``needs`` says what the values are needed for). No copy of a tensor."""
    if x is None:
        raise none_error(f"`{name}` must be a tensor or array of real numbers, got None.")
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise TypeError(f"`{name}` must be a tensor or array of real numbers: {e}") from None
        if arr.dtype.kind not in ("fiub" if bools else "fiu"):
            raise TypeError(f"`{name}` must hold real numbers, got an array of dtype {arr.dtype}.")
        t = torch.as_tensor(arr)
    if t.device.type == "meta":
        raise ValueError(
            f"`{name}` is on the meta device (a shape without values); {needs} need values: "
            "create it on the CPU or a GPU."
        )
    allowed = INTEGER_DTYPES + ((torch.bool,) if bools else ())
    if not (t.is_floating_point() or t.dtype in allowed):
        raise TypeError(f"`{name}` must hold real numbers, got dtype {t.dtype}.")
    return t


def as_tensor(x, name: str, dtype: torch.dtype | None, *, min_ndim: int = 2) -> Tensor:
    """Convert an array-like input to a tensor of ``dtype``; reject NaN/inf and bad ndim.

    NaN and inf are looked for before the conversion (the error names the first bad row);
    a finite value that ``dtype`` cannot hold (e.g. 1e5 in float16) is reported as out of
    range rather than as inf. ``dtype=None`` keeps the input's own real dtype (checked).
    """
    t = real_tensor(x, name, none_error=ValueError, needs="kernels")
    if t.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimensions (a batch axis first, then "
            f"features/channels), got shape {tuple(t.shape)}. For a single example use "
            f"x[None]; for scalar features use x[:, None]."
        )
    if t.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (batch size 0).")
    check_finite_rows(t, name)
    if dtype is None or t.dtype == dtype:
        return t
    out = t.to(dtype)
    if out.is_floating_point() and not torch.isfinite(out.sum(dtype=torch.float64)):
        if not torch.isfinite(out).all():
            bad = (~torch.isfinite(out)).nonzero()[0].tolist()
            big = float(t.abs().amax())
            raise ValueError(
                f"`{name}` has values beyond the range of {dtype} (largest |x| = {big:.3g}, "
                f"{dtype} holds up to {torch.finfo(dtype).max:.5g}; first in row {bad[0]}, "
                f"at index {tuple(bad)}): rescale the inputs (e.g. standardise them) or "
                "compute in a wider dtype."
            )
    return out


def check_finite_rows(t: Tensor, name: str) -> None:
    """A ValueError naming ``name`` and the first row holding NaN or inf, if any."""
    if not t.is_floating_point():
        return
    # one reduction first (no temporary; a float64 sum does not overflow on finite
    # float32/float16 values); only if it is not finite, locate the bad entry
    total = t.sum(dtype=torch.float64) if t.dtype != torch.float64 else t.sum()
    if torch.isfinite(total) or torch.isfinite(t).all():
        return
    bad = (~torch.isfinite(t)).nonzero()[0].tolist()
    what = "NaN" if bool(torch.isnan(t[bad[0]]).any()) else "inf"
    raise ValueError(
        f"`{name}` contains NaN or inf ({what}): row {bad[0]} is not finite (first at index "
        f"{tuple(bad)}). Remove or impute that input before computing a kernel."
    )


class NonFiniteKernelError(ValueError):
    """A kernel came out NaN or inf: the message says where (which layer of the network,
    which pair of inputs), whether it is an overflow (inf from finite values) or an invalid
    operation (NaN), and what to do."""


class ReducedPrecisionWarning(RuntimeWarning):
    """A kernel in a reduced precision (float32, float16, bfloat16) is too ill-conditioned
    for the prediction asked of it: its rounding errors are amplified by the condition
    number. Compute the kernel in float64 or pass a larger ``diag_reg``."""


def check_get(get) -> tuple[str, ...]:
    """Normalise ``get`` to a tuple of kernel names out of ("nngp", "ntk")."""
    if isinstance(get, str):
        names = (get,)
    elif isinstance(get, (tuple, list)):
        names = tuple(get)
    else:
        names = ()
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise ValueError(f'`get` must be "nngp", "ntk" or a tuple of them, got {get!r}.')
    return names


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
