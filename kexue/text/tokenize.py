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
from typing import Any, Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kexue.text.count import count_encoded, count_tokens, every_char_passes, merge_partials
from kexue.text.params import TokenizeParams

log = logging.getLogger(__name__)


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
_JOINERS = r"+#&._%\-"  # the non-alphanumeric characters of jieba's DAG blocks
_NON_HAN_BLOCK = re.compile(rf"[a-zA-Z0-9{_JOINERS}]+")
_FINALSEG_SKIP = re.compile(r"([a-zA-Z0-9]+(?:\.\d+)?%?)")
_JOINER = re.compile(rf"[{_JOINERS}]")


def _split_like_jieba(token: str, is_word: Callable[[str], bool]) -> list[str]:
    """jieba's tokens for one rjieba token: itself, or its finalseg pieces (see above)."""
    if len(token) > 1 and _NON_HAN_BLOCK.fullmatch(token) and not is_word(token):
        return [x for x in _FINALSEG_SKIP.split(token) if x]
    return [token]


def _raw_segmenter(p: TokenizeParams) -> Callable[[str], list[str]]:
    """The backend's own cut: jieba's tokens, except rjieba's HMM path (``_split_like_jieba``)."""
    if effective_backend(p) == "jieba":
        return functools.partial(_jieba_tokenizer(p.user_dict).lcut, HMM=p.hmm)
    import rjieba

    return functools.partial(rjieba.cut, hmm=p.hmm)


def _needs_splitting(p: TokenizeParams) -> bool:
    return effective_backend(p) == "rjieba" and p.hmm  # without the HMM both keep the dictionary's words


def make_segmenter(p: TokenizeParams) -> Callable[[str], list[str]]:
    """A function text → jieba's tokens (white-space tokens included; ``tokenize_partition`` drops them)."""
    cut = _raw_segmenter(p)
    if not _needs_splitting(p):
        return cut
    import rjieba

    def jieba_cut(text: str) -> list[str]:
        tokens = cut(text)
        if not _JOINER.search(text):  # a text without one needs no re-splitting
            return tokens
        return [x for t in tokens for x in _split_like_jieba(t, rjieba.has_word)]

    return jieba_cut


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


TOKENS_TYPE = pa.list_(pa.string())
BATCH_DOCS = 4096  # documents segmented in one call: the Python token strings of one batch are alive at once
_SEP = "\x1f"  # ASCII unit separator: joins tokens on their way into Arrow
_DOC_SEP = "\x1e"  # ASCII record separator: between the documents of a batch (a token of its own in both backends)


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection inside: segmenting allocates a string per token (no
    cycles), and each allocation burst set off collections that walked every object kept so
    far, a fifth of the segmenting time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _flat(tokens: list[str]) -> pa.StringArray:
    """``tokens`` as an Arrow string array: joined in C (``str.join``) and split in Arrow, about
    four times faster than ``pa.array`` visiting every token; exact as no token holds ``_SEP``."""
    return pc.split_pattern(pa.array([_SEP.join(tokens)]), _SEP).values if tokens else pa.array([], pa.string())


class _Segmented(NamedTuple):
    """A batch's tokens in one Arrow array, dictionary-encoded once.

    Why one encoding: deciding which tokens are document separators, which are white space
    and which rjieba token finalseg would split is then a question about each *distinct*
    token (tens of thousands), not about every token (a million per partition); each of
    those had been a pass over every token in Arrow, together a quarter of a tokenize task.
    The codes also give the batch's counts without hashing every token again.
    """

    flat: pa.StringArray  # every token in order; each document's are followed by _DOC_SEP
    codes: np.ndarray  # each token's index into ``dictionary``
    dictionary: pa.StringArray  # the distinct tokens, in order of first appearance

    @classmethod
    def of(cls, tokens: list[str]) -> "_Segmented":
        flat = _flat(tokens)
        encoded = pc.dictionary_encode(flat)
        return cls(flat, encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary)

    def kept(self, drop_whitespace: bool) -> tuple[np.ndarray, np.ndarray]:
        """(which tokens to keep: no separator, no white space if asked; each token's document)."""
        sep = pc.index(self.dictionary, _DOC_SEP).as_py()
        is_sep = self.codes == sep
        keep = ~(is_sep | _blank(self.dictionary)[self.codes]) if drop_whitespace else ~is_sep
        return keep, np.cumsum(is_sep)

    def documents(self, n_docs: int, drop_whitespace: bool) -> pa.ListArray:
        keep, doc = self.kept(drop_whitespace)
        return _lists(self.flat, doc, keep, n_docs)


def _blank(tokens: pa.StringArray) -> np.ndarray:
    """Which tokens are white space only (``not token.strip()``, as the rest of the pipeline
    decides): each distinct character is asked ``str.isspace`` once, the tokens never visited
    in Python (a call per distinct token took a twentieth of a tokenize task)."""
    return every_char_passes(tokens, str.isspace)


def _split_splittable(tokens: list[str], seg: _Segmented) -> _Segmented:
    """rjieba's HMM tokens re-split as jieba's finalseg splits them (``_split_like_jieba``).

    Which distinct tokens split is asked once each, and only of those holding a joiner (found
    in Arrow); the few tokens to replace are found by their codes, so no Python loop visits
    every token unless one needs splitting."""
    import rjieba

    candidates = pc.indices_nonzero(pc.match_substring_regex(seg.dictionary, _JOINER.pattern)).to_numpy()
    parts_of = {code: parts for code, t in zip(candidates.tolist(), seg.dictionary.take(candidates).to_pylist())
                if (parts := _split_like_jieba(t, rjieba.has_word)) != [t]}
    if not parts_of:
        return seg
    at = np.flatnonzero(np.isin(seg.codes, np.fromiter(parts_of, np.int64, len(parts_of))))
    pieces, prev = [], 0
    for i, code in zip(at.tolist(), seg.codes[at].tolist()):
        pieces += [tokens[prev:i], parts_of[code]]
        prev = i + 1
    return _Segmented.of([t for piece in pieces + [tokens[prev:]] for t in piece])


