"""Peak resident memory of this process over a block of code.

On Linux the kernel's high-water mark (``VmHWM`` in /proc/self/status) is reset on entry
(writing 5 to /proc/self/clear_refs) and read on exit: the exact peak of the block. Where
that is not possible the peak since the process started is reported
(``resource.getrusage``), and ``source`` says which it is. Memory of Dask workers in other
processes is not counted.
"""

from __future__ import annotations

import contextlib
import sys


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _hwm_bytes() is not None


def _lifetime_peak() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakMemory(contextlib.AbstractContextManager):
    """``with PeakMemory() as m: ...``; then ``m.bytes`` (None if unknown) and ``m.source``:
    "block" (the block's own peak) or "process" (the peak since the process started)."""

    def __init__(self):
        self.bytes: int | None = None
        self.source = "unknown"
        self._block = False

    def __enter__(self):
        self._block = _reset_hwm()
        return self

    def __exit__(self, *exc):
        if self._block:
            self.bytes, self.source = _hwm_bytes(), "block"
        else:
            self.bytes = _lifetime_peak()
            self.source = "process" if self.bytes is not None else "unknown"
        return False
