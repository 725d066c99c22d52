"""A memo of networks' kernel entries between flat feature rows, shared by estimators.

scikit-learn refits a clone of an estimator for every fold and setting of a grid search;
the settings that do not change the network (``diag_reg``, ``t``) and the folds that share
rows would recompute the same entries ``K(x_i, x_j)``. :class:`KernelCache` keys each
network by its configuration and each entry by the bytes of its two float64 rows, and
computes only the entries not yet known (see ``widenets.sklearn``). It never copies a
result that nothing reads again, and keeps nothing alive until something is reused: for
cheap kernels a copy, or the page faults of memory kept alive, cost a visible fraction of
the computation.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import torch

from widenets.layers.base import Layer, declares_hyperparameters


class _Ref:
    """A key part that holds ``obj`` (so its ``id`` cannot be reused while the key lives)
    and compares by identity."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Ref) and other.obj is self.obj


def _fingerprint(obj):
    """A hashable key equal for two networks exactly when they compute the same kernel.

    widenets layers are compared by class and declared hyperparameters (recursively), numbers,
    strings and tensors by value; any other object (a function inside ``Elementwise``, a layer
    of a class that does not declare its hyperparameters) by identity, through a :class:`_Ref`
    inside the key that keeps the object alive: a function collected after its entry was
    stored can never hand its id, and so its entry, to a new function.
    """
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return (type(obj).__name__, obj)
    if isinstance(obj, (np.integer, np.floating)):
        return (type(obj).__name__, obj.item())
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_fingerprint(v) for v in obj))
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: repr(kv[0]))
        return ("dict", tuple((repr(k), _fingerprint(v)) for k, v in items))
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        a = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        a = np.ascontiguousarray(a)
        return ("array", str(a.dtype), a.shape, hashlib.sha1(a.tobytes()).hexdigest())
    if isinstance(obj, torch.dtype):
        return ("dtype", str(obj))
    if isinstance(obj, Layer) and declares_hyperparameters(obj):
        cls = type(obj)
        return (cls.__module__, cls.__qualname__, _fingerprint(obj.hyperparameters()))
    return ("ref", _Ref(obj))


@dataclass(frozen=True)
class CachedKernels:
    """Kernels between rows x1 and x2 of one network: ``nngp`` and ``ntk`` (N1, N2),
    ``cov1`` (N1,) and ``cov2`` (N2,) the output variances E[f(x)^2] of the rows."""

    nngp: torch.Tensor
    ntk: torch.Tensor
    cov1: torch.Tensor
    cov2: torch.Tensor


class _Store:
    """Every kernel entry computed so far between the rows of one group, for one network.

    A group holds the rows that requests have asked for together (directly or through a
    shared row): the folds of a search on fixed rows share one group, while folds whose rows
    a per-fold scaler moved each get their own, so that no memory or copying is spent on
    pairs of rows that no request will ever pair.

    numpy arrays, not torch tensors: the gathers and scatters here are memory-bound index
    operations that torch would spread over its intra-op threads, whose start-up costs more
    than the copy itself (and much more on a busy machine) for the sizes a grid search sees.
    """

    def __init__(self, n_features: int):
        self.n_features = n_features
        self.index: dict[bytes, int] = {}
        self.n = 0
        self.rows = np.empty((0, n_features))
        self.nngp = np.empty((0, 0))
        self.ntk = np.empty((0, 0))
        self.known = np.empty((0, 0), dtype=bool)
        self.var = np.empty(0)
        self.var_known = np.empty(0, dtype=bool)

    @staticmethod
    def bytes_for(capacity: int, n_features: int) -> int:
        # two float64 kernels and a bool mask per entry; rows and variances per row
        return capacity * capacity * 17 + capacity * (8 * n_features + 9)

    @property
    def nbytes(self) -> int:
        return self.bytes_for(len(self.rows), self.n_features)

    @classmethod
    def merged(cls, groups: list[_Store], capacity: int) -> _Store:
        """One store holding the rows and known entries of ``groups`` (pairs across two
        groups unknown), with room for ``capacity`` rows."""
        out = cls(groups[0].n_features)
        out.add([r.tobytes() for g in groups for r in g.rows[: g.n]], capacity)
        start = 0
        for g in groups:
            at, end = slice(start, start + g.n), start + g.n
            for name in ("nngp", "ntk", "known"):
                getattr(out, name)[at, at] = getattr(g, name)[: g.n, : g.n]
            for name in ("var", "var_known"):
                getattr(out, name)[at] = getattr(g, name)[: g.n]
            start = end
        return out

    def add(self, new: list[bytes], capacity: int) -> None:
        """Append rows (as bytes), first growing every array to ``capacity`` rows if needed."""
        if self.n + len(new) > len(self.rows):
            old, cap = self.n, capacity
            rows = np.empty((cap, self.n_features))
            rows[:old] = self.rows[:old]
            self.rows = rows
            for name in ("nngp", "ntk", "known"):
                a = getattr(self, name)
                grown = np.zeros((cap, cap), dtype=a.dtype)
                grown[:old, :old] = a[:old, :old]
                setattr(self, name, grown)
            for name in ("var", "var_known"):
                a = getattr(self, name)
                grown = np.zeros(cap, dtype=a.dtype)
                grown[:old] = a[:old]
                setattr(self, name, grown)
        if new:
            block = np.frombuffer(b"".join(new), dtype=np.float64)
            self.rows[self.n : self.n + len(new)] = block.reshape(len(new), self.n_features)
        self.index.update(zip(new, range(self.n, self.n + len(new)), strict=True))
        self.n += len(new)

    def positions(self, rows: list[bytes]) -> np.ndarray:
        return np.fromiter(map(self.index.__getitem__, rows), np.intp, len(rows))


