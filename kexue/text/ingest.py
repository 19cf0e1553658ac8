"""ingest: sources → deduplicated Parquet partitions + a quarantine file + a report.

Partition boundaries are *content-defined*: a document ends its partition when its own
hash, read as a number in [0, 1), falls below ``len(doc) / partition_bytes``. Partitions
therefore average ``partition_bytes`` and — unlike cutting every N bytes — adding one
file to a folder changes only the partition it lands in, so only that partition is
re-tokenised downstream.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from kexue.core.artifacts import FileRef, save_content_addressed, write_parquet_atomic
from kexue.text.sources import Doc, Rejected, read_source
from kexue.text.params import IngestParams


PARTITION_COLUMNS = ["doc_id", "source", "label", "text", "hash", "gold_tokens"]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def ends_partition(digest: str, nbytes: int, target: int) -> bool:
    """Content-defined boundary: true with probability nbytes/target, decided by the doc's hash."""
    return int(digest[:15], 16) / float(1 << 60) < nbytes / target


@dataclass
class IngestResult:
    partitions: list[FileRef]
    quarantine: Path
    conflicts: Path
    report: dict[str, Any] = field(default_factory=dict)


def _chunks(docs: list[dict], target: int, hard_max: int) -> Iterable[list[dict]]:
    chunk, size = [], 0
    for d in docs:
        nbytes = len(d["text"].encode("utf-8"))
        chunk.append(d)
        size += nbytes
        if ends_partition(d["hash"], nbytes, target) or size >= hard_max:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def ingest(
    params: dict[str, Any] | IngestParams,
    base_dir: str | Path,
    out_dir: str | Path,
    partitions_dir: str | Path | None = None,
) -> IngestResult:
    """Read every source, quarantine bad records, drop exact duplicates, write partitions.

    Relative source paths are resolved against ``base_dir``. Partitions go to the
    content-addressed ``partitions_dir`` (default ``out_dir/partitions``), the quarantine,
    conflicts and report to ``out_dir``.

    The report satisfies ``read == kept + duplicates + quarantined`` per source and in total.
    """
    p = params if isinstance(params, IngestParams) else IngestParams.model_validate(params)
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    partitions_dir = Path(partitions_dir) if partitions_dir else out_dir / "partitions"
    seen: dict[str, dict] = {}  # text hash → kept doc
    labels_of: dict[str, set] = defaultdict(set)
    quarantine: list[dict] = []
    per_source: dict[str, Counter] = {}
    kept_by_source: dict[str, list[dict]] = defaultdict(list)

    for spec in p.sources:
        name = spec.display_name()
        stats = per_source.setdefault(name, Counter())
        for rec in read_source(spec, base_dir):
            stats["read"] += 1
            if isinstance(rec, Rejected):
                stats["quarantined"] += 1
                quarantine.append({"source": name, "location": rec.location, "reason": rec.reason})
                continue
            assert isinstance(rec, Doc)
            h = text_hash(rec.text)
            labels_of[h].add(rec.label)
            if h in seen and p.deduplicate:
                stats["duplicates"] += 1
                continue
            stats["kept"] += 1
            doc = {
                "doc_id": f"{name}/{rec.key}" if h not in seen else f"{name}/{rec.key}#{stats['read']}",
                "source": name,
                "label": rec.label,
                "text": rec.text,
                "hash": h,
                "gold_tokens": list(rec.gold_tokens) if rec.gold_tokens is not None else None,
            }
            seen.setdefault(h, doc)
            kept_by_source[name].append(doc)

    partitions: list[FileRef] = []
    hard_max = int(p.partition_bytes * p.max_partition_factor)
    for name, docs in kept_by_source.items():  # a partition never spans two sources
        for chunk in _chunks(docs, p.partition_bytes, hard_max):
            df = pd.DataFrame(chunk, columns=PARTITION_COLUMNS)
            partitions.append(save_content_addressed(partitions_dir, ".parquet", lambda t, df=df: df.to_parquet(t, index=False)))

    conflicts = [
        {"hash": h, "doc_id": seen[h]["doc_id"], "kept_label": seen[h]["label"], "labels": sorted(str(x) for x in ls)}
        for h, ls in labels_of.items()
        if len(ls) > 1
    ]
    qpath = write_parquet_atomic(out_dir / "quarantine.parquet", pd.DataFrame(quarantine, columns=["source", "location", "reason"]))
    cpath = write_parquet_atomic(out_dir / "conflicts.parquet", pd.DataFrame(conflicts, columns=["hash", "doc_id", "kept_label", "labels"]))
    totals = Counter()
    for s in per_source.values():
        totals.update(s)
    report = {
        "read": totals["read"],
        "kept": totals["kept"],
        "duplicates": totals["duplicates"],
        "quarantined": totals["quarantined"],
        "label_conflicts": len(conflicts),
        "partitions": len(partitions),
        "characters": sum(len(d["text"]) for docs in kept_by_source.values() for d in docs),
        "per_source": {k: {f: v.get(f, 0) for f in ("read", "kept", "duplicates", "quarantined")} for k, v in per_source.items()},
        "quarantine_reasons": dict(Counter(q["reason"].split(":")[0].split(" (")[0] for q in quarantine)),
    }
    assert report["read"] == report["kept"] + report["duplicates"] + report["quarantined"]
    return IngestResult(partitions, qpath, cpath, report)
