"""The gan stage's results: which run files it keeps, under which keys, and its runs table.

A variant's task returns files keyed ``s<seed>/<name>`` (its seeds train together); the
stage gathers every variant's into one manifest keyed ``<variant>/s<seed>/<name>``, which
the evaluation reads back. Both directions live here so the key format has one owner.
TensorFlow-free: the flow that gathers and the task that evaluates both import it.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# what the stage keeps of each run (the run folders hold the rest: TensorBoard events, a
# grid per evaluation); the grids only for the first seed of a variant
RUN_FILES = ("history", "samples_final", "generator", "generator_best")
GRID_FILES = ("grid_final", "grid_best")


def seed_key(seed: int, name: str) -> str:
    """A run file's key in its variant task's manifest."""
    return f"s{seed}/{name}"


def run_key(variant: str, seed: int, name: str) -> str:
    """A run file's key in the gan stage's manifest."""
    return f"{variant}/{seed_key(seed, name)}"


def parse_run_key(key: str) -> tuple[str, int, str]:
    """``(variant, seed, name)`` of a ``run_key``; a ValueError names a key of another form."""
    parts = key.split("/")
    if len(parts) != 3 or not parts[1].startswith("s") or not parts[1][1:].isdigit():
        raise ValueError(f"not a GAN run file key (<variant>/s<seed>/<name>): {key!r}")
    return parts[0], int(parts[1][1:]), parts[2]


def gather_runs(tasks: Sequence[tuple[str, Sequence[int], Mapping[str, Any], Mapping[str, Any]]],
                first_seed: int) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Every variant task's results → (the stage's kept files, the runs table, training seconds).

    ``tasks``: one ``(variant, seeds, files, metrics)`` per task, files keyed ``seed_key`` and
    metrics ``{"runs": {str(seed): run summary}}``. Seeds trained together share their
    seconds, so the total counts each task's once.
    """
    files: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    seconds = 0.0
    for variant, seeds, task_files, metrics in tasks:
        for seed in seeds:
            keep = RUN_FILES + (GRID_FILES if seed == first_seed else ())
            files.update({run_key(variant, seed, k): task_files[seed_key(seed, k)]
                          for k in keep if seed_key(seed, k) in task_files})
            run = metrics["runs"][str(seed)]
            best, final = run.get("best_eval") or {}, run.get("final_eval") or {}
            table.append({"variant": variant, "seed": seed, "steps": run["step"], "seeds_together": len(seeds),
                          "fid_final": final.get("fid"), "fid_best": best.get("fid"), "best_step": best.get("step"),
                          "seconds": round(run["seconds"], 1), "steps_per_second": run["steps_per_second"],
                          "resumed_from_step": run["resumed_from_step"]})
        seconds += metrics["runs"][str(seeds[0])]["seconds"]
    return files, table, round(seconds, 1)


def run_records(files: Mapping[str, str | Path]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The evaluation's inputs from the stage's files: one record per run and a sample file per variant.

    Records are ``{"variant", "seed", "history"}`` (the run's evaluation rows); the samples
    are each variant's first seed's final samples (for the side-by-side grid).
    """
    records, samples = [], {}
    for key in sorted(files):
        if key.count("/") != 2 or not key.endswith("/history"):
            continue
        variant, seed, _ = parse_run_key(key)
        history = json.loads(Path(files[key]).read_text())
        records.append({"variant": variant, "seed": seed, "history": history["eval"]})
        samples.setdefault(variant, str(files[run_key(variant, seed, "samples_final")]))
    return records, samples
