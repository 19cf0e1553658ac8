"""Dask worker preload: pay a fresh worker's first-task costs when it starts, not mid-stage.

A new worker process imports Prefect's task engine and our task modules on its first task,
a few seconds that otherwise land on the critical path of whichever stage first reaches
that worker (with two workers, one of them sits idle while the other works through the
partitions). ``kexue run`` imports ``MODULES`` once, in the fork server its LocalCluster's
workers are forked from (``flows.runtime.start_local_cluster``); other LocalClusters
preload this module into each worker; on an existing cluster start workers with
``dask worker --preload tasks.warmup``.

Which modules: what every task needs, even one whose result comes from the cache.
Prefect sends the flow run's context — the flow object included — with every task, so a
worker imports the flow's module, ``flows.pipeline``, and with it every task module the
stage runners submit from (``flows.stages``' imports; a new stage's tasks come along with
no list to edit). The task modules import their library modules (Arrow, pandas, SciPy,
infomap) inside the tasks, so the flow process — which only submits them — stays without
them (100 MiB and 0.6 s of imports less); ``LIBRARIES`` are those of the text and graph
tasks, preloaded here (a test checks the list against the tasks' own imports). JoSE's and
the GAN's modules are not: they import TensorFlow, which only those tasks need, when they
run. The segmenter (rjieba loads its dictionary on import, 0.2 s) and matplotlib, with one
small figure drawn (``tasks.plot_warmup``: 0.8 s of imports and 0.2 s of a first draw, for
the plot most stages write), are preloaded too: done in the fork server they cost the run
that CPU once, off every stage's path, and their pages are shared.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import sys
import time

log = logging.getLogger("kexue.warmup")

LIBRARIES = ("kexue.text.ingest", "kexue.text.tokenize", "kexue.text.count",
             "kexue.graph.cooccurrence", "kexue.graph.communities")
MODULES = ("prefect.task_engine", "prefect.results", "flows.pipeline", *LIBRARIES,
           "rjieba", "tasks.plot_warmup")


def dask_setup(worker) -> None:  # the hook Dask calls for a worker preload
    t0 = time.perf_counter()
    for name in MODULES:
        importlib.import_module(name)
    log.info("worker %s: preloaded %s in %.2f s", worker.name, ", ".join(MODULES), time.perf_counter() - t0)


def _prefect_services() -> list:
    if "prefect" not in sys.modules:
        return []
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    return [EventsWorker, APILogWorker]


def drain_prefect_services() -> None:
    """Send the events and log lines Prefect still queues in this process to the API while
    it is up: left for interpreter exit, they would be retried against a server that is
    gone (or, in a forked worker, which exits without exit hooks, dropped)."""
    for service in _prefect_services():
        service.drain_all(timeout=10)


async def dask_teardown(worker) -> None:  # the hook Dask awaits when the worker closes
    for service in _prefect_services():
        if inspect.isawaitable(done := service.drain_all(timeout=10)):  # inside an event loop: a future
            await done
