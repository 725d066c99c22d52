"""Tiles of a kernel on a pool of threads, each running torch with one intra-op thread.

Why: torch's intra-op threads (OpenMP) split every operation of a tile and then wait for
each other at its end, spinning. When another process holds a core, one thread of each of
the thousands of small operations waits for a time slice and the others spin meanwhile: a
kernel evaluation beside one busy process took several times its quiet time. Independent
tiles on threads of our own need no such barrier: a thread that loses its core delays only
its own tile while the other threads take the next ones, and on a quiet machine the tiles
run as fast as with torch's threads (``bench/threads_under_load.py``).

The pool is used when another process is running at the start of a call
(:func:`others_running`); on a quiet machine the tiles run one after another on torch's own
threads, whose quiet speed the pool does not always match (its smaller tiles fault more
fresh pages). The intra-op thread count is set to one for the duration of a pool and
restored after it, so nothing outlives the call. Torch releases the GIL inside its
operations, so the threads run their tiles' operations in parallel; between operations they
take turns at the GIL, which is why the pool has no more threads than cores and its tiles
are not made too small (``compute.BUSY_EXTRA_WORKERS``, ``compute.MIN_TASK_NUMEL``).

A pool with a thread for every CPU of the process pins each of its threads to one of them
(:func:`run_tasks`): beside a busy process there is no idle CPU, and the scheduler tends to
wake a thread that waited for the GIL on the CPU of the thread that released it, so that
two of our threads share one CPU while the neighbour keeps the other to itself (sampled on
2 CPUs: our two threads on the same CPU in about two thirds of the samples). Pinned, each
CPU holds one of our threads (measured under load: GAP CNN 8% faster, Flatten CNN the
same). Every CPU gets one thread, so two such processes still share evenly; the pins end
with the pool's threads, at the end of the call.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch


def _cpus() -> list[int]:
    """The CPUs this process may run on, in order ([] where that cannot be read)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return []


def _pin(cpu: int) -> None:
    """The calling thread (not the process: Linux applies pid 0 to the calling thread) kept
    to ``cpu``; nothing if that is refused."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _own_running() -> int:
    """This process's threads in the running state."""
    own = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        own += stat[stat.rindex(")") + 2] == "R"
    return own


def others_running(samples: int = 5, max_age: float = 0.0) -> int | None:
    """Threads of other processes ready to run right now: the running count of
    /proc/loadavg less this process's own running threads (counted before and after, since
    torch's threads may stop spinning in between), the least of a few looks 0.2 ms apart
    (a CPU-bound neighbour is runnable at every look, a transient is not); None where it
    cannot be read. ``max_age`` (seconds): an answer that recent is given again without
    looking (a look costs about 2 ms beside a busy process, a share of a short call)."""
    global _last
    if max_age > 0:
        when, value = _last
        if when is not None and time.monotonic() - when <= max_age:
            return value
    value = _look(samples)
    _last = (time.monotonic(), value)
    return value


#: (time.monotonic() of the last look, its answer)
_last: tuple[float | None, int | None] = (None, None)


def _look(samples: int) -> int | None:
    """One look of :func:`others_running`."""
    try:
        least = None
        for _ in range(samples):
            before = _own_running()
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            own = max(before, _own_running())
            others = max(0, running - own)
            least = others if least is None else min(least, others)
            if least == 0:
                break
            time.sleep(2e-4)  # a CPU-bound neighbour is runnable at every look
        return least
    except (OSError, ValueError, IndexError):
        return None


def default_workers() -> int:
    """Threads for the tiles: torch's intra-op thread count (what the user set, or the
    default of one per core), at most the CPUs this process may use."""
    return max(1, min(torch.get_num_threads(), cpu_count()))


def busy_workers(threads: int, others: int | None, extra: int) -> int:
    """Pool threads for a call: 1 (tiles one after another on torch's own threads) when
    ``threads`` is 1 or no other process is running (``others`` 0, or None: unknown); else
    ``threads`` plus one for each other running thread, at most ``extra`` more. The
    scheduler shares the cores per runnable thread: n of our threads beside k others on c
    cores get c n / (n + k) of them, so a thread more than the cores wins back part of
    what the neighbours take (one neighbour on two cores: 4/3 cores with two threads, 3/2
    with three)."""
    if threads <= 1 or not others:
        return 1
    return threads + min(others, max(0, extra))


@contextmanager
def one_intra_op_thread():
    """torch's intra-op threads set to one within the block, restored after it."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_tasks(tasks: Sequence, fn: Callable, workers: int) -> None:
    """``fn(task)`` for every task, on ``workers`` threads taking the next task as they
    finish one (in order when ``workers`` is 1). The first exception of any task stops the
    others after their current task and is raised here. With at least as many threads as
    the process has CPUs, thread k runs on CPU k only (modulo their number: see the module
    doc), for as long as it lives."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            fn(task)
        return
    lock = threading.Lock()
    order = iter(range(len(tasks)))
    errors: list[BaseException] = []
    stop = threading.Event()
    n = min(workers, len(tasks))
    cpus = _cpus()
    pins = cpus if 1 < len(cpus) <= n else []

    def work(k):
        if pins:
            _pin(pins[k % len(pins)])
        while not stop.is_set():
            with lock:
                i = next(order, None)
            if i is None:
                return
            try:
                fn(tasks[i])
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                errors.append(err)
                stop.set()
                return

    with one_intra_op_thread():
        threads = [
            threading.Thread(target=work, args=(k,), name=f"widenets-tiles-{k}", daemon=True)
            for k in range(n)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:  # KeyboardInterrupt: let the threads finish their tile
            stop.set()
            for t in threads:
                t.join()
            raise
    if errors:
        raise errors[0]
