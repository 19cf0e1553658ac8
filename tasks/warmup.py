"""Dask worker preload: pay a fresh worker's first-task costs when it starts, not mid-stage.

A new worker process imports Prefect's task engine and our task modules on its first task,
a few seconds that otherwise land on the critical path of whichever stage first reaches
that worker (with two workers, one of them sits idle while the other works through the
partitions). ``kexue run`` preloads this module into its LocalCluster workers; on an
existing cluster start workers with ``dask worker --preload tasks.warmup``.

Which task modules: those the stage runners submit from (``flows.stages``' imports),
except any that would import TensorFlow when loaded — only the JoSE and GAN tasks need it,
inside the task, and it costs seconds and hundreds of MB per worker. Derived from the
import statements, so a new stage's task module is preloaded without a list to edit.
"""
from __future__ import annotations

import importlib
import logging
import time

log = logging.getLogger("kexue.warmup")

LIBRARIES = ("prefect.task_engine", "prefect.results", "rjieba", "matplotlib.pyplot")
HEAVY = {"tensorflow", "keras"}


def task_modules() -> list[str]:
    """Task modules used by the stage runners that load without TensorFlow."""
    from tasks.code_version import load_time_imports, module_imports

    used = sorted(m for m in module_imports("flows.stages") if m.startswith("tasks."))
    return [m for m in used if not HEAVY & load_time_imports(m)]


def dask_setup(worker) -> None:  # the hook Dask calls for a worker preload
    t0 = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")  # workers are headless; the plotting functions ask for Agg too
    modules = [*LIBRARIES, *task_modules()]
    for name in modules:
        importlib.import_module(name)
    log.info("worker %s: preloaded %s in %.2f s", worker.name, ", ".join(modules), time.perf_counter() - t0)
