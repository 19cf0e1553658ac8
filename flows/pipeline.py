"""The pipeline flow: the DAG of pipeline.yaml, run stage by stage on Dask.

``pipeline`` (the deployed entry point) loads and validates the config — failing before
any work on a bad key — then runs ``stages`` as a subflow with the profile's
DaskTaskRunner. Each stage's outcome is recorded in ``data/runs/<run-id>/summary.json``
(and ``data/runs/latest/``) as soon as it finishes, so a failed run still leaves a record,
and the next run resumes from the cached stages.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import dask
from prefect import flow, get_run_logger
from prefect.context import get_run_context

from flows import publish, runtime
from flows.stages import RUNNERS, StageContext, summarize_files
from kexue.core.artifacts import Manifest, write_bytes_atomic, write_json_atomic
from kexue.core.config import Config
from kexue.core.dag import check_dag, with_upstream
from kexue.report import write_report
from kexue.core import registry as kparams
from tasks.caching import Store


def load(config: str, profile: str, overrides: list[str] | None) -> Config:
    return kparams.load(config, profile, overrides)


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class RunRecord:
    """The run summary, rewritten atomically after every stage."""

    def __init__(self, cfg: Config, run_id: str, selected: list[str]):
        self.dir = cfg.data_dir / "runs" / run_id
        self.latest = cfg.data_dir / "runs" / "latest"
        self.data: dict[str, Any] = {
            "run_id": run_id,
            "status": "running",
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "finished": None,
            "profile": cfg.profile_name,
            "pipeline": cfg.pipeline_path,
            "data_dir": str(cfg.data_dir),
            "run_dir": str(self.dir),
            "stages_selected": selected,
            "dashboard": None,
            "flow_run_id": None,
            "workers": [],
            "stages": [],
            "config": cfg.raw,
        }

    def save(self) -> Path:
        path = write_json_atomic(self.dir / "summary.json", self.data)
        self.latest.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.latest / "summary.json", self.data)
        write_json_atomic(self.latest / "run.json", {"run_id": self.data["run_id"], "run_dir": str(self.dir)})
        return path

    def stage(self, **entry: Any) -> None:
        self.data["stages"].append(entry)
        self.save()


@flow(name="stages")
def stages(config: str, profile: str, overrides: list[str], selected: list[str], run_id: str) -> dict[str, Any]:
    """Run the selected stages in dependency order on the current task runner."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    logger = get_run_logger()
    cfg = load(config, profile, overrides)
    record = RunRecord(cfg, run_id, selected)
    ctx = get_run_context()
    client = getattr(ctx.task_runner, "client", None) or getattr(ctx.task_runner, "_client", None)
    if client is not None:
        record.data["dashboard"] = client.dashboard_link
        record.data["workers"] = sorted(w.get("name", a) for a, w in client.scheduler_info(n_workers=-1)["workers"].items())
    record.data["flow_run_id"] = str(ctx.flow_run.id)
    publish.dashboard(record.data["dashboard"])
    print(f"Dask dashboard: {record.data['dashboard']}")
    print(f"Artifacts under: {cfg.data_dir}   run record: {record.dir}")
    record.save()

    inputs = {n: s.inputs for n, s in cfg.pipeline.stages.items()}
    order = [s for s in check_dag(inputs, cfg.pipeline_path) if s in selected]
    store = Store(data_dir=str(cfg.data_dir), base_dir=str(Path(cfg.pipeline_path).parent))
    done: dict[str, Manifest] = {}
    failed: str | None = None
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=True, disable=not os.isatty(1)
    ) as progress:
        sctx = StageContext(store=store, progress=progress, resources=cfg.profile.dask.resources,
                            result_storage=runtime.result_storage(cfg.data_dir / "prefect" / "results"))
        for name in order:
            spec = cfg.pipeline.stages[name]
            t0 = time.perf_counter()
            try:
                # resources from the profile (e.g. {GPU: 1}) land training tasks on matching workers
                with dask.annotate(resources=sctx.resources[name]) if name in sctx.resources else contextlib.nullcontext():
                    outcome = RUNNERS[spec.task](sctx, cfg.params[name], {u: done[u] for u in spec.inputs})
            except BaseException as e:  # record the failure, then let the flow fail
                record.stage(name=name, task=spec.task, status="failed", cached=False,
                             seconds=round(time.perf_counter() - t0, 3), error=f"{type(e).__name__}: {e}",
                             traceback=traceback.format_exc(limit=5))
                failed = name
                logger.error("stage %s failed: %s", name, e)
                break
            done[name] = outcome.manifest
            seconds = round(time.perf_counter() - t0, 3)
            record.stage(name=name, task=spec.task, status="completed", cached=outcome.cached, seconds=seconds,
                         files=summarize_files(outcome.manifest), metrics=outcome.manifest.metrics)
            publish.stage(record.data["stages"][-1])
            for key, (rows, description) in outcome.tables.items():
                publish.table(f"{name}-{key}", rows, description)
            print(f"{'cached ' if outcome.cached else 'done   '} {name:<12} {seconds:8.2f}s")
    record.data["status"] = "failed" if failed else "completed"
    record.data["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    record.save()
    report = write_report(record.dir)
    write_bytes_atomic(record.latest / "report.html", report.read_bytes())
    print(f"Report: {report}")
    if failed:
        raise RuntimeError(f"stage {failed!r} failed; see {record.dir / 'summary.json'}. "
                           "Re-run to resume: completed stages come from the cache.")
    return record.data


@flow(name="pipeline")
def pipeline(config: str = "pipeline.yaml", profile: str = "local", overrides: list[str] | None = None,
             stages_to_run: list[str] | None = None, run_id: str | None = None,
             dask_address: str | None = None) -> dict[str, Any]:
    """Validate the config, start the profile's Dask task runner and run the stages.

    Deployed as ``pipeline/nightly`` and ``pipeline/adhoc``; ``kexue run`` calls it too,
    with ``dask_address`` of the cluster it started alongside the API.
    """
    overrides = list(overrides or [])
    cfg = load(config, profile, overrides)  # fails here, before any work, on a bad key
    inputs = {n: s.inputs for n, s in cfg.pipeline.stages.items()}
    wanted = stages_to_run or [n for n, s in cfg.pipeline.stages.items() if s.enabled]
    unknown = [s for s in wanted if s not in inputs]
    if unknown:
        from kexue.core.errors import ConfigError, did_you_mean

        raise ConfigError(f"--stages: unknown stage {unknown[0]!r}" + did_you_mean(unknown[0], inputs))
    selected = sorted(with_upstream(inputs, wanted))
    runtime.prepare(cfg)
    runner = runtime.task_runner(cfg.profile.dask, dask_address)
    return stages.with_options(task_runner=runner)(config, profile, overrides, selected, run_id or new_run_id())

