"""Products K V of a kernel held in memory with a skinny V (one column per class), by the
numba loop :func:`widenets.predict._skinny_loops.rows_times` on the library's threads.

Why: a CG iteration's product reads all of K (N^2 entries) for about 10 columns, so its
speed is the memory bandwidth. BLAS's general matrix product (torch's ``k @ v``) reads K
at about half of it for such a V (N = 8,000, R = 10, 2 cores: 0.056 s against the loop's
0.03 s, ``bench/scale.py solver``); the loop sums dot products of K's rows with V's
columns in registers, 4 rows x 4 columns at a time, and its rows are split over threads of
:func:`widenets._pool.run_tasks`.

:func:`matmul` returns None where the loop does not apply (numba missing or failing, a
tensor not in CPU memory, a dtype other than float32 / float64, columns not contiguous, or
``WIDENETS_SKINNY=off`` in the environment, read at each call): the caller then uses
torch's product. Results differ from torch's by rounding only (the order of the
additions). The loop is compiled on the first call of a process for each dtype (about
1 s) and cached on disk by numba (``cache=True``).

:func:`torch_serial` sets torch to one intra-op thread for a block (restored after it): a
CG step's small vector operations on N x R are faster without torch's threads, which wait
for each other at the end of every operation; the products still use all threads, the
count of which :func:`threads` gives inside the block.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from widenets._pool import default_workers, run_tasks

#: environment variable: "off" disables the loop (torch's products everywhere)
ENV = "WIDENETS_SKINNY"
#: entries of K below which a product runs on the calling thread alone (starting threads
#: costs about 0.1 ms)
_MIN_THREADED = 2**18
#: rows of K per task at least: 4 tasks a thread when they have that many rows (a thread
#: that loses its core to another process then delays only its own rows)
_MIN_TASK_ROWS = 256

_lock = threading.Lock()
_state: dict = {}  # "loops": the module; "failed": why not
_local = threading.local()  # .threads: the count torch had before torch_serial


def enabled() -> bool:
    """The loop may be used: not switched off and numba importable."""
    if os.environ.get(ENV, "").strip().lower() == "off":
        return False
    return _loops() is not None


def _loops():
    if "loops" in _state or "failed" in _state:
        return _state.get("loops")
    with _lock:
        if "loops" not in _state and "failed" not in _state:
            try:
                from widenets.predict import _skinny_loops

                _state["loops"] = _skinny_loops
            except Exception as e:  # noqa: BLE001 - not installed, broken llvmlite, ...
                _state["failed"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return _state.get("loops")


def failure() -> str | None:
    """Why the loop is not available (None: available or not tried yet)."""
    return _state.get("failed")


def threads() -> int:
    """Threads for a product: torch's intra-op count (at most the CPUs), or inside
    :func:`torch_serial` the count torch had before it."""
    saved = getattr(_local, "threads", None)
    return saved if saved is not None else default_workers()


@contextmanager
def torch_serial():
    """torch's intra-op threads set to one within the block and restored after it;
    :func:`threads` inside gives the count before."""
    before = default_workers()
    outer = getattr(_local, "threads", None)
    torch_before = torch.get_num_threads()
    _local.threads = outer if outer is not None else before
    if torch_before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != torch_before:
            torch.set_num_threads(torch_before)
        _local.threads = outer


def fits(k) -> bool:
    """``k`` is a matrix the loop can read: a 2-D float32 / float64 CPU tensor with
    contiguous rows (and the loop is enabled)."""
    return (
        isinstance(k, Tensor)
        and k.ndim == 2
        and k.device.type == "cpu"
        and k.dtype in (torch.float32, torch.float64)
        and not k.requires_grad
        and (k.stride(1) == 1 or k.shape[1] == 1)
        and enabled()
    )


def matmul(
    k: Tensor,
    v: Tensor,
    n_threads: int | None = None,
    out: Tensor | None = None,
    *,
    cast: Tensor | None = None,
):
    """k @ v in float64 for k (M, N) and v (N, R) (float64 or float32), on ``n_threads``
    threads (default :func:`threads`); ``out`` (M, R) float64 with contiguous rows to write
    into (float32 k: its entries widened, sums in float64). ``cast``: a contiguous float32
    (M, N) tensor that gets k's entries, written by the same pass over k (while each block
    of rows is in cache: N = 8,000, 2 threads, 39 ms with the copy against 28 ms without,
    and 66 ms for ``k.float()``). None where the loop does not apply (see the module
    doc)."""
    if not fits(k) or v.ndim != 2 or v.shape[0] != k.shape[1] or v.device.type != "cpu":
        return None
    if cast is not None and (
        cast.shape != k.shape or cast.dtype != torch.float32 or not cast.is_contiguous()
    ):
        return None
    m, r = k.shape[0], v.shape[1]
    if out is None:
        out = torch.empty(m, r, dtype=torch.float64)
    elif out.shape != (m, r) or out.dtype != torch.float64 or not out.is_contiguous():
        return None
    if m == 0 or r == 0 or k.shape[1] == 0:
        if cast is not None:
            cast.copy_(k)
        return out.zero_()
    mod = _loops()
    kn = k.detach().numpy()  # rows with a gap between them: numba's strided layout
    vt = v.detach().to(torch.float64).T.contiguous().numpy()  # (R, N): a column a row
    on = out.numpy()
    cn = cast.numpy() if cast is not None else np.empty((0, 0), np.float32)
    n_threads = threads() if n_threads is None else max(1, int(n_threads))
    if n_threads == 1 or m < 8 or m * k.shape[1] < _MIN_THREADED:
        mod.rows_times(kn, vt, on, cn)
        return out
    # 4 tasks a thread where the rows allow, else one a thread (no thread with two tasks
    # while another waits: 750 rows as 3 tasks of 256 on 2 threads took 2/3 of the serial)
    tasks = min(m // 4, n_threads * (4 if m >= 4 * n_threads * _MIN_TASK_ROWS else 1))
    step = -(-m // tasks)
    step += -step % 4

    def one(s: int) -> None:
        e = min(s + step, m)
        mod.rows_times(kn[s:e], vt, on[s:e], cn[s:e] if len(cn) else cn)

    run_tasks(list(range(0, m, step)), one, n_threads)
    return out


def t_matmul(ft: Tensor, c: Tensor, n_threads: int | None = None):
    """ft^T @ c in float64 for ft (r, N) with contiguous rows (float32 or float64) and c
    (r, R): the product F c of a factor kept as F^T, without a row-major copy of F (the
    loop :func:`widenets.predict._skinny_loops.cols_times`, N split over ``n_threads``).
    Returns an (N, R) float64 view of a contiguous (R, N) tensor, or None where the loop
    does not apply (see the module doc)."""
    if not fits(ft) or c.ndim != 2 or c.shape[0] != ft.shape[0] or c.device.type != "cpu":
        return None
    r, n = ft.shape
    out_t = torch.empty(c.shape[1], n, dtype=torch.float64)
    if n == 0 or c.shape[1] == 0:
        return out_t.T
    if r == 0:
        return out_t.zero_().T
    mod = _loops()
    fn = ft.detach().numpy()
    cn = c.detach().to(torch.float64).contiguous().numpy()
    on = out_t.numpy()
    n_threads = threads() if n_threads is None else max(1, int(n_threads))
    if n_threads == 1 or r * n < _MIN_THREADED:
        mod.cols_times(fn, cn, on, 0, n)
        return out_t.T
    # column ranges of 512 (the loop's block), 4 tasks a thread where N allows
    tasks = max(1, min(-(-n // 512), 4 * n_threads))
    step = -(-n // tasks)
    step += -step % 512

    def one(s: int) -> None:
        mod.cols_times(fn, cn, on, s, min(s + step, n))

    run_tasks(list(range(0, n, step)), one, n_threads)
    return out_t.T
