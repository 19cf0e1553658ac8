"""tokenize: one ingest partition → one tokens partition, with jieba or rjieba.

jieba is the reference segmenter; rjieba (a Rust port) is the default because it gives
the same tokens about 9× faster. A user dictionary is honoured by jieba only, so asking
for one switches the backend to jieba rather than silently segmenting differently.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)


class TokenizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["rjieba", "jieba"] = "rjieba"
    hmm: bool = True  # jieba's HMM for unknown words
    user_dict: str | None = None  # jieba user-dictionary file (forces the jieba backend)
    drop_whitespace: bool = True  # jieba emits spaces/newlines as tokens; they carry no meaning


def effective_backend(p: TokenizeParams) -> str:
    return "jieba" if p.user_dict else p.backend


@functools.lru_cache(maxsize=4)
def _jieba_tokenizer(user_dict: str | None):
    import jieba

    jieba.setLogLevel(logging.WARNING)
    tk = jieba.Tokenizer()
    tk.initialize()
    if user_dict:
        tk.load_userdict(user_dict)
    return tk


def make_segmenter(p: TokenizeParams) -> Callable[[str], list[str]]:
    """A function text → tokens (whitespace tokens kept; see ``tokenize_text``)."""
    if effective_backend(p) == "jieba":
        tk = _jieba_tokenizer(p.user_dict)
        return functools.partial(tk.lcut, HMM=p.hmm)
    import rjieba

    return functools.partial(rjieba.cut, hmm=p.hmm)


def tokenize_text(segment: Callable[[str], list[str]], text: str, drop_whitespace: bool = True) -> list[str]:
    tokens = segment(text)
    return [t for t in tokens if t.strip()] if drop_whitespace else list(tokens)


def spans(tokens: list[str]) -> set[tuple[int, int]]:
    out, pos = set(), 0
    for t in tokens:
        out.add((pos, pos + len(t)))
        pos += len(t)
    return out


def segmentation_counts(pred: list[str], gold: list[str]) -> tuple[int, int, int]:
    """(true positives, predicted, gold) word spans: the usual word-segmentation P/R/F1 counts."""
    return len(spans(pred) & spans(gold)), len(pred), len(gold)


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def tokenize_partition(ingest_path: str | Path, params: dict[str, Any] | TokenizeParams) -> tuple[pd.DataFrame, dict[str, int]]:
    """Segment every document of one ingest partition.

    Returns the tokens frame (doc_id, source, label, tokens) and segmentation counts
    against the gold tokens where the partition has them (People's Daily).
    """
    p = params if isinstance(params, TokenizeParams) else TokenizeParams.model_validate(params)
    segment = make_segmenter(p)
    df = pd.read_parquet(ingest_path)
    tokens, tp, n_pred, n_gold, gold_docs = [], 0, 0, 0, 0
    for text, gold in zip(df["text"], df["gold_tokens"]):
        raw = segment(text)
        if gold is not None:
            a, b, c = segmentation_counts([t for t in raw], list(gold))
            tp, n_pred, n_gold, gold_docs = tp + a, n_pred + b, n_gold + c, gold_docs + 1
        tokens.append([t for t in raw if t.strip()] if p.drop_whitespace else list(raw))
    out = pd.DataFrame({"doc_id": df["doc_id"], "source": df["source"], "label": df["label"], "tokens": tokens})
    stats = {
        "documents": len(df),
        "tokens": sum(map(len, tokens)),
        "characters": int(df["text"].str.len().sum()),
        "seg_tp": tp,
        "seg_pred": n_pred,
        "seg_gold": n_gold,
        "seg_docs": gold_docs,
    }
    return out, stats
