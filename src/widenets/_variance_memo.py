"""Per-input variances of the full (pixel-pair) layout mapped once per call, not per tile.

In the full layout every tile carries the pixel-pair covariances of its own inputs (``cov1``
of its rows, ``cov2`` of its columns: (b, H, H', W, W') each) and maps them through every
layer beside its pairs: for a tile of b x b inputs a 2/b share of its work (a quarter of
the CNN-GAP kernels' tiles of 8 x 8 inputs), although every tile of a row of tiles maps the
same rows. Within a kernel evaluation (``compute.KernelWork``) a :class:`VarianceMemo`
keeps each mapped variance tensor under (the set, the tile's first and last input, the
count of ``Kernel.map_variances`` calls so far in the tile's fold): a later tile of the same
inputs takes it instead of mapping again. Every tile folds the same network in the same
order, so the n-th call of any tile maps the same layer's variances of those inputs by the
same operations: the values are those the tile would compute, bit for bit. At most
:data:`MAX_BYTES` are kept; beyond it tiles map their own.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

#: bytes of mapped variances kept per kernel evaluation (beyond it, tiles map their own)
MAX_BYTES = 256 << 20

_local = threading.local()  # .memo, .key1, .key2, .n: the fold running on this thread


class VarianceMemo:
    """Mapped variances of one kernel evaluation, shared by its tiles (see the module doc)."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self.held: dict = {}
        self.bytes = 0
        self.hits = 0  # for tests and benchmarks
        self.lock = threading.Lock()

    def __getstate__(self):  # picklable (executors in other processes): empty, no lock
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"])

    @contextmanager
    def tile(self, key1, key2):
        """Within it, ``Kernel.map_variances`` on this thread uses the memo: ``key1`` names
        the tile's rows (a set and a range), ``key2`` its columns."""
        before = getattr(_local, "state", None)
        _local.state = [self, key1, key2, 0]
        try:
            yield
        finally:
            _local.state = before

    def _get(self, key, compute):
        t = self.held.get(key)
        if t is not None:
            with self.lock:
                self.hits += 1
            return t
        t = compute()
        nbytes = _nbytes(t)
        with self.lock:
            if key not in self.held and self.bytes + nbytes <= self.max_bytes:
                self.held[key] = t
                self.bytes += nbytes
        return t


def map_variances(k, fn):
    """``(fn(k.cov1, 1), fn(k.cov2, 2))`` from the memo of the tile running on this thread
    when there is one (else None: the caller maps them itself)."""
    state = getattr(_local, "state", None)
    if state is None:
        return None
    memo, key1, key2, n = state
    state[3] = n + 1
    cov1 = memo._get((key1, n), lambda: fn(k.cov1, 1))
    if k.cov2 is k.cov1:
        return cov1, cov1
    return cov1, memo._get((key2, n), lambda: fn(k.cov2, 2))


def _nbytes(t) -> int:
    """Bytes held by a tensor, a numpy array or a tuple of them."""
    if isinstance(t, tuple):
        return sum(_nbytes(x) for x in t)
    return t.nbytes if hasattr(t, "nbytes") else t.numel() * t.element_size()


def memo_get(which: int, tag, compute):
    """``compute()`` for the inputs of the tile's rows (``which`` 1) or columns (2), from
    the memo of the tile running on this thread when it holds it under ``tag`` (a value
    of the caller's, never an int: the keys of :func:`map_variances` are ints); else
    computed (and kept). Without a memo, ``compute()``."""
    state = getattr(_local, "state", None)
    if state is None:
        return compute()
    memo, key1, key2, _ = state
    return memo._get((key1 if which == 1 else key2, tag), compute)
