"""Prefect task for JoSE training: checkpointed, resumable, optionally warm-started."""
from __future__ import annotations

import json
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


@kexue_task("jose", retries=0)
def jose_task(store: Store, tokens: Manifest, vocabulary: FileRef, params: JoseParams,
              warm_from: Manifest | None = None) -> Manifest:
    """Train JoSE on the tokens partitions. Checkpoints live in a folder keyed by the inputs,
    so a killed run resumes from its last finished epoch."""
    key = sha256_text(tokens.fingerprint(), vocabulary.sha256, stable_json(params), warm_from.fingerprint() if warm_from else "")
    out, checkpoints = store.stage_dir("jose", key), store.stage_dir("jose-checkpoints", key)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if total and done / total >= last[0] + 0.1:
            last[0] = done / total
            emit("jose", f"{100 * done / total:.0f}% of {total} tokens", done=done, total=total)

    config = params.model_dump(exclude={"warm_start"})
    warm_dir = str(Path(warm_from.files["u"].path).parent) if warm_from else None
    from kexue.embed.jose import train_jose_stage  # TensorFlow: imported by the JoSE task only, not by every worker

    result = train_jose_stage([p.path for p in tokens.partitions], vocabulary.path, str(out), config,
                              str(checkpoints), warm_start_dir=warm_dir, progress=progress)
    manifest = Manifest.of_result("jose", result)
    write_json_atomic(store.stage_dir("jose") / "latest.json", manifest.to_dict())
    return manifest
