"""Run Neural Tangents (the reference) in its own interpreter, for benchmarks and cross-checks.

Neural Tangents 0.6.5 needs old pins of JAX and TensorFlow, so it lives in its own virtual
environment (``/tmp/nt-venv`` by default, or ``$WIDENETS_NT_PYTHON``; see
``shared/peers/neural-tangents.md``) and never in the project's. A benchmark hands it a
script string and NumPy arrays; :func:`run_nt` writes the arrays as ``.npy`` files in a
temporary directory, runs the script with float64 enabled, and returns the arrays and the
JSON record the script saved. Nothing is written outside that temporary directory.

Inside the script these helpers are defined (a short prelude is prepended)::

    load(name)          # an input array passed in ``inputs``
    save(name, array)   # an output array, returned by run_nt
    report(**values)    # JSON-serialisable values, returned by run_nt
    vmhwm_mib()         # the process's peak resident memory so far (VmHWM), MiB
    block(x)            # jax.block_until_ready(x)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_NT_PYTHON = "/tmp/nt-venv/bin/python"

_PRELUDE = r"""
import json as _json, os as _os, sys as _sys
import numpy as _np
_DIR = _sys.argv[1]
_REPORT = {}

def load(name):
    return _np.load(_os.path.join(_DIR, "in_" + name + ".npy"))

def save(name, array):
    _np.save(_os.path.join(_DIR, "out_" + name + ".npy"), _np.asarray(array))

def report(**values):
    _REPORT.update(values)
    with open(_os.path.join(_DIR, "report.json"), "w") as _f:
        _json.dump(_REPORT, _f)

def vmhwm_mib():
    with open("/proc/self/status") as _f:
        for _line in _f:
            if _line.startswith("VmHWM:"):
                return int(_line.split()[1]) / 1024.0
    return float("nan")

import jax as _jax
_jax.config.update("jax_enable_x64", True)

def block(x):
    return _jax.block_until_ready(x)
"""


class NTUnavailable(RuntimeError):
    """Neural Tangents' interpreter is missing or cannot import neural_tangents."""


def nt_python() -> str:
    """Path of the interpreter that has Neural Tangents 0.6.5 installed."""
    return os.environ.get("WIDENETS_NT_PYTHON", DEFAULT_NT_PYTHON)


def nt_missing_reason() -> str | None:
    """None when Neural Tangents can be run, else a sentence saying why not."""
    py = nt_python()
    if not Path(py).exists():
        return (
            f"Neural Tangents not found: {py} does not exist (install it as in "
            "shared/peers/neural-tangents.md, or set WIDENETS_NT_PYTHON)."
        )
    return None


def single_thread_env() -> dict:
    """Environment variables that keep XLA (and BLAS) on one thread."""
    return {
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env.update(
        JAX_ENABLE_X64="1",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONWARNINGS="ignore",
    )
    env.pop("PYTHONPATH", None)  # keep the project's sources out of NT's interpreter
    env.update(extra or {})
    return env


def run_nt(
    script: str,
    inputs: dict[str, np.ndarray] | None = None,
    *,
    timeout: float = 1800.0,
    env: dict | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Run ``script`` with Neural Tangents' interpreter; return (saved arrays, report).

    Args:
        script: Python source; may call ``load``, ``save``, ``report``, ``vmhwm_mib``,
            ``block`` (see the module docstring). ``jax_enable_x64`` is already set.
        inputs: arrays the script reads with ``load(name)``.
        timeout: seconds before the subprocess is killed.
        env: extra environment variables (e.g. :func:`single_thread_env`).

    Raises:
        NTUnavailable: the interpreter is missing.
        RuntimeError: the script failed (its stderr tail is in the message).
    """
    reason = nt_missing_reason()
    if reason:
        raise NTUnavailable(reason)
    with tempfile.TemporaryDirectory(prefix="widenets-nt-") as tmp:
        for name, arr in (inputs or {}).items():
            np.save(os.path.join(tmp, f"in_{name}.npy"), np.asarray(arr))
        path = os.path.join(tmp, "script.py")
        with open(path, "w") as f:
            f.write(_PRELUDE + "\n" + script)
        proc = subprocess.run(
            [nt_python(), path, tmp],
            env=_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"Neural Tangents script failed (rc={proc.returncode}):\n{tail}")
        outputs = {}
        for fname in os.listdir(tmp):
            if fname.startswith("out_") and fname.endswith(".npy"):
                outputs[fname[4:-4]] = np.load(os.path.join(tmp, fname))
        rep_path = os.path.join(tmp, "report.json")
        report = {}
        if os.path.exists(rep_path):
            with open(rep_path) as f:
                report = json.load(f)
    return outputs, report
