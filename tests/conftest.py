"""Test-session set-up: quiet, offline, project-local Prefect state, one embedded API.

The environment is set at import time, before anything imports Prefect (which reads its
settings then) or TensorFlow.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="kexue-tests-"))

os.environ.update({
    "PREFECT_HOME": str(_SESSION_DIR / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    "DASK_LOGGING__DISTRIBUTED": "error",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
})
os.environ.pop("PREFECT_API_URL", None)


def pytest_collection_modifyitems(config, items):
    """Keep `make test-fast` fast: a test that runs the pipeline (the `project` fixture) must be
    marked slow, or the session refuses to start."""
    unmarked = [i.nodeid for i in items if "project" in getattr(i, "fixturenames", ()) and i.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("tests that run the pipeline must be marked @pytest.mark.slow: " + ", ".join(unmarked))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api():
    """One real Prefect API (embedded, on 127.0.0.1) for the whole session."""
    from flows.runtime import embedded_api

    with embedded_api(timeout=120) as url:
        yield url


PROFILE = """\
description: test profile
data_dir: {data_dir}
dask:
  n_workers: 2
  threads_per_worker: 1
  processes: true
  dashboard_address: 127.0.0.1:0
prefect:
  api: environment
set:
  ingest.sources:
    - {{source: "builtin:peoples-daily-1998", limit: 1200}}
    - {{source: "builtin:reviews", limit: 1200}}
  ingest.partition_bytes: 60000
  jose.epochs: 2
  jose.dim: 32
  gan.variants: {{cr1: {{cascades: 1}}, cr2: {{cascades: 2}}}}
  gan.seeds: [0]
  gan.train: {{steps: 60, eval_every: 30, eval_samples: 300, jit_compile: false}}
  gan.feature_net: {{epochs: 2, seed: 0}}
"""


class Project:
    """A throw-away project folder: the repo's pipeline.yaml and a test profile."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.pipeline = root / "pipeline.yaml"
        shutil.copy(ROOT / "pipeline.yaml", self.pipeline)
        (root / "conf").mkdir()
        self.profile = root / "conf" / "test.yaml"
        self.profile.write_text(PROFILE.format(data_dir=self.data))

    def run(self, stages=None, overrides=()):
        """Run the flow for real (LocalCluster + the session's Prefect API); return the summary."""
        from flows.pipeline import pipeline

        return pipeline(str(self.pipeline), str(self.profile), list(overrides), stages)

    def stage(self, summary, name):
        return next(s for s in summary["stages"] if s["name"] == name)


@pytest.fixture
def project(tmp_path, prefect_api):
    return Project(tmp_path)
