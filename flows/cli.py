"""``kexue`` command line: run the pipeline, check a config.

The environment (project-local PREFECT_HOME, result storage, quiet telemetry) is set
before Prefect is imported, because Prefect reads its settings at import time.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow (grappler logs harmless "errors")

import typer
from rich.console import Console

from kexue.core.errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True, soft_wrap=True)


def _load(config: str, profile: str, overrides: list[str]):
    from flows.registry import load

    try:
        return load(config, profile, overrides)
    except ConfigError as e:
        console.print(f"[red]config error[/red]\n{e}")
        raise typer.Exit(2)


def stop_on_signals() -> None:
    """SIGINT / SIGTERM end a run at once: one line, every child process stopped, exit 130 / 143.

    Why not let the flow unwind: a training task runs inside a Dask worker, in TensorFlow's
    C++ loop, and would finish its step, epoch or stage first; Prefect and Dask each print
    a traceback on the way down, and the embedded API and the cluster's processes outlive
    the interrupted flow. Nothing is lost by stopping hard: every artifact and checkpoint
    is written atomically (a temporary file renamed into place), finished tasks are in the
    cache, and the next ``kexue run`` resumes from the last checkpoint.
    """

    def stop(signum: int, frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        running = sorted(sys.modules["flows.pipeline"].RUNNING) if "flows.pipeline" in sys.modules else []
        where = f"during {', '.join(running)}" if running else "before any stage started"
        console.print(f"[yellow]interrupted {where}[/yellow]; re-run to resume")
        from flows.runtime import stop_children

        stop_children()
        os._exit(128 + signum)

    from flows import interrupt

    interrupt.install(stop)  # the flows re-arm it after Prefect installs its own SIGTERM handler


@app.command()
def run(
    config: str = typer.Option("pipeline.yaml", "--config", "-c", help="the pipeline DAG"),
    profile: str = typer.Option("local", "--profile", "-p", help="local | cluster | ci | path to a profile YAML"),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="override stage.param=value (YAML value); repeatable"),
    stages: Optional[str] = typer.Option(None, "--stages", help="comma-separated stages (their upstream stages run too, from cache)"),
    always_run_flow: bool = typer.Option(False, "--always-run-flow",
                                         help="run the Prefect flow even when every stage is up to date"),
) -> None:
    """Run the pipeline (or some stages) and write data/runs/<run-id>/summary.json."""
    overrides = list(set_ or [])
    cfg = _load(config, profile, overrides)
    wanted = [s.strip() for s in stages.split(",")] if stages else None
    if not always_run_flow and _up_to_date(cfg, wanted):
        return
    from flows import runtime

    runtime.prepare(cfg)  # before importing prefect: settings are read at import time
    stop_on_signals()
    api = cfg.profile.prefect
    if api.api == "url" and api.api_url:
        os.environ["PREFECT_API_URL"] = api.api_url
    # "environment" uses PREFECT_API_URL when set; without one, embed an API rather than let
    # every Dask worker start its own temporary server.
    embed = api.api == "embedded" or (api.api == "environment" and not os.environ.get("PREFECT_API_URL"))
    try:
        with runtime.run_services(cfg, embed) as services:  # the API and the cluster start side by side...
            from flows.pipeline import pipeline  # ...while this process imports Prefect
            from flows.record import new_run_id

            run_id = new_run_id()
            console.print(f"kexue run [bold]{run_id}[/bold]  profile={cfg.profile_name}  artifacts={cfg.data_dir}")
            url = services.ready() or os.environ["PREFECT_API_URL"]
            console.print(f"Prefect API{' (embedded)' if embed else ''}: {url}")
            summary = pipeline(config, profile, overrides, wanted, run_id, dask_address=services.dask_address)
    except ConfigError as e:
        console.print(f"[red]config error[/red]\n{e}")
        raise typer.Exit(2)
    except Exception as e:
        console.print(f"[red]run failed[/red]: {e}")
        raise typer.Exit(1)
    run_dir = Path(summary["run_dir"])
    console.print(f"[green]completed[/green]  summary: {run_dir / 'summary.json'}")


def _up_to_date(cfg, wanted: list[str] | None) -> bool:
    """Answer the run without Prefect or Dask if every selected stage is up to date (``flows.uptodate``)."""
    from flows import uptodate
    from flows.record import new_run_id
    from flows.registry import selected_stages
    from kexue.core.dag import check_dag

    try:
        selected = selected_stages(cfg, wanted)
    except ConfigError as e:
        console.print(f"[red]config error[/red]\n{e}")
        raise typer.Exit(2)
    order = check_dag({n: s.upstream for n, s in cfg.pipeline.stages.items()}, cfg.pipeline_path)
    run_id = new_run_id()
    record = uptodate.record_if_up_to_date(cfg, selected, order, run_id)
    if record is None:
        return False
    done = [s["name"] for s in record.data["stages"]]
    console.print(f"kexue run [bold]{run_id}[/bold]  profile={cfg.profile_name}  artifacts={cfg.data_dir}")
    console.print(f"up to date: {', '.join(done)} (recorded results, every file intact: no Prefect flow run "
                  "or Dask cluster needed; --always-run-flow runs the flow anyway)")
    console.print(f"Report: {record.dir / 'report.html'}")
    console.print(f"[green]completed[/green]  summary: {record.dir / 'summary.json'}")
    return True


@app.command()
def check(
    config: str = typer.Option("pipeline.yaml", "--config", "-c"),
    profile: str = typer.Option("local", "--profile", "-p"),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s"),
) -> None:
    """Validate pipeline.yaml and a profile without running anything."""
    cfg = _load(config, profile, list(set_ or []))
    from kexue.core.dag import check_dag

    order = check_dag({n: s.upstream for n, s in cfg.pipeline.stages.items()}, cfg.pipeline_path)
    console.print(f"[green]ok[/green]: {len(order)} stages in order: {', '.join(order)}")


@app.command()
def report(
    run_dir: Optional[str] = typer.Argument(None, help="a run folder (data/runs/<run-id>); default: the latest run"),
    config: str = typer.Option("pipeline.yaml", "--config", "-c"),
    profile: str = typer.Option("local", "--profile", "-p"),
    screenshot: bool = typer.Option(False, "--screenshot", help="also save report.png with headless Chromium"),
) -> None:
    """(Re)generate a run's report.html from its summary.json."""
    from kexue.report import latest_run_dir, write_report

    if run_dir is None:
        cfg = _load(config, profile, [])
        run_dir = latest_run_dir(cfg.data_dir)
        if run_dir is None:
            console.print(f"[red]no runs yet under {cfg.data_dir / 'runs'}[/red]")
            raise typer.Exit(1)
    if not (Path(run_dir) / "summary.json").exists():
        console.print(f"[red]{run_dir}: no summary.json[/red]")
        raise typer.Exit(1)
    page = write_report(run_dir)
    console.print(f"report: {page}")
    if screenshot:
        from kexue.browser import screenshot as shoot

        console.print(f"screenshot: {shoot(page, Path(run_dir) / 'report.png')}")


@app.command()
def deploy(
    pool: str = typer.Option("kexue-pool", "--pool", help="the process work pool the deployments use"),
) -> None:
    """Register the deployments of prefect.yaml (nightly, adhoc) with the Prefect API in PREFECT_API_URL."""
    import subprocess

    if not os.environ.get("PREFECT_API_URL"):
        console.print("[red]set PREFECT_API_URL to a running server (prefect server start --host 127.0.0.1)[/red]")
        raise typer.Exit(2)
    exe = Path(sys.executable).with_name("prefect")
    pools = subprocess.run([exe, "work-pool", "inspect", pool], capture_output=True, text=True)
    if pools.returncode != 0:
        subprocess.run([exe, "work-pool", "create", pool, "--type", "process"], check=True)
    subprocess.run([exe, "--no-prompt", "deploy", "--all"], check=True)
    console.print(f"deployed; start a worker with: prefect worker start --pool {pool}")


def main() -> None:
    sys.exit(app())
