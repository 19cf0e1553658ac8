"""The run-time around a flow: one Prefect API for everybody, and the Dask cluster.

The one-API rule: with no ``PREFECT_API_URL`` every Dask worker process would start its
own temporary Prefect server (slow, and task runs recorded in separate databases). So the
CLI starts one embedded API (a uvicorn subprocess bound to 127.0.0.1) and exports its URL
*before* the cluster starts; worker processes inherit it from the environment.

What a run pays before its first stage is mostly imports, in three kinds of process: the
API server (Prefect's server), the Dask workers (Prefect's task engine and the task
modules) and the flow process. ``run_services`` starts them side by side — the API server
first, as it takes longest — and only then does the CLI import the flow.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from kexue.core.config import Config, DaskSpec
from tasks.warmup import MODULES, drain_prefect_services


def prefect_environment(data_dir: Path, logging_level: str = "WARNING") -> dict[str, str]:
    """Settings every process of a run needs (flow process, Dask workers, API server)."""
    return {
        "PREFECT_HOME": str(data_dir / "prefect"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(data_dir / "prefect" / "results"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOGGING_LEVEL": logging_level,
        # progress lines (INFO) reach the API and so the UI; the console shows warnings only
        "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
        "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "INFO",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": logging_level,
        "PREFECT_LOGGING_EXTRA_LOGGERS": "kexue",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DO_NOT_TRACK": "1",
        "DASK_LOGGING__DISTRIBUTED": "warning",
        "DASK_TEMPORARY_DIRECTORY": str(data_dir / "dask-scratch"),
        "TF_CPP_MIN_LOG_LEVEL": "3",  # grappler logs harmless remapper "errors"
    }


def export_environment(env: dict[str, str], override: bool = False) -> None:
    """Put settings into os.environ (so child processes inherit them)."""
    for k, v in env.items():
        if override or k not in os.environ:
            os.environ[k] = v


def loopback_tls_environment() -> dict[str, str]:
    """A one-certificate CA file for Prefect's clients, when they talk to the embedded API.

    Why: Prefect builds an SSL context from its CA file for every client it makes — two per
    task run — and parsing certifi's ~150 roots costs ~40 ms of CPU each time (a tenth of a
    short task's run). The embedded API speaks plain HTTP on 127.0.0.1, so no certificate is
    ever checked; with one root in the file the context costs ~1 ms. A CA file or TLS setting
    the user chose is kept (``export_environment`` does not override).
    """
    if "PREFECT_API_TLS_INSECURE_SKIP_VERIFY" in os.environ:
        return {}
    import re

    import certifi

    path = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "kexue-loopback-ca.pem"
    if not path.exists():
        bundle = Path(certifi.where()).read_text(encoding="ascii")
        first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", bundle, re.S)
        from kexue.core.artifacts import atomic_path

        with atomic_path(path, suffix=".pem") as tmp:
            Path(tmp).write_text(first.group(0), encoding="ascii")
    return {"PREFECT_API_SSL_CERT_FILE": str(path)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedAPI:
    """Prefect's API server as a subprocess on 127.0.0.1, started without importing it here.

    Compared with Prefect's own ``SubprocessASGIServer``: the flow process does not import
    the server (FastAPI, SQLAlchemy, the migrations — it never serves a request), the port
    is known before the server is up (so workers can start with the URL at the same time),
    and a database this Prefect version has already migrated is not migrated again: a
    marker next to it (``kexue-api-migrated.json``) records the Prefect version and the
    database after the first successful start. Delete the marker to force migrations.
    """

    MARKER = "kexue-api-migrated.json"

    def __init__(self, timeout: float = 120):
        self.timeout = timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen | None = None
        self.marker = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / self.MARKER
        self.database, database_file = _database()
        self.identity = {"prefect": importlib.metadata.version("prefect"), "database": self.database}
        self.migrated = _read_json(self.marker) == self.identity and (database_file is None or database_file.exists())
        self._log = None

    def start(self) -> "EmbeddedAPI":
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        if self.migrated:
            env |= {"PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false", "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false"}
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.marker.parent / "kexue-api.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait(self) -> str:
        """Block until the API answers /health; return its URL."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the embedded Prefect API exited with code {self.proc.returncode}; "
                                   f"its output is in {self.marker.parent / 'kexue-api.log'}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        if not self.migrated:
                            _write_json(self.marker, self.identity)
                            self.migrated = True
                        return self.url
            time.sleep(0.05)
        raise RuntimeError(f"the embedded Prefect API did not answer within {self.timeout:.0f} s; "
                           f"see {self.marker.parent / 'kexue-api.log'}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()


def _database() -> tuple[str, Path | None]:
    """The API database as the server will see it: a URL from the environment, or the
    default SQLite file under PREFECT_HOME (also returned, to check that it exists)."""
    for key in ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        if os.environ.get(key):
            return os.environ[key], None
    db = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser().resolve() / "prefect.db"
    return f"sqlite:{db}", db


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    from kexue.core.artifacts import write_json_atomic

    write_json_atomic(path, obj)


@contextlib.contextmanager
def _api_settings(url: str) -> Iterator[str]:
    """Export the API URL (child processes) and set it in Prefect's settings (this process,
    where Prefect may have been imported before the URL was known)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@contextlib.contextmanager
def embedded_api(timeout: int = 120) -> Iterator[str]:
    """Start Prefect's API in a subprocess on 127.0.0.1 and export its URL; stop it after."""
    api = EmbeddedAPI(timeout).start()
    try:
        with _api_settings(api.wait()) as url:
            yield url
            drain_prefect_services()
    finally:
        api.stop()


def _local_cluster_kwargs(spec: DaskSpec) -> dict[str, Any]:
    return {
        "n_workers": spec.n_workers,
        "threads_per_worker": spec.threads_per_worker,
        "processes": spec.processes,
        "memory_limit": spec.memory_limit,
        "dashboard_address": spec.dashboard_address,
        "preload": ["tasks.warmup"],  # first-task imports happen at start-up, not inside a stage
        # workers in processes talk over TCP, on loopback only; in-process ones over Dask's
        # in-process transport, whose addresses a host would break (the scheduler fails to start)
        **({"host": "127.0.0.1"} if spec.processes else {}),
    }


# What a task of each long kind takes (default config, 2-core machine), for the scheduler of a
# LocalCluster. Why: Dask places a task on the worker it expects to free first, and it expects
# a task it has not seen finish to take 0.5 s, or twice the time it has run so far. So the graph
# stage's tasks, submitted just after JoSE started, queued behind JoSE for 80 s rather than behind
# the nearly done feature network. An estimate of the right order is enough; once a task of the
# kind finishes, Dask uses the measured times instead.
# Keys are the task functions' names (Dask's key prefixes); a test checks that each names one.
TASK_SECONDS = {"jose_task": 80, "feature_net_task": 30, "gan_run_task": 12, "dsm_run_task": 120,
                "communities_task": 20}


def _dask_config(spec: DaskSpec) -> None:
    import dask

    if spec.dashboard_link:
        dask.config.set({"distributed.dashboard.link": spec.dashboard_link})
    hints = {name: f"{seconds}s" for name, seconds in TASK_SECONDS.items()}
    dask.config.set({"distributed.scheduler.default-task-durations":
                     {**dask.config.get("distributed.scheduler.default-task-durations", {}), **hints}})
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536. Any value of it turns off glibc's
    # adaptive mmap threshold, so every tensor over 128 KiB is mapped, faulted in and unmapped
    # anew each time: TensorFlow's training steps ran 1.5-1.7x slower in such a worker (cr4 GAN
    # run 34 s against 20 s). Our tasks return freed memory themselves when they end
    # (kexue.core.memory), which is what the setting is for; a value the user exports still wins.
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    # Before 3.12, CPython can deadlock inside sys._current_frames(): a garbage collection there
    # that frees a threading.local takes the thread-list lock the call already holds, and the
    # process stops with the GIL held (python/cpython#106883). Dask's worker profiler calls it
    # every 10 ms: a GAN stage hung for good with 14 of its 15 runs done, both workers idle. The
    # cost is the dashboard's Profile page, empty.
    if sys.version_info < (3, 12):
        dask.config.set({"distributed.worker.profile.enabled": False})


def task_runner(spec: DaskSpec, address: str | None = None):
    """A DaskTaskRunner for the profile: a LocalCluster it starts, or a scheduler by address
    (the profile's, or ``address`` — a cluster the CLI started for this run)."""
    from flows.dask_runner import DaskTaskRunner

    _dask_config(spec)
    client_kwargs = {}
    if spec.security:
        from distributed.security import Security

        client_kwargs["security"] = Security(**spec.security)
    if address or spec.address:
        return DaskTaskRunner(address=address or spec.address, client_kwargs=client_kwargs)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=_local_cluster_kwargs(spec),
                          client_kwargs=client_kwargs)


