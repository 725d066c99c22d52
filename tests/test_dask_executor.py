"""The Dask executor (``widenets.dask_executor``): the same bits as the in-process
executor, locally and on a ``LocalCluster``, also when a worker is killed mid-run."""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("zarr")
pytest.importorskip("dask")

from widenets import compute  # noqa: E402
from widenets.architectures import fully_connected  # noqa: E402
from widenets.compute import evaluate_kernel  # noqa: E402
from widenets.dask_executor import DaskExecutor  # noqa: E402
from widenets.executors import LocalExecutor  # noqa: E402
from widenets.kernel_store import store_kernel  # noqa: E402

CHUNK = 8


def _x(n, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _read(stored):
    return {n: getattr(stored, n).compute() for n in ("nngp", "ntk", "cov1")}


def _assert_equal(a, b):
    for name in b:
        assert np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The store computed in this process, one tile after another."""
    net, x = fully_connected(3, activation="relu"), _x(40)
    path = tmp_path_factory.mktemp("ref") / "k"
    return net, x, _read(store_kernel(net, path, x, chunk=CHUNK, executor=LocalExecutor(1)))


def test_local_threads_bit_identical_and_threads_restored(tmp_path, reference):
    net, x, want = reference
    before = torch.get_num_threads()
    stored = store_kernel(
        net, tmp_path / "k", x, chunk=CHUNK, executor=DaskExecutor(workers=2), progress=True
    )
    assert torch.get_num_threads() == before
    _assert_equal(_read(stored), want)
    # the in-memory sink through Dask: the same bits as the in-process executor
    k = evaluate_kernel(net, x, batch_size=CHUNK, executor=DaskExecutor(workers=2))
    k0 = evaluate_kernel(net, x, batch_size=CHUNK, executor=LocalExecutor(2))
    assert torch.equal(k.nngp, k0.nngp) and torch.equal(k.ntk, k0.ntk)


def test_device_path_on_the_cpu(tmp_path, reference):
    """``device=`` moves the work's tensors and brings results back; on the CPU it must
    leave the bits alone (the GPU run is the skipped test below)."""
    net, x, want = reference
    ex = DaskExecutor(workers=2, device="cpu")
    _assert_equal(_read(store_kernel(net, tmp_path / "k", x, chunk=CHUNK, executor=ex)), want)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`scheduler`"):
        DaskExecutor(scheduler="cluster")
    with pytest.raises(ValueError, match="`workers`"):
        DaskExecutor(workers=0)


@pytest.mark.slow
def test_local_processes_bit_identical(tmp_path, reference):
    net, x, want = reference
    stored = store_kernel(
        net, tmp_path / "k", x, chunk=CHUNK, executor=DaskExecutor(scheduler="processes")
    )
    _assert_equal(_read(stored), want)


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes with 1 thread each (slow tests)."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as lc,
        distributed.Client(lc) as client,
    ):
        yield client


def _check_cluster(tmp_path, reference, client):
    net, x, want = reference
    ex = DaskExecutor(client)
    assert ex.workers == 2
    stored = store_kernel(net, tmp_path / "k", x, chunk=CHUNK, executor=ex)
    _assert_equal(_read(stored), want)
    k = evaluate_kernel(net, x, batch_size=CHUNK, executor=ex)  # results sent back
    assert np.array_equal(k.ntk.numpy(), want["ntk"])


def test_distributed_client_bit_identical(tmp_path, reference):
    """The distributed path (scatter, submit, results back) on workers in this process."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as lc,
        distributed.Client(lc) as client,
    ):
        _check_cluster(tmp_path, reference, client)


@pytest.mark.slow
def test_local_cluster_of_processes_bit_identical(tmp_path, reference, cluster):
    _check_cluster(tmp_path, reference, cluster)


class SlowWork:
    """A KernelWork whose tiles take a while (time to kill a worker); same numbers."""

    def __init__(self, work, delay):
        self.work, self.delay = work, delay

    def block(self, b):
        return self.work.block(b)

    def tile(self, shared, b, t):
        time.sleep(self.delay)
        return self.work.tile(shared, b, t)


@pytest.mark.slow
def test_a_worker_killed_mid_run_still_completes_bit_identical(
    tmp_path, reference, cluster, monkeypatch
):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import it
    net, x, want = reference
    made = compute.KernelJob.work
    monkeypatch.setattr(compute.KernelJob, "work", lambda self: SlowWork(made(self), 0.3))
    path = tmp_path / "k"
    result, errors = [], []

    def run():
        try:
            result.append(store_kernel(net, path, x, chunk=CHUNK, executor=DaskExecutor(cluster)))
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (path / "tiles").is_dir():
        time.sleep(0.01)
    while time.monotonic() < deadline and len(os.listdir(path / "tiles")) < 3:
        time.sleep(0.01)
    pids = cluster.run(os.getpid)
    killed = next(iter(pids.values()))
    os.kill(killed, signal.SIGKILL)
    assert len(os.listdir(path / "tiles")) < 15  # mid-run: tiles remain
    thread.join(120)
    assert not errors, errors
    assert killed not in cluster.run(os.getpid).values()  # the run went on without it
    assert result and result[0].computed == 15
    _assert_equal(_read(result[0]), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_cuda_bit_close(tmp_path, reference):
    net, x, want = reference
    stored = store_kernel(net, tmp_path / "k", x, chunk=CHUNK, executor=DaskExecutor(device="cuda"))
    got = _read(stored)
    for name in want:
        assert np.allclose(got[name], want[name], rtol=1e-12, atol=0), name
