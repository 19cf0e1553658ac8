"""The gan stage's file keys and runs table (kexue.gan.results): one owner for the key format."""
from __future__ import annotations

import json

import pytest

from kexue.gan.results import gather_runs, parse_run_key, run_key, run_records, seed_key


def _task(tmp_path, variant, seeds, fid):
    files, runs = {}, {}
    for seed in seeds:
        d = tmp_path / variant / f"s{seed}"
        d.mkdir(parents=True)
        for name in ("history", "samples_final", "generator", "generator_best", "grid_final", "grid_best", "tensorboard"):
            files[seed_key(seed, name)] = str(d / name)
        (d / "history").write_text(json.dumps({"eval": [{"step": 10, "fid": fid + seed}]}))
        runs[str(seed)] = {"step": 10, "seconds": 4.0, "steps_per_second": 2.5, "resumed_from_step": 0,
                           "final_eval": {"fid": fid + seed}, "best_eval": {"fid": fid + seed, "step": 10}}
    return variant, seeds, files, {"runs": runs}


def test_keys_round_trip_and_bad_keys_are_named():
    assert parse_run_key(run_key("cr4", 12, "history")) == ("cr4", 12, "history")
    for bad in ("cr4/history", "cr4/x12/history", "cr4/s/history", "a/b/c/d"):
        with pytest.raises(ValueError, match="not a GAN run file key"):
            parse_run_key(bad)


def test_gather_keeps_run_files_grids_for_the_first_seed_and_counts_shared_seconds_once(tmp_path):
    tasks = [_task(tmp_path, "cr1", [0, 1], 8.0), _task(tmp_path, "cr2", [0, 1], 9.0)]
    files, table, seconds = gather_runs(tasks, first_seed=0)
    assert "cr1/s0/grid_final" in files and "cr1/s1/grid_final" not in files
    assert "cr2/s1/generator_best" in files and not any(k.endswith("tensorboard") for k in files)
    assert [(r["variant"], r["seed"], r["fid_final"], r["seeds_together"]) for r in table] == [
        ("cr1", 0, 8.0, 2), ("cr1", 1, 9.0, 2), ("cr2", 0, 9.0, 2), ("cr2", 1, 10.0, 2)]
    assert seconds == 8.0  # two tasks of 4 s each, not four runs


def test_run_records_reads_every_history_and_one_sample_file_per_variant(tmp_path):
    files, _, _ = gather_runs([_task(tmp_path, "cr1", [0, 3], 8.0), _task(tmp_path, "dsm", [0, 3], 7.0)], first_seed=0)
    files["feature_net"] = str(tmp_path / "feature_net.keras")  # not a run file: skipped
    records, samples = run_records(files)
    assert sorted((r["variant"], r["seed"], r["history"][0]["fid"]) for r in records) == [
        ("cr1", 0, 8.0), ("cr1", 3, 11.0), ("dsm", 0, 7.0), ("dsm", 3, 10.0)]
    assert samples == {"cr1": files["cr1/s0/samples_final"], "dsm": files["dsm/s0/samples_final"]}
