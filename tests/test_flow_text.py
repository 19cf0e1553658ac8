"""The text front half end to end: real LocalCluster, real Prefect API, real caching."""
from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # every test here runs the pipeline on a real cluster

STAGES = ["count"]  # and, through their dependencies, ingest and tokenize


def vocab_of(project, summary):
    return pd.read_parquet(project.stage(summary, "count")["files"]["vocabulary"])


def test_run_rerun_cached_and_parameter_change(project):
    first = project.run(STAGES)
    assert first["status"] == "completed"
    assert [s["name"] for s in first["stages"]] == ["ingest", "tokenize", "count"]
    assert not any(s["cached"] for s in first["stages"])
    assert (project.data / "runs" / "latest" / "summary.json").exists()
    assert (project.data / "runs" / first["run_id"] / "summary.json").exists()
    ing = project.stage(first, "ingest")["metrics"]
    assert ing["read"] == ing["kept"] + ing["duplicates"] + ing["quarantined"] == 2400
    tok = project.stage(first, "tokenize")
    assert tok["metrics"]["partitions"] >= 4  # small partitions: several Dask tasks
    assert 0.7 < tok["metrics"]["segmentation"]["f1"] < 0.95
    assert first["dashboard"].startswith("http://127.0.0.1:")
    assert len(first["workers"]) == 2

    # counts are exactly a plain Counter over the tokens the pipeline wrote
    tokens = pd.concat(pd.read_parquet(p) for p in tok["files"]["partitions"])
    plain = Counter(t for doc in tokens["tokens"] for t in doc)
    vocab = vocab_of(project, first)
    assert dict(zip(vocab["token"], vocab["count"])) == plain
    assert project.stage(first, "count")["metrics"]["vocabulary"] == len(plain)

    again = project.run(STAGES)
    assert [s["cached"] for s in again["stages"]] == [True, True, True]
    assert vocab_of(project, again).equals(vocab)

    changed = project.run(STAGES, overrides=["tokenize.hmm=false"])
    assert [s["cached"] for s in changed["stages"]] == [True, False, False]
    assert project.stage(changed, "tokenize")["metrics"]["partitions_cached"] == 0


def test_resume_after_injected_failure_in_count(project, monkeypatch):
    monkeypatch.setenv("KEXUE_INJECT_FAILURE", "count-partition")  # Dask workers inherit it
    with pytest.raises(Exception, match="count"):
        project.run(STAGES)
    failed = pd.read_json(project.data / "runs" / "latest" / "summary.json", typ="series")
    assert failed["status"] == "failed"
    assert [(s["name"], s["status"]) for s in failed["stages"]] == [("ingest", "completed"), ("tokenize", "completed"), ("count", "failed")]
    monkeypatch.delenv("KEXUE_INJECT_FAILURE")
    resumed = project.run(STAGES)
    assert [(s["name"], s["cached"]) for s in resumed["stages"]] == [("ingest", True), ("tokenize", True), ("count", False)]


def test_adding_one_file_retokenises_only_changed_partitions(project):
    folder = project.root / "corpus"
    for label in ("体育", "财经"):
        (folder / label).mkdir(parents=True)
    for i in range(200):
        label = "体育" if i % 2 else "财经"
        (folder / label / f"{i:04d}.txt").write_text(f"第{i}篇{label}新闻，今天的比赛和市场都很热闹。" * 10, encoding="utf-8")
    overrides = ["ingest.sources=[corpus]", "ingest.partition_bytes=20000"]
    first = project.run(STAGES, overrides=overrides)
    n = project.stage(first, "tokenize")["metrics"]["partitions"]
    assert n >= 8
    (folder / "体育" / "0100x.txt").write_text("新加的一篇体育新闻。" * 10, encoding="utf-8")
    second = project.run(STAGES, overrides=overrides)
    tok = project.stage(second, "tokenize")["metrics"]
    assert project.stage(second, "ingest")["cached"] is False
    assert tok["documents"] == 201
    assert tok["partitions"] - tok["partitions_cached"] in (1, 2)
    assert tok["partitions_cached"] >= n - 1
