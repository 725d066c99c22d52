"""Kernels on disk: a zarr store chunked by tile, written tile by tile, resumable.

:func:`store_kernel` computes ``net``'s kernels of (x1, x2) into a folder. Tiles are the
store's (chunk, chunk) chunks (``TileRequest.chunk``: no two tiles write one chunk); a tile
of a set with itself off the diagonal also writes its mirror chunk (j, i), transposed, and
a diagonal tile is made exactly symmetric before it is written. After a tile's chunks are
written (zarr writes each chunk file to a temporary name and renames it), a completion
marker ``tiles/<i>.<j>.json`` is written the same way, holding the CRC-32 and file size of
every chunk the tile wrote. Calling again with the same network, inputs, dtype and kernels
computes only the tiles without a valid marker; anything else is a one-line error naming
what differs. Chunks are stored uncompressed (kernel values do not compress; zarr's
CRC-32C codec wrote ten times slower than the bare chunks), so a chunk's size is known:
opening a store checks every chunk file's size (a missing chunk would read as NaN, the fill
value), and the dask arrays of :class:`StoredKernel` check each chunk's CRC-32 as it loads.

Layout of the folder: ``widenets.json`` (what the store holds, written last at creation:
its presence means the store is set up), the zarr group (arrays ``nngp``, ``ntk``, ``cov1``
and, for two sets, ``cov2``; shapes as ``net.kernel`` returns them), ``tiles/``.
:func:`open_kernel` reads it back lazily (:class:`StoredKernel`: dask arrays, each chunk
checked against its marker when loaded).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from widenets.errors import NonFiniteKernelError, check_get
from widenets.executors import swap_pairs, symmetrize_diagonal_blocks
from widenets.tiling import Tile, TilePlan

FORMAT = 1
#: inputs a chunk side: float64 chunks of 8 MiB (a tile of a fully-connected kernel is a
#: few times the planner's in-memory tile, which amortises the per-chunk file writes)
DEFAULT_CHUNK = 1024
META = "widenets.json"
TILES = "tiles"


class StoreMismatchError(ValueError):
    """The store holds another computation (network, inputs, dtype, kernels or chunk)."""


class CorruptTileError(RuntimeError):
    """A stored chunk is missing, truncated or does not match its recorded checksum."""


# ----- what a store holds ---------------------------------------------------------------


def network_description(net) -> str:
    """``repr(net)`` with memory addresses removed (declared layers print their
    hyperparameters; an object without a stable repr is compared by its type)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(net))


def inputs_fingerprint(x) -> str:
    """sha256 of an input set's dtype, shape and bytes (C order, on the CPU)."""
    t = torch.as_tensor(x).detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def describe(net, x1, x2, names, dtype, chunk, same: bool) -> dict:
    """The record compared on every call (see ``_compare``)."""
    from widenets import __version__

    return {
        "format": FORMAT,
        "network": network_description(net),
        "x1": inputs_fingerprint(x1),
        "x2": "x1" if same else inputs_fingerprint(x2),
        "dtype": str(dtype).removeprefix("torch."),
        "kernels": list(names),
        "chunk": chunk,
        "widenets": __version__,
    }


_WHAT = {
    "format": "store format",
    "network": "network",
    "x1": "inputs x1",
    "x2": "inputs x2",
    "dtype": "dtype",
    "kernels": "kernels (`get`)",
    "chunk": "chunk",
}


def _compare(path, stored: dict, asked: dict) -> None:
    """A one-line StoreMismatchError naming the first field that differs."""
    for key, what in _WHAT.items():
        a, b = stored.get(key), asked[key]
        if a != b:
            if key in ("x1", "x2"):
                shown = f"stored sha256 {str(a)[:12]}, asked {str(b)[:12]}"
            elif isinstance(a, str) and isinstance(b, str):
                shown = _where_differ(a, b)
            else:
                shown = f"stored {_short(a)}, asked {_short(b)}"
            raise StoreMismatchError(
                f"the kernel store at {str(path)!r} holds a different {what}: {shown}; use "
                "another path or delete this one."
            )


