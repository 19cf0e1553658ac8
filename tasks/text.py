"""Prefect tasks for the text front half: ingest, tokenize + count (per partition), vocabulary (tree merge).

Thin wrappers: read inputs named by manifests, call ``kexue``, write artifacts, return
a manifest. Nothing here decides *what* to compute — that is ``kexue`` — or *where* —
that is the flow.

The library modules (and Arrow and pandas with them) are imported inside the tasks: the
flow process imports this module for the task objects only, and never runs them
(``tasks.warmup`` preloads them where tasks run).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kexue.core.artifacts import FileRef, Manifest, save_content_addressed, sha256_text, stable_json, write_json_atomic
from kexue.text.params import IngestParams, TokenizeParams
from tasks.caching import Store, kexue_task

if TYPE_CHECKING:
    import pyarrow as pa


@kexue_task("ingest")
def ingest_task(store: Store, params: IngestParams, source_fingerprints: list[str]) -> Manifest:
    """All sources → partitions. ``source_fingerprints`` (content hashes) make the cache key."""
    from kexue.text.ingest import ingest as run_ingest

    out = store.stage_dir("ingest", sha256_text(stable_json(params), *source_fingerprints))
    res = run_ingest(params, store.base_dir, out, partitions_dir=store.stage_dir("ingest") / "partitions")
    report = write_json_atomic(out / "report.json", res.report)
    return Manifest(
        stage="ingest",
        files={"quarantine": FileRef.of(res.quarantine), "conflicts": FileRef.of(res.conflicts), "report": FileRef.of(report)},
        partitions=res.partitions,
        metrics={k: v for k, v in res.report.items()},
    )


def _save_counts(directory: Path, table: pa.Table) -> FileRef:
    import pyarrow.parquet as pq

    return save_content_addressed(directory, ".parquet", lambda t: pq.write_table(table, t))


def _summed(partials: list[FileRef]) -> pa.Table:
    """The sum of partial count files (token, count, doc_freq)."""
    import pyarrow.parquet as pq

    from kexue.text import count as kcount

    return kcount.merge_partials([pq.read_table(p.path) for p in partials])


@kexue_task("tokenize-partition")
def tokenize_partition_task(store: Store, partition: FileRef, params: TokenizeParams) -> Manifest:
    """Tokens of one partition, and their counts — taken while the tokens are in memory."""
    import pyarrow.parquet as pq

    from kexue.text import tokenize as ktok

    table, counts, stats = ktok.tokenize_partition(partition.path, params)
    # no min/max statistics for the tokens: nothing filters on them, and over a million strings
    # they took half the time of writing the file
    stats_columns = [c for c in table.column_names if c != "tokens"]
    tokens = save_content_addressed(store.stage_dir("tokenize") / "partitions", ".parquet",
                                    lambda t: pq.write_table(table, t, write_statistics=stats_columns))
    return Manifest(stage="tokenize", partitions=[tokens], metrics=stats,
                    files={"counts": _save_counts(store.stage_dir("tokenize") / "counts", counts)})


@kexue_task("count-merge")
def merge_counts_task(store: Store, partials: list[FileRef]) -> FileRef:
    return _save_counts(store.stage_dir("count") / "partials", _summed(partials))


@kexue_task("vocabulary")
def vocabulary_task(store: Store, partials: list[FileRef]) -> Manifest:
    """Sum the last partials, rank, flag, plot."""
    from kexue.text import count as kcount

    vocab = kcount.vocabulary(_summed(partials))
    ref = save_content_addressed(store.stage_dir("count") / "vocabulary", ".parquet", lambda t: vocab.to_parquet(t, index=False))
    plot = kcount.plot_rank_frequency(vocab, store.stage_dir("count", ref.sha256) / "rank_frequency.png")
    return Manifest(stage="count", files={"vocabulary": ref, "rank_frequency_png": FileRef.of(plot)},
                    metrics=kcount.vocabulary_metrics(vocab))


def source_fingerprints(params: IngestParams, base_dir: str) -> list[str]:
    """Content hashes of the configured sources (computed where the flow runs)."""
    from kexue.text.sources import source_fingerprint

    return [source_fingerprint(s, Path(base_dir)) for s in params.sources]
