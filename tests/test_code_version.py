"""Code versions are derived from imports: an edit re-runs exactly the tasks that use the module."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services import BIN
from tasks import gan as tgan
from tasks import graph as tgraph
from tasks import text as ttext
from tasks.code_version import closure, load_time_imports, task_modules

ROOT = Path(__file__).resolve().parents[1]


def modules(task) -> set[str]:
    return set(task_modules(task.fn.__wrapped__))


def test_a_task_depends_on_what_it_imports_transitively_and_nothing_else():
    # communities -> kexue.graph.communities -> kexue.graph.mapequation (never named in tasks/)
    assert "kexue.graph.mapequation" in modules(tgraph.communities_task)
    assert "kexue.graph.mapequation" not in modules(tgraph.graph_build_task)
    assert "kexue.graph.communities" not in modules(tgraph.cooccurrence_partition_task)
    # the modules the old hand-written lists forgot
    gan_run = modules(tgan.gan_run_task)
    for m in ("kexue.optim.lookahead", "kexue.optim.lazy", "kexue.optim.layer_adaptation", "kexue.optim.schedule",
              "kexue.optim.wrapper", "kexue.core.seeding", "kexue.gan.data"):
        assert m in gan_run, m
    assert "kexue.core.seeding" in modules(tgan.feature_net_task)
    # a task's own helpers in its module count; text tasks never reach TensorFlow code
    assert "kexue.text.sources" in modules(ttext.ingest_task)
    assert not any(m.startswith(("kexue.gan", "kexue.embed")) for m in modules(ttext.vocabulary_task))


def test_closure_includes_packages_and_ignores_non_library_modules():
    found = closure({"kexue.graph.communities"})
    assert {"kexue", "kexue.graph", "kexue.graph.io", "kexue.graph.mapequation"} <= set(found)
    assert not any(m.startswith(("numpy", "infomap")) for m in found)


def test_loading_task_modules_never_imports_tensorflow():
    for module in ("tasks.text", "tasks.graph", "tasks.gan", "tasks.jose"):
        assert not {"tensorflow", "keras"} & load_time_imports(module), module


def test_code_version_changes_with_a_transitive_module(tmp_path):
    """The version is a hash of file contents: read it in a copy of the library."""
    copy = tmp_path / "src"
    for pkg in ("kexue", "tasks", "flows"):
        shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import tasks.graph as g; from tasks.code_version import code_version as v; "
              "print(v(g.communities_task.fn.__wrapped__), v(g.graph_build_task.fn.__wrapped__))")
    env = {**os.environ, "PYTHONPATH": str(copy)}

    def versions() -> list[str]:
        out = subprocess.run([str(BIN / "python"), "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
        return out.stdout.split()

    before = versions()
    with open(copy / "kexue" / "graph" / "mapequation.py", "a") as f:
        f.write("\n# touched\n")
    after = versions()
    assert after[0] != before[0], "communities must get a new code version"
    assert after[1] == before[1], "graph-build does not import mapequation"


PROFILE = """\
data_dir: {data}
dask: {{n_workers: 2, threads_per_worker: 1, dashboard_address: "127.0.0.1:0"}}
prefect: {{api: environment}}
set:
  ingest.sources: [{{source: "builtin:peoples-daily-1998", limit: 600}}]
  ingest.partition_bytes: 60000
  communities.inputs: {{graph: graph}}
"""


@pytest.mark.slow
def test_touching_a_transitively_imported_module_reruns_that_task_and_downstream_only(tmp_path, prefect_api):
    src = tmp_path / "src"
    for pkg in ("kexue", "tasks", "flows"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pipeline.yaml", tmp_path / "pipeline.yaml")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "t.yaml").write_text(PROFILE.format(data=tmp_path / "data"))
    env = {**os.environ, "PYTHONPATH": str(src), "PREFECT_API_URL": prefect_api}
    cmd = [str(BIN / "kexue"), "run", "--config", str(tmp_path / "pipeline.yaml"),
           "--profile", str(tmp_path / "conf" / "t.yaml"), "--stages", "communities"]

    def run() -> dict[str, bool]:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads((tmp_path / "data" / "runs" / "latest" / "summary.json").read_text())
        return {s["name"]: s["cached"] for s in summary["stages"]}

    first = run()
    assert set(first) == {"ingest", "tokenize", "count", "graph", "communities"}
    with open(src / "kexue" / "graph" / "mapequation.py", "a") as f:
        f.write("\n# an edit to a module only communities imports, through kexue.graph.communities\n")
    second = run()
    assert second == {"ingest": True, "tokenize": True, "count": True, "graph": True, "communities": False}
