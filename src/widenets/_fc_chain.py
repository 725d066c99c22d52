"""A run of fully-connected layers folded in one compiled pass (``Serial.kernel_fn``).

On a fully-connected kernel (diagonal layout, no spatial axes: ``nngp`` (N1, N2)) the
layers Dense (NTK parameterisation, float scales) and the ABRelu family (Relu, LeakyRelu,
Abs, ABRelu) are each a few elementwise passes over the tile in the eager path; a network
such as the demo's (Dense, Relu, Dense, Relu, Dense) is a dozen passes and a dozen
tile-sized temporaries. :func:`fold` recognises such a run in a ``serial`` and evaluates it
entry by entry in one loop (``widenets._numba_fc.chain``): every entry goes through all
the layers while it is in a register, and the per-input variances (and the square-root
factors of each ABRelu layer) are computed once per input of the tile
(``_numba_fc.variances``), not per entry.

It applies where the other fused loops do (``widenets._fused``: the switch ``FUSED`` on,
or "auto" within a large enough call and tile; numba importable; CPU float32/float64; no
autograd) and the record is plain (no masks, patterns or packed pairs). Elsewhere, or if
the loop fails (then the fused loops are off for the process, as in ``_fused``), the
layers run one by one (the eager path, the reference). Results equal the eager path's to
about 1e-15 relative in float64 (arccos by a polynomial rather than libm's, and
multiply-adds contracted into FMA instructions in this loop); the diagonal of a set with
itself equals the variances bit for bit. A float32 tile is computed in
float64 and rounded once; its ill-conditioned pairs are flagged for recomputation in
float64 by the eager rule (``numerics.flag_pairs_below``) when a call watches them.

On torch's own threads (not the tile pool: ``torch.get_num_threads()`` > 1) a tile's rows
are split across that many threads of this call, which run the loop without the GIL.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import torch

from widenets import _fused, _numba, _workspace
from widenets._chain_runs import encode, own_variances, run_end
from widenets.executors import TARGET
from widenets.layers.activations import ABRelu
from widenets.layers.dense import Dense
from widenets.numerics import _WATCH, SIN_LIMIT

#: with the chain on the tile pool (``compute.evaluate_kernel``), tiles of at least this
#: many entries and this many tiles per worker at most: the input Gram of a block is a
#: matrix product of the block's rows, 30% slower per entry at 131 rows than at 512
#: (single-threaded, dim 784), and the chain needs no cache-sized tiles (it streams rows)
CHAIN_TILE_NUMEL = 1 << 21
CHAIN_TASKS_PER_WORKER = 2
#: whether the chain that ends a network writes its tile in place in the result
#: (``executors.Target``; False: into buffers of its own, which the sink then copies)
IN_PLACE = True
#: rows below which a tile is not split across threads (the threads' start costs more)
MIN_SPLIT_ROWS = 64
#: entries per thread below which a tile is not split across threads
MIN_SPLIT_NUMEL = 1 << 15


def _loops():
    """The numba chain module, or None (numba missing or failed, backend not numba)."""
    if _fused.BACKEND == "compile" or _numba.loops() is None:
        return None
    from widenets import _numba_fc

    return _numba_fc


def _dense_ok(layer) -> bool:
    return (
        type(layer) is Dense
        and layer.parameterization == "ntk"
        and not isinstance(layer.w_std, torch.Tensor)
        and not isinstance(layer.b_std, torch.Tensor)
    )


def _dense_out(layer, shape):
    """The shape after ``layer`` when it is a Dense the chain folds, else None."""
    return shape if _dense_ok(layer) else None


def _run(layers, i: int, gaussian: bool) -> int:
    """The end j of the longest foldable run layers[i:j] of Dense and ABRelu layers (i
    when none; ``_chain_runs.run_end``)."""
    return run_end(layers, i, gaussian, _dense_out)


def chain_budgets(budgets):
    """The planner's budgets for a kernel the chain folds on the tile pool."""
    return dataclasses.replace(
        budgets,
        tile=max(budgets.tile, CHAIN_TILE_NUMEL),
        tasks_per_worker=min(budgets.tasks_per_worker, CHAIN_TASKS_PER_WORKER),
    )


