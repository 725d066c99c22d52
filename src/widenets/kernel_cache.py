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
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from widenets.layers.base import Layer, declares_hyperparameters
from widenets.serial_prefix import PrefixStore, prefix_kernels, stages_of


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
    the cache has seen a request reuse anything, as a ghost: its rows (shared :class:`_Rows`),
    its variances and weak references to its kernels, alive only while the caller keeps them.
    An identical later request gets the tensors back as they are; a request that needs some
    of their entries among others first writes them into the store of their rows.

    The caller holds the same tensors, so the block records their version counters: a tensor
    changed in place since is an error at the next read, never a silently wrong kernel.
    """

    __slots__ = ("exact", "rows1", "rows2", "k", "refs", "covs", "versions", "nbytes", "d")

    def __init__(self, exact, rows1: _Rows, rows2: _Rows | None, k: CachedKernels, strong: bool):
        self.exact, self.rows1, self.rows2 = exact, rows1, rows2
        self.d = rows1.x.shape[1]
        self.versions = _versions(k)
        self.covs = (k.cov1, k.cov2)
        self.k, self.refs = None, (weakref.ref(k.nngp), weakref.ref(k.ntk))
        self.nbytes = self._nbytes(False)
        if strong:
            self.keep(k)

    @property
    def b1(self) -> list[bytes]:
        return self.rows1.keys()

    @property
    def b2(self) -> list[bytes] | None:
        return None if self.rows2 is None else self.rows2.keys()

    def _nbytes(self, strong: bool) -> int:
        n1 = len(self.rows1.x)
        n2 = n1 if self.rows2 is None else len(self.rows2.x)
        rows = n1 if self.rows2 is None else n1 + n2  # each row, and its variance
        return (16 * n1 * n2 if strong else 0) + rows * (8 * self.d + 8)

    def keep(self, k: CachedKernels) -> None:
        """Hold the kernels strongly from now on."""
        self.k, self.nbytes = k, self._nbytes(True)

    @property
    def strong(self) -> bool:
        return self.k is not None

    def may_share_pairs(self, r1: _Rows, r2: _Rows | None) -> bool:
        """Whether some pair of r1 x r2 (r2 None: r1) may be among this block's (either
        orientation): False is certain, True may be a hash collision."""
        o1, r2 = self.rows1, r1 if r2 is None else r2
        o2 = o1 if self.rows2 is None else self.rows2
        if o1.may_share(r1) and o2.may_share(r2):
            return True
        return self.rows2 is not None and o2.may_share(r1) and o1.may_share(r2)

    def shares_pairs(self, b1: list[bytes], b2: list[bytes]) -> bool:
        """Whether some pair of b1 x b2 is among this block's (either orientation): exact."""
        r, c = self.rows1.key_set(), (self.rows1 if self.rows2 is None else self.rows2).key_set()
        if not r.isdisjoint(b1) and not c.isdisjoint(b2):
            return True
        return self.rows2 is not None and not c.isdisjoint(b1) and not r.isdisjoint(b2)

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


#: the prefix kernels of Serial networks may hold 1/_PREFIX_SHARE of ``max_bytes``
_PREFIX_SHARE = 16
#: networks whose stages are remembered
_MAX_STAGES = 256

#: probes kept in the pool of row arrays before those of freed arrays are swept out
_POOL_SWEEP = 256


class _Network:
    """What the cache holds for one network: dense stores of row groups, and blocks kept by
    reference keyed by the bytes of their two inputs (oldest first)."""

    __slots__ = ("groups", "blocks", "seen", "block_bytes")

    def __init__(self):
        self.groups: list[_Store] = []
        self.blocks: dict[tuple, _Block] = {}
        self.block_bytes = 0  # sum of the blocks' nbytes, kept as they come and go
        # the hashes of every row of the groups (a superset after some are dropped; emptied
        # when all are): a request none of whose x1 rows' hashes is here shares no pair with
        # them (equal rows have equal hashes), as one set scan tells
        self.seen: set[int] = set()

    def add(self, block: _Block) -> None:
        old = self.blocks.get(block.exact)
        if old is not None:  # the same request: the newer block wins
            self.drop(old)
        self.blocks[block.exact] = block
        self.block_bytes += block.nbytes

    def drop(self, block: _Block) -> None:
        del self.blocks[block.exact]
        self.block_bytes -= block.nbytes
        if not self.blocks:
            self.block_bytes = 0

    @property
    def nbytes(self) -> int:
        return sum(g.nbytes for g in self.groups) + self.block_bytes


