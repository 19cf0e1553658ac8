"""Runs with nothing to do: every selected stage up to date, answered without the orchestrator.

Why: a re-run with every stage cached still paid for starting the embedded Prefect API,
the Dask cluster and importing Prefect's client (about 13 s on 2 cores) to learn that
nothing had changed. ``kexue run`` now first asks this module, as ``make`` asks file
times: if each selected stage's *stage key* has a recorded result whose files are all
present with their recorded content hashes, the run is written (summary, report) from
those records in a second or two, with no API and no cluster. Anything else — a changed
parameter, source file or line of code, a missing or damaged artifact — goes through the
flow as before, where Prefect's per-task caches recompute only what changed.

A stage key is the hash of
* the code: every source file of the ``kexue``, ``tasks`` and ``flows`` packages (coarser
  than the per-task code versions of ``tasks.code_version``, and so never wrong: after an
  edit the first run goes through the flow and records the new keys);
* the stage's name, kind and validated parameters;
* the keys of the stages feeding it, by input role;
* what it reads from outside the pipeline: the content of ``ingest``'s sources and of the
  ``images`` source. A stage whose result depends on an earlier run (``jose`` with
  ``warm_start``) has no key and always runs through the flow.

Records live in ``data/cache/stages/<key>.json``, written by the flow as each stage completes.
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from flows.record import RunRecord, summarize_files
from kexue.core.artifacts import Manifest, sha256_file, sha256_text, stable_json, write_json_atomic
from kexue.core.config import Config

PACKAGES = ("kexue", "tasks", "flows")


def code_hash(packages: tuple[str, ...] = PACKAGES) -> str:
    """Hash of every ``.py`` file of ``packages`` (found where they are imported from)."""
    parts = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        for root in spec.submodule_search_locations or []:
            for path in sorted(Path(root).rglob("*.py")):
                parts.append(f"{package}/{path.relative_to(root).as_posix()}:{sha256_file(path)}")
    return sha256_text(*parts)


def _ingest_reads(params: BaseModel, base_dir: Path) -> str | None:
    from kexue.text.sources import source_fingerprint

    return sha256_text(*(source_fingerprint(s, base_dir) for s in params.sources))


def _images_reads(params: BaseModel, base_dir: Path) -> str | None:
    from kexue.gan.data import image_source_fingerprint

    return image_source_fingerprint(params.source, base_dir)


def _jose_reads(params: BaseModel, base_dir: Path) -> str | None:
    return None if params.warm_start else ""  # a warm start reads the previous run's vectors


# What a stage of each kind reads besides its inputs: a fingerprint, "" for nothing, None
# for "depends on an earlier run" (no key). Every registered kind must be listed
# (tests/test_uptodate.py), so a new kind of stage makes its author decide.
READS: dict[str, Callable[[BaseModel, Path], str | None]] = {
    "ingest": _ingest_reads,
    "tokenize": lambda p, b: "",
    "count": lambda p, b: "",
    "jose": _jose_reads,
    "graph": lambda p, b: "",
    "communities": lambda p, b: "",
    "images": _images_reads,
    "gan_train": lambda p, b: "",
    "gan_eval": lambda p, b: "",
}


def stage_keys(cfg: Config, stages: list[str], code: str | None = None) -> dict[str, str | None]:
    """The key of each of ``stages`` (in an order where inputs come first); None: no key."""
    code = code_hash() if code is None else code
    base_dir = Path(cfg.pipeline_path).parent
    keys: dict[str, str | None] = {}
    for name in stages:
        spec = cfg.pipeline.stages[name]
        upstream = {role: keys.get(up) for role, up in sorted(spec.inputs.items())}
        reads = READS[spec.task](cfg.params[name], base_dir)
        if reads is None or any(k is None for k in upstream.values()):
            keys[name] = None
            continue
        keys[name] = sha256_text(code, name, spec.task, stable_json(cfg.params[name].model_dump(mode="json")),
                                 *(f"{role}={k}" for role, k in upstream.items()), reads)
    return keys


def _record_path(data_dir: Path, key: str) -> Path:
    return Path(data_dir) / "cache" / "stages" / f"{key}.json"


def remember(data_dir: Path, key: str | None, manifest: Manifest) -> None:
    """Record that the stage with ``key`` produced ``manifest`` (nothing without a key)."""
    if key is not None:
        write_json_atomic(_record_path(data_dir, key), {"key": key, "manifest": manifest.to_dict(),
                                                        "recorded": dt.datetime.now().isoformat(timespec="seconds")})


def recorded(data_dir: Path, key: str | None) -> Manifest | None:
    """The manifest recorded for ``key`` if every one of its files is intact, else None."""
    if key is None:
        return None
    try:
        manifest = Manifest.from_dict(json.loads(_record_path(data_dir, key).read_text())["manifest"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return None if manifest.problems() else manifest


def record_if_up_to_date(cfg: Config, selected: list[str], order: list[str], run_id: str) -> RunRecord | None:
    """Write the run's record from the stages' recorded results if all of ``selected`` are up
    to date (``order``: pipeline.yaml's stage order); None, writing nothing, if any is not."""
    stages = [n for n in order if n in selected]
    keys = stage_keys(cfg, stages)
    manifests = {n: recorded(cfg.data_dir, keys[n]) for n in stages}
    if any(m is None for m in manifests.values()):
        return None
    record = RunRecord(cfg, run_id, selected)
    record.data["up_to_date"] = True  # answered from the stage records: no flow run, no cluster
    now = dt.datetime.now().isoformat(timespec="milliseconds")
    for name in stages:
        manifest: Manifest = manifests[name]
        entry: dict[str, Any] = {"name": name, "task": cfg.pipeline.stages[name].task, "status": "completed",
                                 "started": now, "finished": now, "seconds": 0.0, "cached": True,
                                 "files": summarize_files(manifest), "metrics": manifest.metrics}
        record.data["stages"].append(entry)
    record.close("completed")
    return record
