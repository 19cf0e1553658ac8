"""What a run pays before its first stage: `kexue check` stays light, the embedded API's
database is migrated once, and `kexue run`'s workers start and stop without waiting."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from services import BIN

ROOT = Path(__file__).resolve().parents[1]


def test_kexue_check_imports_neither_tensorflow_nor_prefect():
    code = ("import json, sys\nsys.argv = ['kexue', 'check']\nfrom flows.cli import app\n"
            "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(json.dumps({m: m in sys.modules for m in ('tensorflow', 'keras', 'prefect', 'distributed')}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"tensorflow": False, "keras": False, "prefect": False,
                                                               "distributed": False}


def test_clients_of_the_embedded_api_get_a_one_root_ca_file_unless_tls_is_configured(tmp_path, monkeypatch):
    """Prefect parses its CA file for every client, twice per task run: for the plain-HTTP
    loopback API the file holds one root, so that costs ~1 ms instead of ~40."""
    import ssl

    from flows.runtime import loopback_tls_environment

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", raising=False)
    env = loopback_tls_environment()
    ca = Path(env["PREFECT_API_SSL_CERT_FILE"])
    assert ca.parent == tmp_path / "home" and ca.read_text().count("BEGIN CERTIFICATE") == 1
    ssl.create_default_context(cafile=str(ca))  # a CA file Prefect can load
    assert loopback_tls_environment() == env  # written once, reused
    monkeypatch.setenv("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "true")
    assert loopback_tls_environment() == {}  # the user's TLS choice stands


@pytest.mark.slow
def test_the_embedded_api_migrates_its_database_once(tmp_path, monkeypatch):
    from flows.runtime import EmbeddedAPI

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)

    def start_and_query() -> bool:
        """Start the API, query it, stop it; whether it started without migrating."""
        api = EmbeddedAPI(timeout=300)
        skipped_migrations = api.migrated
        try:
            url = api.start().wait()
            req = urllib.request.Request(f"{url}/flow_runs/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:  # the schema is there: a real query answers
                assert r.status == 200 and json.loads(r.read()) == []
        finally:
            api.stop()
        return skipped_migrations

    assert not start_and_query()
    marker = json.loads((tmp_path / "home" / EmbeddedAPI.MARKER).read_text())
    assert marker["prefect"] == importlib.metadata.version("prefect") and marker["database"].endswith("prefect.db")
    assert start_and_query()  # the second start skips migrations
    (tmp_path / "home" / "prefect.db").unlink()  # a marker without its database is not trusted
    assert not start_and_query()


@pytest.mark.slow
def test_kexue_run_starts_and_stops_its_cluster_without_waiting(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text(f"data_dir: {tmp_path / 'data'}\n"
                       "dask: {n_workers: 2, threads_per_worker: 1, dashboard_address: '127.0.0.1:0'}\n"
                       "set:\n  ingest.sources: [{source: 'builtin:reviews', limit: 300}]\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)  # the CLI embeds its API
    cmd = [str(BIN / "kexue"), "run", "--config", str(ROOT / "pipeline.yaml"), "--profile", str(profile), "--stages", "count",
           "--always-run-flow"]  # the second run is all cached: without the flag it would start no cluster
    for _ in range(2):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        # workers forked with their imports done exit at once: the nanny never has to kill one
        assert "still alive after" not in out.stdout + out.stderr
    assert (tmp_path / "prefect-home" / "kexue-api-migrated.json").exists()
    summary = json.loads((tmp_path / "data" / "runs" / "latest" / "summary.json").read_text())
    assert [s["cached"] for s in summary["stages"]] == [True, True, True]
    assert len(summary["workers"]) == 2