def prefers_pool(layer, x1, x2=None) -> bool:
    """Whether a kernel of ``layer`` on inputs x1 (x2) is a fully-connected one whose first
    layers the chain folds (a ``serial`` starting with Dense, ABRelu ...), with the fused
    loops on for it (under "auto": a call of at least ``_fused.AUTO_CALL_NUMEL``
    pair-scalars) and numba available: then its tiles run best on the tile pool."""
    from widenets.layers.combinators import Serial

    if not isinstance(layer, Serial) or not _fused.enabled():
        return False
    if not isinstance(x1, torch.Tensor) or x1.ndim != 2 or x1.device.type != "cpu":
        return False
    j = _run(layer.layers, 0, False)
    if not any(isinstance(a, ABRelu) for a in layer.layers[:j]):
        return False
    if _fused.FUSED == "auto":
        n2 = x1.shape[0] if x2 is None else len(x2)
        try:
            cost = layer.pair_cost(tuple(x1.shape[1:]))
        except Exception:  # noqa: BLE001 - a shape error: raised later, with its message
            return False
        if x1.shape[0] * n2 * cost < _fused.AUTO_CALL_NUMEL:
            return False
    return _loops() is not None


def _plain(k) -> bool:
    """Whether the record is a fully-connected kernel the loop handles."""
    return (
        not isinstance(k, list)
        and k.nngp is not None
        and k.nngp.ndim == 2
        and k.cov1.ndim == 1
        and k.cov2.ndim == 1
        and not k.full_spatial
        and k.pairs is None
        and k.mask1 is None
        and k.mask2 is None
        and k.pattern1 is None
        and k.pattern2 is None
        and k.nngp.stride(1) == 1
        and (k.ntk is None or k.ntk.shape == k.nngp.shape)
    )


def fold(layers, i: int, k, owner=None):
    """(the kernel after layers[i:j], j) when a run of at least one ABRelu layer starting
    at i can be folded in one pass over ``k``, else None (the caller applies layers[i]).
    ``owner``: the layer whose ``layers`` these are; when it is the network a tile is
    computed for (``executors.TARGET``) and the run ends it, the loop writes the tile's
    result in its place in the kernel being assembled (and its mirror image)."""
    if not _plain(k):
        return None
    j = _run(layers, i, k.is_gaussian)
    run = layers[i:j]
    if not any(isinstance(layer, ABRelu) for layer in run):
        return None
    if not _fused.usable(k.nngp, k.ntk, k.cov1, k.cov2):
        return None
    mod = _loops()
    if mod is None:
        return None
    try:
        final = owner is not None and j == len(layers)
        out = _evaluate(mod, run, k, owner if final else None)
    except Exception as e:  # noqa: BLE001 - a typing or LLVM error, no cache...: eager
        _fused._fail(e)
        return None
    return out, j


def _factors(mod, q, kinds, params, tiny, tol):
    """(rowf (L, 4, N), the variances after the run (N,) float64) of the inputs q."""
    qn = q.detach().numpy()
    rowf = np.zeros((len(kinds), 4, len(qn)), np.float64)
    qout = np.empty(len(qn), np.float64)
    mod.variances(qn, kinds, params, tiny, tol, rowf, qout)
    return rowf, qout


