"""tokenize: one ingest partition → one tokens partition, with jieba or rjieba.

jieba is the reference segmenter; rjieba (a Rust port) is the default because it is about
9× faster. The two differ in one place, and ``make_segmenter`` removes the difference: in
jieba's HMM path a run of characters that no dictionary word covers goes through
``jieba.finalseg``, which splits its non-Chinese part at every character outside
``[a-zA-Z0-9]`` (``www.example.com`` → ``www . example . com``, ``2008-6-1`` → ``2008 - 6 -
1``), while rjieba keeps such a run whole. Splitting rjieba's tokens with finalseg's own
pattern gives jieba's tokens (checked on every document of the built-in corpora, both HMM
settings, in tests/test_tokenize_count.py). A user dictionary is honoured by jieba only,
so asking for one switches the backend to jieba rather than silently segmenting
differently.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import logging
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from kexue.text.params import TokenizeParams

log = logging.getLogger(__name__)
_WHITESPACE = re.compile(r"\s")


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


# jieba's cut() sends blocks of [Han a-zA-Z0-9+#&._%-] to the DAG; a token of rjieba made
# only of these non-Han characters that is no dictionary word (C++, AT&T are) came from the
# HMM path, where jieba.finalseg splits it with re_skip (copied from jieba/finalseg).
_NON_HAN_BLOCK = re.compile(r"[a-zA-Z0-9+#&._%\-]+")
_FINALSEG_SKIP = re.compile(r"([a-zA-Z0-9]+(?:\.\d+)?%?)")
_JOINER = re.compile(r"[+#&._%\-]")  # a text without one of these needs no re-splitting


def _split_like_jieba(tokens: list[str], is_word: Callable[[str], bool]) -> list[str]:
    out: list[str] = []
    for t in tokens:
        if len(t) > 1 and _NON_HAN_BLOCK.fullmatch(t) and not is_word(t):
            out.extend(x for x in _FINALSEG_SKIP.split(t) if x)
        else:
            out.append(t)
    return out


def make_segmenter(p: TokenizeParams) -> Callable[[str], list[str]]:
    """A function text → jieba's tokens (white-space tokens included; ``tokenize_partition`` drops them)."""
    if effective_backend(p) == "jieba":
        tk = _jieba_tokenizer(p.user_dict)
        return functools.partial(tk.lcut, HMM=p.hmm)
    import rjieba

    if not p.hmm:  # without the HMM both keep exactly the dictionary's words and single characters
        return functools.partial(rjieba.cut, hmm=False)

    def cut(text: str) -> list[str]:
        tokens = rjieba.cut(text, True)
        return _split_like_jieba(tokens, rjieba.has_word) if _JOINER.search(text) else tokens

    return cut


def _as_lists(docs: pa.Array | pa.ChunkedArray | list[list[str]]) -> pa.ListArray:
    if isinstance(docs, pa.ChunkedArray):
        return docs.combine_chunks()
    return docs if isinstance(docs, pa.Array) else pa.array(docs, pa.list_(pa.string()))


