"""A memo of networks' kernel entries between flat feature rows, shared by estimators.

scikit-learn refits a clone of an estimator for every fold and setting of a grid search;
the settings that do not change the network (``diag_reg``, ``t``) and the folds that share
rows would recompute the same entries ``K(x_i, x_j)``. :class:`KernelCache` keys each
network by its configuration and each entry by the bytes of its two float64 rows, and
computes only the entries not yet known (see ``widenets.sklearn``).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from widenets.layers.base import Layer, declares_hyperparameters


def _fingerprint(obj, keep: list):
    """A hashable key equal for two networks exactly when they compute the same kernel.

    widenets layers are compared by class and declared hyperparameters (recursively), numbers,
    strings and tensors by value; any other object (a function inside ``Elementwise``, a layer
    of a class that does not declare its hyperparameters) by identity,
    and ``keep`` holds a reference to it so that its id cannot be reused while the key lives.
    """
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return (type(obj).__name__, obj)
    if isinstance(obj, (np.integer, np.floating)):
        return (type(obj).__name__, obj.item())
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_fingerprint(v, keep) for v in obj))
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: repr(kv[0]))
        return ("dict", tuple((repr(k), _fingerprint(v, keep)) for k, v in items))
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        a = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        a = np.ascontiguousarray(a)
        return ("array", str(a.dtype), a.shape, hashlib.sha1(a.tobytes()).hexdigest())
    if isinstance(obj, torch.dtype):
        return ("dtype", str(obj))
    if isinstance(obj, Layer) and declares_hyperparameters(obj):
        cls = type(obj)
        return (cls.__module__, cls.__qualname__, _fingerprint(obj.hyperparameters(), keep))
    keep.append(obj)
    return ("id", id(obj))


@dataclass(frozen=True)
class CachedKernels:
    """Kernels between rows x1 and x2 of one network: ``nngp`` and ``ntk`` (N1, N2),
    ``cov1`` (N1,) and ``cov2`` (N2,) the output variances E[f(x)^2] of the rows."""

    nngp: torch.Tensor
    ntk: torch.Tensor
    cov1: torch.Tensor
    cov2: torch.Tensor


class _Store:
    """Every kernel entry computed so far between the rows seen, for one network."""

    def __init__(self, n_features: int):
        self.n_features = n_features
        self.index: dict[bytes, int] = {}
        self.n = 0
        self.rows = np.empty((0, n_features))
        self.nngp = torch.empty((0, 0), dtype=torch.float64)
        self.ntk = torch.empty((0, 0), dtype=torch.float64)
        self.known = torch.empty((0, 0), dtype=torch.bool)
        self.var = torch.empty(0, dtype=torch.float64)
        self.var_known = torch.empty(0, dtype=torch.bool)

    @staticmethod
    def bytes_for(capacity: int, n_features: int) -> int:
        # two float64 kernels and a bool mask per entry; rows and variances per row
        return capacity * capacity * 17 + capacity * (8 * n_features + 9)

    @property
    def nbytes(self) -> int:
        return self.bytes_for(len(self.rows), self.n_features)

    def missing_rows(self, x: np.ndarray) -> list[bytes]:
        new, seen = [], set()
        for row in x:
            b = row.tobytes()
            if b not in self.index and b not in seen:
                seen.add(b)
                new.append(b)
        return new

    def add(self, new: list[bytes], capacity: int) -> None:
        """Append rows (as bytes), first growing every array to ``capacity`` rows if needed."""
        if self.n + len(new) > len(self.rows):
            old, cap = self.n, capacity
            rows = np.empty((cap, self.n_features))
            rows[:old] = self.rows[:old]
            self.rows = rows
            for name, fill in (("nngp", 0.0), ("ntk", 0.0), ("known", False)):
                t = getattr(self, name)
                grown = torch.full((cap, cap), fill, dtype=t.dtype)
                grown[:old, :old] = t[:old, :old]
                setattr(self, name, grown)
            for name, fill in (("var", 0.0), ("var_known", False)):
                t = getattr(self, name)
                grown = torch.full((cap,), fill, dtype=t.dtype)
                grown[:old] = t[:old]
                setattr(self, name, grown)
        for b in new:
            self.rows[self.n] = np.frombuffer(b, dtype=np.float64)
            self.index[b] = self.n
            self.n += 1

    def positions(self, x: np.ndarray) -> torch.Tensor:
        return torch.tensor([self.index[row.tobytes()] for row in x], dtype=torch.long)


class KernelCache:
    """A memo of networks' NNGP and NTK entries, shared by estimators and their clones.

    Pass one instance as ``kernel_cache`` to :class:`NNGPClassifier` and friends (also inside a
    ``Pipeline`` tuned by ``GridSearchCV``): every entry ``K(x_i, x_j)`` of a network is then
    computed once and looked up afterwards, whichever estimator, fold or setting asks. Keys are
    the network's configuration (its layers' classes and attributes; functions by identity),
    ``input_shape``, and the bytes of the two float64 input rows; values are exactly what the
    first computation gave (equal to a direct ``net.kernel`` call up to rounding, since every
    entry is computed by the same elementwise operations). Only entries that a request needs
    and that are not yet known are computed: for the rows of a fit, the pairs among them that
    are missing; for a prediction, the block of new rows against the training rows.

    Args:
        max_bytes: memory bound of the cache (17 bytes per stored pair of rows, per network).
            The least recently used networks are dropped to make room; a request that alone
            needs more is computed directly and not stored.

    Cloning and ``copy.deepcopy`` return the same object (so that scikit-learn's clones share
    it); pickling (e.g. to a process-parallel worker) gives an empty cache with the same bound.
    Access is serialised by a lock, so threads may share it.

    Attributes:
        pairs_computed: (x1, x2) pairs whose kernels were computed so far.
        pairs_served: pairs returned to callers (computed or looked up).
    """

    def __init__(self, max_bytes: int = 2**30):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
            raise ValueError(f"`max_bytes` must be a positive integer, got {max_bytes!r}.")
        if max_bytes < 1:
            raise ValueError(f"`max_bytes` must be a positive integer, got {max_bytes!r}.")
        self.max_bytes = int(max_bytes)
        self._lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        """Forget every stored kernel (the counters are kept)."""
        with self._lock:
            self._stores: OrderedDict = OrderedDict()
            self._keep: dict = {}
            if not hasattr(self, "pairs_computed"):
                self.pairs_computed = 0
                self.pairs_served = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the stored kernels."""
        return sum(s.nbytes for s in self._stores.values())

    def __repr__(self) -> str:
        return f"KernelCache(max_bytes={self.max_bytes})"

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def __reduce__(self):
        return (type(self), (self.max_bytes,))

    def kernels(self, network: Layer, x1, x2=None, input_shape=None) -> CachedKernels:
        """NNGP and NTK of ``network`` between the rows of x1 (N1, D) and x2 (N2, D)
        (None: x1 with itself), each row reshaped to ``input_shape`` if given."""
        x1 = np.ascontiguousarray(x1, dtype=np.float64)
        x2 = None if x2 is None else np.ascontiguousarray(x2, dtype=np.float64)
        if x1.ndim != 2 or (x2 is not None and (x2.ndim != 2 or x2.shape[1] != x1.shape[1])):
            raise ValueError(
                "`x1` and `x2` must be (N, D) arrays of flat feature rows with the same D, got "
                f"shapes {x1.shape} and {None if x2 is None else x2.shape}."
            )
        d = x1.shape[1]
        shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        keep: list = []
        key = (_fingerprint(network, keep), shape, d)
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                store = _Store(d)
            both = x1 if x2 is None else np.concatenate([x1, x2])
            new = store.missing_rows(both)
            need = store.n + len(new)
            if _Store.bytes_for(need, d) > self.max_bytes:  # too large to keep: compute directly
                self.pairs_computed += len(x1) * (len(x1) if x2 is None else len(x2))
                return direct_kernels(network, x1, x2, shape)
            cap = len(store.rows)
            if need > cap:
                cap = max(need, min(2 * cap, self._max_rows(d)))
                self._make_room(key, _Store.bytes_for(cap, d) - store.nbytes)
            if new:
                store.add(new, cap)
            self._stores[key] = store
            self._stores.move_to_end(key)
            self._keep[key] = keep
            i1 = store.positions(x1)
            i2 = i1 if x2 is None else store.positions(x2)
            self._fill(network, store, i1, i2, x2 is None, shape)
            self.pairs_served += len(i1) * len(i2)
            return CachedKernels(
                nngp=store.nngp[i1][:, i2],
                ntk=store.ntk[i1][:, i2],
                cov1=store.var[i1],
                cov2=store.var[i2],
            )

    def _max_rows(self, d: int) -> int:
        lo, hi = 0, 1
        while _Store.bytes_for(hi, d) <= self.max_bytes:
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _Store.bytes_for(mid, d) <= self.max_bytes else (lo, mid)
        return lo

    def _make_room(self, key, extra: int) -> None:
        """Drop the least recently used other networks until ``extra`` more bytes fit."""
        for other in list(self._stores):
            if self.nbytes + extra <= self.max_bytes:
                return
            if other != key:
                del self._stores[other]
                self._keep.pop(other, None)

    def _fill(self, network, store: _Store, i1, i2, same: bool, shape) -> None:
        """Compute the entries among rows i1 x i2 that are not yet known."""
        missing = ~store.known[i1][:, i2]
        if not missing.any():
            return
        if same:
            # a row outside ``rows`` has every pair with i1 known (the mask is symmetric), so
            # only pairs among ``rows`` can be missing: one kernel of that set with itself
            rows = torch.unique(i1[missing.any(1)])
            k = direct_kernels(network, store.rows[rows.numpy()], None, shape)
            cols, cov2 = rows, k.cov1
            self.pairs_computed += len(rows) * len(rows)
        else:
            rows = torch.unique(i1[missing.any(1)])
            cols = torch.unique(i2[missing.any(0)])
            k = direct_kernels(network, store.rows[rows.numpy()], store.rows[cols.numpy()], shape)
            cov2 = k.cov2
            self.pairs_computed += len(rows) * len(cols)
        # write only what was missing: known entries keep their first value
        new = ~store.known[rows][:, cols]
        both = torch.isin(rows, cols).nonzero()[:, 0], torch.isin(cols, rows).nonzero()[:, 0]
        for name in ("nngp", "ntk"):
            full = getattr(store, name)
            block = full[rows][:, cols]
            block[new] = getattr(k, name)[new]
            full[rows[:, None], cols[None, :]] = block
            full[cols[:, None], rows[None, :]] = block.T
            if len(both[0]):  # rows in both sets: (a, b) and (b, a) were both computed, keep one
                o = rows[both[0]]  # the same sorted indices as cols[both[1]]
                sub = block[both[0]][:, both[1]]
                sub = sub.triu() + sub.triu(1).T
                full[o[:, None], o[None, :]] = sub
        store.known[rows[:, None], cols[None, :]] = True
        store.known[cols[:, None], rows[None, :]] = True
        for idx, var in ((rows, k.cov1), (cols, cov2)):
            fresh = ~store.var_known[idx]
            store.var[idx[fresh]] = var[fresh]
            store.var_known[idx] = True


def direct_kernels(network: Layer, x1: np.ndarray, x2, shape) -> CachedKernels:
    """``network.kernel`` of flat rows (reshaped to ``shape``): nngp, ntk (N1, N2)."""

    def as_input(x):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        return t if shape is None else t.reshape(len(t), *shape)

    a = as_input(x1)
    b = None if x2 is None else as_input(x2)
    try:
        k = network.kernel(a, b, get=("nngp", "ntk"), progress=False)
    except ValueError as e:
        if shape is not None:
            raise
        raise ValueError(
            f"{e} (scikit-learn passes flat feature rows (N, {a.shape[1]}); a network that "
            "needs structured inputs takes them through `input_shape`, e.g. (1, "
            f"{a.shape[1]}) for a 1-D convolutional network)"
        ) from None
    if k.nngp.ndim != 2:
        raise ValueError(
            "the network's kernel must be (N1, N2), one covariance per pair of examples, but "
            f"it has shape {tuple(k.nngp.shape)}: end a spatial network with a readout "
            "(Flatten() or GlobalAvgPool(), then Dense)."
        )
    return CachedKernels(nngp=k.nngp, ntk=k.ntk, cov1=k.cov1, cov2=k.cov2)
