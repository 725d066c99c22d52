"""Atomic files and the per-stage store that makes a study resumable.

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic), so an interrupted run never leaves a half-written file. A
stage is finished when ``stages/<name>.json`` exists, verified by checksums (see
:class:`StageStore`); its tensors, if any, sit beside it in ``stages/<name>.pt`` (written
first).
"""

from __future__ import annotations

import hashlib
import io
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


class OutputNotEmpty(ValueError):
    """The output folder already holds files, and neither resuming nor overwriting was asked."""

    def __init__(self, out: Path):
        self.out = out
        super().__init__(
            f"output folder `out`={str(out)!r} is not empty; resume=True continues the study "
            "in it, overwrite=True replaces its results."
        )


def check_output(out, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Check ``out`` can take a study's files, then create it (see :func:`check_writable`).

    A folder that already holds anything is refused (:class:`OutputNotEmpty`) unless
    ``resume`` (continue the study in it) or ``overwrite`` (replace its results) is set, so
    that a second run never deletes the stages of a first one unasked.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder `out`={str(out)!r} is a file; give a folder.")
    if not (resume or overwrite) and out.is_dir() and any(out.iterdir()):
        raise OutputNotEmpty(out)
    return check_writable(out)


class StaleStage(Exception):
    """A stage file that cannot be reused; the message says why (missing, truncated or
    corrupted, another configuration, made from another version of a stage it uses)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, default=_json_default).encode()


def _content_sha(result: dict, tensor_sha: str | None) -> str:
    """SHA-256 of what a stage computed (its wall time left out): what later stages used."""
    kept = {k: v for k, v in result.items() if k != "seconds"}
    return _sha256(_canonical({"result": kept, "tensors_sha256": tensor_sha}))


class StageStore:
    """Finished stages of one study in ``out/stages``, verified before reuse.

    ``stages/<name>.json`` holds the result with the configuration's digest, the SHA-256 of
    the tensor file beside it (``<name>.pt``, written first), the content checksums (result
    less its wall time, and tensors) of the stages it was computed from, and a SHA-256 of
    all of that. :meth:`load` reuses a stage only if
    every check passes, else raises :class:`StaleStage` saying why, so that the caller
    recomputes it.
    """

    def __init__(self, out, digest: str, resume: bool):
        self.dir = Path(out) / "stages"
        self.digest = digest
        self.dir.mkdir(parents=True, exist_ok=True)
        self._checksums: dict[str, str] = {}
        if not resume:
            for f in list(self.dir.glob("*.json")) + list(self.dir.glob("*.pt")):
                f.unlink()

    @staticmethod
    def _file(name: str) -> str:
        return name.replace("/", "__")

    def _paths(self, name: str) -> tuple[Path, Path]:
        base = self.dir / self._file(name)
        return base.with_name(base.name + ".json"), base.with_name(base.name + ".pt")

    def has_file(self, name: str) -> bool:
        """Whether any file of stage ``name`` exists (reusable or not)."""
        return any(p.exists() for p in self._paths(name))

    def checksum(self, name: str) -> str | None:
        """The content checksum of stage ``name`` as saved or verified in this run."""
        return self._checksums.get(name)

    def save(self, name: str, result: dict, tensors: dict | None = None, depends=()) -> None:
        js, pt = self._paths(name)
        tensor_sha = None
        if tensors is not None:
            buf = io.BytesIO()
            torch.save(tensors, buf)
            data = buf.getvalue()
            tensor_sha = _sha256(data)
            atomic_write(pt, data)
        else:
            pt.unlink(missing_ok=True)
        record = {
            "config_digest": self.digest,
            "depends": {d: self._checksums.get(d) for d in depends},
            "tensors_sha256": tensor_sha,
            "result": json.loads(_canonical(result)),
        }
        checksum = _sha256(_canonical(record))
        atomic_json(js, {"checksum": checksum, **record})
        self._checksums[name] = _content_sha(record["result"], tensor_sha)

    def load(self, name: str, depends=()) -> tuple[dict, dict | None]:
        """The stage's (result, tensors) after verifying it; StaleStage if it cannot be reused."""
        js, pt = self._paths(name)
        if not js.is_file():
            raise StaleStage("no stage file")
        try:
            record = json.loads(js.read_text())
            checksum = record.pop("checksum")
            if not isinstance(record.get("result"), dict):
                raise KeyError("result")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError) as err:
            raise StaleStage(
                f"its file is truncated, corrupted or from an older widenets ({type(err).__name__})"
            ) from None
        if _sha256(_canonical(record)) != checksum:
            raise StaleStage("its file does not match its checksum (changed or corrupted)")
        if record.get("config_digest") != self.digest:
            raise StaleStage(
                f"it was made with another configuration (digest {record.get('config_digest')}, "
                f"now {self.digest})"
            )
        for dep in depends:
            if record.get("depends", {}).get(dep) != self._checksums.get(dep):
                raise StaleStage(f"it was computed from another version of stage {dep!r}")
        tensors = None
        if record.get("tensors_sha256") is not None:
            try:
                data = pt.read_bytes()
            except OSError:
                raise StaleStage(f"its tensor file {pt.name} is missing") from None
            if _sha256(data) != record["tensors_sha256"]:
                raise StaleStage(
                    f"its tensor file {pt.name} does not match its checksum (changed or corrupted)"
                )
            tensors = torch.load(io.BytesIO(data), weights_only=True)
        self._checksums[name] = _content_sha(record["result"], record.get("tensors_sha256"))
        return record["result"], tensors
