"""Live progress from tasks: one call, seen in the Prefect log (the UI) and in the CLI.

Library code reports progress through plain callbacks (``kexue`` never imports Prefect);
a task forwards each event here. ``emit`` logs one line with the task run's Prefect logger
(so the UI shows it) and logs the event on the Dask cluster's ``kexue-progress`` topic,
which the flow process subscribes to and prints as it arrives — the CLI sees a worker's
progress while the task is still running.
"""
from __future__ import annotations

import logging
from typing import Any

TOPIC = "kexue-progress"
log = logging.getLogger("kexue.progress")


def _logger():
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a task or flow run (library use, tests): plain logging
        return log


def emit(stage: str, message: str, **fields: Any) -> None:
    """Report progress of ``stage``: ``message`` is the human line, ``fields`` the numbers."""
    _logger().info("%s: %s", stage, message)
    try:
        from distributed import get_worker

        worker = get_worker()  # only from a Dask worker; elsewhere the log line is all there is
    except (ImportError, ValueError):
        return
    worker.log_event(TOPIC, {"stage": stage, "message": message, **fields})