def _segment(texts: list[str], p: TokenizeParams) -> _Segmented:
    """jieba's tokens of every text, the texts joined by ``_DOC_SEP`` and segmented in one call
    (see ``segment_batch``); no text may hold a separator."""
    with _gc_paused():
        tokens = _raw_segmenter(p)(_DOC_SEP.join(texts))
    seg = _Segmented.of(tokens)
    return _split_splittable(tokens, seg) if _needs_splitting(p) else seg


def _has_separator(texts: list[str]) -> bool:
    return any(_DOC_SEP in text or _SEP in text for text in texts)


def segment_batch(texts: list[str], p: TokenizeParams) -> pa.ListArray:
    """jieba's tokens of every text (white space included) as one Arrow list<string> array.

    Why one segmenter call for the whole batch, the texts joined by ``_DOC_SEP``: a call and a
    list per document cost more than the segmenting of short texts, and the tokens reach
    Arrow in one join. Exact because both backends make ``_DOC_SEP`` a token of its own
    (jieba's blocks end at it, so the HMM sees the same runs) and no text holds a separator;
    a batch where one does is segmented text by text.
    """
    if _has_separator(texts):
        return _segment_each(texts, p)
    return _segment(texts, p).documents(len(texts), drop_whitespace=False)


def _segment_each(texts: list[str], p: TokenizeParams) -> pa.ListArray:
    """jieba's tokens of every text, one segmenter call per text (for texts holding a separator)."""
    segment = make_segmenter(p)
    return pa.array([segment(text) for text in texts], TOKENS_TYPE)


def _lists(flat: pa.StringArray, doc: np.ndarray, keep: np.ndarray, n_docs: int) -> pa.ListArray:
    """The tokens of ``flat`` where ``keep``, as lists by document index ``doc`` (non-decreasing)."""
    offsets = np.zeros(n_docs + 1, np.int32)
    np.cumsum(np.bincount(doc[keep], minlength=n_docs), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def drop_whitespace(docs: pa.ListArray) -> pa.ListArray:
    """``docs`` without the tokens that are only white space (asked once per distinct token)."""
    values = docs.flatten()
    distinct = pc.dictionary_encode(values)
    drop = _blank(distinct.dictionary)[distinct.indices.to_numpy(zero_copy_only=False)]
    if not drop.any():
        return docs
    per_doc = pc.list_value_length(docs).to_numpy(zero_copy_only=False)
    return _lists(values, np.repeat(np.arange(len(docs)), per_doc), ~drop, len(docs))


class Tokenized(NamedTuple):
    """One partition's tokens table, its partial counts (``kexue.text.count.PARTIAL_SCHEMA``:
    the rows ``count_tokens`` of the tokens column gives, in another order) and its statistics."""

    table: pa.Table
    counts: pa.Table
    stats: dict[str, int]


def tokenize_partition(ingest_path: str | Path, params: dict[str, Any] | TokenizeParams) -> Tokenized:
    """Segment every document of one ingest partition, and count the tokens.

    Returns the tokens table (doc_id, source, label, tokens), their counts, and segmentation
    counts against the gold tokens where the partition has them (People's Daily). Documents
    are segmented a batch at a time (``segment_batch``), so the Python token strings (an
    object of tens of bytes each) of only one batch are alive; each batch is counted from
    its dictionary codes, and the batches' counts are summed.
    """
    p = params if isinstance(params, TokenizeParams) else TokenizeParams.model_validate(params)
    # one thread: the task has one core of a worker, and Arrow's pool would take the other's
    table = pq.read_table(ingest_path, columns=["doc_id", "source", "label", "text", "gold_tokens"], use_threads=False)
    chunks: list[pa.Array] = []
    partials: list[pa.Table] = []
    tp = n_pred = n_gold = gold_docs = 0
    for batch in table.select(["text", "gold_tokens"]).to_batches(max_chunksize=BATCH_DOCS):
        texts, gold = batch.column(0).to_pylist(), batch.column(1)
        has_gold = pc.is_valid(gold)
        n = int(pc.sum(has_gold).as_py() or 0)
        if _has_separator(texts):
            scored = _segment_each(texts, p)
            kept = drop_whitespace(scored) if p.drop_whitespace else scored
            partials.append(count_tokens(kept))
        else:  # segmented once; the tokens with white space only where they are scored
            seg = _segment(texts, p)
            keep, doc = seg.kept(p.drop_whitespace)
            kept = _lists(seg.flat, doc, keep, len(texts))
            partials.append(count_encoded(seg.codes[keep], doc[keep], seg.dictionary))
            scored = seg.documents(len(texts), False) if n and p.drop_whitespace else kept
        if n:  # segmentation is scored before white space is dropped
            counts = segmentation_counts(scored.filter(has_gold), gold.filter(has_gold))
            tp, n_pred, n_gold, gold_docs = tp + counts[0], n_pred + counts[1], n_gold + counts[2], gold_docs + n
        chunks.append(kept)
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
    return Tokenized(out, merge_partials(partials) if partials else count_tokens(tokens), stats)