class _Block:
    """A request's kernels computed while nothing of them was known.

    Most computed blocks are never read again (a search whose per-fold scaler moves every
    row, a network tried once), and keeping memory alive is not free: the next computation
    must then fault in fresh pages, which costs a visible fraction of a cheap kernel. So a
    block is kept either strongly (the cache holds the tensors it returned, no copy) or, until
    the cache has seen a request reuse anything, as a ghost: its row keys, its variances and
    weak references to its kernels, alive only while the caller keeps them. An identical
    later request gets the tensors back as they are; a request that needs some of their
    entries among others first writes them into the store of their rows.

    The caller holds the same tensors, so the block records their version counters: a tensor
    changed in place since is an error at the next read, never a silently wrong kernel.
    """

    __slots__ = ("exact", "b1", "b2", "r", "c", "k", "refs", "covs", "versions", "nbytes", "d")

    def __init__(self, exact, b1, b2, k: CachedKernels, d: int, strong: bool):
        self.exact, self.b1, self.b2, self.d = exact, b1, b2, d
        self.r = dict.fromkeys(b1)
        self.c = self.r if b2 is None else dict.fromkeys(b2)
        self.versions = _versions(k)
        self.covs = (k.cov1, k.cov2)
        self.k, self.refs = None, (weakref.ref(k.nngp), weakref.ref(k.ntk))
        self.nbytes = self._nbytes(False)
        if strong:
            self.keep(k)

    def _nbytes(self, strong: bool) -> int:
        n1, n2 = len(self.b1), len(self.b1 if self.b2 is None else self.b2)
        rows = n1 if self.b2 is None else n1 + n2  # each distinct row, and its variance
        return (16 * n1 * n2 if strong else 0) + rows * (8 * self.d + 8)

    def keep(self, k: CachedKernels) -> None:
        """Hold the kernels strongly from now on."""
        self.k, self.nbytes = k, self._nbytes(True)

    @property
    def strong(self) -> bool:
        return self.k is not None

    def shares_pairs(self, b1: list[bytes], b2: list[bytes]) -> bool:
        """Whether some pair of b1 x b2 is among this block's (either orientation)."""
        r, c = self.r.keys(), self.c.keys()
        if not r.isdisjoint(b1) and not c.isdisjoint(b2):
            return True
        return self.b2 is not None and not c.isdisjoint(b1) and not r.isdisjoint(b2)

    def kernels(self) -> CachedKernels | None:
        """The kernels as returned, or None for a ghost whose kernels were freed."""
        k = self.k
        if k is None:
            nngp, ntk = self.refs[0](), self.refs[1]()
            if nngp is None or ntk is None:
                return None
            k = CachedKernels(nngp, ntk, *self.covs)
        if _versions(k) != self.versions:
            raise RuntimeError(
                "a kernel tensor returned by KernelCache was modified in place after it was "
                "returned; the cache shares its tensors between the estimators that ask for the "
                "same kernels: copy a tensor (`.clone()`) before changing it."
            )
        return k


