"""The allocator setting for repeated tile buffers (widenets._malloc)."""

import os
import subprocess
import sys

import pytest

CODE = (
    "import widenets._malloc as m; first = m.keep_freed_memory(); "
    "print(first, m.keep_freed_memory())"
)


def _run(**env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_set_once_per_process():
    assert _run() == ["True", "False"]


def test_left_alone_when_the_user_chose():
    assert _run(WIDENETS_MALLOC="system") == ["False", "False"]
    assert _run(MALLOC_TRIM_THRESHOLD_="1000000") == ["False", "False"]
