"""The stage DAG: whole-graph checks (unknown inputs, self-loops, cycles, order) and a
runner that starts every node as soon as its inputs are done."""
from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any

from kexue.core.errors import ConfigError, did_you_mean


def check_dag(inputs: dict[str, list[str]], where: str = "pipeline") -> list[str]:
    """Validate ``{stage: [upstream stages]}`` and return a topological order.

    Raises ValueError naming the stage and the bad input (with a did-you-mean suggestion).
    """
    for stage, ups in inputs.items():
        seen = set()
        for up in ups:
            if up not in inputs:
                raise ConfigError(
                    f"{where}: stages.{stage}.inputs: unknown stage {up!r}" + did_you_mean(up, inputs)
                )
            if up == stage:
                raise ConfigError(f"{where}: stages.{stage}.inputs: a stage cannot depend on itself")
            if up in seen:
                raise ConfigError(f"{where}: stages.{stage}.inputs: {up!r} listed twice")
            seen.add(up)
    try:
        TopologicalSorter(inputs).prepare()
    except CycleError as e:
        cycle = " -> ".join(e.args[1])
        raise ConfigError(f"{where}: the stages form a cycle: {cycle}") from None
    # Kahn's algorithm, always taking the earliest-declared ready stage: runs (and the
    # summary) follow pipeline.yaml's order wherever the dependencies allow.
    order: list[str] = []
    while len(order) < len(inputs):
        ready = next(s for s in inputs if s not in order and all(u in order for u in inputs[s]))
        order.append(ready)
    return order


def with_upstream(inputs: dict[str, list[str]], wanted: list[str]) -> set[str]:
    """The wanted stages plus everything they (transitively) depend on."""
    out: set[str] = set()
    todo = list(wanted)
    while todo:
        s = todo.pop()
        if s not in out:
            out.add(s)
            todo.extend(inputs[s])
    return out


@dataclass
class NodeResult:
    """How one node of an executed graph ended, and when (``time.time()`` seconds)."""

    status: str  # completed | failed | skipped
    value: Any = None
    error: BaseException | None = None
    started: float | None = None
    finished: float | None = None
    reason: str = ""


def execute(
    inputs: dict[str, list[str]],
    run: Callable[[str], Any],
    on_done: Callable[[str, NodeResult], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, NodeResult]:
    """Run every node as soon as all its inputs have completed, independent nodes at once.

    ``run(name)`` is called in a thread of its own (the cluster does the heavy work; a
    thread only submits and waits). A node whose input failed is skipped, naming that
    input; nodes on other branches go on. ``should_stop`` is polled: once true, nothing
    new starts. Nodes start in ``inputs``' order wherever several are ready.
    """
    results: dict[str, NodeResult] = {}
    running: dict[Future, str] = {}
    pending = list(inputs)
    with ThreadPoolExecutor(max_workers=max(1, len(inputs)), thread_name_prefix="stage") as pool:

        def start_ready() -> list[str]:
            """Start every pending node whose inputs completed, skip those whose input failed
            (in order, so a skip reaches the dependents' dependents); return the skipped."""
            skipped = []
            for name in list(pending):
                bad = [u for u in inputs[name] if u in results and results[u].status in ("failed", "skipped")]
                if bad or should_stop():
                    pending.remove(name)
                    why = f"input {bad[0]!r} {results[bad[0]].status}" if bad else "the run was stopped"
                    results[name] = NodeResult("skipped", reason=why)
                    skipped.append(name)
                elif all(u in results and results[u].status == "completed" for u in inputs[name]):
                    pending.remove(name)
                    results[name] = NodeResult("running", started=time.time())
                    ctx = contextvars.copy_context()  # the thread sees the caller's context (e.g. the flow run)
                    running[pool.submit(ctx.run, run, name)] = name
            return skipped

        ended = start_ready()
        while True:
            if on_done:
                for name in ended:
                    on_done(name, results[name])
            if not running:
                break
            finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            ended = []
            for fut in finished:
                name = running.pop(fut)
                r = results[name]
                r.finished = time.time()
                try:
                    r.value, r.status = fut.result(), "completed"
                except BaseException as e:  # noqa: BLE001 - recorded, then the caller decides
                    r.error, r.status = e, "failed"
                ended.append(name)
            # dependents start before the finished nodes' bookkeeping (on_done: the run record,
            # Prefect artifacts over the API), which so stays off the critical path
            ended += start_ready()
    return results
