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


def _high_water_bytes(pid: int) -> int:
    """The kernel's own peak RSS of a process (``VmHWM``): exact, whenever it was reached."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Sample a process tree in a background thread: the peak of its summed RSS and of its
    summed PSS, and for each process (``processes``: pid -> role, peak RSS and PSS bytes,
    last CPU seconds seen).

    Why PSS too: Dask workers forked from a fork server share its pages (Python, Prefect,
    pyarrow, rjieba's dictionary) until they write to them, and RSS counts a shared page once
    in every process that maps it; PSS splits it between them, so the summed PSS is the
    memory the tree takes from the machine, and the gap to the summed RSS is what fork shares.

    Why two rates: the measuring must not take the measured run's CPU. PSS comes from
    ``smaps_rollup``, which walks the process's page tables: about 5 ms for a 400 MiB worker.
    Read for six processes every 50 ms, it took 1.2 of the 7.9 CPU-seconds two cores had
    in a 3.9 s tokenize stage. So RSS (``statm``, 20 µs) is summed every ``interval``, each
    process's peak RSS is the kernel's high-water mark (exact between samples), and PSS is
    read every ``pss_interval`` and whenever the summed RSS has grown ``pss_step`` past the
    sum at the last PSS reading: the summed PSS peak is the largest reading, a lower bound
    that is read near the RSS peak.
    """

    def __init__(self, pid: int, interval: float = 0.1, pss_interval: float = 1.0, pss_step: int = 64 << 20,
                 scan_interval: float = 0.25):
        self.proc = psutil.Process(pid)
        self.interval, self.pss_interval, self.pss_step, self.scan_interval = interval, pss_interval, pss_step, scan_interval
        self._rss_at_pss = 0
        self.peak = 0
        self.peak_pss = 0
        self.processes: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[psutil.Process]:
        return [self.proc] + self.proc.children(recursive=True)

    def _sample(self, procs: list[psutil.Process], pss_due: bool) -> None:
        """One look at ``procs``: RSS and CPU always, PSS when due or when RSS grew ``pss_step``."""
        total, alive = 0, []
        for p in procs:
            try:
                with p.oneshot():
                    rss, cpu = p.memory_info().rss, p.cpu_times()
                high_water = _high_water_bytes(p.pid)
                entry = self.processes.get(p.pid) or {"role": role(p, self.proc.pid), "rss": 0, "pss": 0, "cpu": 0.0}
            except (psutil.Error, OSError):
                continue
            total += rss
            entry.update(rss=max(entry["rss"], rss, high_water), cpu=max(entry["cpu"], cpu.user + cpu.system))
            self.processes[p.pid] = entry
            alive.append((p, entry))
        self.peak = max(self.peak, total)
        if not (pss_due or total >= self._rss_at_pss + self.pss_step):
            return
        self._rss_at_pss, total_pss = total, 0
        for p, entry in alive:
            try:
                pss = p.memory_full_info().pss
            except psutil.Error:
                continue
            total_pss += pss
            entry["pss"] = max(entry["pss"], pss)
        self.peak_pss = max(self.peak_pss, total_pss)

    def _run(self) -> None:
        next_scan = next_pss = 0.0
        procs: list[psutil.Process] = []
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_scan:
                try:
                    procs, next_scan = self._tree(), now + self.scan_interval
                except psutil.Error:
                    return
            pss_due = now >= next_pss
            if pss_due:
                next_pss = now + self.pss_interval
            self._sample(procs, pss_due)
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
        try:  # a last look at the survivors, PSS included
            self._sample(self._tree(), pss_due=True)
        except psutil.Error:
            pass


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
