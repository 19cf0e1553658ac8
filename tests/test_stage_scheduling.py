"""Long tasks are fed to the cluster a few at a time (flows.stages.wait_bounded), on a real Prefect API."""
from __future__ import annotations

import threading
import time

import pytest


def _bounded_run(slots: int, n: int = 5) -> tuple[list[int], int]:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.stages import StageContext, wait_bounded
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
        futures = wait_bounded(ctx, [lambda i=i: long_task.submit(i) for i in range(n)], "long")
        return [f.result() for f in futures]

    return run(), peak[0]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_no_more_long_tasks_in_flight_than_slots(prefect_api, slots):
    results, peak = _bounded_run(slots)
    assert results == [0, 1, 2, 3, 4]  # in submission order
    assert peak == slots  # the thread pool would run all five at once
