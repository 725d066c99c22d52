"""The allocator setting for repeated tile buffers (widenets._malloc) is opt-in: a kernel
evaluation leaves the process's allocator alone unless WIDENETS_MALLOC=tuned; the widenets
command tunes its own process unless WIDENETS_MALLOC=system."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

KERNEL = (
    "import torch, widenets as wn, widenets._malloc as m; "
    "net = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1)); "
    "net.kernel(torch.randn(5, 3)); print(m.tuned(), m.keep_freed_memory())"
)
# the module alone, loaded from its file (no torch import: a fast subprocess)
MODULE = str(Path(__file__).parents[1] / "src" / "widenets" / "_malloc.py")
LOAD = (
    "import importlib.util as u; "
    f"s = u.spec_from_file_location('m', {MODULE!r}); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); "
)
EXPLICIT = LOAD + "first = m.keep_freed_memory(); print(first, m.keep_freed_memory(), m.tuned())"
COMMAND = LOAD + "print(m.tune_for_command(), m.tuned())"

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def _run(code, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "WIDENETS_"))}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env | extra
    )


def _words(code, **extra):
    out = _run(code, **extra)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@glibc
def test_kernel_leaves_the_allocator_alone_by_default():
    # not tuned by the kernel evaluation, so the explicit call after it still tunes
    assert _words(KERNEL) == ["False", "True"]


@glibc
def test_kernel_tunes_when_asked():
    # tuned by the kernel evaluation: the explicit call after it has nothing left to do
    assert _words(KERNEL, WIDENETS_MALLOC="tuned") == ["True", "False"]


@glibc
def test_explicit_call_tunes_once_per_process_and_the_command_by_default():
    assert _words(EXPLICIT) == ["True", "False", "True"]
    assert _words(COMMAND) == ["True", "True"]
    assert _words(COMMAND, WIDENETS_MALLOC="system") == ["False", "False"]


def test_left_alone_when_the_user_chose():
    assert _words(EXPLICIT, WIDENETS_MALLOC="system") == ["False", "False", "False"]
    assert _words(EXPLICIT, MALLOC_TRIM_THRESHOLD_="1000000") == ["False", "False", "False"]
    assert _words(KERNEL, WIDENETS_MALLOC="tuned", MALLOC_MMAP_THRESHOLD_="65536") == [
        "False",
        "False",
    ]


def test_bad_setting_is_a_one_line_error():
    out = _run(LOAD + "m.tune_if_asked()", WIDENETS_MALLOC="fast")
    assert out.returncode != 0
    assert "WIDENETS_MALLOC must be one of ('system', 'tuned'), got 'fast'" in out.stderr