def _where_differ(a: str, b: str, context: int = 40) -> str:
    """The two strings around their first difference."""
    p = next((i for i, (u, v) in enumerate(zip(a, b, strict=False)) if u != v), min(len(a), len(b)))
    lo = max(0, p - context)
    pre = "..." if lo else ""
    return f"stored {pre}{_short(a[lo:], 2 * context)}, asked {pre}{_short(b[lo:], 2 * context)}"


def _short(v, n: int = 160) -> str:
    s = repr(v) if not isinstance(v, str) else v
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


# ----- the sink: tiles into chunks ----------------------------------------------------------


def _atomic_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{id(data)}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _tile_key(tile: Tile, chunk: int) -> str:
    return f"{tile.r0 // chunk}.{tile.c0 // chunk}"


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


class StoreSink:
    """Writes tiles into a store's arrays and marks each complete (``TileSink``).

    Picklable (paths and sizes only; arrays are opened in each process on first use), so a
    distributed executor ships it to its workers, which write where they compute
    (``writes_anywhere``)."""

    writes_anywhere = True

    def __init__(self, path: str, plan: TilePlan, names, chunk: int, full: bool, out_exponent):
        self.path, self.plan, self.names, self.chunk = str(path), plan, tuple(names), chunk
        self.full, self.out_exponent = full, out_exponent
        self._arrays = None

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def arrays(self) -> dict:
        if self._arrays is None:
            self._arrays = _open_arrays(self.path)
        return self._arrays

    def write(self, tile: Tile, k) -> None:
        from widenets.numerics import scale_output

        arrays, ch = self.arrays(), self.chunk
        same = self.plan.same
        fields = {"nngp": k.nngp if "nngp" in self.names else None, "ntk": k.ntk}
        covs = {}
        if tile.cov1:
            covs["cov1"] = k.cov1[: tile.r1 - tile.r0]
        if tile.cov2 and not same:
            covs["cov2"] = k.cov2
        written = {}
        for name, t in list(fields.items()) + list(covs.items()):
            if t is None:
                continue
            t = t.detach().to("cpu", copy=True)
            if self.out_exponent:
                scale_output(t, self.out_exponent)
            # a NaN or inf anywhere makes the sum non-finite (a cheap first look)
            if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
                raise NonFiniteKernelError(
                    f"the {name} of rows [{tile.r0}, {tile.r1}) against columns "
                    f"[{tile.c0}, {tile.c1}) is not finite (NaN or inf); compute "
                    "net.kernel on those inputs to find the layer where it arises."
                )
            a = arrays[name]
            if name.startswith("cov"):
                lo, hi = (tile.r0, tile.r1) if name == "cov1" else (tile.c0, tile.c1)
                a[lo:hi] = t.numpy()
                written[f"{name}/{lo // ch}"] = (a, (lo // ch,), t.numpy())
                continue
            if same and tile.r0 == tile.c0:  # a diagonal chunk: the upper triangle mirrored
                symmetrize_diagonal_blocks(t, t.shape[0], self.full)
            block = t.numpy()
            a[tile.r0 : tile.r1, tile.c0 : tile.c1] = block
            i, j = tile.r0 // ch, tile.c0 // ch
            written[f"{name}/{i}.{j}"] = (a, (i, j), block)
            if same and tile.r0 != tile.c0:  # the mirror chunk (j, i)
                assert tile.mirror_from == tile.c0, tile
                m = swap_pairs(t, self.full).contiguous().numpy()
                a[tile.c0 : tile.c1, tile.r0 : tile.r1] = m
                written[f"{name}/{j}.{i}"] = (a, (j, i), m)
        marker = {}
        for key, (a, coords, block) in written.items():
            rest = (0,) * (a.ndim - len(coords))
            marker[key] = {
                "crc32": _crc(block),
                "bytes": _chunk_size(self.path, key.split("/")[0], a, coords + rest),
            }
        _atomic_json(os.path.join(self.path, TILES, _tile_key(tile, ch) + ".json"), marker)

    def finish(self):
        return None


def _chunk_file(path: str, name: str, a, coords) -> str:
    return os.path.join(path, name, a.metadata.encode_chunk_key(tuple(coords)))


def _chunk_size(path: str, name: str, a, coords) -> int:
    return os.stat(_chunk_file(path, name, a, coords)).st_size


def _open_arrays(path: str) -> dict:
    import zarr

    with open(os.path.join(path, META)) as f:
        names = json.load(f)["arrays"]
    return {name: zarr.open_array(os.path.join(path, name), mode="r+") for name in names}


# ----- computing into a store ---------------------------------------------------------------


def store_kernel(
    net,
    path,
    x1,
    x2=None,
    *,
    get=("nngp", "ntk"),
    dtype: torch.dtype = torch.float64,
    chunk: int | None = None,
    executor=None,
    progress: bool | None = None,
    verify: bool = False,
) -> StoredKernel:
    """Compute ``net``'s kernels of (x1, x2) into the zarr store at ``path``, resuming.

    A new ``path`` is set up and filled; an existing store of the same network (its
    ``repr``, i.e. its declared hyperparameters), inputs (sha256 of their bytes), ``dtype``,
    ``get`` and ``chunk`` gets only its missing tiles computed (a store that holds anything
    else is a StoreMismatchError). A tile whose chunk files are missing or of another size
    than recorded is recomputed; ``verify=True`` also reads every finished chunk and checks
    its CRC-32 (reads the whole store). ``executor`` runs the tiles (default: in this
    process, ``LocalExecutor``; ``widenets.dask_executor.DaskExecutor`` for Dask): its
    workers write the tiles, so ``path`` must be a folder they all see.

    Returns the :class:`StoredKernel` (lazy); ``computed`` says how many tiles this call
    computed."""
    from widenets.compute import _workers, budgets, prepare_kernel
    from widenets.executors import LocalExecutor
    from widenets.tiling import plan_tiles

    path = os.fspath(path)
    names = check_get(get)
    chunk = DEFAULT_CHUNK if chunk is None else chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"`chunk` must be a positive int (inputs a chunk side), got {chunk!r}.")
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"`progress` must be True, False or None, got {progress!r}.")
    if dtype not in (torch.float64, torch.float32, torch.float16):
        raise ValueError(
            f"`dtype` must be torch.float64, float32 or float16 for a store, got {dtype!r}."
        )
    job = prepare_kernel(net, x1, x2, get=names, dtype=dtype, grid=True)
    asked = describe(net, x1, x2, names, dtype, chunk, job.same)
    if executor is None:
        executor = LocalExecutor(_workers(job.prep.x1))
    plan = plan_tiles(job.request(executor.workers, chunk), budgets())
    meta_path = os.path.join(path, META)
    work = None
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            _compare(path, json.load(f), asked)
    else:
        if os.path.exists(path) and os.listdir(path):
            raise ValueError(
                f"`path` {path!r} is a non-empty folder that is not a widenets kernel store."
            )
        work = job.work()
        _create(path, asked, plan, job, work)
    sink = StoreSink(path, plan, names, chunk, job.full, job.prep.out_exponent)
    done = _finished_tiles(path, plan, chunk, verify)
    todo = [
        b.__class__(b.r0, b.r1, b.c0, b.c1, b.diagonal_offset, tiles)
        for b in plan.blocks
        if (tiles := tuple(t for t in b.tiles if _tile_key(t, chunk) not in done))
    ]
    computed = sum(len(b.tiles) for b in todo)
    if todo:
        work = work or job.work()
        rest = TilePlan(plan.n1, plan.n2, plan.same, plan.layout, tuple(todo), plan.square)
        executor.run(rest, work, sink, job.show_progress(progress))
    stored = open_kernel(path)
    stored.computed = computed
    return stored


