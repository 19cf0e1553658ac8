"""``kexue`` command line: run the pipeline, check a config.

The environment (project-local PREFECT_HOME, result storage, quiet telemetry) is set
before Prefect is imported, because Prefect reads its settings at import time.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from kexue.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True, soft_wrap=True)


def _load(config: str, profile: str, overrides: list[str]):
    from kexue.params import load

    try:
        return load(config, profile, overrides)
    except ConfigError as e:
        console.print(f"[red]config error[/red]\n{e}")
        raise typer.Exit(2)


@app.command()
def run(
    config: str = typer.Option("pipeline.yaml", "--config", "-c", help="the pipeline DAG"),
    profile: str = typer.Option("local", "--profile", "-p", help="local | cluster | ci | path to a profile YAML"),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="override stage.param=value (YAML value); repeatable"),
    stages: Optional[str] = typer.Option(None, "--stages", help="comma-separated stages (their upstream stages run too, from cache)"),
) -> None:
    """Run the pipeline (or some stages) and write data/runs/<run-id>/summary.json."""
    overrides = list(set_ or [])
    cfg = _load(config, profile, overrides)
    from flows import runtime

    runtime.prepare(cfg)  # before importing prefect: settings are read at import time
    from flows.pipeline import new_run_id, pipeline

    run_id = new_run_id()
    console.print(f"kexue run [bold]{run_id}[/bold]  profile={cfg.profile_name}  artifacts={cfg.data_dir}")
    wanted = [s.strip() for s in stages.split(",")] if stages else None
    try:
        if cfg.profile.prefect.api == "embedded":
            with runtime.embedded_api(cfg.profile.prefect.startup_timeout) as url:
                console.print(f"Prefect API (embedded): {url}")
                summary = pipeline(config, profile, overrides, wanted, run_id)
        else:
            if cfg.profile.prefect.api == "url" and cfg.profile.prefect.api_url:
                import os

                os.environ["PREFECT_API_URL"] = cfg.profile.prefect.api_url
            summary = pipeline(config, profile, overrides, wanted, run_id)
    except ConfigError as e:
        console.print(f"[red]config error[/red]\n{e}")
        raise typer.Exit(2)
    except Exception as e:
        console.print(f"[red]run failed[/red]: {e}")
        raise typer.Exit(1)
    run_dir = Path(summary["run_dir"])
    console.print(f"[green]completed[/green]  summary: {run_dir / 'summary.json'}")


@app.command()
def check(
    config: str = typer.Option("pipeline.yaml", "--config", "-c"),
    profile: str = typer.Option("local", "--profile", "-p"),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s"),
) -> None:
    """Validate pipeline.yaml and a profile without running anything."""
    cfg = _load(config, profile, list(set_ or []))
    from kexue.dag import check_dag

    order = check_dag({n: s.inputs for n, s in cfg.pipeline.stages.items()}, cfg.pipeline_path)
    console.print(f"[green]ok[/green]: {len(order)} stages in order: {', '.join(order)}")


def main() -> None:
    sys.exit(app())
