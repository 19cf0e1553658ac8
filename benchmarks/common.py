"""Shared benchmark plumbing: run a function in a fresh process and measure it.

Each measured method runs in its own subprocess so that peak memory is its own (the
process and every child it starts — multiprocessing pools, Dask workers — are sampled).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from typing import Any, Callable

import psutil


def role(p: psutil.Process, root: int) -> str:
    """What a process of a measured tree is: the root, Prefect's API server, the fork server
    Dask workers are forked from, a Dask worker (forked or spawned), or other."""
    cmd = " ".join(p.cmdline())
    if p.pid == root:
        return "root"
    if "uvicorn" in cmd:
        return "api"
    if "forkserver" in cmd:
        return "forkserver" if p.ppid() == root else "worker"
    if "spawn_main" in cmd:
        return "worker"
    return "other"


class PeakRSS:
    """Sample a process tree in a background thread: the peak of its summed RSS and of its
    summed PSS, and for each process (``processes``: pid -> role, peak RSS and PSS bytes,
    last CPU seconds seen).

    Why PSS too: Dask workers forked from a fork server share its pages (Python, Prefect,
    pyarrow, rjieba's dictionary) until they write to them, and RSS counts a shared page once
    in every process that maps it; PSS splits it between them, so the summed PSS is the
    memory the tree takes from the machine, and the gap to the summed RSS is what fork shares.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self.processes: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
            except psutil.Error:
                return
            total = total_pss = 0
            for p in procs:
                try:
                    with p.oneshot():
                        mem, cpu = p.memory_full_info(), p.cpu_times()
                        entry = self.processes.get(p.pid) or {"role": role(p, self.proc.pid), "rss": 0, "pss": 0, "cpu": 0.0}
                except psutil.Error:
                    continue
                total, total_pss = total + mem.rss, total_pss + mem.pss
                entry.update(rss=max(entry["rss"], mem.rss), pss=max(entry["pss"], mem.pss), cpu=max(entry["cpu"], cpu.user + cpu.system))
                self.processes[p.pid] = entry
            self.peak, self.peak_pss = max(self.peak, total), max(self.peak_pss, total_pss)
            time.sleep(self.interval)

    def by_process(self, min_mib: float = 20) -> list[dict[str, Any]]:
        """Each process's role, peak RSS and PSS (MiB) and CPU seconds, leaving out tiny helpers."""
        return [{"role": e["role"], "peak_rss_mib": round(e["rss"] / 2**20, 1), "peak_pss_mib": round(e["pss"] / 2**20, 1),
                 "cpu_seconds": round(e["cpu"], 2)}
                for _, e in sorted(self.processes.items()) if e["rss"] >= min_mib * 2**20]

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _child(fn: Callable[..., Any], args: tuple, conn) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # report, don't hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))


def measure(fn: Callable[..., dict], *args: Any) -> dict:
    """Run ``fn(*args)`` in a fresh process; return its result dict plus peak memory in MiB
    (the tree's summed RSS and summed PSS, and each process's).

    ``fn`` reports its own wall seconds (so start-up of the child is not counted).
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(fn, args, child))
    proc.start()
    with PeakRSS(proc.pid) as peak:
        status, result = parent.recv()
        proc.join()
    if status != "ok":
        raise RuntimeError(result)
    result["peak_rss_mib"] = round(peak.peak / 2**20, 1)
    result["peak_pss_mib"] = round(peak.peak_pss / 2**20, 1)
    result["processes"] = peak.by_process()
    return result


def dump(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))
