"""Segmentation scores and the tokenize stage's totals: plain arithmetic on counts.

Apart from ``kexue.text.tokenize`` (Arrow, NumPy, the segmenters) because the flow process
sums its partitions' counts into the stage's metrics, and that process imports none of the
data libraries (``tasks``' docstring).
"""
from __future__ import annotations

from typing import Any


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def summarize_partitions(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The tokenize stage's metrics from its partitions' stats: totals, and segmentation
    precision/recall/F1 over every gold token (not an average of per-partition scores)."""
    totals = {k: sum(s.get(k, 0) for s in stats) for k in ("documents", "tokens", "characters",
                                                           "seg_tp", "seg_pred", "seg_gold", "seg_docs")}
    metrics: dict[str, Any] = {"partitions": len(stats), "documents": totals["documents"],
                               "tokens": totals["tokens"], "characters": totals["characters"]}
    if totals["seg_docs"]:
        metrics["segmentation"] = {**prf(totals["seg_tp"], totals["seg_pred"], totals["seg_gold"]),
                                   "documents": totals["seg_docs"]}
    return metrics
