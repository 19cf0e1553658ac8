"""Operations end to end: deployments on a real Prefect server and worker, a real existing
Dask cluster, the dashboard during a run, and the report in headless Chromium."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from services import BIN, Service, free_port, wait_http, wait_port

ROOT = Path(__file__).resolve().parents[1]


def write_profile(path: Path, data_dir: Path, extra: str = "") -> Path:
    path.write_text(
        f"data_dir: {data_dir}\n"
        "dask: {n_workers: 2, threads_per_worker: 1, dashboard_address: '127.0.0.1:0'" + extra + "}\n"
        "prefect: {api: environment}\n"
        "set:\n"
        "  ingest.sources: [{source: 'builtin:peoples-daily-1998', limit: 400}, {source: 'builtin:reviews', limit: 400}]\n"
        "  ingest.partition_bytes: 30000\n")
    return path


def test_deployment_end_to_end(tmp_path):
    """prefect server → work pool → deploy prefect.yaml → worker → deployment run --watch."""
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", PWD=str(ROOT))
    env.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    prefect = str(BIN / "prefect")
    timings = {}
    t0 = time.perf_counter()
    server = Service([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, log=tmp_path / "server.log")
    worker = None
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout=180, service=server)
        timings["server_start"] = time.perf_counter() - t0

        def run(*args, timeout=300):
            t = time.perf_counter()
            r = subprocess.run([prefect, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            timings[" ".join(args[:2])] = time.perf_counter() - t
            assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            return r.stdout + r.stderr

        run("work-pool", "create", "kexue-pool", "--type", "process")
        out = run("--no-prompt", "deploy", "--all")
        assert "pipeline/nightly" in out and "pipeline/adhoc" in out
        nightly = run("deployment", "inspect", "pipeline/nightly")
        assert "0 3 * * *" in nightly  # the retraining schedule is registered

        t = time.perf_counter()
        worker = Service([prefect, "worker", "start", "--pool", "kexue-pool"], env=env, log=tmp_path / "worker.log")
        profile = write_profile(tmp_path / "e2e.yaml", tmp_path / "data")
        params = json.dumps({"profile": str(profile), "stages_to_run": ["count"]})
        out = run("deployment", "run", "pipeline/adhoc", "--params", params, "--watch", "--watch-timeout", "600", timeout=700)
        timings["deployment run --watch (incl. worker start)"] = time.perf_counter() - t
        assert "Completed" in out, out[-3000:] + worker.output()
        summary = json.loads((tmp_path / "data" / "runs" / "latest" / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert [s["name"] for s in summary["stages"]] == ["ingest", "tokenize", "count"]
    finally:
        if worker:
            worker.stop()
        server.stop()
        print("deployment path timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    assert server.proc.poll() is not None and (worker is None or worker.proc.poll() is not None)


def test_pipeline_on_an_existing_dask_cluster(tmp_path, prefect_api):
    """A real `dask scheduler` and two `dask worker`s; the pipeline connects by address."""
    port, dash = free_port(), free_port()
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="warning")
    dask = str(BIN / "dask")
    scheduler = Service([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", f"127.0.0.1:{dash}"],
                        env=env, log=tmp_path / "scheduler.log")
    workers = []
    try:
        wait_port(port)
        for name in ("kexue-w1", "kexue-w2"):
            workers.append(Service([dask, "worker", f"tcp://127.0.0.1:{port}", "--name", name, "--nthreads", "1",
                                    "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(tmp_path / name),
                                    "--preload", "tasks.warmup"],
                                   env=env, log=tmp_path / f"{name}.log"))
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as c:
            c.wait_for_workers(2, timeout=120)
        profile = tmp_path / "cluster.yaml"
        profile.write_text((ROOT / "conf" / "cluster.yaml").read_text().replace("tcp://127.0.0.1:8786", f"tcp://127.0.0.1:{port}")
                           .replace("data_dir: ./data", f"data_dir: {tmp_path / 'data'}")
                           + "set:\n  ingest.sources: [{source: 'builtin:peoples-daily-1998', limit: 600}]\n  ingest.partition_bytes: 20000\n")
        from flows.pipeline import pipeline

        summary = pipeline(str(ROOT / "pipeline.yaml"), str(profile), [], ["count"])
        assert summary["status"] == "completed"
        assert summary["workers"] == ["kexue-w1", "kexue-w2"]
        tok = next(s for s in summary["stages"] if s["name"] == "tokenize")
        assert tok["metrics"]["partitions"] >= 4
        assert set(tok["metrics"]["workers"]) == {"kexue-w1", "kexue-w2"}  # the work ran on those workers
        assert summary["dashboard"] == f"http://127.0.0.1:{dash}/status"
        assert wait_http(summary["dashboard"], timeout=30)
        # the documented preload ran, and text stages never made a worker import TensorFlow
        # (unpickling the flow imports flows.*; that must stay free of it)
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as c:
            loaded = c.run(lambda: {m: m in sys.modules for m in ("tasks.warmup", "tasks.text", "tensorflow")})
        assert len(loaded) == 2
        assert all(v == {"tasks.warmup": True, "tasks.text": True, "tensorflow": False} for v in loaded.values()), loaded
    finally:
        for w in workers:
            w.stop()
        scheduler.stop()


def test_dashboard_answers_during_run_and_report_renders_in_chromium(project):
    """GET the Dask dashboard's /status while the flow runs; then look at report.html as a person would."""
    from flows.pipeline import pipeline

    run_id = "dashboard-check"
    result: dict = {}

    def go():
        try:
            result["summary"] = pipeline(str(project.pipeline), str(project.profile), [], ["count"], run_id)
        except BaseException as e:  # surfaced below
            result["error"] = e

    thread = threading.Thread(target=go)
    thread.start()
    summary_path = project.data / "runs" / run_id / "summary.json"
    body = None
    deadline = time.time() + 300
    while time.time() < deadline and thread.is_alive():
        if summary_path.exists():
            data = json.loads(summary_path.read_text())
            if data.get("dashboard") and data["status"] == "running":
                with urllib.request.urlopen(data["dashboard"], timeout=30) as r:
                    assert r.status == 200
                    body = r.read().decode("utf-8", "replace")
                break
        time.sleep(0.2)
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    assert body is not None, "the run finished before the dashboard could be fetched"
    assert "Bokeh" in body or "bokeh" in body
    assert "error" not in body.lower().split("<title>")[1][:200]

    from kexue.browser import dump_dom, find_chromium, screenshot

    run_dir = project.data / "runs" / run_id
    report = run_dir / "report.html"
    assert report.exists()
    if find_chromium() is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    dom = dump_dom(report)
    assert f"kexue run {run_id}" in dom
    loaded = int(dom.split('data-images-loaded="')[1].split('"')[0])
    total = int(dom.split('data-images-total="')[1].split('"')[0])
    assert total >= 1 and loaded == total
    png = screenshot(report, run_dir / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
