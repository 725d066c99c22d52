"""Keep freed tile buffers in the process heap (glibc only).

A kernel evaluation allocates and frees the same few tile-sized tensors (a few MiB each)
thousands of times. glibc serves such sizes with mmap or gives the top of the heap back to
the system, so every new tensor is fresh pages and each of its pages faults on first
touch. On a 5-layer CNN-VEC kernel of 100 x 100 8x8 images (the network of
``bench/kernel_cnn.py``, six calls in one process, minor faults from ``getrusage``) that
was 6,000-14,000 page faults and 0.058-0.088 s a call, against none and 0.043-0.051 s with
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set, which have the same effect.

:func:`keep_freed_memory` raises glibc's mmap threshold to 32 MiB (its maximum) and its
trim threshold to 256 MiB, once per process, so such buffers are reused. It does nothing
if the user set either variable, if ``WIDENETS_MALLOC=system`` is set, or off glibc.
At most 256 MiB of freed memory then stays with the process instead of going back to the
system; blocks above 32 MiB (whole kernels) are still mapped and unmapped as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20

_done = False


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for repeated tile-sized buffers; True if it was set now."""
    global _done
    if _done:
        return False
    _done = True
    if not sys.platform.startswith("linux") or os.environ.get("WIDENETS_MALLOC") == "system":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
