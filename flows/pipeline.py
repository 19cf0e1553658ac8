"""The pipeline flow: the DAG of pipeline.yaml, run as a DAG on Dask.

``pipeline`` (the deployed entry point) loads and validates the config — failing before
any work on a bad key — then runs ``stages`` as a subflow with the profile's
DaskTaskRunner. Every stage starts as soon as its inputs are done (the GAN branch runs
beside the text stages; ``graph`` does not wait for ``jose``), sharing the cluster's
workers. Each stage's outcome, with its start and finish, is recorded in
``data/runs/<run-id>/summary.json`` (and ``data/runs/latest/``) as soon as it finishes,
so a failed run still leaves a record, and the next run resumes from the cached stages.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import traceback
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import get_run_context

from flows import interrupt, publish, runtime, uptodate
from flows.progress import RunProgress
from flows import registry
from flows.record import RunRecord, new_run_id, summarize_files
from flows.stages import RUNNERS, StageContext
from kexue.core.config import Config
from kexue.core.dag import NodeResult, check_dag, execute
from tasks.caching import Store


def load(config: str, profile: str, overrides: list[str] | None) -> Config:
    return registry.load(config, profile, overrides)


RUNNING: set[str] = set()  # stages running now in this process (the CLI names them when interrupted)


@flow(name="stages")
def stages(config: str, profile: str, overrides: list[str], selected: list[str], run_id: str) -> dict[str, Any]:
    """Run the selected stages on the current task runner, each as soon as its inputs are done."""
    interrupt.rearm()
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
    board = RunProgress(logger)
    board.line(f"Dask dashboard: {record.data['dashboard']}")
    board.line(f"Artifacts under: {cfg.data_dir}   run record: {record.dir}")
    record.save()
    if client is not None:
        board.subscribe(client)

    order = check_dag({n: s.upstream for n, s in cfg.pipeline.stages.items()}, cfg.pipeline_path)
    dag = {n: cfg.pipeline.stages[n].upstream for n in order if n in selected}
    keys = uptodate.stage_keys(cfg, list(dag))  # completed stages are recorded under these (flows.uptodate)
    store = Store(data_dir=str(cfg.data_dir), base_dir=str(Path(cfg.pipeline_path).parent))
    lock = threading.Lock()
    with board:
        slots = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values()) if client else 1
        base = StageContext(store=store, progress=board,
                            result_storage=runtime.result_storage(cfg.data_dir / "prefect" / "results"),
                            slots=max(1, slots))
        outcomes: dict[str, Any] = {}

        def run_stage(name: str):
            spec = cfg.pipeline.stages[name]
            inputs = {role: outcomes[up].manifest for role, up in spec.inputs.items()}
            RUNNING.add(name)  # before the line: an interrupt right after it must name this stage
            board.line(f"start   {name}")
            sctx = dataclasses.replace(base, annotations=annotations(cfg, order, name))
            outcomes[name] = RUNNERS[spec.task](sctx, cfg.params[name], inputs)
            return outcomes[name]

        def finished(name: str, result: NodeResult) -> None:
            RUNNING.discard(name)
            spec = cfg.pipeline.stages[name]
            entry: dict[str, Any] = {"name": name, "task": spec.task, "status": result.status,
                                     "started": _iso(result.started), "finished": _iso(result.finished),
                                     "seconds": round(result.finished - result.started, 3) if result.started else 0.0}
            if result.status == "completed":
                outcome = result.value
                entry.update(cached=outcome.cached, files=summarize_files(outcome.manifest), metrics=outcome.manifest.metrics)
            elif result.status == "failed":
                e = result.error
                entry.update(cached=False, error=f"{type(e).__name__}: {e}",
                             traceback="".join(traceback.format_exception(e, limit=5)))
                logger.error("stage %s failed: %s", name, e)
            else:
                entry.update(cached=False, reason=result.reason)
            label = {"completed": "cached " if entry.get("cached") else "done   ", "failed": "FAILED ", "skipped": "skipped"}
            board.line(f"{label[result.status]} {name:<12} {entry['seconds']:8.2f}s" + (f"  ({result.reason})" if result.reason else ""))
            with lock:
                record.stage(order, **entry)
            if result.status == "completed":
                uptodate.remember(cfg.data_dir, keys[name], result.value.manifest)
                publish.stage(entry)
                for key, (rows, description) in result.value.tables.items():
                    publish.table(f"{name}-{key}", rows, description)

        results = execute(dag, run_stage, finished)
    failed = [n for n in dag if results[n].status == "failed"]
    report = record.close("failed" if failed else "completed")
    board.line(f"Report: {report}")
    if failed:
        raise RuntimeError(f"stage {failed[0]!r} failed; see {record.dir / 'summary.json'}. "
                           "Re-run to resume: completed stages come from the cache.")
    return record.data


def annotations(cfg: Config, order: list[str], name: str) -> dict[str, Any]:
    """Dask annotations for a stage's tasks: the profile's resources (e.g. {GPU: 1}) land
    training on matching workers; a priority by position in pipeline.yaml's order lets the
    short text tasks go before training runs queued on the same workers."""
    out: dict[str, Any] = {"priority": len(order) - order.index(name)}
    if name in cfg.profile.dask.resources:
        out["resources"] = cfg.profile.dask.resources[name]
    return out


def _iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t).isoformat(timespec="milliseconds") if t else None


@flow(name="pipeline")
def pipeline(config: str = "pipeline.yaml", profile: str = "local", overrides: list[str] | None = None,
             stages_to_run: list[str] | None = None, run_id: str | None = None,
             dask_address: str | None = None) -> dict[str, Any]:
    """Validate the config, start the profile's Dask task runner and run the stages.

    Deployed as ``pipeline/nightly`` and ``pipeline/adhoc``; ``kexue run`` calls it too,
    with ``dask_address`` of the cluster it started alongside the API.
    """
    interrupt.rearm()
    overrides = list(overrides or [])
    cfg = load(config, profile, overrides)  # fails here, before any work, on a bad key
    selected = registry.selected_stages(cfg, stages_to_run)
    runtime.prepare(cfg)
    runner = runtime.task_runner(cfg.profile.dask, dask_address)
    return stages.with_options(task_runner=runner)(config, profile, overrides, selected, run_id or new_run_id())

