"""Tiles as Dask tasks: :class:`DaskExecutor` (``widenets.executors.Executor``).

Each block of a plan is one task: ``work.block`` then ``work.tile`` of each of its tiles.
A sink that writes where the tiles are computed (``writes_anywhere``, as the kernel store's
``StoreSink``) is shipped to the workers, which write the tiles themselves (a path they all
see); any other sink (the in-memory ``KernelSink``) gets the results back in this process.

- No ``client``: Dask's local scheduler in this process, ``scheduler="threads"`` (each task
  on one torch intra-op thread; torch's count restored after the run) or ``"processes"``.
- A ``dask.distributed.Client`` (a ``LocalCluster``, dask-jobqueue, Kubernetes, ...): the
  work object is scattered once to every worker, the blocks are submitted as tasks, and a
  task runs on one torch intra-op thread (restored after the task): Dask's threads are the
  parallelism (a ``LocalCluster`` gives workers times threads equal to the cores). A task lost
  with its worker is rerun by the scheduler elsewhere; tiles are written whole, so a rerun
  writes the same bits.

Progress: a tqdm bar of tiles done of the total, with the rate and the time left.
``device``: where the workers compute (e.g. "cuda"): the work's input tensors are moved
there once per process and the results brought back to the CPU.
"""

from __future__ import annotations

import copy
import threading

import torch

from widenets._pool import cpu_count
from widenets.executors import progress_bar
from widenets.tiling import Block, TilePlan

_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = None


class _TorchThreads:
    """torch's intra-op threads set to ``n`` while any task of this process runs, restored
    when the last one ends (tasks on several threads of one process share the setting)."""

    def __init__(self, n: int):
        self.n = max(1, n)

    def __enter__(self):
        global _threads_users, _threads_before
        with _threads_lock:
            if _threads_users == 0:
                _threads_before = torch.get_num_threads()
                if _threads_before != self.n:
                    torch.set_num_threads(self.n)
            _threads_users += 1

    def __exit__(self, *exc):
        global _threads_users
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and torch.get_num_threads() != _threads_before:
                torch.set_num_threads(_threads_before)


_moved: dict = {}


def _on_device(work, device):
    """A copy of a ``compute.KernelWork`` with its input tensors on ``device`` (once per
    process and work object)."""
    if device is None:
        return work
    key = (id(work), str(device))
    if key not in _moved:
        w = copy.copy(work)
        for name in ("x1", "x2", "var1", "var2"):
            t = getattr(w, name, None)
            if isinstance(t, torch.Tensor):
                setattr(w, name, t.to(device))
        prep = copy.copy(w.prep)
        for name in ("x1", "x2", "src1", "src2"):
            t = getattr(prep, name, None)
            if isinstance(t, torch.Tensor):
                setattr(prep, name, t.to(device))
        w.prep = prep
        w.refine = copy.copy(w.refine)
        w.refine.prep = prep
        _moved.clear()  # one work object at a time per process
        _moved[key] = w
    return _moved[key]


def _to_cpu(k):
    """A kernel record's tensors on the CPU."""
    changes = {}
    for name in ("nngp", "ntk", "cov1", "cov2"):
        t = getattr(k, name)
        if isinstance(t, torch.Tensor) and t.device.type != "cpu":
            changes[name] = t.cpu()
    if k.pairs is not None and k.pairs[0].device.type != "cpu":
        changes["pairs"] = tuple(p.cpu() for p in k.pairs)
    if "cov1" in changes and k.cov2 is k.cov1:
        changes["cov2"] = changes["cov1"]
    return k.replace(**changes) if changes else k


def run_block(work, sink, block: Block, device=None, threads: int = 1):
    """One task: the block's tiles computed and, with a sink, written (returns the count);
    without one, returned as (tile, result) pairs."""
    with _TorchThreads(threads):
        work = _on_device(work, device)
        shared = work.block(block)
        out = []
        for tile in block.tiles:
            k = work.tile(shared, block, tile)
            if device is not None:
                k = _to_cpu(k)
            if sink is not None:
                sink.write(tile, k)
            else:
                out.append((tile, k))
    return len(block.tiles) if sink is not None else out


def _distributed_task(work, sink, block, device):
    return run_block(work, sink, block, device, 1)


class DaskExecutor:
    """Runs the blocks of a plan as Dask tasks (see the module docstring).

    Args:
        client: a ``dask.distributed.Client``, or None for Dask's local scheduler.
        scheduler: without a client, "threads" or "processes".
        workers: without a client, tasks at once (default: the CPUs of this process);
            with one, the threads of its workers when the run starts.
        device: where the tasks compute ("cpu" by default; "cuda" for workers with a GPU).
    """

    def __init__(self, client=None, *, scheduler: str = "threads", workers=None, device=None):
        if scheduler not in ("threads", "processes"):
            raise ValueError(f"`scheduler` must be 'threads' or 'processes', got {scheduler!r}.")
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ValueError(f"`workers` must be a positive int or None, got {workers!r}.")
        self.client, self.scheduler, self.device = client, scheduler, device
        self._workers = workers

    @property
    def workers(self) -> int:
        if self.client is not None:
            return max(1, sum(self.client.nthreads().values()))
        return self._workers or cpu_count()

    def run(self, plan: TilePlan, work, sink, progress: bool) -> None:
        if not plan.blocks:
            return
        if self.client is not None:
            self._run_distributed(plan, work, sink, progress)
        else:
            self._run_local(plan, work, sink, progress)

    def _run_distributed(self, plan, work, sink, progress):
        from distributed import as_completed

        c = self.client
        remote = getattr(sink, "writes_anywhere", False)
        [work_f] = c.scatter([work], broadcast=True, hash=False)
        sink_f = c.scatter([sink], broadcast=True, hash=False)[0] if remote else None
        futures = [
            c.submit(_distributed_task, work_f, sink_f, b, self.device, pure=False)
            for b in plan.blocks
        ]
        try:
            with progress_bar(plan.n_tiles, progress) as bar:
                for fut in as_completed(futures):
                    result = fut.result()
                    if remote:
                        bar.update(result)
                        continue
                    for tile, k in result:
                        sink.write(tile, k)
                    bar.update(len(result))
        finally:
            for fut in futures:
                fut.cancel()
            del work_f, sink_f

    def _run_local(self, plan, work, sink, progress):
        import dask
        from dask.callbacks import Callback

        threads = self.scheduler == "threads"
        # in threads, tasks write as they finish (any sink takes writes from threads);
        # in processes, only a sink that writes anywhere is handed to them
        direct = threads or getattr(sink, "writes_anywhere", False)
        tasks = [
            dask.delayed(run_block, pure=False)(work, sink if direct else None, b, self.device)
            for b in plan.blocks
        ]
        with progress_bar(plan.n_tiles, progress) as bar:
            sizes = {t.key: len(b.tiles) for t, b in zip(tasks, plan.blocks, strict=True)}
            lock = threading.Lock()

            class _Bar(Callback):
                def _posttask(self, key, result, dsk, state, id):
                    if key in sizes:
                        with lock:
                            bar.update(sizes[key])

            with _Bar(), _TorchThreads(1 if threads else torch.get_num_threads()):
                results = dask.compute(*tasks, scheduler=self.scheduler, num_workers=self.workers)
        if not direct:
            for result in results:
                for tile, k in result:
                    sink.write(tile, k)
