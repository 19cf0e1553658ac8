"""Reliability: bad inputs, a killed worker, corrupted artifacts, concurrent runs, security basics."""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from services import BIN, Service, free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"


def make_bad_corpus(root: Path) -> Path:
    """Every kind of bad input the issue lists, next to a few good documents."""
    docs = root / "corpus"
    (docs / "新闻 体育").mkdir(parents=True)
    (docs / "财经").mkdir()
    good = docs / "新闻 体育"
    (good / "好 文档.txt").write_text("中国队在北京赢得了足球比赛。", encoding="utf-8")
    (good / "gb.txt").write_bytes("银行今天宣布降低利率。".encode("gb18030"))
    (good / "bom.txt").write_bytes(b"\xef\xbb\xbf" + "教育改革继续推进。".encode())
    (docs / "财经" / "huge.txt").write_text("经济增长" * 4_500_000, encoding="utf-8")  # one 54 MB line
    bad = docs / "财经"
    (bad / "invalid.txt").write_bytes("有效的开头".encode() + b"\xc3\x28" + "结尾".encode())
    (bad / "nul.txt").write_bytes("文本".encode() + b"\x00\x00")
    (bad / "picture.txt").write_bytes(PNG + os.urandom(200))
    (bad / "empty.txt").write_bytes(b"")
    (bad / "spaces.txt").write_text("   \n\n\t ")
    secret = bad / "secret.txt"
    secret.write_text("不可读")
    secret.chmod(0)
    (bad / "loop").symlink_to(docs)
    (root / "jsonl").mkdir()
    (root / "jsonl" / "d.jsonl").write_text('{"id": 1, "text": "第一条"}\n{"id": 2, "text": "断\n{"id": 3, "title": "无正文"}\n', encoding="utf-8")
    (root / "d.csv").write_text("id,text\n1,正常的一行\n2,多,出来,的\n", encoding="utf-8")
    return docs


def test_bad_inputs_are_ingested_or_quarantined_and_the_run_completes(project):
    make_bad_corpus(project.root)
    overrides = ["ingest.sources=[corpus, jsonl/d.jsonl, d.csv]"]
    summary = project.run(["count"], overrides)
    assert summary["status"] == "completed"
    ing = project.stage(summary, "ingest")
    m = ing["metrics"]
    assert m["read"] == m["kept"] + m["duplicates"] + m["quarantined"]
    q = pd.read_parquet(ing["files"]["quarantine"])
    reasons = {Path(loc.split(":")[0]).name: r for loc, r in zip(q["location"], q["reason"])}
    assert reasons["invalid.txt"].startswith("invalid UTF-8")
    assert reasons["nul.txt"] == "binary content (NUL bytes)"
    assert reasons["picture.txt"] == "binary file (PNG image)"
    assert reasons["empty.txt"] == reasons["spaces.txt"] == "empty text"
    assert "no read permission" in reasons["secret.txt"]
    assert reasons["loop"] == "symlinked folder not followed"
    structured = sorted(r for r in q["reason"] if "JSON" in r or "missing" in r or "ragged" in r)
    assert len(structured) == 3 and structured[0].startswith("invalid JSON: Unterminated string")
    assert structured[1:] == ["missing field 'text'", "ragged row: 4 fields, header has 2"]
    assert m["kept"] == 6  # 3 small docs + the huge line + 1 JSONL + 1 CSV row
    tokens = pd.concat(pd.read_parquet(p) for p in project.stage(summary, "tokenize")["files"]["partitions"])
    assert set(tokens["label"].dropna()) == {"新闻 体育", "财经"}
    vocab = pd.read_parquet(project.stage(summary, "count")["files"]["vocabulary"])
    counts = dict(zip(vocab["token"], vocab["count"]))
    assert counts.get("经济增长", 0) + counts.get("经济", 0) >= 4_500_000  # the 54 MB line was tokenised


