"""The run-time around a flow: one Prefect API for everybody, and the Dask task runner.

The one-API rule: with no ``PREFECT_API_URL`` every Dask worker process would start its
own temporary Prefect server (slow, and task runs recorded in separate databases). So the
CLI starts one embedded API (``SubprocessASGIServer``, bound to 127.0.0.1) and exports its
URL *before* the cluster starts; worker processes inherit it from the environment.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from kexue.core.config import Config, DaskSpec


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


@contextlib.contextmanager
def embedded_api(timeout: int = 120) -> Iterator[str]:
    """Start Prefect's API in a subprocess on 127.0.0.1 and export its URL; stop it after."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=timeout)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()


def task_runner(spec: DaskSpec):
    """A DaskTaskRunner for the profile: a LocalCluster we start, or an existing scheduler."""
    import dask
    from prefect_dask import DaskTaskRunner

    if spec.dashboard_link:
        dask.config.set({"distributed.dashboard.link": spec.dashboard_link})
    client_kwargs = {}
    if spec.security:
        from distributed.security import Security

        client_kwargs["security"] = Security(**spec.security)
    if spec.address:
        return DaskTaskRunner(address=spec.address, client_kwargs=client_kwargs)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": spec.n_workers,
            "threads_per_worker": spec.threads_per_worker,
            "processes": spec.processes,
            "memory_limit": spec.memory_limit,
            "dashboard_address": spec.dashboard_address,
            "host": "127.0.0.1",
            "preload": ["tasks.warmup"],  # first-task imports happen at start-up, not inside a stage
        },
        client_kwargs=client_kwargs,
    )


# Settings tied to the run's data_dir: always those of the current run (a test session or a
# long-lived worker may run several pipelines with different data folders).
RUN_SPECIFIC = ("PREFECT_RESULTS_LOCAL_STORAGE_PATH", "DASK_TEMPORARY_DIRECTORY")


def prepare(cfg: Config) -> None:
    """Export the run's environment before the Dask cluster starts."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    env = prefect_environment(cfg.data_dir, cfg.profile.prefect.logging_level)
    export_environment(env)
    export_environment({k: env[k] for k in RUN_SPECIFIC}, override=True)


def result_storage(path: Path) -> str:
    """Register (idempotently) a result-storage block for ``path``; return its slug.

    Task results — and so Prefect's cache records — must live in the run's data_dir, on
    storage every worker can reach, whatever Prefect settings a worker process started
    with. Prefect wants such storage as a saved block.
    """
    from prefect.filesystems import LocalFileSystem

    from kexue.core.artifacts import sha256_text

    name = "kexue-results-" + sha256_text(str(path.resolve()))[:16]
    LocalFileSystem(basepath=str(path.resolve())).save(name, overwrite=True)
    return f"local-file-system/{name}"


def stop_children(grace: float = 3.0) -> None:
    """Terminate every process this one started (Dask nannies and workers, the embedded
    API), then kill what is still alive after ``grace`` seconds."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace)
