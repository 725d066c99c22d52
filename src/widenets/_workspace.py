"""Tile buffers reused within a kernel evaluation, so that their pages fault only once.

A kernel evaluation makes and drops the same few tile-sized tensors (MiB each) thousands of
times. glibc hands such sizes out as fresh pages (mmap, or a heap top it trimmed), and each
page faults on first touch: on a small CNN that is most of the time of a layer. Changing
glibc's thresholds would fix it for the whole process (``widenets._malloc``, opt-in); here
the library keeps its own buffers instead, and only for the duration of a call.

Inside :func:`active` (``_fused.call`` enters it around every kernel evaluation), the
kernel maps take their tile outputs from :func:`empty`: a buffer held here whose storage
nobody else references (its use count is 1: the tensor that had it, and every view of it,
is gone) is handed out again, the most recently used first (likely still in cache);
else a new one is made and kept, up to :data:`MAX_BYTES` in all. When the outermost
evaluation ends the buffers are dropped (a result the caller still
holds keeps its own storage). Outside a call, or below :data:`MIN_BYTES`, or off the CPU,
``empty`` is ``torch.empty``. The values computed are unchanged: the same operations write
into other memory.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch
from torch import Tensor

#: buffers smaller than this are left to the allocator (glibc serves them without faults)
MIN_BYTES = 1 << 17
#: at most this many bytes of buffers are kept (beyond it a buffer is a plain tensor)
MAX_BYTES = 512 << 20
#: a buffer is reused for a request of at least 1/SLACK of its size
SLACK = 1.25

_lock = threading.Lock()
_active = 0  # evaluations in progress
_held: list = []  # the untyped storages kept
_held_bytes = 0


def _use_count(storage) -> int:
    return torch._C._storage_Use_Count(storage._cdata)


@contextmanager
def active():
    """Around a kernel evaluation: tile buffers are reused until the outermost one ends."""
    global _active, _held_bytes
    with _lock:
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _held.clear()
                _held_bytes = 0


def empty(shape, dtype: torch.dtype, device=None) -> Tensor:
    """An uninitialised contiguous tensor, from a free buffer of this call when one fits."""
    global _held_bytes
    nbytes = math.prod(shape) * dtype.itemsize
    cpu = device is None or torch.device(device).type == "cpu"
    if not cpu or nbytes < MIN_BYTES or _active == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    with _lock:
        if _active == 0:  # ended meanwhile
            return torch.empty(shape, dtype=dtype)
        for i in range(len(_held) - 1, -1, -1):  # the most recently handed out first
            s = _held[i]
            size = s.nbytes()
            if nbytes <= size <= nbytes * SLACK and _use_count(s) == 1:
                _held.append(_held.pop(i))  # (likely still in cache: reuse it next)
                return torch.empty(0, dtype=dtype).set_(s, 0, tuple(shape))
        if _held_bytes + nbytes > MAX_BYTES:
            return torch.empty(shape, dtype=dtype)
        s = torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
        _held.append(s)
        _held_bytes += nbytes
        return torch.empty(0, dtype=dtype).set_(s, 0, tuple(shape))


def empty_like(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """:func:`empty` of ``t``'s shape (contiguous) and dtype (or ``dtype``), on its device."""
    return empty(t.shape, dtype or t.dtype, t.device)


def usable(*tensors: Tensor | None) -> bool:
    """Whether an out-of-place map may write into workspace buffers: a call is active and
    autograd records none of the tensors (``out=`` does not support it)."""
    if _active == 0:
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(t is not None and t.requires_grad for t in tensors)
