"""Dask worker preload: pay a fresh worker's first-task costs when it starts, not mid-stage.

A new worker process imports Prefect's task engine and our task modules on its first task,
a few seconds that otherwise land on the critical path of whichever stage first reaches
that worker (with two workers, one of them sits idle while the other works through the
partitions). ``kexue run`` preloads this module into its LocalCluster workers; on an
existing cluster start workers with ``dask worker --preload tasks.warmup``.

TensorFlow is left out on purpose: only the JoSE and GAN stages need it, and it costs
hundreds of MB per worker.
"""
from __future__ import annotations

import importlib
import logging
import time

log = logging.getLogger("kexue.warmup")

MODULES = ("prefect.task_engine", "prefect.results", "tasks.caching", "tasks.text", "tasks.graph", "rjieba",
           "matplotlib.pyplot")


def dask_setup(worker) -> None:  # the hook Dask calls for a worker preload
    t0 = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")  # workers are headless; the plotting functions ask for Agg too
    for name in MODULES:
        importlib.import_module(name)
    log.info("worker %s: preloaded %d modules in %.2f s", worker.name, len(MODULES), time.perf_counter() - t0)
