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


class PeakRSS:
    """Sample the RSS of a process tree in a background thread; keep the peak of the sum."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            time.sleep(self.interval)

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
    """Run ``fn(*args)`` in a fresh process; return its result dict plus peak memory in MiB.

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
    return result


def dump(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))
