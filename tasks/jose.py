"""Prefect task for JoSE training: checkpointed, resumable, optionally warm-started."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from kexue.core.artifacts import FileRef, Manifest, sha256_text, stable_json, write_json_atomic
from kexue.embed.params import JoseParams
from tasks.caching import Store, kexue_task
from tasks.progress import emit


def previous_output(store: Store) -> Manifest | None:
    """The manifest of the last JoSE training that finished (for warm starts)."""
    pointer = store.stage_dir("jose") / "latest.json"
    if not pointer.exists():
        return None
    manifest = Manifest.from_dict(json.loads(pointer.read_text()))
    return None if manifest.problems() else manifest


def report_epoch(report) -> None:
    """One line per finished epoch, to the Prefect log and the CLI (``tasks.progress``)."""
    emit("jose", f"epoch {report.epoch}/{report.epochs}: {report.tokens_per_second:,.0f} tokens/s, "
                 f"loss {report.loss:.4f}, {report.seconds:.0f} s, ETA {report.eta_seconds:.0f} s", **asdict(report))


@kexue_task("jose", retries=0)
def jose_task(store: Store, tokens: Manifest, vocabulary: FileRef, params: JoseParams,
              warm_from: Manifest | None = None) -> Manifest:
    """Train JoSE on the tokens partitions. Checkpoints live in a folder keyed by the inputs,
    so a killed run resumes from its last finished epoch."""
    params = JoseParams.of(params)
    key = sha256_text(tokens.fingerprint(), vocabulary.sha256, stable_json(params), warm_from.fingerprint() if warm_from else "")
    out, checkpoints = store.stage_dir("jose", key), store.stage_dir("jose-checkpoints", key)
    warm_dir = str(Path(warm_from.files["u"].path).parent) if warm_from else None
    from kexue.embed.jose import train_jose_stage  # TensorFlow: imported by the JoSE task only, not by every worker

    result = train_jose_stage([p.path for p in tokens.partitions], vocabulary.path, str(out), params,
                              str(checkpoints), warm_start_dir=warm_dir, progress=report_epoch)
    manifest = Manifest.of_result("jose", result)
    write_json_atomic(store.stage_dir("jose") / "latest.json", manifest.to_dict())
    return manifest