#: odd 64-bit multipliers of the row hash, one per feature (cycled for wider rows)
_MULT = np.random.default_rng(0x5EED).integers(1, 2**63, 64, dtype=np.uint64) * 2 + 1


def _row_hashes(x: np.ndarray) -> np.ndarray:
    """A 64-bit hash of the bytes of each row of a C-contiguous float64 (N, D) array: a few
    vectorised passes, against one bytes object per row for ``_row_keys``. Equal rows have
    equal hashes; different rows almost never do, and a hash is never trusted alone: a
    match leads to a comparison of the rows themselves."""
    u = x.view(np.uint64)
    mult = np.resize(_MULT, x.shape[1]) if x.shape[1] > len(_MULT) else _MULT[: x.shape[1]]
    with np.errstate(over="ignore"):
        v = u * mult
        v ^= v >> np.uint64(31)
        h = v.sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return h


class _Rows:
    """One distinct (N, D) float64 array of rows that requests passed (a read-only copy),
    with its rows' hashes, shared by every request and block with these exact bits.

    A grid search passes few distinct arrays (a fold's training and test rows, the same for
    every setting) in many requests: each is copied and hashed once, and whether two arrays
    may share a row is worked out once per pair of arrays, not once per request.
    """

    __slots__ = ("x", "h", "serial", "overlaps", "_list", "_set", "_keys", "_key_set")
    __slots__ += ("__weakref__",)

    def __init__(self, x: np.ndarray, serial: int):
        self.x = x.copy()  # the caller's array may change later
        self.x.flags.writeable = False
        self.h = _row_hashes(self.x)
        self.serial = serial  # unique over the cache's life: part of the blocks' keys
        self.overlaps: dict[int, bool] = {}  # serial of another _Rows -> may they share a row
        self._list = self._set = self._keys = self._key_set = None

    def __len__(self) -> int:
        return len(self.x)

    def hash_list(self) -> list[int]:
        if self._list is None:
            self._list = self.h.tolist()
        return self._list

    def hash_set(self) -> set[int]:
        if self._set is None:
            self._set = set(self.hash_list())
        return self._set

    def keys(self) -> list[bytes]:
        """The bytes of each row (built at the first need: most arrays are never compared
        row by row)."""
        if self._keys is None:
            self._keys = _row_keys(self.x)
        return self._keys

    def key_set(self):
        if self._key_set is None:
            self._key_set = dict.fromkeys(self.keys()).keys()
        return self._key_set

    def may_share(self, other: _Rows) -> bool:
        """Whether the two arrays may have a row in common (False is certain; True may be
        a collision of two different rows' hashes)."""
        if other is self:
            return len(self) > 0
        known = self.overlaps.get(other.serial)
        if known is None:
            small, big = (self, other) if len(self) <= len(other) else (other, self)
            known = not big.hash_set().isdisjoint(small.hash_list())
            self.overlaps[other.serial] = other.overlaps[self.serial] = known
        return known


