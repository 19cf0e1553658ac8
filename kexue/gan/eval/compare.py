"""The variant comparison: per-run metric histories → the evaluation table and tests.

Every variant × seed becomes one row (final and best FID, final KID, IS, precision and
recall); per variant mean ± std, and Welch's t-test of FID (final and best) against the
baseline variant, so "does Cascading Rejection help" is answered with its uncertainty.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from kexue.core.artifacts import write_text_atomic
from kexue.gan.eval.plots import plot_fid_curves, plot_sample_grids

RUN_COLUMNS = (
    "fid_final", "fid_best", "best_step", "kid_final", "is_final", "precision_final", "recall_final",
)
SUMMARY_COLUMNS = ("fid_final", "fid_best", "kid_final", "is_final", "precision_final", "recall_final")
TESTED_COLUMNS = ("fid_final", "fid_best")


def run_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One table row from a run record ``{"variant", "seed", "history": [eval_fn rows]}``.

    Final = the last history row (highest step); best = the row with the lowest FID.
    """
    history = sorted(record["history"], key=lambda r: r["step"])
    if not history:
        raise ValueError(f"run {record['variant']}/{record['seed']} has an empty history")
    final = history[-1]
    best = min(history, key=lambda r: r["fid"])
    return {
        "variant": str(record["variant"]),
        "seed": int(record["seed"]),
        "final_step": int(final["step"]),
        "fid_final": float(final["fid"]),
        "fid_best": float(best["fid"]),
        "best_step": int(best["step"]),
        "kid_final": float(final["kid"]),
        "is_final": float(final["inception_score"]),
        "precision_final": float(final["precision"]),
        "recall_final": float(final["recall"]),
    }


def welch_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
    """Welch's t-test of mean(a) vs mean(b); statistic/p are None with fewer than 2 per side."""
    if len(a) < 2 or len(b) < 2:
        return {"t": None, "p": None}
    result = scipy.stats.ttest_ind(a, b, equal_var=False)
    return {"t": _finite_or_none(result.statistic), "p": _finite_or_none(result.pvalue)}


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def summarise(rows: Sequence[Mapping[str, Any]], baseline: str, alpha: float = 0.05) -> dict[str, Any]:
    """Per-variant mean ± std (ddof 1) and Welch's t-test of FID (final and best) vs the baseline.

    The verdict per variant and FID kind is "lower" / "higher" when p < ``alpha``
    (lower FID is better), else "no significant difference".
    """
    frame = pd.DataFrame(list(rows))
    if baseline not in set(frame["variant"]):
        raise ValueError(f"baseline variant {baseline!r} has no runs")
    variants = list(dict.fromkeys(frame["variant"]))  # first-seen order
    per_variant: dict[str, Any] = {}
    for variant in variants:
        sub = frame[frame["variant"] == variant]
        stats: dict[str, Any] = {"n": int(len(sub))}
        for col in SUMMARY_COLUMNS:
            values = sub[col].to_numpy(dtype=float)
            stats[col] = {
                "mean": float(values.mean()),
                "std": _finite_or_none(values.std(ddof=1)) if len(values) > 1 else None,
            }
        per_variant[variant] = stats
    base = frame[frame["variant"] == baseline]
    tests: dict[str, Any] = {}
    for variant in variants:
        if variant == baseline:
            continue
        sub = frame[frame["variant"] == variant]
        tests[variant] = {}
        for col in TESTED_COLUMNS:
            test = welch_test(sub[col].tolist(), base[col].tolist())
            diff = float(sub[col].mean() - base[col].mean())
            if test["p"] is None or test["p"] >= alpha:
                verdict = "no significant difference"
            else:
                verdict = "lower" if diff < 0 else "higher"
            tests[variant][col] = {**test, "mean_diff": diff, "verdict": verdict}
    return {"baseline": baseline, "alpha": alpha, "per_variant": per_variant, "welch_vs_baseline": tests}


def markdown_tables(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """The per-run table and the per-variant mean ± std table with Welch p-values and verdicts, as Markdown."""
    run_header = ["variant", "seed", "final_step", *RUN_COLUMNS]
    lines = ["| " + " | ".join(run_header) + " |", "|" + "---|" * len(run_header)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in run_header) + " |")
    sum_header = ["variant", "n", *SUMMARY_COLUMNS, "p(fid_final)", "p(fid_best)"]
    lines += ["", "| " + " | ".join(sum_header) + " |", "|" + "---|" * len(sum_header)]
    tests = summary["welch_vs_baseline"]
    for variant, stats in summary["per_variant"].items():
        cells = [variant, str(stats["n"])]
        cells += [_fmt_mean_std(stats[c]) for c in SUMMARY_COLUMNS]
        for col in TESTED_COLUMNS:
            if variant == summary["baseline"]:
                cells.append("baseline")
            else:
                cells.append(f"{_fmt(tests[variant][col]['p'])} ({tests[variant][col]['verdict']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_mean_std(stat: Mapping[str, float | None]) -> str:
    if stat["std"] is None:
        return f"{stat['mean']:.4g}"
    return f"{stat['mean']:.4g} ± {stat['std']:.2g}"


def compare_variants(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    baseline: str = "cr1",
    samples: Mapping[str, np.ndarray] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The evaluation step's report: table, mean ± std, Welch's t-tests, PNG plots.

    ``records``: one per (variant, seed) run, ``{"variant": str, "seed": int, "history":
    [eval_fn rows: {"step", "fid", "kid", "kid_std", "inception_score", "precision",
    "recall"}]}``. ``samples``: optional variant → generated images for the side-by-side grid.

    Writes into ``out_dir``: ``fid_over_training.png``, ``samples.png`` (if samples),
    ``evaluation.md``. Returns ``{"files": {name: path}, "metrics": {"rows": [...],
    "per_variant": {...}, "welch_vs_baseline": {...}, "baseline", "alpha",
    "table_markdown": str, "table_html": str}}``. ``rows`` is a list of flat dicts, ready
    for a Prefect table artifact.
    """
    out_dir = Path(out_dir)
    order = {v: i for i, v in enumerate(dict.fromkeys([baseline, *(str(r["variant"]) for r in records)]))}
    rows = sorted((run_row(r) for r in records), key=lambda r: (order[r["variant"]], r["seed"]))
    summary = summarise(rows, baseline, alpha)
    table_md = markdown_tables(rows, summary)
    files = {
        "fid_over_training": plot_fid_curves(records, out_dir / "fid_over_training.png"),
        "evaluation_md": write_text_atomic(out_dir / "evaluation.md", table_md),
    }
    if samples:
        files["samples"] = plot_sample_grids(samples, out_dir / "samples.png")
    metrics = {
        "rows": rows,
        **summary,
        "table_markdown": table_md,
        "table_html": pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.4g}"),
    }
    return {"files": {k: str(v) for k, v in files.items()}, "metrics": metrics}