def start_local_cluster(spec: DaskSpec):
    """The profile's LocalCluster, its worker processes forked from one process that has
    imported Prefect's task engine and the text task modules (``tasks.warmup.MODULES``).

    Why a fork server: each freshly spawned worker would import those itself (seconds of
    CPU each, on a machine with as few cores as workers), and at the end finalise them
    again before it exits — slowly enough that the nanny kills it after its 4 s grace.
    A forked worker starts with them imported and exits without finalising. The fork
    server keeps the environment of its start, so this is for a process that runs one
    pipeline (the CLI), after the run's environment is exported.
    """
    import dask
    import distributed
    import distributed.utils

    _dask_config(spec)
    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    if spec.processes:
        # Dask's first get_mp_context() sets its own preload list, importing every package it
        # could preload (pandas, pyarrow, …) into this process to see which are installed; this
        # process only submits tasks and needs none of them (tasks.warmup). Ours replaces that
        # list, so tell Dask it is set; should that flag go, Dask imports them as before and
        # the line after still puts our list in place.
        distributed.utils._forkserver_preload_set = True
        distributed.utils.get_mp_context().set_forkserver_preload(["distributed", *MODULES])
    cluster = distributed.LocalCluster(**_local_cluster_kwargs(spec))
    _LOCAL_CLUSTERS.add(cluster)
    return cluster


