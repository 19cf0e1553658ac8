"""Long tasks are fed to the cluster a few at a time (flows.stages.wait_bounded), on a real Prefect API."""
from __future__ import annotations

import threading
import time

import pytest


def _bounded_run(slots: int, n: int = 5, other_seconds: float = 0.0) -> tuple[list[int], int, int]:
    """Run ``n`` long tasks through ``wait_bounded`` (after another stage's long task of
    ``other_seconds``, if any, took a slot); their results, the peak of tasks running at once,
    and the peak of those ``n`` alone."""
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.stages import StageContext, wait_bounded
    from tasks.caching import Store

    lock, now, peak, runs_now, runs_peak = threading.Lock(), [0], [0], [0], [0]

    @task(cache_policy=None)
    def long_task(i: int, seconds: float = 0.3) -> int:
        mine = int(i >= 0)
        with lock:
            now[0], runs_now[0] = now[0] + 1, runs_now[0] + mine
            peak[0], runs_peak[0] = max(peak[0], now[0]), max(runs_peak[0], runs_now[0])
        time.sleep(seconds)
        with lock:
            now[0], runs_now[0] = now[0] - 1, runs_now[0] - mine
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def run() -> list[int]:
        ctx = StageContext(store=Store("unused", "unused"), slots=slots)
        if other_seconds:  # another stage's long task (JoSE beside the GAN runs), counted in the same slots
            other = ctx.long_tasks.submit(lambda: long_task.submit(-1, other_seconds))
            while now[0] == 0:
                time.sleep(0.01)
        futures = wait_bounded(ctx, [lambda i=i: long_task.submit(i) for i in range(n)], "long")
        if other_seconds:
            other.result()
        return [f.result() for f in futures]

    return run(), peak[0], runs_peak[0]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_no_more_long_tasks_in_flight_than_slots(prefect_api, slots):
    results, peak, _ = _bounded_run(slots)
    assert results == [0, 1, 2, 3, 4]  # in submission order
    assert peak == slots  # the thread pool would run all five at once


def test_long_tasks_of_other_stages_hold_slots_too(prefect_api):
    """With another stage's long task in one of two slots, one run at a time goes to the
    cluster until that task ends; then two do, without waiting for a run to end first."""
    results, peak, runs_peak = _bounded_run(2, n=6, other_seconds=1.0)
    assert results == list(range(6))
    assert peak == 2  # counting only its own runs, wait_bounded would have run three at once
    assert runs_peak == 2  # the slot the other task left was taken while a run was in flight


def test_duration_hints_name_real_tasks():
    import tasks.gan
    import tasks.graph
    import tasks.jose
    from flows.runtime import TASK_SECONDS

    modules = (tasks.gan, tasks.graph, tasks.jose)
    for name in TASK_SECONDS:
        assert any(getattr(getattr(m, name, None), "fn", None) is not None for m in modules), name


def jose_task(seconds: float) -> float:  # named as the real task: Dask estimates durations by name
    time.sleep(seconds)
    return seconds


def test_the_local_cluster_scheduler_expects_long_tasks_to_take_long():
    """Dask alone expects a task it has not seen finish to take 0.5 s (or twice the time it has
    run so far), so it queued the graph stage's short tasks behind JoSE; the LocalCluster a run
    starts is told what the long kinds take (``flows.runtime.TASK_SECONDS``)."""
    from distributed import Client

    from flows.runtime import TASK_SECONDS, start_local_cluster
    from kexue.core.config import DaskSpec

    with start_local_cluster(DaskSpec(n_workers=1, dashboard_address="127.0.0.1:0")) as cluster, Client(cluster) as c:
        long = c.submit(jose_task, 1.0)
        while not c.processing()[next(iter(c.processing()))]:
            time.sleep(0.01)
        occupancy = c.run_on_scheduler(lambda dask_scheduler: [w.occupancy for w in dask_scheduler.workers.values()])
        assert occupancy == [TASK_SECONDS["jose_task"]]
        long.result()


def test_the_runner_submits_under_fresh_named_keys_without_hashing_arguments(prefect_api, monkeypatch):
    """Dask hashed every submitted callable and its arguments (the task object, the flow-run
    context) to name the task: a third of each submit in the flow process. Our runner names
    it ``<function>-<uuid>`` instead; the prefix is what TASK_SECONDS and the dashboard use."""
    import re

    import distributed.client
    from prefect import flow, task

    from flows.runtime import task_runner
    from kexue.core.config import DaskSpec

    def no_hashing(*args, **kwargs):
        raise AssertionError("Dask hashed a submitted task's arguments")

    @task(cache_policy=None)
    def jose_task(x: int) -> int:
        return 2 * x

    runner = task_runner(DaskSpec(n_workers=1, processes=False, dashboard_address="127.0.0.1:0"))

    @flow(task_runner=runner)
    def submit_two() -> tuple[list[int], list[str]]:
        monkeypatch.setattr(distributed.client, "tokenize", no_hashing)  # the cluster is up: only submits are left
        futures = [jose_task.submit(3), jose_task.submit(3)]
        return [f.result() for f in futures], [f.wrapped_future.key for f in futures]

    results, keys = submit_two()
    assert results == [6, 6]
    assert all(re.fullmatch(r"jose_task-[0-9a-f]{32}", k) for k in keys) and keys[0] != keys[1], keys



def test_partitions_are_submitted_largest_first_and_come_back_in_order(prefect_api):
    """A large partition submitted last ran alone at the end of its stage; largest first,
    the small ones fill the end. The futures keep the partitions' order (merges downstream
    depend on it)."""
    from prefect import flow, task
    from prefect.utilities.annotations import unmapped

    from flows.runtime import task_runner
    from flows.stages import StageContext
    from kexue.core.artifacts import FileRef
    from kexue.core.config import DaskSpec
    from tasks.caching import Store

    @task(cache_policy=None)
    def started(partition: FileRef, pause: float) -> tuple[str, float]:
        t = time.monotonic()
        time.sleep(pause)
        return partition.path, t

    files = [FileRef(path=name, sha256="0" * 64, bytes=size) for name, size in [("a", 5), ("b", 50), ("c", 1), ("d", 20)]]

    @flow(task_runner=task_runner(DaskSpec(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0")))
    def run() -> list[tuple[str, float]]:
        ctx = StageContext(store=Store("unused", "unused"))
        return [f.result() for f in ctx.map_files(started, "partition", files, pause=unmapped(0.05))]

    results = run()
    assert [name for name, _ in results] == ["a", "b", "c", "d"]
    assert [name for name, _ in sorted(results, key=lambda r: r[1])] == ["b", "d", "a", "c"]
