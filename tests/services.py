"""Real services for end-to-end tests: started as their own process groups, stopped by PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
# the environment of a hand-started `dask worker`, as the README starts one: Dask's stack sampler
# off, since on Python 3.11 it can deadlock a worker (flows.runtime._dask_config)
WORKER_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A background process in its own session (so its children die with it)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None, log: Path | None = None):
        self.args = args
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log and self.log.exists() else ""


def wait_http(url: str, timeout: float = 120, service: Service | None = None) -> str:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if service is not None and service.proc.poll() is not None:
            raise RuntimeError(f"{service.args[:3]} exited early:\n{service.output()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return r.read().decode("utf-8", "replace")
        except OSError as e:
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout}s ({last})")


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def loopback_only(ports_or_pids, by: str = "port") -> tuple[list[str], list[str]]:
    """(addresses listening on loopback, addresses listening elsewhere) for the given ports or process ids."""
    import psutil

    if by == "port":
        conns = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port in ports_or_pids]
    else:
        conns = []
        for pid in ports_or_pids:
            try:
                conns += [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:  # a short-lived child that ended meanwhile
                pass
    loop = [f"{c.laddr.ip}:{c.laddr.port}" for c in conns if c.laddr.ip in ("127.0.0.1", "::1")]
    other = [f"{c.laddr.ip}:{c.laddr.port}" for c in conns if c.laddr.ip not in ("127.0.0.1", "::1")]
    return loop, other
