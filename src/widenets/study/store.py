"""Atomic files and the per-stage store that makes a study resumable.

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic), so an interrupted run never leaves a half-written file. A
stage is finished when ``stages/<name>.json`` exists with the configuration's digest;
its tensors, if any, sit beside it in ``stages/<name>.pt`` (written first).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file the usual permissions and rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_json(path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch(path, tensors: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(tensors, tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(out) -> Path:
    """Create ``out`` if needed and check a file can be written there (ValueError if not)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ValueError(f"output folder `out`={str(out)!r} is not writable: {err}") from None
    return out


class StageStore:
    """Finished stages of one study in ``out/stages``, keyed by the config digest."""

    def __init__(self, out, digest: str, resume: bool):
        self.dir = Path(out) / "stages"
        self.digest = digest
        self.dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for f in list(self.dir.glob("*.json")) + list(self.dir.glob("*.pt")):
                f.unlink()
        else:
            for f in self.dir.glob("*.json"):
                other = json.loads(f.read_text()).get("config_digest")
                if other != digest:
                    raise ValueError(
                        f"--resume: {str(f)!r} was made with a different configuration "
                        f"(digest {other}, now {digest}); rerun without --resume or use a "
                        "new output folder."
                    )

    @staticmethod
    def _file(name: str) -> str:
        return name.replace("/", "__")

    def done(self, name: str) -> bool:
        return (self.dir / f"{self._file(name)}.json").is_file()

    def save(self, name: str, result: dict, tensors: dict | None = None) -> None:
        if tensors is not None:
            atomic_torch(self.dir / f"{self._file(name)}.pt", tensors)
        atomic_json(self.dir / f"{self._file(name)}.json", {"config_digest": self.digest, **result})

    def load(self, name: str) -> tuple[dict, dict | None]:
        result = json.loads((self.dir / f"{self._file(name)}.json").read_text())
        result.pop("config_digest", None)
        pt = self.dir / f"{self._file(name)}.pt"
        tensors = torch.load(pt, weights_only=True) if pt.is_file() else None
        return result, tensors
