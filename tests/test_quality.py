"""JoSE quality on a fixed corpus with planted topics, against thresholds from measured figures.

The corpus: 4 topics × 40 documents of 40 tokens; each token is one of its topic's 20
words with probability 0.3, else one of 80 background words all topics share (Zipf
weights), so 70 % of every document is noise common to every topic. Chance is 0.25 for
a document's topic and 19/99 for a neighbour sharing a planted word's topic.

The thresholds sit below the figures measured with these settings over five seeds (the
figures, and where they come from, are in docs/reliability.md, "Quality"): room for an
implementation change that keeps the method, none for one that breaks a term of the loss.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TOPICS, TOPIC_WORDS, BACKGROUND, DOCS_PER_TOPIC, LENGTH, P_TOPIC = 4, 20, 80, 40, 40, 0.3
DOC_ACCURACY_MIN = 0.90
NEIGHBOUR_PRECISION_MIN = 0.85


def planted_corpus(folder: Path, seed: int = 0) -> tuple[list[str], str]:
    """Tokens and vocabulary Parquet as the tokenize/count stages write them."""
    rng = np.random.default_rng(seed)
    zipf = 1 / np.arange(1, BACKGROUND + 1)
    zipf /= zipf.sum()
    rows = []
    for j in range(DOCS_PER_TOPIC):
        for t in range(TOPICS):  # interleaved: training order must not leak the label
            tokens = [f"t{t}_{rng.integers(TOPIC_WORDS)}" if planted else f"b{rng.choice(BACKGROUND, p=zipf)}"
                      for planted in rng.random(LENGTH) < P_TOPIC]
            rows.append((f"doc-{t}-{j}", "synthetic", f"topic{t}", tokens))
    docs = pd.DataFrame(rows, columns=["doc_id", "source", "label", "tokens"])
    docs.to_parquet(folder / "tokens.parquet", index=False)
    counts = pd.Series([w for tokens in docs["tokens"] for w in tokens]).value_counts()
    pd.DataFrame({"token": counts.index, "count": counts.to_numpy(), "doc_freq": 1, "rank": np.arange(len(counts)),
                  "is_stopword": False, "is_punct": False}).to_parquet(folder / "vocab.parquet", index=False)
    return [str(folder / "tokens.parquet")], str(folder / "vocab.parquet")


def neighbour_precision(u: np.ndarray, words: list[str], k: int = 5) -> float:
    """Mean share of each planted word's k nearest words (cosine) that belong to its topic."""
    unit = u / np.linalg.norm(u, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    topic = np.array([w.split("_")[0] if w.startswith("t") else "" for w in words])
    planted = np.flatnonzero(topic != "")
    nearest = np.argsort(-cos[planted], axis=1)[:, :k]
    return float((topic[nearest] == topic[planted][:, None]).mean())


def test_jose_separates_planted_topics_above_measured_thresholds(tmp_path):
    import tensorflow as tf

    from kexue.embed.jose import train_jose_stage

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tokens, vocab = planted_corpus(tmp_path)
    params = {"dim": 32, "window": 5, "negative": 2, "min_count": 1, "sample": 0.0, "epochs": 5, "seed": 0, "threads": 1,
              "batch_size": 256, "steps_per_block": 8, "probe_words": ["t0_0"], "label_source": "synthetic"}
    result = train_jose_stage(tokens, vocab, str(tmp_path / "out"), params, str(tmp_path / "checkpoints"))
    metrics = result["metrics"]
    assert metrics["labelled_docs"] == TOPICS * DOCS_PER_TOPIC
    assert metrics["doc_accuracy"] >= DOC_ACCURACY_MIN, metrics["doc_accuracy"]
    words = pd.read_parquet(result["files"]["vocab"])["token"].tolist()
    precision = neighbour_precision(np.load(result["files"]["u"]), words)
    assert precision >= NEIGHBOUR_PRECISION_MIN, precision