def _token_lengths(docs: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(characters of every token, tokens per document)."""
    lengths = pc.utf8_length(pc.list_flatten(docs)).to_numpy(zero_copy_only=False).astype(np.int64)
    per_doc = pc.fill_null(pc.list_value_length(docs), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, per_doc


def _spans(lengths: np.ndarray, per_doc: np.ndarray, doc_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) offsets of every token, each document's first token starting at ``doc_start``."""
    ends = np.cumsum(lengths)
    before_doc = np.concatenate([[0], ends])[np.cumsum(per_doc) - per_doc]  # characters before each doc
    ends = ends + np.repeat(doc_start - before_doc, per_doc)
    return ends - lengths, ends


def segmentation_counts(pred: pa.Array | list[list[str]], gold: pa.Array | list[list[str]]) -> tuple[int, int, int]:
    """(true positives, predicted, gold) word spans over many documents: the usual P/R/F1 counts.

    ``pred[i]`` and ``gold[i]`` segment the same text. A predicted word is right when a gold
    word has the same (start, end) character span. Vectorised over the whole batch — every
    document laid out on one line, each starting after the longer of its two segmentations —
    because per-document Python sets cost more than the segmentation itself.
    """
    pred, gold = _as_lists(pred), _as_lists(gold)
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predicted documents but {len(gold)} gold ones")
    p_len, p_docs = _token_lengths(pred)
    g_len, g_docs = _token_lengths(gold)
    chars = np.maximum(np.bincount(np.repeat(np.arange(len(pred)), p_docs), p_len, len(pred)),
                       np.bincount(np.repeat(np.arange(len(gold)), g_docs), g_len, len(gold))).astype(np.int64)
    doc_start = np.cumsum(chars) - chars
    p_start, p_end = _spans(p_len, p_docs, doc_start)
    g_start, g_end = _spans(g_len, g_docs, doc_start)  # ascending: a segmentation tiles its text
    i = np.minimum(np.searchsorted(g_start, p_start), max(len(g_start) - 1, 0))
    tp = int(np.count_nonzero((g_start[i] == p_start) & (g_end[i] == p_end))) if len(g_start) else 0
    return tp, len(p_len), len(g_len)


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


TOKENS_TYPE = pa.list_(pa.string())
BATCH_DOCS = 4096  # documents segmented before their tokens move into Arrow: few Python strings alive at once
_SEP = "\x1f"  # ASCII unit separator: joins a document's tokens on their way into Arrow


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection inside: segmenting a batch allocates a list per document
    (no cycles), and each allocation burst set off collections that walked every list kept so
    far, a fifth of the segmenting time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def tokens_array(docs: list[list[str]], texts: list[str]) -> pa.ListArray:
    """The token lists of ``docs`` (segmented from ``texts``) as one Arrow list<string> array.

    Why not ``pa.array(docs)``: it visits every token as a Python object, about four times
    slower than joining each document's tokens in C (``str.join``) and splitting them again
    in Arrow. Exact whenever the separator cannot occur in a token, i.e. is in no text;
    otherwise the batch takes the slow path. An empty document is a null that becomes [].
    """
    if any(_SEP in text for text in texts):
        return pa.array(docs, TOKENS_TYPE)
    joined = pa.array([_SEP.join(d) if d else None for d in docs], pa.string())
    split = pc.split_pattern(joined, _SEP)
    return pc.fill_null(split, pa.scalar([], TOKENS_TYPE)) if split.null_count else split


def tokenize_partition(ingest_path: str | Path, params: dict[str, Any] | TokenizeParams) -> tuple[pa.Table, dict[str, int]]:
    """Segment every document of one ingest partition.

    Returns the tokens table (doc_id, source, label, tokens) and segmentation counts
    against the gold tokens where the partition has them (People's Daily). Documents are
    segmented a batch at a time and each batch's tokens converted to Arrow at once, so the
    Python token strings (an object of tens of bytes each) of only one batch are alive.
    """
    p = params if isinstance(params, TokenizeParams) else TokenizeParams.model_validate(params)
    segment = make_segmenter(p)
    table = pq.read_table(ingest_path, columns=["doc_id", "source", "label", "text", "gold_tokens"])
    chunks: list[pa.Array] = []
    tp = n_pred = n_gold = gold_docs = 0
    for batch in table.select(["text", "gold_tokens"]).to_batches(max_chunksize=BATCH_DOCS):
        texts = batch.column(0).to_pylist()
        with _gc_paused():
            raw = [segment(text) for text in texts]
        scored = tokens_array(raw, texts)  # segmentation is scored before white space is dropped
        gold = batch.column(1)
        has_gold = pc.is_valid(gold)
        if n := int(pc.sum(has_gold).as_py() or 0):
            counts = segmentation_counts(scored.filter(has_gold), gold.filter(has_gold))
            tp, n_pred, n_gold, gold_docs = tp + counts[0], n_pred + counts[1], n_gold + counts[2], gold_docs + n
        spaced = [i for i, text in enumerate(texts) if p.drop_whitespace and _WHITESPACE.search(text)]
        for i in spaced:  # only a text with white space can yield white-space tokens
            raw[i] = [t for t in raw[i] if t.strip()]
        chunks.append(tokens_array(raw, texts) if spaced else scored)
    tokens = pa.chunked_array(chunks, TOKENS_TYPE)
    out = pa.table({"doc_id": table.column("doc_id"), "source": table.column("source"),
                    "label": table.column("label"), "tokens": tokens})
    stats = {
        "documents": table.num_rows,
        "tokens": sum(len(c.values) for c in chunks),
        "characters": int(pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0),
        "seg_tp": tp,
        "seg_pred": n_pred,
        "seg_gold": n_gold,
        "seg_docs": gold_docs,
    }
    return out, stats


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
