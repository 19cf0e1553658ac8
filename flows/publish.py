"""Publish what a run produced as Prefect artifacts, so it is visible in the Prefect UI."""
from __future__ import annotations

import re
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact


def _key(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def _scalars(metrics: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    rows = []
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _scalars(v, name + ".")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            rows.append({"metric": name, "value": v})
    return rows


def dashboard(link: str | None) -> None:
    if link:
        create_link_artifact(key="dask-dashboard", link=link, link_text="Dask dashboard",
                             description="The Dask dashboard of this run's cluster (live while the run is going).")


def stage(entry: dict[str, Any]) -> None:
    """A table of the stage's scalar metrics, and a list of its files."""
    name = entry["name"]
    rows = [{"metric": "status", "value": entry["status"]}, {"metric": "cached", "value": entry["cached"]},
            {"metric": "seconds", "value": entry["seconds"]}] + _scalars(entry.get("metrics", {}))
    create_table_artifact(key=_key(f"{name}-metrics"), table=rows, description=f"kexue stage {name}: metrics")
    files = entry.get("files", {})
    lines = [f"# {name}: files", ""]
    for label, path in files.items():
        if isinstance(path, list):
            lines.append(f"- **{label}**: {len(path)} files, e.g. `{path[0]}`" if path else f"- **{label}**: none")
        else:
            lines.append(f"- **{label}**: [`{path}`](file://{path})")
    create_markdown_artifact(key=_key(f"{name}-files"), markdown="\n".join(lines), description=f"kexue stage {name}: files")


def table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A table a stage wants shown as such (GAN evaluation, top communities)."""
    if rows:
        create_table_artifact(key=_key(key), table=rows, description=description)
