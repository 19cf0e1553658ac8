"""The command line's SIGINT/SIGTERM handler, kept armed while Prefect runs the flow.

Prefect's flow engine installs its own SIGTERM handler when a flow starts (it turns the
signal into a crash of the flow run, which then waits on the API and the cluster); under
``kexue run`` that would leave a terminated run hanging for minutes. So the CLI registers
its handler here and each flow body re-arms it. Flows started by a Prefect worker (the
deployments) never register one: there Prefect's handling is the right one.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable

_handler: Callable | None = None


def install(handler: Callable) -> None:
    """Make ``handler`` the process's SIGINT and SIGTERM handler, and remember it for ``rearm``."""
    global _handler
    _handler = handler
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def rearm() -> None:
    """Put the CLI's handler back after Prefect replaced it (no-op outside ``kexue run``)."""
    if _handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
