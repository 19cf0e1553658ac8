"""The DAG runs as a DAG, a run shows its progress as it goes, and Ctrl-C stops it cleanly."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from kexue.core.dag import execute
from services import BIN


# ----------------------------------------------------------------------------- the executor
def test_execute_overlaps_independent_nodes_and_orders_dependent_ones():
    durations = {"a": 0.6, "b": 0.2, "c": 0.2, "d": 0.1}

    def run(name: str) -> str:
        time.sleep(durations[name])
        return name.upper()

    r = execute({"a": [], "b": [], "c": ["b"], "d": ["a", "c"]}, run)
    assert {n: x.value for n, x in r.items()} == {"a": "A", "b": "B", "c": "C", "d": "D"}
    assert r["b"].started < r["a"].finished and r["a"].started < r["b"].finished  # a and b at once
    assert r["c"].started >= r["b"].finished  # c waited for b, not for a
    assert r["c"].started < r["a"].finished
    assert r["d"].started >= max(r["a"].finished, r["c"].finished)


def test_dependents_start_before_the_bookkeeping_of_their_input():
    """on_done (the run record, Prefect artifacts: API calls) is off the critical path."""
    bookkept: dict[str, float] = {}

    def on_done(name: str, result) -> None:
        if name == "a":
            time.sleep(0.3)
        bookkept[name] = time.time()

    r = execute({"a": [], "b": ["a"]}, lambda name: name, on_done=on_done)
    assert r["b"].started >= r["a"].finished
    assert r["b"].started < bookkept["a"] - 0.2, (r["b"].started, bookkept["a"])


def test_a_failed_node_skips_its_dependents_and_spares_other_branches():
    def run(name: str) -> str:
        if name == "bad":
            raise ValueError("boom")
        return name

    done: list[tuple[str, str]] = []
    r = execute({"bad": [], "after": ["bad"], "later": ["after"], "other": []}, run,
                on_done=lambda n, x: done.append((n, x.status)))
    assert r["bad"].status == "failed" and isinstance(r["bad"].error, ValueError)
    assert (r["after"].status, r["after"].reason) == ("skipped", "input 'bad' failed")
    assert (r["later"].status, r["later"].reason) == ("skipped", "input 'after' skipped")
    assert r["other"].status == "completed"
    assert sorted(done) == sorted([("bad", "failed"), ("after", "skipped"), ("later", "skipped"), ("other", "completed")])


# ----------------------------------------------------------------------------- the flow
def _interval(stage: dict) -> tuple[float, float]:
    return datetime.fromisoformat(stage["started"]).timestamp(), datetime.fromisoformat(stage["finished"]).timestamp()


@pytest.mark.slow
def test_independent_branches_overlap_on_the_cluster_and_dependents_wait(project):
    overrides = ["gan.variants={cr1: {cascades: 1}}", "gan.train={steps: 40, eval_every: 20, eval_samples: 200}"]
    summary = project.run(["count", "gan"], overrides)
    stages = {s["name"]: s for s in summary["stages"]}
    assert set(stages) == {"ingest", "tokenize", "count", "images", "gan"}
    assert all(s["status"] == "completed" for s in stages.values())
    iv = {n: _interval(s) for n, s in stages.items()}
    # the GAN branch ran beside the text branch: each started before the other finished
    text = (iv["ingest"][0], iv["count"][1])
    gan = (iv["images"][0], iv["gan"][1])
    assert gan[0] < text[1] and text[0] < gan[1], iv
    # and every stage started only after its inputs finished
    for stage, inputs in {"tokenize": ["ingest"], "count": ["tokenize"], "gan": ["images"]}.items():
        assert all(iv[stage][0] >= iv[u][1] for u in inputs), (stage, iv)


# ----------------------------------------------------------------------------- the CLI
TINY = """\
data_dir: {data}
dask: {{n_workers: 2, threads_per_worker: 1, dashboard_address: "127.0.0.1:0"}}
prefect: {{api: environment}}
set:
  ingest.sources: [{{source: "builtin:peoples-daily-1998", limit: {limit}}}]
  ingest.partition_bytes: 60000
  jose.dim: 16
  jose.epochs: {epochs}
  jose.threads: 1