# The LocalClusters this process started, for ``stop_children``: their nannies live here.
# Weak: a finished run's cluster is not kept alive by being listed.
_LOCAL_CLUSTERS: weakref.WeakSet = weakref.WeakSet()


@dataclass
class Services:
    """What ``run_services`` started: the embedded API (or None) and a LocalCluster (or None)."""

    api: EmbeddedAPI | None = None
    cluster: Any = None
    api_url: str | None = None
    _starting: concurrent.futures.Future | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def dask_address(self) -> str | None:
        return self.cluster.scheduler_address if self.cluster is not None else None

    def ready(self) -> str | None:
        """Wait for the cluster and the API; return the API's URL (None when the run uses
        an API from the environment)."""
        if self._starting is not None:
            self.cluster = self._starting.result()
        if self.api is not None and self.api_url is None:
            self.api_url = self._stack.enter_context(_api_settings(self.api.wait()))
        return self.api_url


@contextlib.contextmanager
def run_services(cfg: Config, embed_api: bool) -> Iterator[Services]:
    """Start a run's services side by side; stop them after.

    The API server process starts first; its URL is exported at once, so the LocalCluster
    (when the profile names no scheduler) starts meanwhile — in a thread, so that this
    process can import the flow at the same time. Call ``ready()`` before the flow. On
    exit, Prefect's queued events are sent while the API is up (the workers' too, see
    ``tasks.warmup``), then the cluster and the API stop.
    """
    services = Services()
    previous = os.environ.get("PREFECT_API_URL")
    try:
        if embed_api:
            services.api = EmbeddedAPI(cfg.profile.prefect.startup_timeout).start()
            os.environ["PREFECT_API_URL"] = services.api.url
            export_environment(loopback_tls_environment())
        if cfg.profile.dask.address is None:
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kexue-cluster-start")
            services._starting = pool.submit(start_local_cluster, cfg.profile.dask)
            pool.shutdown(wait=False)
        with services._stack:
            yield services
            drain_prefect_services()
    finally:
        if services._starting is not None and services._starting.exception() is None:
            services._starting.result().close()
        if services.api is not None:
            services.api.stop()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


# Settings tied to the run's data_dir: always those of the current run (a test session or a
# long-lived worker may run several pipelines with different data folders).
RUN_SPECIFIC = ("PREFECT_RESULTS_LOCAL_STORAGE_PATH", "DASK_TEMPORARY_DIRECTORY")


def prepare(cfg: Config) -> None:
    """Export the run's environment before the Dask cluster starts."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    env = prefect_environment(cfg.data_dir, cfg.profile.prefect.logging_level)
    export_environment(env)
    export_environment({k: env[k] for k in RUN_SPECIFIC}, override=True)


def result_storage(path: Path):
    """Register (idempotently) a result-storage block for ``path``; return the saved block.

    Task results — and so Prefect's cache records — must live in the run's data_dir, on
    storage every worker can reach, whatever Prefect settings a worker process started
    with. Prefect wants such storage as a saved block. Tasks get the block itself, not its
    slug: given a slug, every task run would first fetch the block from the API.
    """
    from prefect.filesystems import LocalFileSystem

    from kexue.core.artifacts import sha256_text

    name = "kexue-results-" + sha256_text(str(path.resolve()))[:16]
    block = LocalFileSystem(basepath=str(path.resolve()))
    block.save(name, overwrite=True)
    return block


def stop_children(grace: float = 3.0) -> None:
    """Terminate every process this one started (Dask nannies and workers, the embedded
    API), then kill what is still alive after ``grace`` seconds.

    The nannies are told first that their workers' exits are expected. A nanny otherwise
    restarts a worker that exits: through a fork server already stopped here, which failed
    with a traceback (seen in CI), or through one still alive, which forked a worker that
    outlived the run. A second sweep stops anything forked in between.
    """
    import psutil

    if _LOCAL_CLUSTERS:  # none yet: Dask need not be imported to stop (interrupted before the cluster started)
        from distributed import Nanny

        for cluster in list(_LOCAL_CLUSTERS):
            for nanny in list(cluster.workers.values()):
                if isinstance(nanny, Nanny):
                    nanny.close_gracefully(reason="kexue run interrupted")
    for _ in range(2):
        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        _, alive = psutil.wait_procs(children, timeout=grace)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=grace)
