"""What a run costs besides its stages: `kexue check`, and cached re-runs of `kexue run`.

    python benchmarks/startup.py                          # in the project folder (uses ./data)
    python benchmarks/startup.py --baseline-src /path/to/an/older/checkout

Runs the real CLI as a user would, in a subprocess, with everything already computed (a
first, unmeasured run fills the cache), and prints JSON:

- ``check``: wall seconds of `kexue check`, and whether it imported TensorFlow / Prefect;
- for each ``--stages`` set (default: ``ingest``, and the six text stages through
  ``communities``): wall seconds of the cached run, split into the fixed cost before the
  first stage starts, the stages (first start to last finish), and after the last stage
  (report, cluster and API shut-down, exit); the stages' own seconds from the run summary;
  CPU seconds and peak RSS of every process of the run (the CLI as ``root``, the API
  server, the fork server, each Dask worker);
- the same cached runs with ``--always-run-flow`` (through Prefect and the cluster, as before
  the up-to-date check: what a run pays when one stage changed);
- the load average before and after, as the machine may be shared.

With ``--baseline-src`` the same is measured for another checkout (its own ``./data``) in
the same session, and ``speedup`` gives baseline / this for the wall seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEXUE = Path(sys.executable).with_name("kexue")
CHECK_MODULES = ("import json, sys\nsys.argv = ['kexue', 'check']\nfrom flows.cli import app\n"
                 "try:\n    app()\nexcept SystemExit:\n    pass\n"
                 "print(json.dumps({m: m in sys.modules for m in ('tensorflow', 'prefect', 'distributed')}))")


def kexue(src: Path, args: list[str]) -> dict:
    """Run `kexue ARGS` in ``src``; time every output line; sample its processes."""
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(KEXUE), *args], cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakRSS(proc.pid, interval=0.1) as tree:
        lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stdout]
        code = proc.wait()
        wall = time.perf_counter() - t0
    processes = tree.by_process()
    if code != 0:
        raise RuntimeError(f"kexue {' '.join(args)} failed ({code}):\n" + "\n".join(l for _, l in lines[-30:]))
    return {"wall": wall, "lines": lines, "processes": processes}


def phases(run: dict) -> dict:
    """Fixed cost before the first stage, the stages, and what comes after the last one."""
    if any(line.startswith("up to date:") for _, line in run["lines"]):  # answered without the flow
        return {"up_to_date": True}
    starts = [t for t, line in run["lines"] if line.startswith("start ")]
    starts = starts or [t for t, line in run["lines"] if line.startswith("Artifacts under:")]  # a CLI without start lines
    ends = [t for t, line in run["lines"] if line.split()[:1] in (["cached"], ["done"])]
    first, last = min(starts), max(ends)
    return {"before_first_stage": round(first, 2), "stages": round(last - first, 2), "after_last_stage": round(run["wall"] - last, 2)}


def summary_of(src: Path) -> dict:
    return json.loads((src / "data" / "runs" / "latest" / "summary.json").read_text())


def measure_tree(src: Path, stage_sets: list[str], repeat: int) -> dict:
    out: dict = {"src": str(src)}
    checks = [kexue(src, ["check"])["wall"] for _ in range(repeat)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    imported = subprocess.run([sys.executable, "-c", CHECK_MODULES], cwd=src, env=env, capture_output=True, text=True, check=True)
    out["check"] = {"wall_seconds": round(median(checks), 2), "all": [round(c, 2) for c in checks],
                    "imports": json.loads(imported.stdout.strip().splitlines()[-1])}
    for stages in stage_sets:
        kexue(src, ["run", "--stages", stages])  # fills the cache (and migrates the API database) unmeasured
        # as a user re-runs (every stage up to date: answered from the stage records, if the
        # checkout can), and through the Prefect flow and the cluster all the same
        for label, flags in ((f"run --stages {stages}", []), (f"run --stages {stages} --always-run-flow", ["--always-run-flow"])):
            runs = []
            for _ in range(repeat):
                try:
                    r = kexue(src, ["run", "--stages", stages, *flags])
                except RuntimeError as e:
                    if flags and "No such option" in str(e):  # an older checkout without the flag
                        break
                    raise
                s = summary_of(src)
                assert all(x["cached"] for x in s["stages"]), f"{stages}: not every stage came from the cache"
                runs.append({"wall_seconds": round(r["wall"], 2), **phases(r),
                             "stage_seconds": {x["name"]: x["seconds"] for x in s["stages"]},
                             "cpu_seconds": round(sum(p["cpu_seconds"] for p in r["processes"]), 2),
                             "processes": r["processes"]})
            if runs:
                best = min(runs, key=lambda x: x["wall_seconds"])
                out[label] = {**best, "wall_all": [x["wall_seconds"] for x in runs]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT), help="the checkout (and project folder) to measure")
    ap.add_argument("--baseline-src", default=None, help="another checkout to measure in the same session")
    ap.add_argument("--stages", action="append", default=None, help="a --stages set to time cached (repeatable)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    stage_sets = args.stages or ["ingest", "communities"]
    load_before = os.getloadavg()
    result: dict = {"benchmark": "startup", "cpu_count": os.cpu_count(), "load_average_before": load_before,
                    "this": measure_tree(Path(args.src).resolve(), stage_sets, args.repeat)}
    if args.baseline_src:
        result["baseline"] = measure_tree(Path(args.baseline_src).resolve(), stage_sets, args.repeat)
        result["speedup"] = {k: round(result["baseline"][k]["wall_seconds"] / result["this"][k]["wall_seconds"], 2)
                             for k in ["check", *(f"run --stages {s}" for s in stage_sets)]}
    result["load_average_after"] = os.getloadavg()
    result["goals"] = {"check": "<= 2 s, no TensorFlow", "run --stages ingest": "<= 6 s cached",
                       "run --stages communities": "<= 10 s cached (the six text stages)"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
