"""Whole-graph checks for the stage DAG: unknown inputs, self-loops, cycles, order."""
from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

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
