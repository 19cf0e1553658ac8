"""Content-addressed, atomically written artifacts.

Why: tasks hand each other *manifests* (paths + content hashes), never data, and a
half-written file must never be visible under its final name — a killed run or two
concurrent runs must not leave a truncated Parquet that a later run would trust.
Every writer here writes to a temporary file in the same directory, fsyncs, then
``os.replace``s it into place (atomic on POSIX).
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(*parts: str) -> str:
    """Hex SHA-256 of the given strings joined by NUL (so ('a','bc') != ('ab','c'))."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def tree_hashes(path: str | os.PathLike) -> list[str]:
    """``relpath:sha256`` of every file under a folder (sorted, links not followed), or the
    one file's hash; an unreadable entry contributes its errno. For content-based cache keys:
    touching a file changes nothing, editing one changes the list."""
    path = Path(path)

    def one(p: Path, label: str) -> str:
        try:
            return f"{label}:{sha256_file(p)}"
        except OSError as e:
            return f"{label}:error:{e.errno}"

    if not path.is_dir():
        return [one(path, "")]
    out = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
            p = Path(dirpath) / name
            out.append(one(p, p.relative_to(path).as_posix()))
    return out


def _plain(obj: Any) -> Any:
    """JSON for what json does not know: validated parameter models by their values."""
    dump = getattr(obj, "model_dump", None)
    return dump(mode="json") if callable(dump) else str(obj)


def stable_json(obj: Any) -> str:
    """Canonical JSON used for hashing parameters (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)


def _seal(tmp: Path) -> None:
    """Flush to disk and give the usual file mode (mkstemp creates files 0600)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)


def _fault_hold(tmp: Path, final: Path) -> None:
    """Fault injection for tests: with ``KEXUE_FAULT_HOLD_WRITE="<glob>=<marker file>"``, a
    write whose final path matches the glob stops once its temporary file is complete,
    before the rename, records ``{tmp, final, pid}`` in the marker file and waits to be
    killed. Why: the moment that proves (or disproves) atomicity is otherwise too short
    for a test to kill the writer in."""
    spec = os.environ.get("KEXUE_FAULT_HOLD_WRITE")
    if not spec:
        return
    pattern, _, marker = spec.rpartition("=")
    if fnmatch.fnmatch(str(final), pattern):
        Path(marker + ".part").write_text(json.dumps({"tmp": str(tmp), "final": str(final), "pid": os.getpid()}))
        os.replace(marker + ".part", marker)
        while True:
            time.sleep(60)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success move it into place atomically.

    Use for writers that want a path (``df.to_parquet(tmp)``, ``np.save(tmp)``).
    On an exception the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _seal(tmp_path)
        _fault_hold(tmp_path, final)
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> Path:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)
    return Path(path)


def write_parquet_atomic(path: str | os.PathLike, df) -> Path:
    """Write a pandas DataFrame (pyarrow engine, no index) or a pyarrow Table as Parquet atomically."""
    with atomic_path(path, suffix=".parquet") as tmp:
        if hasattr(df, "to_parquet"):
            df.to_parquet(tmp, engine="pyarrow", index=False)
        else:
            import pyarrow.parquet as pq

            pq.write_table(df, tmp)
    return Path(path)


@dataclass
class FileRef:
    """A file an artifact consists of: where it is and what its bytes hash to."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "FileRef":
        p = Path(path)
        return cls(path=str(p.resolve()), sha256=sha256_file(p), bytes=p.stat().st_size)

    def problem(self) -> str | None:
        """None if the file is there with the recorded hash, else what is wrong."""
        p = Path(self.path)
        if not p.exists():
            return f"{self.path}: missing"
        size = p.stat().st_size
        if size != self.bytes:
            return f"{self.path}: size {size} != recorded {self.bytes}"
        if sha256_file(p) != self.sha256:
            return f"{self.path}: content hash differs from the recorded one"
        return None


@dataclass
class Manifest:
    """What a task returns: named files with hashes, small metrics, and lists of partitions."""

    stage: str
    files: dict[str, FileRef] = field(default_factory=dict)
    partitions: list[FileRef] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def all_files(self) -> list[FileRef]:
        return list(self.files.values()) + list(self.partitions)

    def fingerprint(self) -> str:
        """Hash of the content hashes: what downstream cache keys are built from."""
        parts = [f"{k}={v.sha256}" for k, v in sorted(self.files.items())]
        parts += [p.sha256 for p in self.partitions]
        return sha256_text(self.stage, *parts)

    def problems(self) -> list[str]:
        return [p for f in self.all_files() if (p := f.problem())]

    @classmethod
    def of_result(cls, stage: str, result: dict[str, Any]) -> "Manifest":
        """From a library stage's ``{"files": {name: path}, "metrics": {...}}``: hash every file."""
        return cls(stage=stage, files={k: FileRef.of(v) for k, v in result["files"].items()}, metrics=result["metrics"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "files": {k: vars(v) for k, v in self.files.items()},
            "partitions": [vars(p) for p in self.partitions],
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        return cls(
            stage=d["stage"],
            files={k: FileRef(**v) for k, v in d.get("files", {}).items()},
            partitions=[FileRef(**p) for p in d.get("partitions", [])],
            metrics=d.get("metrics", {}),
        )


def save_content_addressed(directory: str | os.PathLike, suffix: str, write) -> FileRef:
    """Write via ``write(tmp_path)``, then file the bytes under ``<dir>/<sha[:2]>/<sha><suffix>``.

    Why content-addressed: identical content lands at the identical path, so an unchanged
    partition keeps its path (and downstream cache keys) across runs, and two concurrent
    runs writing the same content cannot corrupt each other.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ca.", suffix=".tmp" + suffix, dir=directory)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        _seal(tmp_path)
        digest = sha256_file(tmp_path)
        final = directory / digest[:2] / f"{digest}{suffix}"
        final.parent.mkdir(exist_ok=True)
        _fault_hold(tmp_path, final)
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    return FileRef(path=str(final.resolve()), sha256=digest, bytes=final.stat().st_size)
