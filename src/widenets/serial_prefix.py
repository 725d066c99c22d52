"""Kernels of Serial networks that reuse the kernel of a prefix they share with another.

A grid search over depth (``depth`` in {1, 2, 3} with the other settings fixed) asks for
networks ``[Dense, act] * d + [Dense]`` whose first ``2 d`` layers are those of the next
deeper one: the deeper network's kernel is the shallower one's intermediate kernel (after
its last activation) folded through the remaining layers. :class:`PrefixStore` keeps those
intermediate kernels (keyed by the fingerprints of the layers before them and by the
request's rows) and :func:`prefix_kernels` starts an evaluation from the longest one kept.

Bit-identical to the direct computation (``network.kernel``): the evaluation is the one of
``widenets.compute.evaluate_kernel`` (the same job, plan, executor, sink and checks), with
only the input kernel of its one tile replaced by the kept intermediate kernel of that very
tile and the layers before it skipped; every entry then goes through the same elementwise
operations in the same order. It applies only where that holds trivially: flat float64
inputs, a plan of one tile, no rescaling of the inputs, no masks or graphs. Anything else
returns None (the caller computes directly).
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext

import torch

from widenets import compute
from widenets._fused import call as fused_call
from widenets._pool import one_intra_op_thread
from widenets.executors import KernelSink, LocalExecutor
from widenets.kernel import Kernel
from widenets.layers.combinators import Serial
from widenets.tiling import plan_tiles


class Key:
    """A hashable key whose hash is computed once (a network's fingerprint is a deep tuple:
    hashing it at every dictionary lookup costs more than the lookup)."""

    __slots__ = ("value", "_hash")

    def __init__(self, value):
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (
            isinstance(other, Key) and other._hash == self._hash and other.value == self.value
        )

    def __repr__(self) -> str:
        return f"Key({self.value!r})"


class Stages:
    """A Serial network cut into layers, with the key of each prefix: ``keys[i]`` the key of
    the first ``i`` layers (``keys[0]`` unused), ``record`` the prefix whose kernel is kept
    for deeper networks (before the trailing layers that are not an activation)."""

    __slots__ = ("layers", "keys", "record")

    def __init__(self, layers: tuple, fingerprints: list):
        self.layers = layers
        self.keys = [None] + [Key(tuple(fingerprints[:i])) for i in range(1, len(layers))]
        # the kept prefix: everything before the final run of non-activation layers (the
        # readout), so that a deeper network of the same blocks finds it
        r = len(layers) - 1
        while r > 0 and not _is_activation(layers[r - 1]):
            r -= 1
        self.record = r


def _is_activation(layer) -> bool:
    from widenets.layers.activations import Activation

    return isinstance(layer, Activation)


def stages_of(network, fingerprint) -> Stages | None:
    """The :class:`Stages` of a Serial network of at least two layers (``fingerprint``: the
    cache's fingerprint function), else None."""
    if type(network) is not Serial or len(network.layers) < 2:
        return None
    layers = tuple(network.layers)
    if any(isinstance(layer, Serial) for layer in layers):
        return None  # nested: not cut (keeps the keys simple)
    return Stages(layers, [fingerprint(layer) for layer in layers])


class PrefixStore:
    """Intermediate kernels of prefixes, by (prefix key, rows key), least recently used
    dropped beyond ``max_bytes``. ``reused`` counts evaluations that started from one.

    Keeping kernels alive is not free (the next computations fault in fresh pages instead
    of reusing freed ones: measured, 5-10% of a grid of small kernels none of which shares
    a prefix), so nothing is kept until a network has asked for a prefix that an earlier
    one would have kept (``learned``): until then only the keys of those prefixes
    (``ghosts``) are remembered. A grid over depth then pays one setting's worth of full
    computations before it reuses; a grid that never deepens keeps nothing.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict = OrderedDict()
        self.nbytes = 0  # running total of the kept kernels' bytes
        self.reused = 0
        self.learned = False
        self.ghosts: set = set()
        # the input kernels (no layer yet) of the last few requests' rows: the same for
        # every network on those rows, so kept whatever the grid (few, and small)
        self.inputs: OrderedDict = OrderedDict()

    def get(self, key):
        entry = self.entries.get(key)
        if entry is None:
            return None
        k, versions, _ = entry
        if _versions(k) != versions:  # changed in place: never trusted
            self.drop(key)
            return None
        self.entries.move_to_end(key)
        return k

    def put(self, key, k) -> None:
        nbytes = sum(t.untyped_storage().nbytes() for t in _tensors(k))
        if nbytes > self.max_bytes:
            return
        if key in self.entries:
            self.drop(key)
        while self.entries and self.nbytes + nbytes > self.max_bytes:
            self.drop(next(iter(self.entries)))
        self.entries[key] = (k, _versions(k), nbytes)
        self.nbytes += nbytes

    def drop(self, key) -> None:
        self.nbytes -= self.entries.pop(key)[2]

    def get_input(self, rows_key):
        entry = self.inputs.get(rows_key)
        if entry is None:
            return None
        if _versions(entry[0]) != entry[1]:
            del self.inputs[rows_key]
            return None
        self.inputs.move_to_end(rows_key)
        return entry[0]

    def put_input(self, rows_key, k) -> None:
        self.inputs[rows_key] = (k, _versions(k))
        self.inputs.move_to_end(rows_key)
        while len(self.inputs) > _MAX_INPUTS:
            self.inputs.popitem(last=False)

    def ghost(self, key) -> None:
        """Remember that a network would have kept the prefix ``key`` (a prefix Key)."""
        if len(self.ghosts) >= _MAX_GHOSTS:
            self.ghosts.clear()
        self.ghosts.add(key)

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0
        self.learned = False
        self.ghosts.clear()
        self.inputs.clear()


#: prefix keys remembered before the store starts keeping kernels
_MAX_GHOSTS = 4096
#: input kernels kept (a grid search's folds x {fit, prediction} requests)
_MAX_INPUTS = 8
_SHARE_INPUTS = True


def _tensors(k) -> list:
    seen, out = set(), []
    for t in (k.nngp, k.ntk, k.cov1, k.cov2):
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _versions(k) -> tuple:
    return tuple(t._version for t in _tensors(k))


class _AdoptingSink(KernelSink):
    """A ``KernelSink`` for a plan of one tile that takes the tile's own nngp and ntk as the
    result where it can, instead of copying them into tensors of its own: the values are
    the same, one allocation and one copy of the kernel fewer (fresh memory faults in page
    by page, a visible share of a small kernel). It can when they are contiguous tensors of
    exactly the result's shape and dtype, and share memory with nothing else the
    evaluation used or keeps (the start kernel, the kernel kept for deeper networks)."""

    adopted = False

    def others(self) -> list:
        """The tensors of the kernels the evaluation started from or keeps."""
        return []

    def write(self, tile, k) -> None:
        if self.nngp is None and self._adoptable(k):
            with self.lock:
                p = self.plan
                self.cov1 = torch.empty((p.n1, *k.cov1.shape[1:]), dtype=self.dtype)
                self.cov2 = (
                    self.cov1
                    if p.same
                    else torch.empty((p.n2, *k.cov2.shape[1:]), dtype=self.dtype)
                )
                self.ntk, self.nngp = k.ntk, k.nngp
                self.adopted = True
            if tile.cov1:
                self.cov1[tile.r0 : tile.r1] = k.cov1[: tile.r1 - tile.r0]
            if tile.cov2:
                self.cov2[tile.c0 : tile.c1] = k.cov2
            with self.lock:
                self.check.add(k.nngp)
                self.check.add(k.ntk)
                self.last = k
            return
        super().write(tile, k)

    def _adoptable(self, k) -> bool:
        p = self.plan
        if not self.compute_ntk or k.ntk is None or tuple(k.nngp.shape) != (p.n1, p.n2):
            return False
        if len(p.blocks) != 1 or len(p.blocks[0].tiles) != 1:
            return False
        t = p.blocks[0].tiles[0]
        if (t.r0, t.r1, t.c0, t.c1) != (0, p.n1, 0, p.n2) or t.mirror_from is not None:
            return False
        outs = (k.nngp, k.ntk)
        if any(
            o.shape != k.nngp.shape or o.dtype != self.dtype or o.device.type != "cpu" for o in outs
        ) or not all(o.is_contiguous() for o in outs):
            return False
        others = [*self.others(), k.cov1, k.cov2]
        ptrs = {o.untyped_storage().data_ptr() for o in others if o is not None}
        mine = [o.untyped_storage().data_ptr() for o in outs]
        return mine[0] != mine[1] and ptrs.isdisjoint(mine)


class _Fold:
    """The layers ``layers`` as one kernel map that keeps the kernel after ``record`` of
    them (``kept``)."""

    def __init__(self, layers, record: int | None):
        self.layers, self.record, self.kept, self.kept_versions = layers, record, None, None

    def kernel_fn(self, k):
        for i, layer in enumerate(self.layers):
            if i == self.record and isinstance(k, Kernel):  # (not a list of branches)
                self.kept, self.kept_versions = k, _versions(k)
            k = layer.kernel_fn(k)
        return k


def prefix_kernels(network, stages: Stages, x1, x2, store: PrefixStore, rows_key):
    """``network.kernel(x1, x2, get=("nngp", "ntk"))`` of flat float64 tensors, started from
    the longest prefix kernel ``store`` keeps for ``rows_key`` (the request's rows), keeping
    the one of ``stages.record`` layers; None where this does not apply (see the module
    docstring)."""
    if x1.ndim != 2 or x1.dtype != torch.float64 or x1.device.type != "cpu":
        return None
    executor = LocalExecutor(compute._workers(x1))
    serial = one_intra_op_thread() if executor.workers > 1 else nullcontext()
    plan_workers = compute._plan_workers(executor)
    with serial:  # as evaluate_kernel
        job = compute.prepare_kernel(network, x1, x2, get=("nngp", "ntk"))
        prep = job.prep
        if job.layout != "diagonal" or not job.side.empty or prep.gram_exponent:
            return None
        if getattr(prep, "out_exponent", 0) or job.dtype != torch.float64:
            return None
        plan = plan_tiles(job.request(plan_workers), compute.budgets())
        if len(plan.blocks) != 1 or len(plan.blocks[0].tiles) != 1:
            return None
        b = plan.blocks[0]
        t = b.tiles[0]
        if t.packed or (t.r0, t.r1, t.c0, t.c1) != (b.r0, b.r1, b.c0, b.c1):
            return None
        work = job.work()
        if work.refine.enabled:
            return None
        start, k0 = 0, None
        for i in range(len(stages.layers) - 1, 0, -1):
            if not store.learned:
                # a deeper network of an earlier one's blocks (not the same network on
                # other rows: its own kept prefix would serve no one)
                if i < stages.record and stages.keys[i] in store.ghosts:
                    store.learned = True
                continue
            k0 = store.get((stages.keys[i], rows_key))
            if k0 is not None:
                start = i
                break
        record = stages.record if stages.record > start else None
        if record is not None and not store.learned:
            store.ghost(stages.keys[record])
            record = None
        fold = _Fold(stages.layers[start:], None if record is None else record - start)
        work.layer = fold
        made, made_versions = [], []  # the input kernel computed, as it was then
        if k0 is not None:
            store.reused += 1
            work.block = lambda _b: k0
        elif _SHARE_INPUTS:
            k0 = store.get_input(rows_key)
            if k0 is not None:
                work.block = lambda _b: k0
            else:
                block = work.block

                def work_block(b):
                    made.append(block(b))
                    made_versions.append(_versions(made[-1]))
                    return made[-1]

                work.block = work_block
        sink = _AdoptingSink(plan, job.dtype, job.names, "ntk" in job.names)
        sink.others = lambda: [
            t for kk in (k0, fold.kept, *made) if kk is not None for t in _tensors(kk)
        ]
        with fused_call(job.n1 * job.n2 * job.cost):
            executor.run(plan, work, sink, False)
        k = compute._checked(sink.finish(), network, prep, sink.check, job.full, job.side)
        # kept only if no layer changed them in place meanwhile
        if made and _versions(made[0]) == made_versions[0]:
            store.put_input(rows_key, made[0])
        if fold.kept is not None and _versions(fold.kept) == fold.kept_versions:
            store.put((stages.keys[record], rows_key), fold.kept)
        return k
