"""Tiles on the thread pool: the kernel of tiles one after another (to the last few bits: a
matrix product's rounding depends on its shape and thread count), torch's thread setting
restored, errors raised in the caller."""

from __future__ import annotations

import threading

import pytest
import torch

import widenets as wn
import widenets.compute as compute
from widenets._pool import busy_workers, one_intra_op_thread, run_tasks
from widenets.executors import LocalExecutor


def _nets():
    conv = []
    for _ in range(3):
        conv += [wn.Conv(4, (3, 3), w_std=1.4, b_std=0.1), wn.Relu()]
    return {
        "fc": (
            wn.serial(wn.Dense(8, w_std=1.5, b_std=0.05), wn.Erf(), wn.Dense(1, w_std=1.5)),
            (40, 7),
        ),
        "cnn flatten (packed)": (wn.serial(*conv, wn.Flatten(), wn.Dense(1)), (20, 2, 6, 6)),
        "cnn gap (full layout)": (wn.serial(*conv, wn.GlobalAvgPool(), wn.Dense(1)), (10, 2, 5, 5)),
    }


@pytest.fixture
def workers(monkeypatch):
    def set_to(n):
        monkeypatch.setattr(compute, "TILE_WORKERS", n)

    return set_to


@pytest.mark.parametrize("name", list(_nets()))
@pytest.mark.parametrize("two_sets", [False, True])
def test_pool_gives_the_kernel_of_one_thread(name, two_sets, workers, monkeypatch):
    net, shape = _nets()[name]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x2 = torch.randn(*shape, generator=g, dtype=torch.float64) if two_sets else None
    workers(1)
    ref = net.kernel(x, x2)
    workers(3)
    monkeypatch.setattr(compute, "MIN_TASK_NUMEL", 1)  # many small tiles
    seen = set()
    real = compute._one_kernel

    def spy(k):
        seen.add(threading.current_thread().name)
        return real(k)

    monkeypatch.setattr(compute, "_one_kernel", spy)
    got = net.kernel(x, x2)
    assert any(n.startswith("widenets-tiles-") for n in seen), seen  # the pool ran
    for a, b in ((got.nngp, ref.nngp), (got.ntk, ref.ntk), (got.cov1, ref.cov1)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_thread_setting_is_restored_even_after_an_error(workers):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        workers(2)
        net = wn.serial(wn.Dense(4), wn.Elementwise(torch.log), wn.Dense(1))
        x = torch.randn(300, 3, dtype=torch.float64)
        with pytest.raises(wn.NonFiniteKernelError, match="Elementwise"):
            net.kernel(x)
        assert torch.get_num_threads() == 2
        with one_intra_op_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_run_tasks_runs_each_task_once_and_raises_the_first_error():
    done = []
    lock = threading.Lock()

    def fn(i):
        with lock:
            done.append(i)

    run_tasks(list(range(50)), fn, workers=3)
    assert sorted(done) == list(range(50))

    def boom(i):
        if i == 7:
            raise RuntimeError("tile 7")

    with pytest.raises(RuntimeError, match="tile 7"):
        run_tasks(list(range(20)), boom, workers=2)


def test_the_pool_is_used_only_when_another_process_is_running(monkeypatch):
    x = torch.zeros(3, 2)
    monkeypatch.setattr(compute, "TILE_WORKERS", None)
    monkeypatch.setattr(compute, "BUSY_EXTRA_WORKERS", 1)
    monkeypatch.setattr(compute, "default_workers", lambda: 2)
    monkeypatch.setattr(compute, "others_running", lambda **_: 0)
    assert compute._workers(x) == 1  # quiet: torch's own threads, as before the pool
    monkeypatch.setattr(compute, "others_running", lambda **_: 1)
    assert compute._workers(x) == 3  # a thread more than the cores beside one neighbour
    monkeypatch.setattr(compute, "others_running", lambda **_: 5)
    assert compute._workers(x) == 3  # at most BUSY_EXTRA_WORKERS more
    monkeypatch.setattr(compute, "others_running", lambda **_: None)  # unknown: quiet
    assert compute._workers(x) == 1
    monkeypatch.setattr(compute, "default_workers", lambda: 1)  # the user set one thread
    monkeypatch.setattr(compute, "others_running", lambda **_: 1)
    assert compute._workers(x) == 1
    monkeypatch.setattr(compute, "TILE_WORKERS", 3)
    assert compute._workers(x) == 3


@pytest.mark.parametrize(
    ("threads", "others", "extra", "expected"),
    [(2, 0, 1, 1), (2, None, 1, 1), (1, 3, 1, 1), (2, 1, 1, 3), (2, 1, 2, 3), (2, 3, 2, 4),
     (4, 2, 0, 4), (8, 1, 1, 9)],
)  # fmt: skip
def test_busy_workers(threads, others, extra, expected):
    assert busy_workers(threads, others, extra) == expected


def test_tiles_are_planned_for_the_cores_not_the_extra_threads(monkeypatch):
    monkeypatch.setattr(compute, "TILE_WORKERS", None)
    monkeypatch.setattr(compute, "default_workers", lambda: 2)
    assert compute._plan_workers(LocalExecutor(3)) == 2
    assert compute._plan_workers(LocalExecutor(1)) == 1
    monkeypatch.setattr(compute, "default_workers", lambda: 4)
    assert compute._plan_workers(LocalExecutor(3)) == 3
    monkeypatch.setattr(compute, "TILE_WORKERS", 3)  # set: planned for all of them
    monkeypatch.setattr(compute, "default_workers", lambda: 2)
    assert compute._plan_workers(LocalExecutor(3)) == 3


def test_a_busy_call_runs_outside_its_tiles_on_one_thread_and_restores_it(monkeypatch):
    """On the pool, the input checks and variances run with one torch thread too (no
    OpenMP barrier beside a busy process); the thread count is restored after the call."""
    before = torch.get_num_threads()
    seen = []
    real = compute.prepare_kernel

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(compute, "prepare_kernel", spy)
    monkeypatch.setattr(compute, "TILE_WORKERS", None)
    monkeypatch.setattr(compute, "default_workers", lambda: 2)  # whatever the CPUs here
    monkeypatch.setattr(compute, "others_running", lambda **_: 1)
    net = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
    x = torch.randn(30, 3, dtype=torch.float64)
    try:
        torch.set_num_threads(2)
        busy = net.kernel(x)
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(compute, "others_running", lambda **_: 0)
        quiet = net.kernel(x)
        assert seen == [1, 2]
        torch.testing.assert_close(busy.ntk, quiet.ntk, rtol=1e-13, atol=1e-15)
    finally:
        torch.set_num_threads(before)


def test_others_running_sees_a_busy_process():
    import subprocess
    import sys
    import time

    from widenets._pool import others_running

    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"]
    )
    try:
        time.sleep(0.3)
        # the busy loop is runnable whenever we look (one look may fall between its slices)
        assert max(others_running() or 0 for _ in range(20)) >= 1
    finally:
        busy.kill()
        busy.wait()


