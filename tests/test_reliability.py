"""Reliability: bad inputs, a killed worker, corrupted artifacts, concurrent runs, security basics."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services import BIN, WORKER_ENV, Service, free_port, loopback_only, wait_port

ROOT = Path(__file__).resolve().parents[1]


def write_binary_files(folder: Path) -> dict[str, str]:
    """Real files of each binary kind docs/reliability.md names, saved as .txt; name -> reason."""
    import gzip
    import io
    import sys
    import zipfile

    from PIL import Image

    def image(fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format=fmt)
        return buf.getvalue()

    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("新闻.txt", "压缩包里的文本")
    with open(os.path.realpath(sys.executable), "rb") as f:
        elf = f.read(8192)
    kinds = {
        "picture.txt": (image("PNG"), "PNG image"),
        "photo.txt": (image("JPEG"), "JPEG image"),
        "anim.txt": (image("GIF"), "GIF image"),
        "paper.txt": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n", "PDF document"),
        "archive.txt": (zipped.getvalue(), "ZIP archive"),
        "packed.txt": (gzip.compress("压缩的中文文本".encode() * 50), "gzip archive"),
        "program.txt": (elf, "ELF executable"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in kinds.items():
        (folder / name).write_bytes(data)
    return {name: f"binary file ({kind})" for name, (_, kind) in kinds.items()}


def test_binary_files_of_every_documented_kind_are_quarantined(tmp_path):
    from kexue.text.sources import Doc, SourceSpec, read_source

    expected = write_binary_files(tmp_path / "docs" / "杂项")
    (tmp_path / "docs" / "杂项" / "ok.txt").write_text("正常的中文文本。", encoding="utf-8")
    records = list(read_source(SourceSpec(source="docs"), tmp_path))
    assert [r.text for r in records if isinstance(r, Doc)] == ["正常的中文文本。"]
    got = {Path(r.location).name: r.reason for r in records if not isinstance(r, Doc)}
    assert got == expected


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
    binary = write_binary_files(bad)
    (bad / "empty.txt").write_bytes(b"")
    (bad / "spaces.txt").write_text("   \n\n\t ")
    secret = bad / "secret.txt"
    secret.write_text("不可读")
    secret.chmod(0)
    (bad / "loop").symlink_to(docs)
    (root / "jsonl").mkdir()
    (root / "jsonl" / "d.jsonl").write_text('{"id": 1, "text": "第一条"}\n{"id": 2, "text": "断\n{"id": 3, "title": "无正文"}\n', encoding="utf-8")
    (root / "d.csv").write_text("id,text\n1,正常的一行\n2,多,出来,的\n", encoding="utf-8")
    return docs, binary


@pytest.mark.slow
def test_bad_inputs_are_ingested_or_quarantined_and_the_run_completes(project):
    _, binary = make_bad_corpus(project.root)
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
    assert {name: reasons[name] for name in binary} == binary  # PNG, JPEG, GIF, PDF, ZIP, gzip, ELF
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


def executing(client, address: str) -> list[str]:
    """Keys of the tasks the worker at ``address`` is executing right now (its own state)."""
    return client.run(lambda dask_worker: [str(k) for k, ts in dask_worker.state.tasks.items() if ts.state == "executing"],
                      workers=[address])[address]


@pytest.mark.slow
def test_killed_worker_mid_tokenisation_still_gives_exact_counts(tmp_path, prefect_api):
    """SIGKILL one of two real `dask worker`s while it executes a tokenize task; the survivor
    recomputes what was lost and the counts equal an undisturbed computation."""
    port = free_port()
    dask = str(BIN / "dask")
    env = dict(os.environ, **WORKER_ENV)
    scheduler = Service([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
                        env=env, log=tmp_path / "scheduler.log")
    workers, monitor = {}, None
    try:
        wait_port(port)
        for name in ("victim", "survivor"):
            workers[name] = Service([dask, "worker", f"tcp://127.0.0.1:{port}", "--name", name, "--nthreads", "1", "--no-nanny",
                                     "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(tmp_path / name)],
                                    env=env, log=tmp_path / f"{name}.log")
        from distributed import Client

        monitor = Client(f"tcp://127.0.0.1:{port}", timeout=60)
        monitor.wait_for_workers(2, timeout=120)
        address = {w["name"]: a for a, w in monitor.scheduler_info(n_workers=-1)["workers"].items()}
        profile = tmp_path / "p.yaml"
        profile.write_text(f"data_dir: {tmp_path / 'data'}\ndask: {{address: 'tcp://127.0.0.1:{port}'}}\nprefect: {{api: environment}}\n"
                           "set:\n  ingest.sources: [{source: 'builtin:peoples-daily-1998', limit: 6000}]\n"
                           "  ingest.partition_bytes: 40000\n  tokenize.backend: jieba\n")
        from flows.pipeline import pipeline

        out: dict = {}

        def run() -> None:
            try:
                out["summary"] = pipeline(str(ROOT / "pipeline.yaml"), str(profile), [], ["count"], "kill-worker")
            except Exception as e:  # surfaced below
                out["error"] = e

        t = threading.Thread(target=run)
        t.start()
        lost = None
        deadline = time.time() + 600
        while time.time() < deadline and t.is_alive() and lost is None:
            # ask the victim itself, then kill it at once: the kill lands while it holds a tokenize task
            running = [k for k in executing(monitor, address["victim"]) if k.startswith("tokenize_partition_task-")]
            if running:
                os.kill(workers["victim"].pid, signal.SIGKILL)
                killed_at, lost = time.time(), running[0]
            else:
                time.sleep(0.02)
        assert lost, "the victim never executed a tokenize task"
        assert workers["victim"].proc.wait(timeout=60) == -signal.SIGKILL
        t.join(timeout=900)
        assert "error" not in out, out.get("error")
        summary = out["summary"]
        assert summary["status"] == "completed"
        # the lost task was computed again, on the survivor, after the kill
        story = monitor.run(lambda dask_worker, key=lost: [tuple(map(str, e)) for e in dask_worker.state.story(key)],
                            workers=[address["survivor"]])[address["survivor"]]
        finished = [float(e[-1]) for e in story if e[1:3] == ("executing", "memory")]
        assert finished and min(finished) > killed_at, story
        tok = next(s for s in summary["stages"] if s["name"] == "tokenize")
        assert "survivor" in tok["metrics"]["workers"]
        # identical to an undisturbed computation of the same partitions
        from kexue.text.tokenize import tokenize_partition

        ing = next(s for s in summary["stages"] if s["name"] == "ingest")
        expected = Counter()
        for p in ing["files"]["partitions"]:
            table = tokenize_partition(p, {"backend": "jieba"}).table
            expected.update(t for doc in table.column("tokens").to_pylist() for t in doc)
        vocab = pd.read_parquet(next(s for s in summary["stages"] if s["name"] == "count")["files"]["vocabulary"])
        assert dict(zip(vocab["token"], vocab["count"])) == expected
    finally:
        if monitor is not None:
            monitor.close()
        for w in workers.values():
            w.stop()
        scheduler.stop()


def damage_warnings(capfd) -> list[str]:
    """The console lines (stdout/stderr of this process and the Dask workers it started) that
    report a damaged cached artifact."""
    out, err = capfd.readouterr()
    return [line for line in (out + err).splitlines() if "cached artifact is damaged" in line]


def api_warnings(flow_run_id: str, needle: str, expected: int, timeout: float = 30) -> list[str]:
    """Warnings containing ``needle`` that the run sent to the Prefect API (what the UI shows),
    read back with the client; waits for ``expected`` of them (workers send logs in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel

    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(level=LogFilterLevel(ge_=30), flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            found = [log.message for log in logs if needle in log.message]
            if len(found) >= expected or time.time() > deadline:
                return found
            time.sleep(1)


@pytest.mark.slow
def test_corrupted_artifact_is_detected_and_recomputed(project, capfd):
    first = project.run(["jose"])
    tok_files = project.stage(first, "tokenize")["files"]["partitions"]
    victim = Path(tok_files[0])
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated on disk
    vocab = Path(project.stage(first, "count")["files"]["vocabulary"])
    vocab.write_bytes(b"garbage")
    u = Path(project.stage(first, "jose")["files"]["u"])
    u_good = np.load(u)
    u.write_bytes(u.read_bytes()[:-8] + bytes(8))  # a JoSE output overwritten in place, same size
    capfd.readouterr()
    second = project.run(["jose"])
    # said once per damaged file, one line each, on the console and in the run's Prefect log
    lines = damage_warnings(capfd)
    assert len(lines) == 3 and all(any(str(f) in line for line in lines) for f in (victim, vocab, u)), lines
    logged = api_warnings(second["flow_run_id"], "cached artifact is damaged", 3)
    assert len(logged) == 3 and all("\n" not in m for m in logged), logged
    jose = project.stage(second, "jose")
    # recomputed from its last epoch checkpoint (renormalised on load: equal to float rounding)
    assert jose["cached"] is False and jose["metrics"]["resumed_from_epoch"] == jose["metrics"]["epochs"]
    np.testing.assert_allclose(np.load(u), u_good, rtol=0, atol=1e-6)
    tok = project.stage(second, "tokenize")
    assert tok["cached"] is False and tok["metrics"]["partitions_cached"] == len(tok_files) - 1
    assert any(str(victim) in r for r in tok["metrics"]["repaired"])
    assert victim.read_bytes() == good  # recomputed, same content at the same content address
    cnt = project.stage(second, "count")
    assert any("vocabulary" in r or str(vocab) in r for r in cnt["metrics"]["repaired"])
    assert pd.read_parquet(vocab)["count"].sum() == project.stage(first, "count")["metrics"]["tokens"]


@pytest.mark.slow
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


# Lines that must each be caught: the bypasses of a check for ``yaml.load`` alone.
PLANTED = [
    "import yaml\nyaml.load(open('p'))",
    "import yaml\nyaml.load_all(open('p'))",
    "import yaml\nyaml.unsafe_load(s)",
    "import yaml\nyaml.full_load(s)",
    "import yaml\nyaml.load(s, Loader=yaml.Loader)",
    "from yaml import load\nload(s)",
    "from yaml import load_all as read\nread(s)",
    "from yaml import *",
    "import yaml as y\ny.load(s)",
    "import yaml.constructor\nyaml.constructor.UnsafeConstructor",
    "import yaml\ngetattr(yaml, 'load')(s)",
    "import yaml\nparse = yaml\nparse.load(s)",
    "import importlib\nimportlib.import_module('yaml').load(s)",
    "__import__('yaml').load(s)",
    "eval(text)",
    "exec(code)",
    "import builtins\nbuiltins.eval(text)",
    "run = eval\nrun(text)",
    "import builtins\ngetattr(builtins, 'exec')(code)",
    "keras.models.load_model(p, safe_mode=False)",
    "keras.models.load_model(p, safe_mode=flag)",
    "keras.models.load_model(p, **{'safe_mode': False})",
    "options = {'safe_mode': False}\nkeras.models.load_model(p, **options)",
    "np.load(p, allow_pickle=True)",
]
SAFE = "import yaml\nfrom yaml import safe_load\nyaml.safe_load(s)\nyaml.safe_load_all(s)\nexcept_ = yaml.YAMLError\n" \
       "keras.models.load_model(p, safe_mode=True)\nnp.load(p, allow_pickle=False)\nevaluate(x)\n"


@pytest.mark.parametrize("line", PLANTED)
def test_security_scan_catches_every_bypass_of_safe_loading(line):
    from source_scan import findings

    assert findings(line), f"not caught: {line!r}"


def test_security_scan_passes_the_safe_forms():
    from source_scan import findings

    assert findings(SAFE) == []


def test_security_basics():
    from source_scan import scan_tree

    assert scan_tree(ROOT, ("kexue", "flows", "tasks", "benchmarks")) == []
    from kexue.core.config import DaskSpec

    assert DaskSpec().dashboard_address.startswith("127.0.0.1:")
    from flows.runtime import task_runner

    assert task_runner(DaskSpec()).cluster_kwargs["host"] == "127.0.0.1"
    for profile in ("local", "ci"):
        text = (ROOT / "conf" / f"{profile}.yaml").read_text()
        assert "0.0.0.0" not in text
    # the documented commands start servers on loopback
    import re

    for doc in ("README.md", "prefect.yaml", "conf/cluster.yaml"):
        starts = re.findall(r"(?:prefect server start|dask scheduler)[^\n]*", (ROOT / doc).read_text(encoding="utf-8"))
        assert starts and all("--host 127.0.0.1" in line for line in starts), (doc, starts)
    # the check below can fail: a socket on all interfaces is reported
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        assert loopback_only({s.getsockname()[1]})[1]


@pytest.mark.slow  # the session's embedded API takes tens of seconds to start; the slow tests share it
def test_embedded_prefect_api_listens_on_loopback_only(prefect_api):
    """flows.runtime.embedded_api (the session's API, as `kexue run` starts it): its real socket."""
    port = int(prefect_api.split(":")[2].split("/")[0])
    loop, other = loopback_only({port})
    assert loop and not other, (loop, other)
