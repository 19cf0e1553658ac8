"""SIGKILL the whole `kexue run` in the middle of training; the next run resumes from the
last epoch checkpoint, with the earlier stages from the cache."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from services import BIN

pytestmark = pytest.mark.slow  # every test here runs the pipeline on a real cluster

ROOT = Path(__file__).resolve().parents[1]


def kexue_run(project, stages: str, overrides: list[str]) -> list[str]:
    cmd = [str(BIN / "kexue"), "run", "--config", str(project.pipeline), "--profile", str(project.profile), "--stages", stages]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def kill_when(project, cmd: list[str], ready, timeout: float = 600) -> None:
    """Start `kexue run` in its own process group; SIGKILL the whole group once ready() holds."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the CLI embeds its own API, as a user's run would
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("the run finished before it could be killed")
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                return
            time.sleep(0.2)
        pytest.fail("never reached the point to kill at")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def checkpoint_epoch(root: Path) -> int:
    epochs = [json.loads(p.read_text())["epoch"] for p in root.glob("*/state.json")]
    return max(epochs, default=0)


def test_sigkill_during_jose_resumes_from_the_last_epoch(project):
    overrides = ["ingest.sources=[{source: 'builtin:peoples-daily-1998', limit: 8000}]",
                 "jose.epochs=6", "jose.dim=32", "jose.threads=1"]
    checkpoints = project.data / "artifacts" / "jose-checkpoints"
    kill_when(project, kexue_run(project, "jose", overrides), lambda: checkpoint_epoch(checkpoints) >= 1)
    killed_at = checkpoint_epoch(checkpoints)
    assert 1 <= killed_at < 6
    summary = project.run(["jose"], overrides)
    stages = {s["name"]: s for s in summary["stages"]}
    assert [stages[n]["cached"] for n in ("ingest", "tokenize", "count")] == [True, True, True]
    jose = stages["jose"]
    assert jose["cached"] is False
    assert jose["metrics"]["resumed_from_epoch"] >= killed_at
    assert jose["metrics"]["epochs_run"] == 6 - jose["metrics"]["resumed_from_epoch"]
    from gensim.models import KeyedVectors

    kv = KeyedVectors.load_word2vec_format(jose["files"]["words"], binary=False)
    u = np.load(jose["files"]["u"])
    assert kv.vectors.shape == u.shape and np.allclose(np.linalg.norm(u, axis=1), 1, atol=1e-4)


def test_sigkill_during_gan_training_resumes_from_the_last_checkpoint(project):
    overrides = ["gan.variants={cr2: {cascades: 2}}", "gan.seeds=[0]",
                 "gan.train={steps: 1500, eval_every: 500, eval_samples: 300, checkpoint_seconds: 0}"]
    checkpoints = project.data / "artifacts" / "gan-checkpoints"
    kill_when(project, kexue_run(project, "gan", overrides), lambda: any(checkpoints.glob("*/seeds-*/checkpoint")))
    summary = project.run(["gan"], overrides)
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["images"]["cached"] is True
    (run,) = stages["gan"]["metrics"]["runs"]
    assert run["resumed_from_step"] > 0  # continued from the checkpoint, not from scratch
    assert run["steps"] >= 1500
    assert Path(stages["gan"]["files"]["cr2/s0/generator"]).stat().st_size > 0
    history = json.loads(Path(stages["gan"]["files"]["cr2/s0/history"]).read_text())
    assert history["step"] == run["steps"] and history["resumed_from_step"] == run["resumed_from_step"]