def test_a_busy_call_spreads_its_tiles_over_the_pool(monkeypatch):
    """Beside a busy process the tiles are planned for the pool's threads, not for the one
    torch thread the call runs its other steps with: several tiles, on several threads."""
    import widenets._pool as pool

    before = torch.get_num_threads()
    seen, tiles = set(), []
    real_one, real_plan = compute._one_kernel, compute.plan_tiles

    def spy(k):
        seen.add(threading.current_thread().name)
        return real_one(k)

    def plan_spy(request, budgets):
        plan = real_plan(request, budgets)
        tiles.append(len(plan.blocks))
        return plan

    monkeypatch.setattr(compute, "_one_kernel", spy)
    monkeypatch.setattr(compute, "plan_tiles", plan_spy)
    monkeypatch.setattr(compute, "TILE_WORKERS", None)
    monkeypatch.setattr(compute, "MIN_TASK_NUMEL", 1)
    monkeypatch.setattr(pool, "cpu_count", lambda: 2)  # whatever the CPUs here
    monkeypatch.setattr(compute, "others_running", lambda **_: 1)
    net, shape = _nets()["cnn flatten (packed)"]
    x = torch.randn(*shape, dtype=torch.float64)
    try:
        torch.set_num_threads(2)
        net.kernel(x, x + 1)
    finally:
        torch.set_num_threads(before)
    assert tiles[0] >= 2 * compute.TASKS_PER_WORKER
    assert len({n for n in seen if n.startswith("widenets-tiles-")}) == 2, seen


def test_others_running_answers_again_within_max_age(monkeypatch):
    import widenets._pool as pool

    looks = []
    monkeypatch.setattr(pool, "_look", lambda samples: looks.append(samples) or len(looks))
    monkeypatch.setattr(pool, "_last", (None, None))
    assert pool.others_running(max_age=60) == 1
    assert pool.others_running(max_age=60) == 1  # cached
    assert pool.others_running() == 2  # max_age 0: a new look
    assert looks == [5, 5]


def test_a_pool_covering_every_cpu_pins_one_thread_to_each(monkeypatch):
    import widenets._pool as pool

    pins, lock = [], threading.Lock()  # a list: a finished thread's ident may be reused
    monkeypatch.setattr(pool, "_cpus", lambda: [3, 5])
    monkeypatch.setattr(pool, "_pin", pins.append)

    def fn(i):
        with lock:
            pass

    run_tasks(list(range(8)), fn, workers=2)
    assert sorted(pins) == [3, 5]
    pins.clear()
    run_tasks(list(range(8)), fn, workers=1)  # one after another: no pin
    assert pins == []
    monkeypatch.setattr(pool, "_cpus", lambda: [0, 1, 2, 3])
    run_tasks(list(range(8)), fn, workers=2)  # fewer threads than CPUs: no pin
    assert pins == []
