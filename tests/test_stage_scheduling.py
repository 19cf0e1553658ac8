"""Long tasks are fed to the cluster a few at a time (flows.stages.wait_bounded), on a real Prefect API."""
from __future__ import annotations

import threading
import time

import pytest


def _bounded_run(slots: int, n: int = 5) -> tuple[list[int], int]:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.stages import StageContext, submitter, wait_bounded
    from tasks.caching import Store

    lock, now, peak = threading.Lock(), [0], [0]

    @task(cache_policy=None)
    def long_task(i: int) -> int:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.3)
        with lock:
            now[0] -= 1
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def run() -> list[int]:
        ctx = StageContext(store=Store("unused", "unused"), slots=slots)
        futures = wait_bounded(ctx, [submitter(long_task, i) for i in range(n)], "long")
        return [f.result() for f in futures]

    return run(), peak[0]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_no_more_long_tasks_in_flight_than_slots(prefect_api, slots):
    results, peak = _bounded_run(slots)
    assert results == [0, 1, 2, 3, 4]  # in submission order
    assert peak == slots  # the thread pool would run all five at once


def test_each_long_task_is_sent_to_its_slots_worker(prefect_api):
    """Left to Dask, the second of two GAN runs submitted together queued behind the first on
    one worker while the other worker (busy with JoSE then) went idle for 1.8 minutes: each long
    task now names its slot's worker, and a finished task's slot takes the next one."""
    from distributed import LocalCluster
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from flows.stages import StageContext, submitter, wait_bounded
    from tasks.caching import Store

    @task(cache_policy=None)
    def long_task(i: int) -> tuple[str, list[str] | None]:
        from distributed import get_worker
        from distributed.worker import thread_state  # imported here: a thread-local does not pickle

        time.sleep(0.5 * (i + 1))  # task 0 ends first: task 2 takes its slot
        asked = get_worker().state.tasks[thread_state.key].annotations.get("workers")
        return get_worker().address, asked

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        slot_workers = tuple(sorted(cluster.scheduler_info["workers"]))

        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def run() -> list[tuple[str, list[str] | None]]:
            ctx = StageContext(store=Store("unused", "unused"), slots=2, slot_workers=slot_workers)
            return [f.result() for f in wait_bounded(ctx, [submitter(long_task, i) for i in range(3)], "long")]

        ran = run()
    assert [asked for _, asked in ran] == [[slot_workers[0]], [slot_workers[1]], [slot_workers[0]]]
    assert [where for where, _ in ran] == [slot_workers[0], slot_workers[1], slot_workers[0]]
