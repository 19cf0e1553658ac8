"""The run record: ``data/runs/<run-id>/summary.json`` (and ``runs/latest/``) and its report.

Kept free of Prefect so that a run with every stage up to date (``flows.uptodate``) writes
the same record as a run through the flow, without starting the orchestrator.
"""
from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from kexue.core.artifacts import Manifest, write_bytes_atomic, write_json_atomic
from kexue.core.config import Config
from kexue.report import write_report


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def summarize_files(manifest: Manifest) -> dict[str, Any]:
    """A stage's files as the summary lists them: {name: path}, and its partitions' paths."""
    files: dict[str, Any] = {k: v.path for k, v in manifest.files.items()}
    if manifest.partitions:
        files["partitions"] = [p.path for p in manifest.partitions]
    return files


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

    def close(self, status: str) -> Path:
        """Mark the run finished with ``status``; write the summary and the HTML report (also to latest/)."""
        self.data["status"] = status
        self.data["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        self.save()
        report = write_report(self.dir)
        write_bytes_atomic(self.latest / "report.html", report.read_bytes())
        return report
