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
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import get_run_context

from flows import publish, runtime
from flows.progress import RunProgress
from flows import registry
from flows.stages import RUNNERS, StageContext, summarize_files
from kexue.core.artifacts import write_bytes_atomic, write_json_atomic
from kexue.core.config import Config
from kexue.core.dag import NodeResult, check_dag, execute, with_upstream
from kexue.report import write_report
from tasks.caching import Store


def load(config: str, profile: str, overrides: list[str] | None) -> Config:
    return registry.load(config, profile, overrides)


RUNNING: set[str] = set()  # stages running now in this process (the CLI names them when interrupted)


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

    def stage(self, order: list[str], **entry: Any) -> None:
        """Record a finished stage; the list keeps pipeline.yaml's order, whatever finished first."""
        self.data["stages"].append(entry)
        self.data["stages"].sort(key=lambda s: order.index(s["name"]))
        self.save()


@flow(name="stages")
def stages(config: str, profile: str, overrides: list[str], selected: list[str], run_id: str) -> dict[str, Any]:
    """Run the selected stages on the current task runner, each as soon as its inputs are done."""
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
    store = Store(data_dir=str(cfg.data_dir), base_dir=str(Path(cfg.pipeline_path).parent))
    lock = threading.Lock()
    with board:
        base = StageContext(store=store, progress=board,
                            result_storage=runtime.result_storage(cfg.data_dir / "prefect" / "results"))
        outcomes: dict[str, Any] = {}

        def run_stage(name: str):
            spec = cfg.pipeline.stages[name]
            inputs = {role: outcomes[up].manifest for role, up in spec.inputs.items()}
            board.line(f"start   {name}")
            RUNNING.add(name)
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
            with lock:
                record.stage(order, **entry)
            if result.status == "completed":
                publish.stage(entry)
                for key, (rows, description) in result.value.tables.items():
                    publish.table(f"{name}-{key}", rows, description)
            label = {"completed": "cached " if entry.get("cached") else "done   ", "failed": "FAILED ", "skipped": "skipped"}
            board.line(f"{label[result.status]} {name:<12} {entry['seconds']:8.2f}s" + (f"  ({result.reason})" if result.reason else ""))

        results = execute(dag, run_stage, finished)
    failed = [n for n in dag if results[n].status == "failed"]
    record.data["status"] = "failed" if failed else "completed"
    record.data["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    record.save()
    report = write_report(record.dir)
    write_bytes_atomic(record.latest / "report.html", report.read_bytes())
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
             stages_to_run: list[str] | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Validate the config, start the profile's Dask task runner and run the stages.

    Deployed as ``pipeline/nightly`` and ``pipeline/adhoc``; ``kexue run`` calls it too.
    """
    overrides = list(overrides or [])
    cfg = load(config, profile, overrides)  # fails here, before any work, on a bad key
    inputs = {n: s.upstream for n, s in cfg.pipeline.stages.items()}
    wanted = stages_to_run or [n for n, s in cfg.pipeline.stages.items() if s.enabled]
    unknown = [s for s in wanted if s not in inputs]
    if unknown:
        from kexue.core.errors import ConfigError, did_you_mean

        raise ConfigError(f"--stages: unknown stage {unknown[0]!r}" + did_you_mean(unknown[0], inputs))
    selected = sorted(with_upstream(inputs, wanted))
    runtime.prepare(cfg)
    runner = runtime.task_runner(cfg.profile.dask)
    return stages.with_options(task_runner=runner)(config, profile, overrides, selected, run_id or new_run_id())

