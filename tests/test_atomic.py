"""Atomic writes under SIGKILL: a reader sees the old file or the new one, never a part of one,
and the next run rebuilds what the killed one did not finish.

Two ways to land the kill: in the middle of a large Parquet write (watching the temporary
file grow), and — deterministically — in the instant between a complete temporary file and
its rename, where ``kexue.core.artifacts`` holds when ``KEXUE_FAULT_HOLD_WRITE`` says so.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from services import BIN

WRITE_NPY = "import sys, numpy as np; from kexue.core.artifacts import save_npy_atomic; " \
            "save_npy_atomic(sys.argv[1], np.arange(int(sys.argv[2]), dtype=np.int64))"
WRITE_PARQUET = "import sys, numpy as np, pandas as pd; from kexue.core.artifacts import write_parquet_atomic; " \
                "rng = np.random.default_rng(0); " \
                "write_parquet_atomic(sys.argv[1], pd.DataFrame({'a': rng.integers(0, 2**62, 12_000_000), 'b': rng.random(12_000_000)}))"


def start(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, every: float = 0.01):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (found := predicate()):
            return found
        if proc.poll() is not None:
            pytest.fail(f"the writer exited ({proc.returncode}) before the moment to kill it")
        time.sleep(every)
    pytest.fail("never reached the moment to kill the writer")


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_in_the_middle_of_a_large_parquet_write_leaves_the_previous_file(tmp_path):
    final = tmp_path / "big.parquet"
    previous = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 0.25, 0.125]})
    previous.to_parquet(final, index=False)
    proc = start(WRITE_PARQUET, str(final))

    def growing():  # whichever file the writer writes, once it holds a first part of the data
        return [p for p in tmp_path.iterdir() if p.stat().st_size > 1 << 20]

    (written,) = wait_for(growing, proc)
    kill(proc)
    with pytest.raises(Exception):
        pq.read_metadata(written)  # the kill landed mid-write: what was written is not a Parquet file
    assert pd.read_parquet(final).equals(previous)  # a reader still sees the previous file, whole
    assert written.name.startswith(".") and sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["big.parquet"]


def test_sigkill_between_write_and_rename_never_exposes_the_new_file(tmp_path):
    final = tmp_path / "u.npy"
    np.save(final, np.arange(5))
    marker = tmp_path / "held.json"
    n = 25_000_000  # 200 MB
    env = dict(os.environ, KEXUE_FAULT_HOLD_WRITE=f"*/u.npy={marker}")
    proc = start(WRITE_NPY, str(final), str(n), env=env)
    held = json.loads(wait_for(lambda: marker.exists() and marker.read_text(), proc, every=0.1))
    assert held["final"] == str(final) and held["pid"] == proc.pid
    assert Path(held["tmp"]).stat().st_size == 128 + 8 * n  # the new content is complete, not yet renamed
    np.testing.assert_array_equal(np.load(final), np.arange(5))  # readers still get the previous file
    kill(proc)
    np.testing.assert_array_equal(np.load(final), np.arange(5))
    assert Path(held["tmp"]).name.startswith(".")  # the orphan is hidden, never under the final name
    # the next writer (no fault) replaces it
    subprocess.run([sys.executable, "-c", WRITE_NPY, str(final), "1000"], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(final), np.arange(1000))


@pytest.mark.slow
def test_run_killed_while_renaming_the_vocabulary_is_rebuilt_by_the_next_run(project):
    """`kexue run` held between writing the vocabulary and renaming it, then SIGKILLed as a whole."""
    marker = project.root / "held.json"
    env = dict(os.environ, KEXUE_FAULT_HOLD_WRITE=f"*/artifacts/count/vocabulary/*={marker}")
    env.pop("PREFECT_API_URL", None)  # the CLI embeds its own API, as a user's run would
    cmd = [str(BIN / "kexue"), "run", "--config", str(project.pipeline), "--profile", str(project.profile), "--stages", "count"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        held = json.loads(wait_for(lambda: marker.exists() and marker.read_text(), proc, timeout=600, every=0.2))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    tmp, final = Path(held["tmp"]), Path(held["final"])
    assert tmp.exists() and not final.exists()
    # everything under a visible name is whole: every Parquet artifact the killed run left reads
    visible = [p for p in (project.data / "artifacts").rglob("*.parquet") if not p.name.startswith(".")]
    assert visible and all(pq.read_metadata(p).num_rows >= 0 for p in visible)
    failed = json.loads((project.data / "runs" / "latest" / "summary.json").read_text())
    assert failed["status"] == "running" and [s["name"] for s in failed["stages"]] == ["ingest", "tokenize"]

    summary = project.run(["count"])
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["ingest"]["cached"] and stages["tokenize"]["cached"] and not stages["count"]["cached"]
    assert Path(stages["count"]["files"]["vocabulary"]).resolve() == final.resolve()  # the same content, at the same address
    vocab = pd.read_parquet(final)
    assert vocab["count"].sum() == stages["count"]["metrics"]["tokens"]
