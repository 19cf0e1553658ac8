"""count: per-partition token counts in batches, merged pairwise into a vocabulary.

Why batch-then-merge: ``Counter(chain(batch))`` counts a batch inside C, and merging a
few partial counters is cheap; growing one giant dict token by token in Python is what
the naive loop does, and it is several times slower even on one core. On the cluster
the partials are merged as a tree, so no single task holds every partition at once.
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from itertools import chain, islice
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from kexue.corpora import stopwords

PARTIAL_COLUMNS = ["token", "count", "doc_freq"]


class CountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_docs: int = Field(2000, ge=1)  # documents counted together before merging
    merge_fanin: int = Field(2, ge=2)  # partials merged per tree node


def _batches(it: Iterable, n: int):
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


def count_tokens(docs: Iterable[list[str]], batch_docs: int = 2000) -> tuple[Counter, Counter]:
    """(token counts, document frequencies) over an iterable of token lists."""
    counts, dfreq = Counter(), Counter()
    for batch in _batches(docs, batch_docs):
        counts.update(Counter(chain.from_iterable(batch)))
        dfreq.update(Counter(chain.from_iterable(set(d) for d in batch)))
    return counts, dfreq


def partial_frame(counts: Counter, dfreq: Counter) -> pd.DataFrame:
    tokens = sorted(counts)
    return pd.DataFrame(
        {"token": tokens, "count": [counts[t] for t in tokens], "doc_freq": [dfreq[t] for t in tokens]},
        columns=PARTIAL_COLUMNS,
    ).astype({"count": "int64", "doc_freq": "int64"})


def count_partition(tokens_path: str | Path, batch_docs: int = 2000) -> pd.DataFrame:
    """Partial counts of one tokens partition, sorted by token."""
    docs = pd.read_parquet(tokens_path, columns=["tokens"])["tokens"]
    return partial_frame(*count_tokens((list(d) for d in docs), batch_docs))


def merge_partials(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Sum partial count frames (token → count, doc_freq)."""
    if len(frames) == 1:
        return frames[0]
    merged = pd.concat(frames, ignore_index=True).groupby("token", sort=True, as_index=False)[["count", "doc_freq"]].sum()
    return merged[PARTIAL_COLUMNS].astype({"count": "int64", "doc_freq": "int64"})


def is_punct(token: str) -> bool:
    """Punctuation, symbols and separators only (，。！ —— ...)."""
    return all(unicodedata.category(c)[0] in "PSZ" for c in token)


def vocabulary(total: pd.DataFrame) -> pd.DataFrame:
    """Ranked vocabulary with stop-word and punctuation flags (rank 0 = most frequent).

    Ties are broken by token so the ranking is deterministic.
    """
    stop = stopwords()
    v = total.sort_values(["count", "token"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    v["rank"] = range(len(v))
    v["is_stopword"] = v["token"].isin(stop)
    v["is_punct"] = v["token"].map(is_punct).astype(bool)
    return v.astype({"rank": "int64"})


def vocabulary_metrics(v: pd.DataFrame) -> dict[str, Any]:
    return {
        "vocabulary": int(len(v)),
        "tokens": int(v["count"].sum()),
        "stopword_tokens": int(v.loc[v["is_stopword"], "count"].sum()),
        "punct_tokens": int(v.loc[v["is_punct"], "count"].sum()),
        "top_words": [
            [t, int(c)] for t, c in v.loc[~v["is_stopword"] & ~v["is_punct"], ["token", "count"]].head(20).itertuples(index=False)
        ],
    }