def _versions(k: CachedKernels) -> tuple[int, ...]:
    return tuple(t._version for t in (k.nngp, k.ntk, k.cov1, k.cov2))


#: results held strongly while the cache has seen no reuse, the most recent first: enough for
#: the next fold of a search to reuse a fold's fit and prediction, few enough that their memory
#: is recycled instead of faulting in fresh pages for every result
_RECENT = 4


class _Network:
    """What the cache holds for one network: dense stores of row groups, and blocks kept by
    reference keyed by the bytes of their two inputs (oldest first)."""

    __slots__ = ("groups", "blocks", "seen", "block_bytes")

    def __init__(self):
        self.groups: list[_Store] = []
        self.blocks: dict[tuple, _Block] = {}
        self.block_bytes = 0  # sum of the blocks' nbytes, kept as they come and go
        # every row of the blocks (a superset after blocks are dropped): one scan of a
        # request's rows tells that no block can share a pair with it (e.g. new rows)
        self.seen: dict[bytes, None] = {}

    def add(self, block: _Block) -> None:
        self.blocks[block.exact] = block
        self.block_bytes += block.nbytes
        self.seen.update(block.r)
        if block.b2 is not None:
            self.seen.update(block.c)

    def drop(self, block: _Block) -> None:
        del self.blocks[block.exact]
        self.block_bytes -= block.nbytes
        if not self.blocks:
            self.seen = {}
            self.block_bytes = 0

    @property
    def nbytes(self) -> int:
        return sum(g.nbytes for g in self.groups) + self.block_bytes


def _row_keys(x: np.ndarray) -> list[bytes]:
    """The bytes of each row of a C-contiguous float64 (N, D) array (one C-level pass)."""
    if x.shape[1] == 0:
        return [b""] * len(x)
    return x.view(np.dtype((np.void, 8 * x.shape[1]))).ravel().tolist()


def _rows_of(keys: list[bytes], d: int) -> np.ndarray:
    """The (N, D) float64 rows whose bytes are ``keys``."""
    return np.frombuffer(b"".join(keys), dtype=np.float64).reshape(len(keys), d).copy()


def _may_know(store: _Store, b1: list[bytes], b2: list[bytes]) -> bool:
    """Whether the group may hold a pair of b1 x b2 (it holds a row of each)."""
    keys = store.index.keys()
    return not keys.isdisjoint(b1) and not keys.isdisjoint(b2)


