"""Operations end to end: deployments on a real Prefect server and worker, a real existing
Dask cluster, the dashboard during a run, and the report in headless Chromium."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from services import BIN, WORKER_ENV, Service, free_port, loopback_only, wait_http, wait_port

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


def project_copy(root: Path) -> Path:
    """The checkout as a user has it, in a throw-away folder: the configs copied (so the ci
    profile's relative data_dir lands here), the code linked (it is the entrypoint's path)."""
    root.mkdir()
    for name in ("pipeline.yaml", "prefect.yaml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "conf", root / "conf")
    for name in ("flows", "tasks", "kexue"):
        (root / name).symlink_to(ROOT / name)
    return root


def artifacts_of(client, flow_run_id: str) -> dict[str, object]:
    """The artifacts a flow run published, read back from the API: key -> artifact."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found}


def table_rows(artifact) -> list[dict]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def scheduled_runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))


@pytest.mark.slow
@pytest.mark.timeout(2700)  # the whole DAG on the ci profile, behind a server, a worker and a flow-run process
def test_nightly_deployment_runs_end_to_end_and_is_scheduled(tmp_path):
    """prefect server → `kexue deploy` → worker → `deployment run pipeline/nightly --param profile=ci`;
    the server holds future runs from the cron; every stage's artifacts read back from the API."""
    import datetime as dt

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    project = project_copy(tmp_path / "checkout")
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api, PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PWD=str(project))
    env.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    prefect, kexue = str(BIN / "prefect"), str(BIN / "kexue")
    timings = {}
    t0 = time.perf_counter()
    server = Service([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, log=tmp_path / "server.log")
    worker = None
    try:
        wait_http(f"{api}/health", timeout=180, service=server)
        timings["server start"] = time.perf_counter() - t0

        def run(*args, timeout=300):
            t = time.perf_counter()
            r = subprocess.run(list(args), env=env, cwd=project, capture_output=True, text=True, timeout=timeout)
            timings[" ".join(Path(args[0]).name.split() + list(args[1:3]))] = time.perf_counter() - t
            assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            return r.stdout + r.stderr

        out = run(kexue, "deploy")  # the README's step 2: work pool + `prefect deploy --all`
        assert "pipeline/nightly" in out and "pipeline/adhoc" in out and "prefect worker start --pool kexue-pool" in out

        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            nightly = client.read_deployment_by_name("pipeline/nightly")
            assert nightly.parameters == {"config": "pipeline.yaml", "profile": "local"}
            # the server's scheduler turns the cron into future runs (it looks at new deployments every few seconds)
            deadline = time.time() + 120
            while not (future := scheduled_runs(client, nightly.id)) and time.time() < deadline:
                time.sleep(1)
            starts = sorted(r.expected_start_time.astimezone(dt.timezone.utc) for r in future)
            now = dt.datetime.now(dt.timezone.utc)
            assert len(starts) >= 3, starts
            assert all(s > now and (s.hour, s.minute, s.second) == (3, 0, 0) for s in starts), starts
            assert all(b - a == dt.timedelta(days=1) for a, b in zip(starts, starts[1:])), starts
            assert all(r.parameters == {} or r.parameters == nightly.parameters for r in future)
            # keep a real 03:00 from firing a full local-profile run on this worker: deactivate the schedule
            (schedule,) = client.read_deployment_schedules(nightly.id)
            assert schedule.schedule.cron == "0 3 * * *"
            client.update_deployment_schedule(nightly.id, schedule.id, active=False)
            deadline = time.time() + 30
            while scheduled_runs(client, nightly.id) and time.time() < deadline:
                time.sleep(0.5)
            assert not scheduled_runs(client, nightly.id)

        t = time.perf_counter()
        worker = Service([prefect, "worker", "start", "--pool", "kexue-pool"], env=env, cwd=project, log=tmp_path / "worker.log")
        out = run(prefect, "deployment", "run", "pipeline/nightly", "--param", "profile=ci",
                  "--watch", "--watch-timeout", "1800", timeout=1900)
        timings["nightly run --watch (incl. worker start)"] = time.perf_counter() - t
        assert "Completed" in out, out[-3000:] + worker.output()
        summary = json.loads((project / "data" / "ci" / "runs" / "latest" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["profile"] == "ci"
        names = ["ingest", "tokenize", "count", "jose", "graph", "communities", "images", "gan", "gan_eval"]
        assert sorted(s["name"] for s in summary["stages"]) == sorted(names)  # recorded as they finish
        assert not any(s["cached"] for s in summary["stages"])

        # what the run published, read back from the API
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            found = artifacts_of(client, summary["flow_run_id"])
        for stage in summary["stages"]:
            key = stage["name"].replace("_", "-")
            table = {r["metric"]: r["value"] for r in table_rows(found[f"{key}-metrics"])}
            assert table["status"] == "completed" and table["cached"] is False, (key, table)
            assert f"# {stage['name']}: files" in found[f"{key}-files"].data
        count = next(s for s in summary["stages"] if s["name"] == "count")
        assert {r["metric"]: r["value"] for r in table_rows(found["count-metrics"])}["vocabulary"] == count["metrics"]["vocabulary"]
        assert count["files"]["vocabulary"] in found["count-files"].data
        assert f"({summary['dashboard']})" in found["dask-dashboard"].data  # a markdown link to it
        assert {r["variant"] for r in table_rows(found["gan-eval-evaluation"])} == {"cr1", "cr2"}
        assert table_rows(found["communities-top-modules"])

        # the README's ad-hoc command, verbatim but for the stages: everything comes from the nightly's cache
        out = run(prefect, "deployment", "run", "pipeline/adhoc", "--param", "profile=ci", "--param", 'stages_to_run=["count"]',
                  "--watch", "--watch-timeout", "600", timeout=700)
        assert "Completed" in out, out[-3000:] + worker.output()
        adhoc = json.loads((project / "data" / "ci" / "runs" / "latest" / "summary.json").read_text())
        assert [(s["name"], s["cached"]) for s in adhoc["stages"]] == [("ingest", True), ("tokenize", True), ("count", True)]
    finally:
        if worker:
            worker.stop()
        server.stop()
        print("deployment path timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    assert server.proc.poll() is not None and (worker is None or worker.proc.poll() is not None)


@pytest.mark.slow
def test_pipeline_on_an_existing_dask_cluster(tmp_path, prefect_api):
    """A real `dask scheduler` and two `dask worker`s; the pipeline connects by address."""
    port, dash = free_port(), free_port()
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="warning", **WORKER_ENV)
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
            loaded = c.run(lambda: {m: m in sys.modules for m in ("tasks.warmup", "tasks.text", "tasks.plot_warmup", "tensorflow")})
        assert len(loaded) == 2
        assert all(v == {"tasks.warmup": True, "tasks.text": True, "tasks.plot_warmup": True, "tensorflow": False} for v in loaded.values()), loaded
    finally:
        for w in workers:
            w.stop()
        scheduler.stop()


@pytest.mark.slow
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
                # every server of the run — Dask scheduler, dashboard, workers, nannies, and the
                # session's Prefect API — is a process of this tree; all listen on loopback only
                import psutil

                tree = [os.getpid()] + [c.pid for c in psutil.Process().children(recursive=True)]
                listening, elsewhere = loopback_only(tree, by="pid")
                break
        time.sleep(0.2)
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    assert body is not None, "the run finished before the dashboard could be fetched"
    assert "Bokeh" in body or "bokeh" in body
    assert "error" not in body.lower().split("<title>")[1][:200]

    from kexue.browser import dump_dom, find_chromium

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
    ports = {int(a.rsplit(":", 1)[1]) for a in listening}
    api_port = int(os.environ["PREFECT_API_URL"].split(":")[2].split("/")[0])
    assert not elsewhere and {dashboard_port(summary_path), api_port} <= ports, (listening, elsewhere)
    # `kexue report --screenshot`, as a user types it: regenerates the latest run's page and a PNG of it
    os.remove(report)
    r = subprocess.run([str(BIN / "kexue"), "report", "--config", str(project.pipeline), "--profile", str(project.profile), "--screenshot"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    png = run_dir / "report.png"
    assert f"report: {report}" in r.stderr and f"screenshot: {png}" in r.stderr, r.stderr
    assert report.exists() and f"kexue run {run_id}" in report.read_text(encoding="utf-8")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def dashboard_port(summary_path: Path) -> int:
    return int(json.loads(summary_path.read_text())["dashboard"].split(":")[2].split("/")[0])
