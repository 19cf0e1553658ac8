"""The `kexue` command line as a user types it (a real subprocess): check, report, deploy.

`kexue run` is exercised by test_reliability.py and test_resume.py, `kexue report
--screenshot` after a real run by test_operations.py, `kexue deploy` against a real server
by test_operations.py::test_nightly_deployment_runs_end_to_end_and_is_scheduled.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from services import BIN

ROOT = Path(__file__).resolve().parents[1]


def kexue(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kexue"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_check_validates_a_shipped_config_and_names_the_order():
    r = kexue("check", "--profile", "ci")
    assert r.returncode == 0, r.stderr
    assert "ok: 9 stages in order: ingest, tokenize, count, jose, graph, communities, images, gan, gan_eval" in r.stderr


def test_check_fails_before_any_work_naming_the_key(tmp_path):
    shutil.copy(ROOT / "pipeline.yaml", tmp_path / "pipeline.yaml")
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    r = kexue("check", "--profile", "ci", "--set", "jose.epoch=3", cwd=tmp_path)
    assert r.returncode == 2
    assert "config error" in r.stderr and "stages.jose.params" in r.stderr and "did you mean 'epochs'" in r.stderr
    assert not (tmp_path / "data").exists()  # nothing ran


def test_report_of_a_folder_without_a_run_says_so(tmp_path):
    r = kexue("report", str(tmp_path))
    assert r.returncode == 1 and f"{tmp_path}: no summary.json" in r.stderr


def test_deploy_needs_a_server_address():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    r = kexue("deploy", env=env)
    assert r.returncode == 2 and "set PREFECT_API_URL" in r.stderr
