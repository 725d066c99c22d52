"""Keep freed tile buffers in the process heap (glibc only), when asked.

A kernel evaluation allocates and frees the same few tile-sized tensors (a few MiB each)
thousands of times. glibc serves such sizes with mmap or gives the top of the heap back to
the system, so every new tensor is fresh pages and each of its pages faults on first touch
(the README's "Allocator" paragraph has the measurements).

:func:`keep_freed_memory` raises glibc's mmap threshold to 32 MiB (its maximum) and its
trim threshold to 256 MiB, once per process, so such buffers are reused; at most 256 MiB
of freed memory then stays with the process, and blocks above 32 MiB (whole kernels) are
still mapped and unmapped as before. The setting is process-wide, so the library never
makes it on its own: a kernel evaluation applies it only when ``WIDENETS_MALLOC=tuned``
(:func:`tune_if_asked`); the ``widenets`` command, which owns its process, applies it
unless ``WIDENETS_MALLOC=system`` (:func:`tune_for_command`). Nothing is changed if the
user set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``, or off glibc.
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
ENV = "WIDENETS_MALLOC"
MODES = ("system", "tuned")

_done = False
_tuned = False


def tuned() -> bool:
    """Whether widenets changed this process's allocator settings."""
    return _tuned


def _mode(default: str) -> str:
    mode = os.environ.get(ENV, default)
    if mode not in MODES:
        raise ValueError(f"environment variable {ENV} must be one of {MODES}, got {mode!r}.")
    return mode


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for repeated tile-sized buffers, for the whole process; True if
    it was set now (False: already done, ``WIDENETS_MALLOC=system``, the user's own
    ``MALLOC_*`` setting, or not glibc)."""
    global _done, _tuned
    if _done:
        return False
    _done = True
    if not sys.platform.startswith("linux") or os.environ.get(ENV) == "system":
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
    _tuned = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    return _tuned


def tune_if_asked() -> bool:
    """For the library (each kernel evaluation): tune only if ``WIDENETS_MALLOC=tuned``."""
    return _mode("system") == "tuned" and keep_freed_memory()


def tune_for_command() -> bool:
    """For the ``widenets`` command: tune unless ``WIDENETS_MALLOC=system``."""
    return _mode("tuned") == "tuned" and keep_freed_memory()
