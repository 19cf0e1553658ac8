"""The flow process only submits tasks: it imports none of the data libraries, and the
workers' preload (tasks.warmup) imports every library module the text and graph tasks use."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_LIBRARIES = ["pandas", "pyarrow", "scipy", "infomap", "matplotlib", "tensorflow", "rjieba", "jieba"]


def _python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_flow_process_with_its_local_cluster_imports_no_data_library():
    loaded = _python(f"""
import json, sys
if __name__ == "__main__":
    import flows.pipeline
    from flows import runtime
    from kexue.core.config import DaskSpec
    cluster = runtime.start_local_cluster(DaskSpec(n_workers=1, dashboard_address="127.0.0.1:0", memory_limit=None))
    cluster.close()
    print(json.dumps([m for m in {DATA_LIBRARIES!r} if m in sys.modules]))
""")
    assert loaded == [], f"the flow process imported {loaded}"


def test_local_cluster_workers_keep_glibcs_adaptive_malloc_and_sample_no_stacks():
    """Dask's MALLOC_TRIM_THRESHOLD_ made every tensor over 128 KiB an mmap of its own: GAN
    training ran 1.5-1.7x slower in a worker. A worker's C library reads its environment when
    the process starts (the fork server's, for ours), so look at that block, not os.environ.
    Dask's stack sampler can deadlock a worker on Python < 3.12 (flows.runtime._dask_config)."""
    found = _python("""
import json, os
if __name__ == "__main__":
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    from distributed import Client
    from flows import runtime
    from kexue.core.config import DaskSpec
    with runtime.start_local_cluster(DaskSpec(n_workers=2, dashboard_address="127.0.0.1:0", memory_limit=None)) as cluster, \\
            Client(cluster) as client:
        seen = client.run(lambda: b"MALLOC_TRIM_THRESHOLD_=" in open("/proc/self/environ", "rb").read())
        import dask
        sampling = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    print(json.dumps([sorted(seen.values()), sorted(sampling.values())]))
""")
    assert found[0] == [False, False]
    assert found[1] == ([False, False] if sys.version_info < (3, 12) else [True, True])


def _imports_inside_functions(path: Path) -> set[str]:
    names = set()
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(fn, ast.FunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return names


def test_the_worker_preload_imports_what_the_tasks_import_when_they_run():
    # all but the TensorFlow families, whose modules a worker imports only when it trains
    wanted = set().union(*(_imports_inside_functions(f) for f in (ROOT / "tasks").glob("*.py")
                           if f.name not in ("jose.py", "gan.py")))
    assert {"kexue.text.tokenize", "kexue.graph.communities", "pyarrow.parquet"} <= wanted  # the parse sees them
    missing = _python(f"""
import importlib, json, sys
from tasks.warmup import MODULES
for name in ("distributed", *MODULES):  # the fork server's preload list (a worker runs Dask)
    importlib.import_module(name)
# "from a import b" is met by a module a.b or by a name b in a
print(json.dumps([n for n in {sorted(wanted)!r}
                  if n not in sys.modules and not (n.rpartition(".")[0] in sys.modules
                                                   and hasattr(sys.modules[n.rpartition(".")[0]], n.rpartition(".")[2]))]))
""")
    assert missing == [], f"tasks.warmup.MODULES does not preload {missing}"
