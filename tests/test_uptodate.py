"""A run with every stage up to date is answered from the stage records, without Prefect or
Dask; anything changed or damaged goes through the flow (``flows.uptodate``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import uptodate
from flows.registry import KINDS, load

ROOT = Path(__file__).resolve().parents[1]


def test_every_kind_of_stage_says_what_it_reads_from_outside_the_pipeline():
    assert set(uptodate.READS) == set(KINDS)


def _keys(tmp_path: Path, corpus: Path, *overrides: str, code: str = "code") -> dict[str, str | None]:
    cfg = load(ROOT / "pipeline.yaml", "local", [f"ingest.sources=[{corpus}]", *overrides])
    order = list(cfg.pipeline.stages)
    return uptodate.stage_keys(cfg, order, code=code)


def test_a_stage_key_follows_its_parameters_its_inputs_its_sources_and_the_code(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "今天天气很好"}\n', encoding="utf-8")
    base = _keys(tmp_path, corpus)
    assert all(isinstance(k, str) for k in base.values())

    changed = _keys(tmp_path, corpus, "count.merge_fanin=4")  # count and everything downstream of it
    assert {n for n in base if base[n] != changed[n]} == {"count", "jose", "graph", "communities"}

    corpus.write_text('{"text": "今天天气不好"}\n', encoding="utf-8")  # the source's content, not its name
    edited = _keys(tmp_path, corpus)
    assert {n for n in base if base[n] != edited[n]} == {"ingest", "tokenize", "count", "jose", "graph", "communities"}

    warm = _keys(tmp_path, corpus, "jose.warm_start=true")  # depends on an earlier run: no key, nor downstream
    assert warm["jose"] is None and warm["communities"] is None and warm["graph"] == edited["graph"]

    other_code = _keys(tmp_path, corpus, code="edited")
    assert all(other_code[n] != edited[n] for n in base)


def test_the_code_hash_covers_every_source_file_of_a_package_at_any_depth(tmp_path, monkeypatch):
    pkg = tmp_path / "kexue_hash_probe"
    (pkg / "deep").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = uptodate.code_hash(("kexue_hash_probe",))
    (pkg / "deep" / "x.py").write_text("X = 1\n")
    added = uptodate.code_hash(("kexue_hash_probe",))
    (pkg / "deep" / "x.py").write_text("X = 2\n")
    assert len({before, added, uptodate.code_hash(("kexue_hash_probe",))}) == 3
    assert uptodate.code_hash() == uptodate.code_hash(("kexue", "tasks", "flows"))


# The CLI in this process, reporting whether Prefect or Dask was imported on the way.
CLI = ("import json, sys\nsys.argv = ['kexue', 'run', '--config', sys.argv[1], '--profile', sys.argv[2], '--stages', 'count']\n"
       "from flows.cli import app\n"
       "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
       "print(json.dumps({m: m in sys.modules for m in ('prefect', 'distributed', 'tensorflow')}))")


@pytest.mark.slow
def test_a_rerun_with_nothing_to_do_needs_neither_prefect_nor_dask_and_damage_sends_it_through_the_flow(project, prefect_api):
    first = project.run(["count"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": prefect_api}

    def cli() -> tuple[str, dict, dict]:
        """(what it printed, which of Prefect / Dask / TensorFlow it imported, the run summary)"""
        out = subprocess.run([sys.executable, "-c", CLI, str(project.pipeline), str(project.profile)], cwd=project.root,
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return (out.stderr, json.loads(out.stdout.strip().splitlines()[-1]),
                json.loads((project.data / "runs" / "latest" / "summary.json").read_text()))

    text, imported, summary = cli()
    assert "up to date: ingest, tokenize, count" in text
    assert imported == {"prefect": False, "distributed": False, "tensorflow": False}
    assert summary["up_to_date"] and summary["status"] == "completed" and summary["flow_run_id"] is None
    assert [(s["name"], s["cached"], s["files"]) for s in summary["stages"]] == \
           [(s["name"], s["cached"] or True, s["files"]) for s in first["stages"]]
    assert (Path(summary["run_dir"]) / "report.html").exists()

    vocabulary = Path(project.stage(first, "count")["files"]["vocabulary"])
    with open(vocabulary, "ab") as f:  # damaged: the run must not answer from the record
        f.write(b"x")
    text, imported, summary = cli()
    assert "up to date" not in text and imported["prefect"]
    stages = {s["name"]: s for s in summary["stages"]}
    assert not summary.get("up_to_date") and summary["flow_run_id"]
    assert stages["ingest"]["cached"] and stages["tokenize"]["cached"] and not stages["count"]["cached"]

    text, _, summary = cli()  # repaired by the flow, and recorded again
    assert "up to date: ingest, tokenize, count" in text and summary["up_to_date"]
