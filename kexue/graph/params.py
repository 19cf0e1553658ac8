"""Parameters of the graph and communities stages, validated when pipeline.yaml loads (pydantic only)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Weighting = Literal["count", "pmi", "ppmi"]


class GraphParams(BaseModel):
    """Parameters of the graph stage (``pipeline.yaml`` → ``graph``); unknown keys are errors.

    Defaults were tuned on the built-in People's Daily corpus (see benchmarks/graph.py):
    window 5, PPMI with α = 0.75, keep each word's 10 strongest edges, vocabulary of words
    seen ≥ 5 times, word pairs seen ≥ 2 times.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: Literal["cooccurrence", "knn"] = "cooccurrence"
    window: int = Field(5, ge=1)  # co-occurrence window in kept tokens, each side
    min_count: int = Field(5, ge=1)  # vocabulary filter: corpus count of a word
    max_vocab: int | None = Field(None, ge=2)  # keep only the most frequent words
    exclude_stopwords: bool = True
    exclude_punct: bool = True
    exclude_numbers: bool = True  # jieba splits full-width numbers into single digits: a "module" of digits
    weighting: Weighting = "ppmi"
    alpha: float = Field(0.75, gt=0, le=1)  # context-distribution smoothing of PPMI
    min_edge_count: int = Field(2, ge=1)  # drop word pairs seen fewer times
    top_k: int | None = Field(10, ge=1)  # each node keeps its k strongest edges; null = all
    knn_k: int = Field(10, ge=1)  # neighbours per word for source = knn
    directed: bool = False
    graphml_max_nodes: int = Field(5000, ge=0)



class CommunityParams(BaseModel):
    """Parameters of the communities stage (``pipeline.yaml`` → ``communities``).

    ``directed=None`` follows the graph (co-occurrence graphs are undirected); a value that
    contradicts the graph is an error. ``two_level`` False asks Infomap for a multilevel
    hierarchy; the module table is then of top modules.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    two_level: bool = True
    num_trials: int = Field(10, ge=1)
    seed: int = Field(123, ge=1)  # Infomap's seeds start at 1
    directed: bool | None = None
    markov_time: float = Field(1.0, gt=0)
    top_words: int = Field(10, ge=1)  # words listed per module (highest flow first)
    top_modules: int = Field(15, ge=0)  # largest modules listed in the metrics
