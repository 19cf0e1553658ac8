"""What a run shows while it goes: stage lines, per-stage task progress, workers' progress events.

On a terminal, rich bars (one per running fan-out) with lines printed above them; in a log
or a pipe (a deployment's worker, CI, a test), the same events as plain lines, flushed at
once. Workers' events (``tasks.progress.emit``: JoSE epochs, GAN steps) arrive through the
Dask cluster's event topic; every line also goes to the flow run's Prefect log, so the UI
shows the same story.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tasks.progress import TOPIC


class RunProgress:
    def __init__(self, logger: logging.Logger | logging.LoggerAdapter | None = None, live: bool | None = None):
        self.live = os.isatty(sys.stdout.fileno()) if live is None else live
        self.logger = logger
        self._lock = threading.Lock()
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                              console=Console(), transient=True, disable=not self.live)

    def __enter__(self) -> "RunProgress":
        self._bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bars.__exit__(*exc)

    def line(self, text: str) -> None:
        """One event line: above the bars on a terminal, else printed and flushed; and logged."""
        with self._lock:
            if self.live:
                self._bars.console.print(text, highlight=False, markup=False)
            else:
                print(text, flush=True)
        if self.logger is not None:
            self.logger.info(text)

    def track(self, label: str, total: int) -> "Tracker":
        return Tracker(self, label, total)

    def subscribe(self, client) -> None:
        """Print the workers' progress events (``tasks.progress.emit``) as they arrive."""
        def handler(event: tuple[float, dict[str, Any]]) -> None:
            _, msg = event
            self.line(f"  {msg.get('stage', '?')}: {msg.get('message', '')}")

        client.subscribe_topic(TOPIC, handler)


class Tracker:
    """Progress of one stage's tasks: a bar on a terminal, a line per tenth elsewhere."""

    def __init__(self, board: RunProgress, label: str, total: int):
        self.board, self.label, self.total, self.done = board, label, total, 0
        self._bar = board._bars.add_task(label, total=total)
        self._reported = 0

    def advance(self) -> None:
        self.done += 1
        self.board._bars.advance(self._bar)
        tenth = (10 * self.done) // max(self.total, 1)
        if not self.board.live and self.total > 1 and tenth > self._reported and self.done < self.total:
            self._reported = tenth
            self.board.line(f"  {self.label}: {self.done}/{self.total} done")

    def close(self) -> None:
        self.board._bars.remove_task(self._bar)