def test_killed_worker_mid_tokenisation_still_gives_exact_counts(tmp_path, prefect_api):
    """SIGKILL one of two real `dask worker`s while tokenize runs; the survivor finishes it."""
    port = free_port()
    dask = str(BIN / "dask")
    env = dict(os.environ)
    scheduler = Service([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
                        env=env, log=tmp_path / "scheduler.log")
    workers = {}
    try:
        wait_port(port)
        for name in ("victim", "survivor"):
            workers[name] = Service([dask, "worker", f"tcp://127.0.0.1:{port}", "--name", name, "--nthreads", "1", "--no-nanny",
                                     "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(tmp_path / name)],
                                    env=env, log=tmp_path / f"{name}.log")
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as c:
            c.wait_for_workers(2, timeout=120)
        profile = tmp_path / "p.yaml"
        profile.write_text(f"data_dir: {tmp_path / 'data'}\ndask: {{address: 'tcp://127.0.0.1:{port}'}}\nprefect: {{api: environment}}\n"
                           "set:\n  ingest.sources: [{source: 'builtin:peoples-daily-1998', limit: 6000}]\n"
                           "  ingest.partition_bytes: 40000\n  tokenize.backend: jieba\n")
        from flows.pipeline import pipeline

        out: dict = {}
        run_id = "kill-worker"
        t = threading.Thread(target=lambda: out.update(summary=pipeline(str(ROOT / "pipeline.yaml"), str(profile), [], ["count"], run_id)))
        t.start()
        summary_path = tmp_path / "data" / "runs" / run_id / "summary.json"
        killed = False
        deadline = time.time() + 300
        while time.time() < deadline and t.is_alive():
            if summary_path.exists():
                stages = [s["name"] for s in json.loads(summary_path.read_text())["stages"]]
                if stages == ["ingest"]:  # ingest done, tokenize running
                    time.sleep(1.5)
                    os.kill(workers["victim"].pid, signal.SIGKILL)
                    killed = True
                    break
            time.sleep(0.1)
        t.join(timeout=600)
        assert killed, "tokenize finished before the worker could be killed"
        summary = out["summary"]
        assert summary["status"] == "completed"
        tok = next(s for s in summary["stages"] if s["name"] == "tokenize")
        assert "survivor" in tok["metrics"]["workers"]
        # identical to an undisturbed computation of the same partitions
        from kexue.text.tokenize import tokenize_partition

        ing = next(s for s in summary["stages"] if s["name"] == "ingest")
        expected = Counter()
        for p in ing["files"]["partitions"]:
            table, _ = tokenize_partition(p, {"backend": "jieba"})
            expected.update(t for doc in table.column("tokens").to_pylist() for t in doc)
        vocab = pd.read_parquet(next(s for s in summary["stages"] if s["name"] == "count")["files"]["vocabulary"])
        assert dict(zip(vocab["token"], vocab["count"])) == expected
    finally:
        for w in workers.values():
            w.stop()
        scheduler.stop()


def test_corrupted_artifact_is_detected_and_recomputed(project):
    first = project.run(["count"])
    tok_files = project.stage(first, "tokenize")["files"]["partitions"]
    victim = Path(tok_files[0])
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated on disk
    vocab = Path(project.stage(first, "count")["files"]["vocabulary"])
    vocab.write_bytes(b"garbage")
    second = project.run(["count"])
    tok = project.stage(second, "tokenize")
    assert tok["cached"] is False and tok["metrics"]["partitions_cached"] == len(tok_files) - 1
    assert any(str(victim) in r for r in tok["metrics"]["repaired"])
    assert victim.read_bytes() == good  # recomputed, same content at the same content address
    cnt = project.stage(second, "count")
    assert any("vocabulary" in r or str(vocab) in r for r in cnt["metrics"]["repaired"])
    assert pd.read_parquet(vocab)["count"].sum() == project.stage(first, "count")["metrics"]["tokens"]


def test_two_concurrent_runs_on_the_same_data_folder(project):
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # each CLI run starts its own embedded API, like two users would
    cmd = [str(BIN / "kexue"), "run", "--config", str(project.pipeline), "--profile", str(project.profile), "--stages", "count"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    runs = [json.loads(p.read_text()) for p in (project.data / "runs").glob("2*/summary.json")]
    assert len(runs) == 2 and all(r["status"] == "completed" for r in runs)
    # every artifact either run recorded is complete and matches its hash; no temp file left visible
    from kexue.core.artifacts import sha256_file

    for index in (project.data / "cache" / "index").glob("*.json"):
        entry = json.loads(index.read_text())
        for f in (entry["manifest"] or {}).get("files", {}).values():
            assert sha256_file(f["path"]) == f["sha256"]
        for f in (entry["manifest"] or {}).get("partitions", []):
            assert sha256_file(f["path"]) == f["sha256"]
    assert not [p for p in (project.data / "artifacts").rglob("*.tmp*")]
    a, b = (pd.read_parquet(next(s for s in r["stages"] if s["name"] == "count")["files"]["vocabulary"]) for r in runs)
    assert a.equals(b)


def test_security_basics():
    sources = [p for d in ("kexue", "flows", "tasks") for p in (ROOT / d).rglob("*.py")]
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), f"{path}: {node.func.id}() call"
            if isinstance(node, ast.Attribute) and node.attr in ("load", "unsafe_load", "full_load") and \
                    isinstance(node.value, ast.Name) and node.value.id == "yaml":
                pytest.fail(f"{path}: yaml.{node.attr} (use yaml.safe_load)")
            if isinstance(node, ast.keyword) and node.arg == "safe_mode":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is False), f"{path}: safe_mode=False"
    from kexue.core.config import DaskSpec

    assert DaskSpec().dashboard_address.startswith("127.0.0.1:")
    from flows.runtime import task_runner

    assert task_runner(DaskSpec()).cluster_kwargs["host"] == "127.0.0.1"
    for profile in ("local", "ci"):
        text = (ROOT / "conf" / f"{profile}.yaml").read_text()
        assert "0.0.0.0" not in text