class KernelCache:
    """A memo of networks' NNGP and NTK entries, shared by estimators and their clones.

    Pass one instance as ``kernel_cache`` to :class:`NNGPClassifier` and friends (also inside a
    ``Pipeline`` tuned by ``GridSearchCV``): every entry ``K(x_i, x_j)`` of a network is then
    computed once and looked up afterwards, whichever estimator, fold or setting asks. Keys are
    the network's configuration (its layers' classes and attributes; functions by identity,
    each kept alive by its key), ``input_shape``, and the bytes of the two float64 input rows;
    values are exactly what the first computation gave (equal to a direct ``net.kernel`` call
    up to rounding, since every entry is computed by the same elementwise operations).

    A request none of whose pairs is known is computed directly and its result kept by
    reference (no copy): an identical later request gets the same tensors back. Until some
    request has reused something, the cache references such results only weakly (they live as
    long as their caller keeps them, the latest four also by the cache), so a search in which
    nothing is ever shared (every
    setting a new network, every fold new rows under a per-fold scaler) costs no memory and
    no copy; the first reuse of a freed result recomputes it, and from then on results are
    held. A request that needs some known entries among others goes through a dense store of
    its rows' group: the kept results it overlaps are written into it, and only the entries
    still missing are computed (for a fit, the pairs among its rows; for a prediction, new
    rows against the training rows). Groups that no request joins are stored apart.

    Returned tensors may be shared with other callers: read them, or ``.clone()`` them before
    changing them in place; a kept tensor changed in place raises a RuntimeError at the
    cache's next read of it, never a silently wrong kernel.

    Args:
        max_bytes: memory bound of the cache (16 bytes per kept pair of rows, 17 per stored
            pair in a group's dense store, per network).
            The least recently used networks are dropped to make room; a request that alone
            needs more is computed directly and not stored.

    Cloning and ``copy.deepcopy`` return the same object (so that scikit-learn's clones share
    it); pickling (e.g. to a process-parallel worker) gives an empty cache with the same bound.
    Access is serialised by a lock, so threads may share it.

    Attributes:
        pairs_computed: (x1, x2) pairs whose kernels were computed so far.
        pairs_served: pairs returned to callers (computed or looked up).
        reused: whether a request has reused a kept result yet (until then results are
            referenced weakly; ``clear`` resets it).
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
            self.reused = False  # has a request reused anything yet (see _Block)
            self._recent: deque = deque(maxlen=_RECENT)  # the latest weakly kept results
            if not hasattr(self, "pairs_computed"):
                self.pairs_computed = 0
                self.pairs_served = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the stored kernels."""
        held = sum(16 * k.nngp.numel() for k in self._recent)
        return held + sum(net.nbytes for net in self._stores.values())

    def __repr__(self) -> str:
        return f"KernelCache(max_bytes={self.max_bytes})"

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def __reduce__(self):
        return (type(self), (self.max_bytes,))

    @staticmethod
    def key(network: Layer, input_shape, n_features: int) -> tuple:
        """The key under which the kernels of ``network`` on rows of ``n_features`` features
        (reshaped to ``input_shape``) are kept: pass it as ``key=`` to later :meth:`kernels`
        calls of the same network (an estimator computes it once at fit; fingerprinting a
        network costs about as much as the bookkeeping of a request)."""
        shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        return (_fingerprint(network), shape, int(n_features))

    def kernels(
        self, network: Layer, x1, x2=None, input_shape=None, *, key: tuple | None = None
    ) -> CachedKernels:
        """NNGP and NTK of ``network`` between the rows of x1 (N1, D) and x2 (N2, D)
        (None: x1 with itself), each row reshaped to ``input_shape`` if given; ``key``, if
        given, is ``KernelCache.key(network, input_shape, D)`` computed earlier.

        The tensors returned may be the cache's own (shared with other callers that asked for
        the same kernels): read them, or ``.clone()`` them before changing them in place (the
        cache raises a RuntimeError at its next read of a tensor changed in place).
        """
        x1 = np.ascontiguousarray(x1, dtype=np.float64)
        x2 = None if x2 is None else np.ascontiguousarray(x2, dtype=np.float64)
        if x1.ndim != 2 or (x2 is not None and (x2.ndim != 2 or x2.shape[1] != x1.shape[1])):
            raise ValueError(
                "`x1` and `x2` must be (N, D) arrays of flat feature rows with the same D, got "
                f"shapes {x1.shape} and {None if x2 is None else x2.shape}."
            )
        d = x1.shape[1]
        if key is None:
            key = self.key(network, input_shape, d)
        elif key[2] != d:
            raise ValueError(
                f"`key` was made for rows of {key[2]} features, but `x1` has {d} features."
            )
        shape = key[1]
        n_pairs = len(x1) * (len(x1) if x2 is None else len(x2))
        with self._lock:
            net = self._stores.get(key)
            if net is None:
                net = _Network()
            else:
                self._stores.move_to_end(key)
            b1 = _row_keys(x1)
            b2 = b1 if x2 is None else _row_keys(x2)
            # each row's bytes are hashed once, here; the later set operations reuse the hash
            exact = (tuple(b1), None if x2 is None else tuple(b2))
            block = net.blocks.get(exact)
            if block is not None:  # the very request seen before: its tensors, no copy
                self.reused = True
                k = block.kernels()
                if k is not None:
                    if not block.strong:
                        net.drop(block)
                        block.keep(k)
                        self._keep(key, net, block)
                    self.pairs_served += n_pairs
                    return k
                net.drop(block)  # a ghost whose kernels were freed
            blocks = []  # (block, its kernels) of the blocks sharing pairs with the request
            sharing = []
            if not net.seen.keys().isdisjoint(b1):  # a pair of a block has a row in b1
                sharing = [b for b in net.blocks.values() if b.shares_pairs(b1, b2)]
            for b in sharing:
                self.reused = True
                k = b.kernels()  # unchanged since returned, or an error
                if k is None:  # a ghost whose kernels were freed: forget it
                    net.drop(b)
                else:
                    blocks.append((b, k))
            if not blocks and not any(_may_know(g, b1, b2) for g in net.groups):
                # nothing of it is known: compute, and keep the result by reference
                k = direct_kernels(network, x1, x2, shape)
                self.pairs_computed += n_pairs
                self.pairs_served += n_pairs
                block = _Block(exact, b1, None if x2 is None else b2, k, d, self.reused)
                self._keep(key, net, block)
                if not self.reused and 16 * _RECENT * n_pairs <= self.max_bytes:
                    self._recent.append(k)
                    while self._recent and self.nbytes > self.max_bytes:
                        self._recent.popleft()
                return k
            return self._from_store(key, net, blocks, b1, b2, x2 is None, network, shape)

    def _keep(self, key, net: _Network, block: _Block) -> None:
        if block.nbytes <= self.max_bytes:
            self._stores[key] = net
            self._make_room(key, block.nbytes)
            net.add(block)

    def _from_store(self, key, net: _Network, blocks, b1, b2, same, network, shape):
        """Kernels of rows b1 x b2 through the dense store of their group: the kept blocks
        sharing pairs with the request are written into it first, then only the entries
        still missing are computed."""
        d = key[2]
        # the kept blocks' rows first, in their order, then the request's new rows: each
        # block's rows and columns are then runs of the store, written as slices
        extra = [r for b, _ in blocks for r in (b.b1 if b.b2 is None else b.b1 + b.b2)]
        wanted = list(dict.fromkeys(extra + (b1 if same else b1 + b2)))
        hit = [g for g in net.groups if not g.index.keys().isdisjoint(wanted)]
        rest = [g for g in net.groups if all(g is not h for h in hit)]
        new = wanted
        for g in hit:
            new = [b for b in new if b not in g.index]
        need = sum(g.n for g in hit) + len(new)
        if _Store.bytes_for(need, d) > self.max_bytes:  # too large to keep: compute directly
            x1 = _rows_of(b1, d)
            x2 = None if same else _rows_of(b2, d)
            self.pairs_computed += len(b1) * len(b2)
            self.pairs_served += len(b1) * len(b2)
            return direct_kernels(network, x1, x2, shape)
        for b, _ in blocks:
            net.drop(b)
        if len(hit) == 1:
            store, cap = hit[0], len(hit[0].rows)
            if need > cap:
                cap = max(need, min(cap + cap // 2, self._max_rows(d)))  # geometric
        else:  # a new group, or several that this request joins: merged into one
            store, cap = None, need
        net.groups = rest
        self._stores[key] = net
        self._make_room(key, _Store.bytes_for(cap, d))
        if store is None:
            store = _Store.merged(hit, cap) if hit else _Store(d)
        if new:
            store.add(new, cap)
        net.groups.append(store)
        for b, k in blocks:
            p1 = store.positions(b.b1)
            p2 = p1 if b.b2 is None else store.positions(b.b2)
            self._write(store, p1, p2, k, k.cov1 if b.b2 is None else k.cov2, b.b2 is None)
        i1 = store.positions(b1)
        i2 = i1 if same else store.positions(b2)
        fresh = self._fill(network, store, i1, i2, same, shape)
        self.pairs_served += len(i1) * len(i2)
        if fresh is not None:  # computed just now for exactly this request: no gather
            return fresh
        return CachedKernels(  # copies: the store's arrays are its own
            nngp=torch.from_numpy(_take(store.nngp, i1, i2)),
            ntk=torch.from_numpy(_take(store.ntk, i1, i2)),
            cov1=torch.from_numpy(store.var[i1]),
            cov2=torch.from_numpy(store.var[i2]),
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
        """Drop the least recently used other networks, then this network's oldest kept
        blocks, then its oldest groups, until ``extra`` more bytes fit."""
        for other in list(self._stores):
            if self.nbytes + extra <= self.max_bytes:
                return
            if other != key:
                del self._stores[other]
        net = self._stores[key]
        while net.blocks and self.nbytes + extra > self.max_bytes:
            net.drop(next(iter(net.blocks.values())))
        while net.groups and self.nbytes + extra > self.max_bytes:
            net.groups.pop(0)
        while self._recent and self.nbytes + extra > self.max_bytes:
            self._recent.popleft()

    def _fill(self, network, store: _Store, i1, i2, same: bool, shape) -> CachedKernels | None:
        """Compute the entries among rows i1 x i2 that are not yet known; return the kernels
        computed if they are exactly the block i1 x i2, all new (the caller's to keep)."""
        missing = ~_take(store.known, i1, i2)
        if not missing.any():
            return None
        rows = np.unique(i1[missing.any(1)])
        if same:
            # a row outside ``rows`` has every pair with i1 known (the mask is symmetric), so
            # only pairs among ``rows`` can be missing: one kernel of that set with itself
            cols = rows
            k = direct_kernels(network, store.rows[rows], None, shape)
            cov2 = k.cov1
        else:
            cols = np.unique(i2[missing.any(0)])
            k = direct_kernels(network, store.rows[rows], store.rows[cols], shape)
            cov2 = k.cov2
        self.pairs_computed += len(rows) * len(cols)
        k = self._write(store, rows, cols, k, cov2, same)
        whole = np.array_equal(i1, rows) and np.array_equal(i2, cols)
        return k if whole else None

    def _write(self, store: _Store, rows, cols, k: CachedKernels, cov2, same: bool):
        """Write the kernels k of store rows ``rows`` x ``cols`` where not yet known (known
        entries keep their first value); return k as stored if it was all new and written
        as one block of slices, else None."""
        rs, cs = _span(rows), _span(cols)
        if rs is not None and cs is not None and not store.known[rs, cs].any():
            # the common case: a block of rows added together, all new (a fit, or new test
            # rows against the training rows); slices, not fancy indexing, and no merging
            if same or rs.stop <= cs.start or cs.stop <= rs.start:
                return self._write_new_block(store, k, rs, cs, cov2, same)
        at, at_t = np.ix_(rows, cols), np.ix_(cols, rows)
        new = ~_take(store.known, rows, cols)
        o = np.intersect1d(rows, cols)  # rows in both sets: (a, b) and (b, a) were both
        both = np.ix_(o, o)  # computed; keep the upper triangle's so the store is symmetric
        for name in ("nngp", "ntk"):
            full = getattr(store, name)
            block = _take(full, rows, cols)
            block[new] = getattr(k, name).numpy()[new]
            full[at] = block
            full[at_t] = block.T
            if len(o):
                sub = full[both]
                full[both] = np.triu(sub) + np.triu(sub, 1).T
        store.known[at] = True
        store.known[at_t] = True
        for idx, var in ((rows, k.cov1), (cols, cov2)):
            fresh = ~store.var_known[idx]
            store.var[idx[fresh]] = var.numpy()[fresh]
            store.var_known[idx] = True
        return None

    @staticmethod
    def _write_new_block(
        store: _Store, k: CachedKernels, rs: slice, cs: slice, cov2, same
    ) -> CachedKernels:
        """Store a block of entries none of which was known (rows ``rs`` x columns ``cs``,
        the same rows if ``same``: then kept symmetric, the upper triangle's values); return
        the kernels as stored."""
        out = {}
        for name in ("nngp", "ntk"):
            a = getattr(k, name).numpy()
            full = getattr(store, name)
            if same and not np.array_equal(a, a.T):
                a = np.triu(a) + np.triu(a, 1).T
            out[name] = torch.from_numpy(a)
            full[rs, cs] = a
            if not same:
                full[cs, rs] = a.T
        store.known[rs, cs] = True
        store.known[cs, rs] = True
        for sl, var in ((rs, k.cov1), (cs, cov2)):
            fresh = ~store.var_known[sl]
            store.var[sl][fresh] = var.numpy()[fresh]
            store.var_known[sl] = True
        cov1 = torch.from_numpy(store.var[rs].copy())
        return CachedKernels(out["nngp"], out["ntk"], cov1, torch.from_numpy(store.var[cs].copy()))


def _span(i: np.ndarray) -> slice | None:
    """``i`` as a slice if it is a run of consecutive increasing integers, else None."""
    if len(i) and i[-1] - i[0] + 1 == len(i) and (len(i) == 1 or bool(np.all(np.diff(i) == 1))):
        return slice(int(i[0]), int(i[-1]) + 1)
    return None


def _take(a: np.ndarray, i1: np.ndarray, i2: np.ndarray) -> np.ndarray:
    """A new array holding the block i1 x i2 of a matrix: a copy of slices where both are
    runs; else rows, then columns (a quarter of the time of ``a[np.ix_(i1, i2)]``)."""
    s1, s2 = _span(i1), _span(i2)
    if s1 is not None and s2 is not None:
        return a[s1, s2].copy()
    if s1 is None and s2 is None:
        return a[i1][:, i2]
    return a[i1 if s1 is None else s1, i2 if s2 is None else s2]  # one advanced index


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