"""


def _cli(tmp_path: Path, stages: str, prefect_api: str, epochs: int = 2, limit: int = 800) -> tuple[list[str], dict]:
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY.format(data=tmp_path / "data", epochs=epochs, limit=limit))
    root = Path(__file__).resolve().parents[1]
    cmd = [str(BIN / "kexue"), "run", "--config", str(root / "pipeline.yaml"), "--profile", str(profile), "--stages", stages]
    return cmd, {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONUNBUFFERED": "1"}


def _lines(proc: subprocess.Popen) -> "queue.Queue[tuple[float, str, bool]]":
    """(time, line, was the process still running) for every stdout line, read in a thread."""
    q: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            q.put((time.time(), line.rstrip("\n"), proc.poll() is None))
        q.put(None)

    threading.Thread(target=read, daemon=True).start()
    return q


@pytest.mark.slow
def test_the_cli_streams_progress_while_the_run_goes(tmp_path, prefect_api):
    cmd, env = _cli(tmp_path, "jose", prefect_api)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    q = _lines(proc)
    seen: list[tuple[float, str, bool]] = []
    while (item := q.get(timeout=900)) is not None:
        seen.append(item)
    assert proc.wait(timeout=60) == 0, "\n".join(s[1] for s in seen[-40:])
    ended = time.time()
    text = [s[1] for s in seen]
    live = [s[1] for s in seen if s[2]]  # printed while the run was still going
    for stage in ("ingest", "tokenize", "count", "jose"):
        assert f"start   {stage}" in live, text
        assert any(t.split()[:2] in (["done", stage], ["cached", stage]) for t in live), (stage, text)
    assert any(t.startswith("  tokenize") or t.startswith("  jose:") for t in live), text  # inside the stages
    assert any(t.startswith("  jose: ") and "tokens" in t for t in live), text  # a worker's event, as it happened
    assert seen[0][0] < ended


def _session_processes(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


@pytest.mark.slow
def test_ctrl_c_during_training_ends_quickly_leaves_no_process_and_the_next_run_resumes(tmp_path, prefect_api):
    cmd, env = _cli(tmp_path, "jose", prefect_api, epochs=8, limit=4000)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a terminal gives a command
    q = _lines(proc)
    checkpoints = tmp_path / "data" / "artifacts" / "jose-checkpoints"
    text: list[str] = []
    deadline = time.time() + 900
    while time.time() < deadline and not any(checkpoints.glob("*/state.json")):
        try:
            item = q.get(timeout=0.5)
        except queue.Empty:
            continue
        assert item is not None, "the run ended before training started:\n" + "\n".join(text[-40:])
        text.append(item[1])
    assert any(checkpoints.glob("*/state.json")), text
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    t0 = time.time()
    code = proc.wait(timeout=30)
    took = time.time() - t0
    while (item := q.get(timeout=10)) is not None:
        text.append(item[1])
    assert took <= 10, f"took {took:.1f} s to stop"
    assert code == 128 + signal.SIGINT
    interrupted = [t for t in text if "interrupted" in t]
    assert interrupted == ["interrupted during jose; re-run to resume"], text[-20:]
    assert not any("Traceback" in t for t in text), text[-40:]
    time.sleep(1)
    assert _session_processes(proc.pid) == [], "orphans left behind"
    # the next run resumes from the checkpoint the interrupted one left
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "data" / "runs" / "latest" / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert [stages[n]["cached"] for n in ("ingest", "tokenize", "count")] == [True, True, True]
    assert stages["jose"]["metrics"]["resumed_from_epoch"] >= 1


STOP_CHILDREN = """
import sys, time
import psutil
from flows import runtime
from kexue.core.config import DaskSpec

if __name__ == "__main__":  # the fork server re-imports nothing from here
    runtime.start_local_cluster(DaskSpec(dashboard_address=":0"))
    time.sleep(1)
    runtime.stop_children()  # what the Ctrl-C handler does, while the cluster is up
    time.sleep(2)  # time for a nanny to (wrongly) restart its worker
    print("left:", len(psutil.Process().children(recursive=True)))
"""


def test_stopping_the_children_leaves_no_nanny_restarting_its_worker(tmp_path):
    """A nanny restarts a worker that exits. On Ctrl-C that restart either failed with a
    traceback (the fork server was already stopped) or forked a worker that outlived the run."""
    script = tmp_path / "stop_children.py"
    script.write_text(STOP_CHILDREN)
    out = subprocess.run([str(BIN / "python"), str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["left:", "0"], out.stdout + out.stderr[-3000:]
    assert "Restarting worker" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]


@pytest.mark.slow
def test_sigterm_to_a_run_with_its_own_api_ends_it_quickly_and_leaves_no_process(tmp_path):
    """SIGTERM (what `timeout`, systemd or `kill` send) while a stage runs. Prefect's flow engine
    installs its own SIGTERM handler; the run must still stop like on Ctrl-C, not hang on the
    API it has just lost. Here the run starts its own embedded API, as `make run` does."""
    cmd, env = _cli(tmp_path, "jose", "", epochs=8, limit=4000)
    env.pop("PREFECT_API_URL")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    q = _lines(proc)
    text: list[str] = []
    deadline = time.time() + 600
    while time.time() < deadline and not any(t.startswith("start   jose") for t in text):
        item = q.get(timeout=600)
        assert item is not None, "the run ended before jose started:\n" + "\n".join(text[-40:])
        text.append(item[1])
    os.killpg(proc.pid, signal.SIGTERM)
    t0 = time.time()
    try:
        code = proc.wait(timeout=60)
    finally:
        took = time.time() - t0
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    while (item := q.get(timeout=10)) is not None:
        text.append(item[1])
    assert took <= 10 and code == 128 + signal.SIGTERM, (f"{took:.1f} s, exit {code}", text[-20:])
    assert [t for t in text if "interrupted" in t] == ["interrupted during jose; re-run to resume"], text[-20:]
    time.sleep(1)
    assert _session_processes(proc.pid) == [], "orphans left behind"
