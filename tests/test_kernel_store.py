"""The kernel store (``widenets.kernel_store``): equal to the in-memory kernel bit for bit,
resumable after SIGKILL with only the missing tiles computed, mismatches refused, damaged
chunks detected and recomputed, never read as numbers."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("zarr")
pytest.importorskip("dask")

import widenets  # noqa: E402
from widenets import compute, kernel_store  # noqa: E402
from widenets.architectures import cnn_gap, fully_connected  # noqa: E402
from widenets.kernel_store import (  # noqa: E402
    CorruptTileError,
    StoreMismatchError,
    open_kernel,
    store_kernel,
)

CHUNK = 8


def _x(n, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


@pytest.fixture
def count_tiles(monkeypatch):
    """Counts the tiles computed (calls of ``KernelWork.tile``) in this process."""
    calls = []
    tile = compute.KernelWork.tile

    def counted(self, *args):
        calls.append(args[2])
        return tile(self, *args)

    monkeypatch.setattr(compute.KernelWork, "tile", counted)
    return calls


def _read(stored):
    out = {"nngp": stored.nngp.compute(), "cov1": stored.cov1.compute()}
    if stored.ntk is not None:
        out["ntk"] = stored.ntk.compute()
    return out


def _assert_same(stored, k):
    got = _read(stored)
    assert np.array_equal(got["nngp"], k.nngp.numpy())
    assert np.array_equal(got["cov1"], k.cov1.numpy())
    if k.ntk is not None:
        assert np.array_equal(got["ntk"], k.ntk.numpy())


def test_store_equals_in_memory_kernel_bit_for_bit(tmp_path, count_tiles):
    net = fully_connected(3, activation="relu")
    x = _x(30)
    stored = store_kernel(net, tmp_path / "k", x, chunk=CHUNK)
    # 4 row chunks, upper triangle: 4 + 3 + 2 + 1 tiles (plus the set-up tile, dropped)
    assert stored.computed == 10 and len(count_tiles) == 11
    k = net.kernel(x, batch_size=CHUNK)
    _assert_same(stored, k)
    assert np.array_equal(stored.nngp.compute(), stored.nngp.compute().T)  # mirror written


def test_two_sets_and_the_full_spatial_layout(tmp_path):
    net = fully_connected(2, activation="erf")
    x1, x2 = _x(19, seed=1), _x(11, seed=2)
    stored = store_kernel(net, tmp_path / "two", x1, x2, chunk=CHUNK, get="nngp")
    k = net.kernel(x1, x2, get="nngp", batch_size=CHUNK)
    assert stored.ntk is None
    assert np.array_equal(stored.nngp.compute(), k.nngp.numpy())
    assert np.array_equal(stored.cov2.compute(), k.cov2.numpy())
    cnn = cnn_gap(1, channels=4)  # pooling: the full pixel-pair layout, (N, N) after GAP
    xs = _x(6, seed=3).reshape(6, 1, 5)
    stored = store_kernel(cnn, tmp_path / "cnn", xs, chunk=4)
    _assert_same(stored, cnn.kernel(xs, batch_size=4))


def test_rerun_of_a_finished_store_computes_nothing(tmp_path, count_tiles):
    net, x = fully_connected(2), _x(20)
    store_kernel(net, tmp_path / "k", x, chunk=CHUNK)
    count_tiles.clear()
    again = store_kernel(net, tmp_path / "k", x, chunk=CHUNK)
    assert again.computed == 0 and count_tiles == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"net": fully_connected(3)}, "network"),
        ({"x": "perturbed"}, "inputs x1"),
        ({"dtype": torch.float32}, "dtype"),
        ({"get": "nngp"}, "kernels"),
    ],
)
def test_a_different_computation_is_a_one_line_error(tmp_path, change, named):
    net, x = fully_connected(2), _x(12)
    store_kernel(net, tmp_path / "k", x, chunk=CHUNK)
    x2 = x.clone()
    x2[3, 1] += 1e-12
    args = {
        "net": change.get("net", net),
        "x": x2 if change.get("x") else x,
        "dtype": change.get("dtype", torch.float64),
        "get": change.get("get", ("nngp", "ntk")),
    }
    with pytest.raises(StoreMismatchError, match=named) as err:
        store_kernel(
            args["net"], tmp_path / "k", args["x"], dtype=args["dtype"], get=args["get"],
            chunk=CHUNK,
        )  # fmt: skip
    assert "\n" not in str(err.value)


def _chunk(path: Path, name: str, i: int, j: int) -> Path:
    return path / name / "c" / str(i) / str(j)


@pytest.mark.parametrize("damage", ["truncate", "delete", "delete_mirror", "flip"])
def test_a_damaged_chunk_is_detected_and_recomputed(tmp_path, count_tiles, damage):
    net, x = fully_connected(2, activation="relu"), _x(20)
    path = tmp_path / "k"
    store_kernel(net, path, x, chunk=CHUNK)
    reference = _read(open_kernel(path))
    f = _chunk(path, "ntk", 0, 1) if damage != "delete_mirror" else _chunk(path, "nngp", 2, 0)
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size: only the checksums can tell
        f.write_bytes(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])
    else:
        f.unlink()
    if damage == "flip":
        stored = open_kernel(path)  # sizes check out; the chunk must not load as numbers
        with pytest.raises(Exception, match="checksum|[Cc]rc|CRC"):
            stored.ntk.compute()
    else:
        with pytest.raises(CorruptTileError, match="damaged"):
            open_kernel(path)
    count_tiles.clear()
    again = store_kernel(net, path, x, chunk=CHUNK, verify=damage == "flip")
    assert again.computed == 1 and len(count_tiles) == 1
    got = _read(again)
    for name, value in reference.items():
        assert np.array_equal(got[name], value), name


_KILLED = textwrap.dedent(
    """
    import sys, time, torch
    from widenets import compute, kernel_store
    from widenets.architectures import fully_connected

    tile = compute.KernelWork.tile

    def slow(self, *args):  # time to kill it halfway; the numbers are unchanged
        time.sleep(0.03)
        return tile(self, *args)

    compute.KernelWork.tile = slow
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g, dtype=torch.float64)
    kernel_store.store_kernel(fully_connected(3, activation="relu"), sys.argv[1], x, chunk=8)
    """
)


def _markers(folder: Path) -> int:
    return sum(n.endswith(".json") for n in os.listdir(folder))


def test_sigkill_halfway_then_resume_is_bit_identical(tmp_path, count_tiles):
    path = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(_KILLED)
    src = str(Path(widenets.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], env=env)
    total = 12 * 13 // 2  # 96 inputs, chunks of 8: 12 row chunks, upper triangle
    tiles = path / "tiles"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if tiles.is_dir() and _markers(tiles) >= total // 2:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the subprocess ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = _markers(tiles)
    assert total // 2 <= done < total
    with pytest.raises(CorruptTileError, match="unfinished"):
        open_kernel(path)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g, dtype=torch.float64)
    net = fully_connected(3, activation="relu")
    resumed = store_kernel(net, path, x, chunk=8)
    assert resumed.computed == total - done and len(count_tiles) == total - done
    whole = store_kernel(net, tmp_path / "whole", x, chunk=8)
    got, want = _read(resumed), _read(whole)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_reading_is_lazy_and_the_operator_multiplies(tmp_path):
    net, x = fully_connected(2), _x(20)
    stored = store_kernel(net, tmp_path / "k", x, chunk=CHUNK, get="nngp")
    assert stored.nngp.chunks == ((8, 8, 4), (8, 8, 4))  # a dask array, one block a chunk
    k = net.kernel(x, get="nngp", batch_size=CHUNK).nngp
    v = _x(20, d=3, seed=5)
    assert torch.allclose(stored.operator("nngp").matmul(v), k @ v, rtol=1e-13, atol=0)
    # a preconditioner's columns recomputed from the network, rows read from the store
    from widenets.predict import NetworkKernel

    op = stored.operator("nngp", columns_from=NetworkKernel(net, x, get="nngp"))
    op.rows = None  # columns must not read rows of the store
    assert torch.allclose(op.columns([2, 17]), k[:, [2, 17]], rtol=1e-13, atol=0)


def test_bad_arguments(tmp_path):
    net, x = fully_connected(2), _x(5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a widenets kernel store"):
        store_kernel(net, tmp_path / "other", x)
    with pytest.raises(ValueError, match="`chunk` must be a positive int"):
        store_kernel(net, tmp_path / "k", x, chunk=0)
    with pytest.raises(ValueError, match="`dtype`"):
        store_kernel(net, tmp_path / "k", x, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not a widenets kernel store"):
        open_kernel(tmp_path / "other")
    assert kernel_store.DEFAULT_CHUNK >= 256


def test_a_non_finite_tile_is_an_error_and_not_marked(tmp_path, monkeypatch):
    net, x = fully_connected(2), _x(12)
    tile = compute.KernelWork.tile

    def poisoned(self, shared, b, t):
        k = tile(self, shared, b, t)
        if t.r0 == CHUNK:  # the second row of chunks
            k.nngp.view(-1)[0] = float("nan")
        return k

    monkeypatch.setattr(compute.KernelWork, "tile", poisoned)
    with pytest.raises(widenets.errors.NonFiniteKernelError, match=r"rows \[8, 12\)"):
        store_kernel(net, tmp_path / "k", x, chunk=CHUNK, get="nngp")
    assert sorted(os.listdir(tmp_path / "k" / "tiles")) == ["0.0.json", "0.1.json"]
