"""One self-contained HTML page per run, built from its ``summary.json``.

Self-contained: plots are embedded as data URIs, so the page can be mailed or archived
alone; artifact links point at the files on disk. An inline script records, once the page
has loaded, how many images decoded (``data-images-loaded`` / ``data-images-total`` on
<body>) so that a headless browser can check the page as a person would see it.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Iterable

from kexue.core.artifacts import write_text_atomic

CSS = """
body{font-family:system-ui,-apple-system,"Noto Sans CJK SC","WenQuanYi Zen Hei",sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0 1rem} td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top;font-size:.92rem}
th{background:#f4f4f4} .ok{color:#1a7f37;font-weight:600} .failed{color:#cf222e;font-weight:600} .cached{color:#6e7781}
img{max-width:100%;border:1px solid #eee;margin:.4rem 0} .muted{color:#6e7781;font-size:.9rem} code{font-size:.85rem}
.grid{display:flex;flex-wrap:wrap;gap:1rem} .grid figure{margin:0;max-width:340px} figcaption{font-size:.85rem;color:#555}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-images-total', String(imgs.length));
});
"""


def esc(x: Any) -> str:
    return html.escape(str(x))


def data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def table(rows: Iterable[Iterable[Any]], header: Iterable[Any] | None = None) -> str:
    out = ["<table>"]
    if header is not None:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else esc(fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


class Raw(str):
    """Already-escaped HTML inside a table cell."""


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def scalar_rows(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            rows += scalar_rows(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            rows.append((f"{prefix}{k}", v))
    return rows


def list_tables(metrics: dict[str, Any]) -> list[str]:
    """Render list-valued metrics: lists of dicts as tables, lists of lists as rows."""
    out = []
    for k, v in metrics.items():
        if not isinstance(v, list) or not v or k in ("workers", "repaired"):
            continue
        if all(isinstance(r, dict) for r in v):
            cols = list(dict.fromkeys(c for r in v for c in r))
            out.append(f"<h4>{esc(k)}</h4>" + table(([r.get(c, "") for c in cols] for r in v), cols))
        elif all(isinstance(r, (list, tuple)) for r in v):
            out.append(f"<h4>{esc(k)}</h4>" + table((list(r) for r in v)))
    for k, v in metrics.items():  # {probe: [[word, score], ...]} (nearest neighbours)
        if isinstance(v, dict) and v and all(isinstance(x, list) for x in v.values()):
            rows = [(w, Raw(", ".join(esc(f"{n[0]} ({fmt(n[1])})" if isinstance(n, (list, tuple)) else n) for n in ns)))
                    for w, ns in v.items()]
            out.append(f"<h4>{esc(k)}</h4>" + table(rows, ["word", "neighbours"]))
    return out


def files_of(stage: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for name, path in stage.get("files", {}).items():
        for p in path if isinstance(path, list) else [path]:
            out.append((name, p))
    return out


def render(summary: dict[str, Any]) -> str:
    stages = summary.get("stages", [])
    parts = [f"<h1>kexue run {esc(summary.get('run_id'))}</h1>",
             f"<p class=muted>status <b>{esc(summary.get('status'))}</b> · profile {esc(summary.get('profile'))} · "
             f"started {esc(summary.get('started'))} · finished {esc(summary.get('finished'))} · "
             f"Dask dashboard <a href='{esc(summary.get('dashboard') or '')}'>{esc(summary.get('dashboard'))}</a></p>"]
    rows = []
    for s in stages:
        status = Raw(f"<span class={'ok' if s['status'] == 'completed' else 'failed'}>{esc(s['status'])}</span>")
        rows.append((s["name"], status, "yes" if s.get("cached") else "no", s.get("seconds"), s.get("error", "")))
    parts += ["<h2>Stages</h2>", table(rows, ["stage", "status", "cached", "seconds", "error"])]
    for s in stages:
        metrics = s.get("metrics", {})
        parts.append(f"<h2 id='{esc(s['name'])}'>{esc(s['name'])}</h2>")
        pngs = [(n, p) for n, p in files_of(s) if str(p).endswith(".png") and Path(p).exists()]
        if pngs:
            figs = "".join(f"<figure><img alt='{esc(n)}' src='{data_uri(p)}'><figcaption>{esc(n)}</figcaption></figure>" for n, p in pngs)
            parts.append(f"<div class=grid>{figs}</div>")
        parts += list_tables(metrics)
        scal = scalar_rows(metrics)
        if scal:
            parts.append("<details open><summary>metrics</summary>" + table(scal, ["metric", "value"]) + "</details>")
    links = [(s["name"], n, Raw(f"<a href='file://{esc(p)}'><code>{esc(p)}</code></a>")) for s in stages for n, p in files_of(s)]
    parts += ["<h2>Artifacts</h2>", table(links, ["stage", "artifact", "path"])]
    return ("<!doctype html><html lang=zh><head><meta charset=utf-8>"
            f"<title>kexue run {esc(summary.get('run_id'))}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>")


def write_report(run_dir: str | Path) -> Path:
    """Render ``<run_dir>/summary.json`` to ``<run_dir>/report.html``."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return write_text_atomic(run_dir / "report.html", render(summary))


def latest_run_dir(data_dir: str | Path) -> Path | None:
    """The folder of the most recent run under ``data_dir`` (None before the first run)."""
    pointer = Path(data_dir) / "runs" / "latest" / "run.json"
    if not pointer.exists():
        return None
    return Path(json.loads(pointer.read_text(encoding="utf-8"))["run_dir"])