def _create(path: str, meta: dict, plan: TilePlan, job, work) -> None:
    """Set the store up in a temporary folder beside ``path`` and rename it into place:
    the arrays (their trailing shapes from the first tile, computed here and dropped) and
    ``widenets.json``. A crash leaves no half-made store at ``path``."""
    import zarr

    block = plan.blocks[0]
    k = work.tile(work.block(block), block, block.tiles[0])
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{os.path.abspath(path)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        group = zarr.open_group(tmp, mode="w")
        n1, n2, ch = plan.n1, plan.n2, meta["chunk"]
        dt = np.dtype(str(job.dtype).removeprefix("torch."))
        shapes = {}
        trail = tuple(k.nngp.shape[2:])
        for name in ("nngp", "ntk"):
            if name in job.names:
                shapes[name] = ((n1, n2, *trail), (ch, ch, *trail))
        ctrail = tuple(k.cov1.shape[1:])
        shapes["cov1"] = ((n1, *ctrail), (ch, *ctrail))
        if not plan.same:
            shapes["cov2"] = ((n2, *ctrail), (ch, *ctrail))
        for name, (shape, chunks) in shapes.items():
            group.create_array(
                name,
                shape=shape,
                chunks=chunks,
                dtype=dt,
                compressors=None,
                fill_value=np.nan,
            )
        os.makedirs(os.path.join(tmp, TILES))
        _atomic_json(
            os.path.join(tmp, META),
            {
                **meta,
                "n1": n1,
                "n2": n2,
                "same": plan.same,
                "tiles": plan.n_tiles,
                "arrays": list(shapes),
            },
        )
        if os.path.isdir(path):
            os.rmdir(path)  # an empty folder the user made
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _markers(path: str) -> dict:
    out = {}
    folder = os.path.join(path, TILES)
    for name in os.listdir(folder):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                out[name[: -len(".json")]] = json.load(f)
        except (OSError, ValueError):  # unreadable: the tile is recomputed
            continue
    return out


def _check_tile(path: str, arrays: dict, marker: dict, verify: bool) -> str | None:
    """None if every chunk of a finished tile is present with its recorded size (and, with
    ``verify``, its recorded CRC-32), else what is wrong."""
    for key, rec in marker.items():
        name, _, coords = key.partition("/")
        a = arrays[name]
        c = tuple(int(v) for v in coords.split("."))
        c = c + (0,) * (a.ndim - len(c))
        f = _chunk_file(path, name, a, c)
        try:
            size = os.stat(f).st_size
        except FileNotFoundError:
            return f"chunk {key} is missing ({f})"
        if size != rec["bytes"]:
            return f"chunk {key} has {size} bytes, {rec['bytes']} were written ({f})"
        if verify:
            sel = tuple(slice(i * s, (i + 1) * s) for i, s in zip(c, a.chunks, strict=True))
            try:
                data = a[sel]
            except Exception as err:  # noqa: BLE001 - any decode failure is damage
                return f"chunk {key} cannot be decoded ({type(err).__name__}: {err})"
            if _crc(data) != rec["crc32"]:
                return f"chunk {key} does not match its checksum ({f})"
    return None


def _finished_tiles(path: str, plan: TilePlan, chunk: int, verify: bool) -> set:
    """Keys of the tiles whose markers and chunks check out; a damaged tile's marker is
    removed (so it is recomputed)."""
    arrays = _open_arrays(path)
    wanted = {_tile_key(t, chunk) for t in plan.tiles}
    done = set()
    for key, marker in _markers(path).items():
        if key not in wanted:
            continue
        if _check_tile(path, arrays, marker, verify) is None:
            done.add(key)
        else:
            os.remove(os.path.join(path, TILES, key + ".json"))
    return done


# ----- reading a store ----------------------------------------------------------------------


@dataclass
class StoredKernel:
    """A finished kernel store, read lazily.

    ``nngp``, ``ntk``, ``cov1``, ``cov2`` (None when not stored; ``cov2`` is ``cov1`` for a
    set with itself): dask arrays whose every chunk is checked against its recorded CRC-32
    when loaded (a CorruptTileError, never numbers). ``zarr(name)``: the zarr array itself
    (unchecked beyond the file sizes checked at opening). ``operator(name, columns_from=None)``: a
    ``widenets.predict.operators.DenseKernel`` reading the checked dask array by row blocks
    of one chunk (PCG solvers)."""

    path: str
    meta: dict
    computed: int = 0

    def zarr(self, name: str):
        arrays = _open_arrays(self.path)
        if name not in arrays:
            raise ValueError(
                f"`name` must be one of {sorted(arrays)} (stored in {self.path!r}), got {name!r}."
            )
        return arrays[name]

    def _dask(self, name: str):
        import dask.array as da

        arrays = _open_arrays(self.path)
        if name not in arrays:
            return None
        crcs = {}
        for marker in _markers(self.path).values():
            for key, rec in marker.items():
                n, _, coords = key.partition("/")
                if n == name:
                    crcs[tuple(int(v) for v in coords.split("."))] = rec["crc32"]
        a = da.from_zarr(arrays[name])
        lead = 1 if name.startswith("cov") else 2

        def check(block, block_info=None):
            loc = tuple(block_info[0]["chunk-location"][:lead])
            if crcs.get(loc) != _crc(block):
                raise CorruptTileError(
                    f"chunk {name}/{'.'.join(map(str, loc))} of the kernel store at "
                    f"{self.path!r} does not match its checksum; rerun store_kernel with "
                    "verify=True to recompute it."
                )
            return block

        return a.map_blocks(check, dtype=a.dtype)

    @property
    def nngp(self):
        return self._dask("nngp")

    @property
    def ntk(self):
        return self._dask("ntk")

    @property
    def cov1(self):
        return self._dask("cov1")

    @property
    def cov2(self):
        return self._dask("cov1" if self.meta.get("same") else "cov2")

    def operator(self, name: str = "nngp", *, columns_from=None):
        """A ``DenseKernel`` reading the checked dask array by row blocks of one chunk;
        ``columns_from``: an operator of the same kernel that answers ``columns`` (e.g.
        ``NetworkKernel(net, x)``: a preconditioner's r columns recomputed instead of
        reading nearly every stored tile)."""
        from widenets.predict.operators import DenseKernel

        a = self._dask(name)
        if a is None:
            self.zarr(name)  # the error naming what is stored
        if a.ndim != 2:
            raise ValueError(
                f"the stored {name} has shape {a.shape}: an operator needs an (N1, N2) matrix "
                "(a network ending in a readout)."
            )
        return DenseKernel(a, block_rows=self.meta["chunk"], columns_from=columns_from)


def open_kernel(path) -> StoredKernel:
    """The finished kernel store at ``path`` (see :class:`StoredKernel`). Checks, without
    reading the data, that every tile is marked complete and every chunk file has its
    recorded size; else a CorruptTileError naming what is missing."""
    path = os.fspath(path)
    meta_path = os.path.join(path, META)
    if not os.path.exists(meta_path):
        raise ValueError(f"`path` {path!r} is not a widenets kernel store (no {META}).")
    with open(meta_path) as f:
        meta = json.load(f)
    markers = _markers(path)
    if len(markers) < meta["tiles"]:
        raise CorruptTileError(
            f"the kernel store at {path!r} is unfinished: {meta['tiles'] - len(markers)} of "
            f"{meta['tiles']} tiles missing; call store_kernel again to finish it."
        )
    arrays = _open_arrays(path)
    for key, marker in markers.items():
        problem = _check_tile(path, arrays, marker, verify=False)
        if problem is not None:
            raise CorruptTileError(
                f"the kernel store at {path!r} is damaged: tile {key}: {problem}; call "
                "store_kernel again to recompute it."
            )
    return StoredKernel(path, meta)