def _evaluate(mod, run, k, owner=None):
    nngp, dtype = k.nngp, k.nngp.dtype
    kinds, params = encode(run, Dense)
    finfo = torch.finfo(dtype)
    tiny, tol = float(finfo.tiny), math.sqrt(2 * 64 * finfo.eps)
    f1, q1 = _factors(mod, k.cov1, kinds, params, tiny, tol)
    if k.cov2 is k.cov1:
        f2, q2 = f1, q1
    else:
        f2, q2 = _factors(mod, k.cov2, kinds, params, tiny, tol)
    n1, n2 = nngp.shape
    watch = _WATCH.get()
    place = None
    target = TARGET.get() if owner is not None else None
    if target is not None and target.layer is owner and IN_PLACE:
        place = target.claim(n1, n2, dtype, k.ntk is not None)
    ko = _buffer(n1, n2, dtype) if place is None else place[0]
    empty2 = np.empty((0, 0), ko.numpy().dtype)
    mko = mto = empty2
    moff = n2
    if place is not None and place[2] is not None:
        mko, moff = place[2].numpy(), place[4]
        mto = empty2 if place[3] is None else place[3].numpy()
    t_mode, t_const, t_arr, to = 0, 0.0, empty2, None
    if k.ntk is not None:
        to = _buffer(n1, n2, dtype) if place is None else place[1]
        if k.ntk.stride() == (0, 0):  # a broadcast constant (the input NTK: zero)
            t_mode, t_const = 1, float(k.ntk[0, 0]) if n1 and n2 else 0.0
        else:
            t_mode, t_arr = 2, (k.ntk if k.ntk.stride(1) == 1 else k.ntk.contiguous()).numpy()
    flags = np.zeros((n1, n2), np.uint8) if watch is not None else np.zeros((0, 0), np.uint8)
    args = (
        nngp.detach().numpy(), t_arr, t_mode, t_const, kinds, params, f1, f2, tol,
        SIN_LIMIT, watch is not None, ko.numpy(), empty2 if to is None else to.numpy(), flags,
        mko, mto, moff,
    )  # fmt: skip
    _rows(mod, args, n1, n2)
    if watch is not None:
        watch.add(torch.from_numpy(flags.view(np.bool_)))
    last = run[-1]
    cov1 = torch.from_numpy(q1).to(dtype)
    cov2 = cov1 if k.cov2 is k.cov1 else torch.from_numpy(q2).to(dtype)
    own_variances(ko, cov1, k.diagonal_offset, n1, n2)
    changes = dict(nngp=ko, ntk=to, cov1=cov1, cov2=cov2)
    changes["is_gaussian"] = isinstance(last, Dense)
    dense = [layer for layer in run if isinstance(layer, Dense)]
    if dense:
        width = dense[-1].out_dim
        changes.update(shape1=(width, *k.shape1[1:]), shape2=(width, *k.shape2[1:]))
        changes["is_input"] = False
    return k.replace(**changes)


def _buffer(n1: int, n2: int, dtype) -> torch.Tensor:
    """An uninitialised (n1, n2) tensor: the start of a workspace buffer whose size is a
    power of two, so that tiles of many sizes (the stripes of a triangle) reuse a few
    buffers rather than each size keeping its own (``_workspace.SLACK``)."""
    n = n1 * n2
    if n < 2:
        return torch.empty((n1, n2), dtype=dtype)
    return _workspace.empty((1 << (n - 1).bit_length(),), dtype)[:n].view(n1, n2)


def split_threads() -> int:
    """Threads a tile's rows are split across: torch's intra-op thread count (1 on the
    tile pool's threads)."""
    return max(1, torch.get_num_threads())


def _rows(mod, args, n1: int, n2: int) -> None:
    """The chain over all rows: on this thread, or split across torch's thread count."""
    k_arr, t_arr, t_mode, t_const, *rest = args
    threads = split_threads()
    parts = min(threads, n1 // MIN_SPLIT_ROWS, (n1 * n2) // MIN_SPLIT_NUMEL)
    if parts <= 1:
        mod.chain(k_arr, t_arr, t_mode, t_const, 0, n1, *rest)
        return
    split_rows(lambda lo, hi: mod.chain(k_arr, t_arr, t_mode, t_const, lo, hi, *rest), n1, parts)


def split_rows(run, n1: int, parts: int) -> None:
    """``run(lo, hi)`` over rows [0, n1) cut into ``parts`` contiguous ranges, the first on
    this thread and the others on threads of their own (the loops release the GIL); the
    first error of any part is raised."""
    bounds = [n1 * p // parts for p in range(parts + 1)]
    errors: list[BaseException] = []

    def part(p):
        try:
            run(bounds[p], bounds[p + 1])
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    workers = [threading.Thread(target=part, args=(p,), daemon=True) for p in range(1, parts)]
    for w in workers:
        w.start()
    part(0)
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