def _probe(x: np.ndarray) -> tuple:
    """A cheap key of an (N, D) float64 array (its shape and the bytes of three rows): equal
    arrays have equal probes; arrays with equal probes are then compared whole."""
    n = len(x)
    if n == 0 or x.shape[1] == 0:
        return x.shape
    return (x.shape, x[0].tobytes(), x[n // 2].tobytes(), x[n - 1].tobytes())


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two float64 arrays hold the same bits (so -0.0 differs from 0.0, as bytes
    keys do, and a NaN equals itself)."""
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


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
    long as their caller keeps them), so a search in which nothing is ever shared (every
    setting a new network, every fold new rows under a per-fold scaler) costs no memory and
    no copy; the first reuse of a freed result recomputes it, and from then on results are
    held. A request that needs some known entries among others goes through a dense store of
    its rows' group: the kept results it overlaps are written into it, and only the entries
    still missing are computed (for a fit, the pairs among its rows; for a prediction, new
    rows against the training rows). Groups that no request joins are stored apart.

    A Serial network on flat rows computed with nothing known goes through
    ``widenets.serial_prefix``: networks on the same rows share their input kernel, and a
    deeper network of the same blocks (a grid over depth) starts from the kept kernel of a
    shallower one's hidden layers on the same rows (``prefix_reused`` counts them); the
    kernels are bit-identical to the direct computation's.

    Returned tensors may be shared with other callers: read them, or ``.clone()`` them before
    changing them in place; a kept tensor changed in place raises a RuntimeError at the
    cache's next read of it, never a silently wrong kernel.

    Args:
        max_bytes: memory bound of the cache (16 bytes per kept pair of rows, 17 per stored
            pair in a group's dense store, per network).
            The least recently used networks are dropped to make room; a request that alone
            needs more is computed directly and not stored. Up to ``max_bytes / 16`` more
            hold the prefix kernels of Serial networks (``widenets.serial_prefix``), and the
            input kernels of the last 8 requests' rows are kept besides.

    Cloning and ``copy.deepcopy`` return the same object (so that scikit-learn's clones share
    it); pickling (e.g. to a process-parallel worker) gives an empty cache with the same bound.
    Access is serialised by a lock, so threads may share it.

    Attributes:
        pairs_computed: (x1, x2) pairs whose kernels were computed so far.
        pairs_served: pairs returned to callers (computed or looked up).
        prefix_reused: kernels computed from the kept kernel of a prefix of layers shared
            with an earlier network (``widenets.serial_prefix``: a Serial network on flat
            rows, e.g. a deeper network of the same blocks on the same rows).
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
            # the distinct row arrays that blocks hold, by probe (weakly: an array lives as
            # long as a block holds it), and the serial of the next one
            self._pool: dict[tuple, list[weakref.ref]] = {}
            self._serial = 0
            # Serial networks' prefix kernels (``serial_prefix``) and each key's stages
            self._prefix = PrefixStore(self.max_bytes // _PREFIX_SHARE)
            self._stages: dict = {}
            if not hasattr(self, "pairs_computed"):
                self.pairs_computed = 0
                self.pairs_served = 0
                self.prefix_reused = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the stored kernels."""
        return sum(net.nbytes for net in self._stores.values())

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
                if not net.groups:
                    net.seen = set()
            # each distinct array is copied and hashed once (a grid search passes the same few
            # arrays again and again); a request is then keyed by its arrays' serials
            r1 = self._rows(x1)
            r2 = None if x2 is None else self._rows(x2)
            exact = (r1.serial, None if r2 is None else r2.serial)
            block = net.blocks.get(exact)
            if block is not None:  # the very request seen before
                self.reused = True
                k = block.kernels()  # its tensors, no copy
                if k is not None:
                    if not block.strong:
                        net.drop(block)
                        block.keep(k)
                        self._keep(key, net, block)
                    self.pairs_served += n_pairs
                    return k
                net.drop(block)  # a ghost whose kernels were freed
            # the blocks that may share a pair with the request, from whether their arrays may
            # share rows (worked out once per pair of arrays), and the groups that may
            sharing = [b for b in net.blocks.values() if b.may_share_pairs(r1, r2)]
            known = net.groups and not net.seen.isdisjoint(r1.hash_list())
            if not sharing and not known:  # nothing of it is known: computed at once
                return self._compute_new(key, net, exact, r1, r2, network, x1, x2, n_pairs)
            b1 = r1.keys()
            b2 = b1 if r2 is None else r2.keys()
            blocks = []  # (block, its kernels) of the blocks sharing pairs with the request
            for b in [b for b in sharing if b.shares_pairs(b1, b2)]:
                self.reused = True
                k = b.kernels()  # unchanged since returned, or an error
                if k is None:  # a ghost whose kernels were freed: forget it
                    net.drop(b)
                else:
                    blocks.append((b, k))
            if not blocks and not any(_may_know(g, b1, b2) for g in net.groups):
                return self._compute_new(key, net, exact, r1, r2, network, x1, x2, n_pairs)
            return self._from_store(key, net, blocks, b1, b2, x2 is None, network, shape)

    def _rows(self, x: np.ndarray) -> _Rows:
        """The pooled :class:`_Rows` holding exactly the bits of x (made if none does)."""
        probe = _probe(x)
        refs = self._pool.get(probe)
        if refs is not None:
            for ref in refs:
                rows = ref()
                if rows is not None and _same_bits(rows.x, x):
                    return rows
            refs[:] = [r for r in refs if r() is not None]
        else:
            if len(self._pool) >= _POOL_SWEEP:  # forget the probes of freed arrays
                self._pool = {p: v for p, v in self._pool.items() if any(r() for r in v)}
            refs = self._pool[probe] = []
        self._serial += 1
        rows = _Rows(x, self._serial)
        refs.append(weakref.ref(rows))
        return rows

    def _compute_new(self, key, net: _Network, exact, r1, r2, network, x1, x2, n_pairs):
        """Kernels of a request none of whose pairs is known: computed (from the kernel of
        a prefix shared with an earlier network where one is kept), and the result kept by
        reference (strongly once the cache has seen reuse, else weakly)."""
        k = self._prefix_kernels(key, network, x1, x2, exact)
        if k is None:
            k = direct_kernels(network, x1, x2, key[1])
        self.pairs_computed += n_pairs
        self.pairs_served += n_pairs
        self._keep(key, net, _Block(exact, r1, r2, k, self.reused))
        return k

    def _prefix_kernels(self, key, network, x1, x2, exact) -> CachedKernels | None:
        """The kernels of a Serial network on flat rows through ``serial_prefix`` (None
        where that does not apply: the caller computes directly)."""
        if key[1] is not None:
            return None
        stages = self._stages.get(key, False)
        if stages is False:
            stages = self._stages[key] = stages_of(network, _fingerprint)
            if len(self._stages) > _MAX_STAGES:
                self._stages.pop(next(iter(self._stages)))
        if stages is None:
            return None
        a = torch.from_numpy(x1)
        b = None if x2 is None else torch.from_numpy(x2)
        before = self._prefix.reused
        try:
            k = prefix_kernels(network, stages, a, b, self._prefix, exact)
        except ValueError:  # computed directly, which explains the error in user terms
            return None
        if k is None or k.nngp.ndim != 2:
            return None
        self.prefix_reused += self._prefix.reused - before
        return CachedKernels(nngp=k.nngp, ntk=k.ntk, cov1=k.cov1, cov2=k.cov2)

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
        start = store.n if store is not None else 0
        if store is None:
            store = _Store.merged(hit, cap) if hit else _Store(d)
        if new:
            store.add(new, cap)
        net.groups.append(store)
        net.seen.update(_row_hashes(store.rows[start : store.n]).tolist())
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
        total = self.nbytes  # summed once, then kept as things are dropped
        for other in list(self._stores):
            if total + extra <= self.max_bytes:
                return
            if other != key:
                total -= self._stores.pop(other).nbytes
        net = self._stores[key]
        while net.blocks and total + extra > self.max_bytes:
            block = next(iter(net.blocks.values()))
            net.drop(block)
            total -= block.nbytes
        while net.groups and total + extra > self.max_bytes:
            total -= net.groups.pop(0).nbytes

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
    _check_output(k)
    return CachedKernels(nngp=k.nngp, ntk=k.ntk, cov1=k.cov1, cov2=k.cov2)


def _check_output(k) -> None:
    if k.nngp.ndim != 2:
        raise ValueError(
            "the network's kernel must be (N1, N2), one covariance per pair of examples, but "
            f"it has shape {tuple(k.nngp.shape)}: end a spatial network with a readout "
            "(Flatten() or GlobalAvgPool(), then Dense)."
        )
