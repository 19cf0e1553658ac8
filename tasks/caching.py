"""Content-based, self-verifying Prefect caching for every kexue task.

Prefect's default cache policy includes the flow-run id, so nothing would be reused
across runs. Here a task's cache key is built from

* the task's name and its *code version* (a hash of its own module's source and of every
  ``kexue`` module it imports, directly or transitively — derived from the import
  statements by ``tasks.code_version``, so editing the algorithm invalidates its cache),
* every parameter: manifests and file references by their content hashes, plain values
  by canonical JSON.

A cache hit whose files were deleted or corrupted would still be "Cached" in Prefect, so
before answering the key is checked against an index (``data/cache/index/<base>.json``)
that records the manifest the task produced: if any file is missing or its bytes no
longer hash to the recorded value, the key is bumped and the task recomputes — and says
so in the log and in the manifest's ``repaired`` metric.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefect import task
from pydantic import BaseModel

from kexue.core.artifacts import FileRef, Manifest, sha256_text, stable_json, write_json_atomic
from tasks.code_version import code_version
from kexue.core.memory import release_freed_memory

log = logging.getLogger("kexue.cache")


@dataclass(frozen=True)
class Store:
    """Where a run's artifacts live. Not part of cache keys: moving data_dir keeps caches valid."""

    data_dir: str
    base_dir: str  # the folder pipeline.yaml lives in; relative source paths start here

    def stage_dir(self, stage: str, key: str | None = None) -> Path:
        p = Path(self.data_dir) / "artifacts" / stage
        return p / key[:16] if key else p

    @property
    def index_dir(self) -> Path:
        return Path(self.data_dir) / "cache" / "index"


def fingerprint(value: Any) -> str:
    """A stable string for a parameter value, by content wherever the value points to files."""
    if isinstance(value, Store):
        return "store"
    if isinstance(value, Manifest):
        return value.fingerprint()
    if isinstance(value, FileRef):
        return value.sha256
    if isinstance(value, BaseModel):  # validated stage parameters: by their values
        return stable_json(value.model_dump(mode="json"))
    if isinstance(value, (list, tuple)):
        return sha256_text("list", *(fingerprint(v) for v in value))
    if isinstance(value, dict):
        return sha256_text("dict", *(f"{k}={fingerprint(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))))
    return stable_json(value)


def base_key(name: str, code: str, parameters: dict[str, Any]) -> str:
    return sha256_text(name, code, *(f"{k}={fingerprint(v)}" for k, v in sorted(parameters.items())))


def _store_of(parameters: dict[str, Any]) -> Store:
    stores = [v for v in parameters.values() if isinstance(v, Store)]
    if not stores:
        raise TypeError("a kexue task needs a Store parameter")
    return stores[0]


def _read_index(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def resolve_key(store: Store, base: str) -> str:
    """The Prefect cache key to use for ``base``: the recorded one unless its files went bad."""
    path = store.index_dir / f"{base}.json"
    entry = _read_index(path)
    if entry is None:
        write_json_atomic(path, {"key": base, "manifest": None, "repaired": None})
        return base
    manifest = entry.get("manifest")
    if manifest is not None:
        problems = Manifest.from_dict(manifest).problems()
        if problems:
            new_key = f"{base[:48]}-{uuid.uuid4().hex[:12]}"
            log.warning("cached artifact is damaged, recomputing (%s)", "; ".join(problems))
            write_json_atomic(path, {"key": new_key, "manifest": None, "repaired": problems})
            return new_key
    return entry["key"]


def worker_name() -> str | None:
    """Name of the Dask worker running the current task (None outside a worker)."""
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.name)
    except (ImportError, ValueError):
        return None


def kexue_task(name: str, **task_options) -> Callable:
    """Decorate a function returning a Manifest (or one FileRef) as a cached, verified Prefect task.

    Its code version is derived from the function's imports (``tasks.code_version``).
    """

    def decorate(fn: Callable[..., Manifest | FileRef]):
        sig = inspect.signature(fn)

        def parameters_of(args, kwargs) -> dict[str, Any]:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            return dict(bound.arguments)

        def cache_key_fn(context, parameters: dict[str, Any]) -> str:
            store = _store_of(parameters)
            return resolve_key(store, base_key(name, code_version(fn), parameters))

        @functools.wraps(fn)
        def run(*args, **kwargs) -> Manifest | FileRef:
            parameters = parameters_of(args, kwargs)
            store = _store_of(parameters)
            base = base_key(name, code_version(fn), parameters)
            index = store.index_dir / f"{base}.json"
            entry = _read_index(index) or {"key": base, "repaired": None}
            if os.environ.get("KEXUE_INJECT_FAILURE") == name:  # fault-injection hook for resume tests
                raise RuntimeError(f"injected failure in task {name!r} (KEXUE_INJECT_FAILURE)")
            try:
                result = fn(*args, **kwargs)
            finally:
                release_freed_memory()  # the worker keeps running other tasks (kexue.core.memory)
            recorded = result if isinstance(result, Manifest) else Manifest(stage=name, partitions=[result])
            if isinstance(result, Manifest):
                result.metrics.setdefault("worker", worker_name())
                if entry.get("repaired"):
                    result.metrics["repaired"] = entry["repaired"]
            write_json_atomic(index, {"key": entry["key"], "manifest": recorded.to_dict(), "repaired": entry.get("repaired")})
            return result

        options = {"persist_result": True, "cache_key_fn": cache_key_fn, "retries": 1, "retry_delay_seconds": 1}
        options.update(task_options)
        t = task(name=name, **options)(run)
        t.base_key_for = lambda *a, **k: base_key(name, code_version(fn), parameters_of(a, k))  # for tests/tools
        return t

    return decorate
