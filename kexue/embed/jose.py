"""JoSE: spherical word, context and document embeddings (Meng et al., NeurIPS 2019).

Symbols follow the paper and the reference ``jose.c``:

- ``u`` — center-word vectors (the reference's ``syn0``), one row per vocabulary word;
- ``v`` — context-word vectors (``syn1neg``);
- ``d`` — document vectors (``syn1doc``), one row per document;
- ``margin`` — m in the hinge losses, with u′ drawn from the unigram^0.75 distribution:
  word–word  max(0, m − cos(u_q, v_p) + cos(u′, v_p))  for each neighbour q of a position p,
  word–doc   max(0, m − cos(u_p, d) + cos(u′, d))      once for each position p of document d.

Every term is a *tuple* of rows: a positive u, an anchor (v or d) and ``negative`` u′ rows —
so one code path trains both terms. A kept position p of a document makes one tuple per
neighbour inside its (randomly shrunk) window and document, then its word–document tuple,
each with its own fresh negatives: the reference's loop, flattened. A one-token document
still trains its vector.

All vectors live on the unit sphere and are trained by Riemannian SGD: the Euclidean
gradient projected on the tangent space of x, (I − x xᵀ)∇f, times an update-quantity
correction (1 − f for u, 1 − (f − h) for the anchor, and 2h — the reference — or 1 + h —
the paper — for u′, where f = cos(u, anchor), h = cos(u′, anchor)), then renormalised.

Why the training loop looks the way it does: a Python step per tuple is 10–50× slower than
the C code, so numpy draws the tuples of a whole block at once (vectorised subsampling,
windows and unigram-table negatives; in a background thread when ``threads`` > 1) and one
XLA-compiled ``tf.while_loop`` runs all steps of the block. u, v and d are one table, so a
step is one gather, a little arithmetic and one scatter-add. A step's ``batch_size`` tuples
come from ``batch_size`` different stretches of the block (see ``TupleSampler.blocks``), so a
row is rarely hit twice from the same stale read — like the reference's lock-free threads,
with many more of them. A tuple's K negatives are applied together by default (one read,
summed updates); ``negatives="sequential"`` applies them in turn as jose.c does
(``sequential_moves``). That and the shared read of a step's tuples are the two ways the
default departs from single-threaded jose.c: with both undone (sequential, batch 16) the
random-pair cosine and doc accuracy match it on the benchmark corpus.

Determinism: all randomness comes from numpy generators seeded by (seed, epoch) and the
compiled step runs on one thread, so a run is reproducible for a seed, and a run resumed
from an epoch checkpoint continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import functools
import gc
import json
import logging
import os
import queue
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf

from kexue.core.artifacts import atomic_path, save_npy_atomic, sha256_text, write_json_atomic, write_parquet_atomic
from kexue.core.memory import release_freed_memory, release_library_pages
from kexue.embed.params import JoseParams, StrategyName

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "jose-table-2"  # bump when training changes meaning: old checkpoints are not resumed

STRATEGIES: dict[str, Callable[[], tf.distribute.Strategy]] = {
    "default": tf.distribute.get_strategy,
    "one_device_cpu": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
}
assert set(STRATEGIES) == set(StrategyName.__args__), "kexue.embed.params.StrategyName must name every strategy"
COPY_ROWS = 8192  # rows per copy between the table variable and numpy: 3.2 MB at dim 100


# ----------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    """The training corpus as index arrays: every in-vocabulary token of every document.

    ``ids[t]`` is the vocabulary row of token t; documents are contiguous, document i holding
    ``doc_lengths[i]`` tokens (``doc_rows`` spells out each token's document). Why lengths and not a
    document row per token: that array was as large as ``ids`` (42 MB at 218 k documents).
    Tokens not in the vocabulary (below ``min_count``, or containing whitespace, which
    word2vec text cannot store) are dropped before windows are formed, as in the reference.
    """

    words: list[str]
    counts: np.ndarray  # int64 [V]
    doc_ids: list[str]
    sources: list[str]
    labels: list[str | None]
    ids: np.ndarray  # int32 [N]
    doc_lengths: np.ndarray  # int32 [documents]: in-vocabulary tokens of each document

    @property
    def train_words(self) -> int:
        return int(self.ids.shape[0])

    def doc_rows(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        """int32: the document row of each token of documents ``first, stop`` (all by default),
        built on demand: training asks for one chunk's at a time."""
        stop = len(self.doc_lengths) if stop is None else stop
        return np.repeat(np.arange(first, stop, dtype=np.int32), self.doc_lengths[first:stop])

    def without_tokens(self) -> "Corpus":
        """The same documents and vocabulary with no token arrays: what is left to write and
        evaluate the vectors once training is done (the arrays were 8 bytes a token)."""
        return replace(self, ids=np.zeros(0, np.int32), doc_lengths=np.zeros(0, np.int32))

    def fingerprint(self) -> str:
        return sha256_text(
            str(len(self.words)), str(len(self.doc_ids)), str(self.train_words),
            sha256_text(*self.words), sha256_text(*self.doc_ids),
        )


def load_corpus(tokens_paths: list[str], vocab_path: str, min_count: int) -> Corpus:
    """Read the tokenise/count artifacts (no re-tokenising) into index arrays.

    Memory: Arrow allocates from the C library here and reads on this thread; with its
    default mimalloc pool and reader threads ~45 MB of the reading stayed resident for good,
    and the peak was ~60 MB higher, on the benchmark corpus (54,608 documents).
    """
    with _system_memory_pool():
        vocab = pq.read_table(vocab_path, columns=["token", "count", "rank"], use_threads=False)
        vocab = vocab.take(pc.sort_indices(vocab["rank"]))
        vocab = vocab.filter(pc.and_(pc.greater_equal(vocab["count"], min_count),
                                     pc.invert(pc.match_substring_regex(vocab["token"], r"\s"))))
        words = vocab["token"].to_pylist()
        if not words:
            raise ValueError(f"no vocabulary word has count >= min_count={min_count} in {vocab_path}")
        counts = vocab["count"].to_numpy().astype(np.int64)
        word_set = vocab["token"].combine_chunks()
        ids_parts, length_parts = [], []
        doc_ids: list[str] = []
        sources: list[str] = []
        labels: list[str | None] = []
        for path in tokens_paths:
            for batch in pq.ParquetFile(path).iter_batches(
                    batch_size=8192, columns=["doc_id", "source", "label", "tokens"], use_threads=False):
                tokens = batch.column("tokens")
                lengths = pc.fill_null(pc.list_value_length(tokens), 0).to_numpy()
                rows = pc.fill_null(pc.index_in(tokens.flatten(), value_set=word_set), -1).to_numpy()
                keep = rows >= 0
                ids_parts.append(rows[keep].astype(np.int32))
                doc_rows = np.repeat(np.arange(len(lengths)), lengths)
                length_parts.append(np.bincount(doc_rows[keep], minlength=len(lengths)).astype(np.int32))
                doc_ids += batch.column("doc_id").to_pylist()
                sources += _shared_values(batch.column("source"))
                labels += _shared_values(batch.column("label"))
        corpus = Corpus(
            words=words, counts=counts, doc_ids=doc_ids, sources=sources, labels=labels,
            ids=np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32),
            doc_lengths=np.concatenate(length_parts) if length_parts else np.zeros(0, np.int32),
        )
        del vocab, word_set, ids_parts, length_parts
    release_freed_memory()
    return corpus


def _shared_values(column: pa.Array) -> list:
    """``column.to_pylist()`` with one Python object per distinct value: a corpus has a few
    sources and labels, and a string per document for each was 25 MB at 218 k documents."""
    encoded = pc.dictionary_encode(column)
    values = encoded.dictionary.to_pylist() + [None]
    return [values[i] for i in pc.fill_null(encoded.indices, len(values) - 1).to_numpy().tolist()]


@contextmanager
def _system_memory_pool() -> Iterator[None]:
    """Arrow allocates from the C library's malloc inside the block (what it frees goes back
    to the OS with ``release_freed_memory``); the process's default pool is restored after."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


# ----------------------------------------------------------------------------- tuples (numpy)
@dataclass
class Block:
    """``steps × batch`` training tuples for one compiled call.

    ``rows[s, b]`` is one tuple as rows of the u|v|d table: (positive u, anchor v or d,
    negatives u′…); padding tuples are all −1.
    """

    rows: np.ndarray  # int32 [S, B, 2 + K]
    alpha: np.ndarray  # float32 [S] learning rate of each step
    tuples: int  # real (not padding) tuples in the block
    tokens_done: int  # raw corpus tokens (all epochs) covered once this block is trained


class TupleSampler:
    """Vectorised numpy version of the reference's per-thread sampling loop.

    Per epoch: frequent-word subsampling with the reference's keep probability
    (√(c/(s·T)) + 1)·s·T/c; each kept position p gets a window shrunk uniformly to 1..window;
    every neighbour q inside it and inside p's document makes a word–word tuple
    (u[q], v[p], negatives), then p makes its word–document tuple (u[p], d[p's document],
    negatives); negatives come from the unigram^0.75 table, ``negative`` fresh ones per
    tuple (with ``line_end_negatives``, the reference's share of uniform ones). The learning
    rate decays linearly over all epochs' raw tokens, floored at alpha·1e-4 (reference).
    """

    def __init__(self, corpus: Corpus, params: JoseParams, chunk_tokens: int = 1 << 15):
        self.corpus = corpus
        self.params = params
        self.chunk_tokens = chunk_tokens
        self.v_offset, self.d_offset = len(corpus.words), 2 * len(corpus.words)  # rows of the u|v|d table
        total = max(corpus.train_words, 1)
        threshold = params.sample * total
        counts = corpus.counts.astype(np.float64)
        self.keep_probability = (
            np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts) if params.sample > 0 else np.ones_like(counts)
        )
        # The reference's table of unigram^0.75 (a draw is one random index into it), sized
        # so that each word's share is resolved to ~1/(64·V) (the reference's 1e8 entries
        # are 400 MB, most of its memory). With ``line_end_negatives`` its last entry, V, is
        # jose.c's line-end token (counted once per document), drawn as a uniform word.
        weights = counts**0.75
        if params.line_end_negatives:
            weights = np.append(weights, float(len(corpus.doc_lengths)) ** 0.75)
        cdf = np.cumsum(weights / weights.sum())
        size = int(min(1 << 24, max(1 << 20, 64 * len(weights))))
        self.negative_table = np.empty(size, np.int32)
        for i in range(0, size, 1 << 20):  # in slices: whole-table float64 temporaries were ~100 MB at 4M entries
            j = min(i + (1 << 20), size)
            self.negative_table[i:j] = np.minimum(np.searchsorted(cdf, (np.arange(i, j) + 0.5) / size), len(weights) - 1)
        self.doc_ends = np.cumsum(corpus.doc_lengths, dtype=np.int64)  # one past each document's last token
        # first position of each document that has tokens, and the end of the corpus
        self.doc_starts = np.append((self.doc_ends - corpus.doc_lengths)[corpus.doc_lengths > 0], corpus.train_words)

    def _chunk_bounds(self) -> Iterator[tuple[int, int]]:
        """Chunks of about ``chunk_tokens`` raw tokens that end at document boundaries."""
        start = 0
        n = self.corpus.train_words
        while start < n:
            j = np.searchsorted(self.doc_starts, start + self.chunk_tokens)
            end = int(self.doc_starts[min(j, len(self.doc_starts) - 1)])
            end = max(end, int(self.doc_starts[np.searchsorted(self.doc_starts, start, side="right")]))
            yield start, end
            start = end

    def _documents(self, start: int, end: int) -> np.ndarray:
        """Each token's document row for tokens ``start, end`` (a chunk: whole documents)."""
        first, stop = np.searchsorted(self.doc_ends, [start, end], side="right")
        return self.corpus.doc_rows(int(first), int(stop))

    def tuples(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows int32 [T, 2 + K], raw int64 [T]) chunk by chunk, in the reference's order.

        ``raw`` is the corpus position of each tuple's word p (for the learning rate).
        """
        cfg = self.params
        rng = np.random.default_rng([cfg.seed, epoch])
        offsets = np.concatenate([np.arange(-cfg.window, 0), np.arange(1, cfg.window + 1)]).astype(np.int32)
        slots = offsets.shape[0] + 1  # 2·window neighbours, then the word–document term
        for start, end in self._chunk_bounds():
            ids = self.corpus.ids[start:end]
            docs = self._documents(start, end)
            kept = np.flatnonzero(rng.random(end - start) < self.keep_probability[ids])
            word, doc = ids[kept], docs[kept]
            m = kept.shape[0]
            span = cfg.window - rng.integers(0, cfg.window, size=m, dtype=np.int32)  # reference: b = rand % window
            neighbour = np.arange(m, dtype=np.int32)[:, None] + offsets[None, :]
            inside = (neighbour >= 0) & (neighbour < m) & (np.abs(offsets)[None, :] <= span[:, None])
            neighbour = np.clip(neighbour, 0, max(m - 1, 0))
            inside &= doc[neighbour] == doc[:, None]
            take = np.flatnonzero(np.concatenate([inside, np.ones((m, 1), bool)], axis=1))  # position-major
            position, slot = np.divmod(take, slots)
            is_doc = slot == slots - 1
            rows = np.empty((take.shape[0], 2 + cfg.negative), np.int32)
            rows[:, 0] = np.where(is_doc, word[position], word[neighbour[position, np.minimum(slot, slots - 2)]])
            rows[:, 1] = np.where(is_doc, self.d_offset + doc[position], self.v_offset + word[position])
            negatives = self.negative_table[
                rng.integers(0, self.negative_table.shape[0], (take.shape[0], cfg.negative), dtype=np.int32)]
            words = len(self.corpus.words)  # the table's line-end entry (line_end_negatives)
            line_end = negatives == words  # the reference: target = next_random % (vocab_size - 1) + 1
            negatives[line_end] = rng.integers(0, words, int(line_end.sum()), dtype=np.int32)
            rows[:, 2:] = negatives
            yield rows, start + kept[position].astype(np.int64)

    def blocks(self, epoch: int) -> Iterator[Block]:
        """Fixed-shape blocks (the last one padded) so one compiled program serves all."""
        size = self.params.steps_per_block * self.params.batch_size
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        pending_n = 0
        for part in self.tuples(epoch):
            pending.append(part)
            pending_n += part[0].shape[0]
            if pending_n >= size:
                rows, raw = (np.concatenate(cols) for cols in zip(*pending))
                full = pending_n // size * size
                for start in range(0, full, size):
                    yield self._block(epoch, rows[start:start + size], raw[start:start + size])
                pending = [(rows[full:], raw[full:])]
                pending_n -= full
        if pending_n:
            yield self._block(epoch, *(np.concatenate(cols) for cols in zip(*pending)))

    def stream(self, epochs: Iterable[int]) -> Iterator[Block | None]:
        """Every block of ``epochs`` in order, and None after each epoch's last one.

        One iterator for the whole run, so that with ``threads > 1`` one prefetch thread
        samples every epoch: a new thread per epoch got a new glibc arena, which kept what
        that thread freed (the resident set grew ~40 MB per epoch on the default corpus).
        """
        for epoch in epochs:
            yield from self.blocks(epoch)
            yield None

    def _block(self, epoch: int, rows: np.ndarray, raw: np.ndarray) -> Block:
        """Lay a block out as steps: step s takes the s-th tuple of each of B consecutive runs.

        Why: a step reads all its rows before any update lands, so tuples sharing a row in
        one step sum their updates from one stale read. Consecutive tuples share rows (one
        position's neighbours, a document's positions), so they go to consecutive steps —
        sequential, as in the reference — and a step mixes B distant stretches of the corpus.
        """
        s, b = self.params.steps_per_block, self.params.batch_size
        n = rows.shape[0]
        rows = np.concatenate([rows, np.full((s * b - n, rows.shape[1]), -1, np.int32)])
        rows = np.ascontiguousarray(rows.reshape(b, s, -1).transpose(1, 0, 2))
        total = self.params.epochs * self.corpus.train_words + 1.0
        first, last = int(raw[0]), int(raw[-1]) + 1
        processed = epoch * self.corpus.train_words + first + (last - first) * (np.arange(s) + 0.5) / s
        alpha = self.params.alpha * np.maximum(1e-4, 1.0 - processed / total)
        return Block(rows=rows, alpha=alpha.astype(np.float32), tuples=n,
                     tokens_done=epoch * self.corpus.train_words + last)


def prefetch(iterator: Iterator[Block], depth: int = 2) -> Iterator[Block]:
    """Run ``iterator`` in a background thread, ``depth`` blocks ahead (numpy releases the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # surfaced in the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


# ----------------------------------------------------------------------------- the math
def negative_rate(h, correction: str):
    """The update-quantity correction of the negative's step: jose.c's 2h, or the paper's 1 + h."""
    return 2.0 * h if correction == "reference" else 1.0 + h


def hinge_coefficients(f, h, keep, alpha, margin: float, correction: str = "reference"):
    """Riemannian SGD for max(0, m − cos(u, a) + cos(u′_k, a)) as coefficients on the rows.

    Per tuple the rows are x_0 = u (positive), x_1 = a (anchor: v or d), x_{1+k} = u′_k
    (negatives), all unit. ``f`` [B] = u·a, ``h`` [B, K] = u′_k·a, ``keep`` [B, K] false for
    a negative to skip (it is the position's own word, or padding), ``alpha`` the learning
    rate. Where the hinge is active (f − h_k < m):

        Δu    = α (1 − f)        (a − f u)                 = α(1−f)  · (I − u uᵀ) a
        Δu′_k = α g_k            (h_k u′_k − a)            = α g_k  · −(I − u′u′ᵀ) a
        Δa    = α (1 − (f − h_k)) (u − u′_k − (f − h_k) a)  = α(1−(f−h)) · (I − a aᵀ)(u − u′_k)

    with g_k = 2h_k (``correction="reference"``, jose.c: the step reverses when h_k < 0) or
    1 + h_k (``"paper"``: always a push away from a). Terms of the K negatives add up. Each
    Δ is a combination of the tuple's rows, so this returns C [B, 2+K, 2+K] with
    Δx_i = Σ_j C_ij x_j, and the hinge loss [B].
    """
    gap = f[:, None] - h  # [B, K]
    active = tf.cast((gap < margin) & keep, f.dtype)
    rate = alpha * active
    g = negative_rate(h, correction)
    pull = tf.reduce_sum(rate, axis=1) * (1.0 - f)  # Δu = pull·(a − f u)
    push = rate * g  # Δu′_k = push_k·(h_k u′_k − a)
    c = rate * (1.0 - gap)  # Δa = Σ_k c_k·(u − u′_k − gap_k a)
    zeros = tf.zeros_like(h)
    row_u = tf.concat([tf.stack([-pull * f, pull], axis=1), zeros], axis=1)  # [B, 2+K]
    row_a = tf.concat([tf.stack([tf.reduce_sum(c, axis=1), -tf.reduce_sum(c * gap, axis=1)], axis=1), -c], axis=1)
    row_neg = tf.concat([zeros[:, :, None], -push[:, :, None], tf.linalg.diag(push * h)], axis=2)  # [B, K, 2+K]
    coefficients = tf.concat([row_u[:, None, :], row_a[:, None, :], row_neg], axis=1)
    loss = tf.reduce_sum(active * (margin - gap), axis=1)
    return coefficients, loss


def sequential_moves(gram, keep, alpha, margin: float, correction: str = "reference"):
    """jose.c's order for a tuple's K negatives: one after another, each hinge evaluated on the
    rows as the previous negative left them (renormalised), as the C loop does.

    ``gram`` [B, E, E] (E = 2+K) holds the cosines x_i·x_j of the tuple's unit rows
    (u, anchor, u′_1..u′_K); ``keep`` [B, K] as for ``hinge_coefficients``. Every move is a
    combination of the tuple's rows, so the rows are carried as coefficients M (row i is
    Σ_j M_ij x_j) and every cosine as q G pᵀ: the K moves cost E² flops, not D-sized passes.
    Returns M − I (Δx = (M − I) x) [B, E, E] and the hinge loss [B].
    Why it matters: summed from one read (``negatives="together"``), a second negative can
    push on a pair the first one already separated past the margin; here it sees that.
    """
    e = gram.shape[1]

    def dot(p, q):  # cosine of the rows with coefficients p and q [B, E]
        return tf.reduce_sum(p[:, :, None] * gram * q[:, None, :], axis=[1, 2])[:, None]

    def unit(q):
        return q * tf.math.rsqrt(dot(q, q))

    eye = tf.eye(e, batch_shape=tf.shape(gram)[:1], dtype=gram.dtype)
    u, a, moved, loss = eye[:, 0], eye[:, 1], [], 0.0
    for k in range(e - 2):  # hinge_coefficients' rule for K = 1, one negative at a time
        neg = eye[:, 2 + k]
        f, h = dot(u, a), dot(neg, a)
        gap = f - h
        active = tf.cast((gap[:, 0] < margin) & keep[:, k], gram.dtype)
        rate = (alpha * active)[:, None]
        u, neg, a = (unit(u + rate * (1.0 - f) * (a - f * u)),  # all three from the rows before
                     unit(neg + rate * negative_rate(h, correction) * (h * neg - a)),
                     unit(a + rate * (1.0 - gap) * (u - neg - gap * a)))
        moved.append(neg)
        loss += active * (margin - gap[:, 0])
    return tf.stack([u, a, *moved], axis=1) - eye, loss


def row_sums(x):
    """Sum over the last axis, as a matrix–vector product with ones: XLA:CPU vectorises
    that, but emits a row reduction as a scalar loop (the step's dot products and norms)."""
    sums = tf.linalg.matvec(tf.reshape(x, [-1, x.shape[-1]]), tf.ones([x.shape[-1]], x.dtype))
    return tf.reshape(sums, tf.shape(x)[:-1])


def combine_rows(coefficients, r):
    """Δr_i = Σ_j C_ij r_j for one tuple's rows, using only the non-zero C_ij.

    u takes (u, a), each u′_k takes (a, u′_k) and the anchor takes every row: 4 + 3K
    products per coordinate instead of (2 + K)².
    """
    u, a, negatives = r[:, 0], r[:, 1], r[:, 2:]
    c = coefficients
    du = c[:, 0, 0, None] * u + c[:, 0, 1, None] * a
    da = c[:, 1, 0, None] * u + c[:, 1, 1, None] * a + tf.reduce_sum(c[:, 1, 2:, None] * negatives, axis=1)
    dneg = c[:, 2:, 1, None] * a[:, None] + tf.linalg.diag_part(c[:, 2:, 2:])[:, :, None] * negatives
    return tf.concat([du[:, None], da[:, None], dneg], axis=1)


def combine_all_rows(coefficients, r):
    """Δr_i = Σ_j C_ij r_j with every C_ij: after ``sequential_moves`` each row may take every row."""
    return tf.reduce_sum(coefficients[..., None] * r[:, None], axis=2)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Scale the rows of ``x`` to unit length in place (no temporary of x's size); returns x."""
    x *= (1.0 / np.sqrt(np.einsum("ij,ij->i", x, x)))[:, None]
    return x


def random_unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Uniform directions on the sphere (normalised Gaussians: exactly isotropic, unlike a cube)."""
    return normalise_rows(rng.standard_normal((rows, dim), dtype=np.float32))


# ----------------------------------------------------------------------------- the model
class JoseModel(tf.Module):
    """One table of rows u | v | d (a TF variable under the strategy's scope) and its trainer.

    Stored rows are kept unnormalised between renormalisations: a row r with norm n stands
    for x = r/n, and adding n·Δx makes it n·(x + Δx), whose direction is exactly the
    retraction normalise(x + Δx) — the reference's step-then-renormalise without a second
    pass over the touched rows. Tangent steps only lengthen rows, by a factor
    √(1 + |Δx|²) per hit, so the word rows (hit most) are renormalised after every block
    and the whole table after every epoch.
    """

    def __init__(self, table: np.ndarray | int, words: int, params: JoseParams,
                 strategy: tf.distribute.Strategy | None = None):
        """``table``: the initial rows u | v | d, or their number (all zero, to be filled with
        ``assign_rows``: the variable is then the only full copy there ever is)."""
        super().__init__(name="jose")
        self.params = params
        self.words = words  # rows [0, words) are u, [words, 2·words) v, the rest d
        self.strategy = strategy or STRATEGIES[params.strategy]()
        rows = table if isinstance(table, int) else table.shape[0]
        with self.strategy.scope():
            self.table = tf.Variable(tf.zeros([rows, params.dim]), name="u_v_d", dtype=tf.float32)
        if not isinstance(table, int):
            self.assign_rows(0, table)
        self._train_block = tf.function(self._block_loop, jit_compile=True, reduce_retracing=True)
        self._renormalise_all = tf.function(lambda: self._renormalise(self.table.shape[0]), jit_compile=True)

    def parts(self) -> tuple[tuple[str, int, int], ...]:
        """(name, first row, end row) of u, v and d in the table."""
        return ("u", 0, self.words), ("v", self.words, 2 * self.words), ("d", 2 * self.words, self.table.shape[0])

    def assign_rows(self, start: int, rows: np.ndarray) -> None:
        """Overwrite table rows ``start, start + len(rows)`` in place, a few MB at a time.

        Why not ``table[a:b].assign``: a sliced assign of a large variable leaves a copy of the
        whole table behind in TensorFlow's allocator; a scatter updates in place."""
        for i in range(0, rows.shape[0], COPY_ROWS):
            chunk = rows[i:i + COPY_ROWS]
            self.table.scatter_update(tf.IndexedSlices(chunk, tf.range(start + i, start + i + chunk.shape[0])))

    def row_chunks(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Stored rows ``start, stop`` copied out ``COPY_ROWS`` at a time.

        Why a gather: slicing reads the whole variable first, and while that read is alive
        the next in-place update copies the whole table (copy-on-write)."""
        for i in range(start, stop, COPY_ROWS):
            yield tf.gather(self.table, tf.range(i, min(i + COPY_ROWS, stop))).numpy()

    def table_parts(self) -> Iterator[tuple[str, np.ndarray]]:
        """("u" | "v" | "d", stored rows), one part copied out at a time (unit right after
        ``renormalise``)."""
        for name, start, stop in self.parts():
            out = np.empty((stop - start, self.params.dim), np.float32)
            for i, chunk in zip(range(0, stop - start, COPY_ROWS), self.row_chunks(start, stop)):
                out[i:i + chunk.shape[0]] = chunk
            yield name, out

    def step(self, rows, alpha):
        """One batched Riemannian SGD step on B tuples ``rows`` [B, 2+K]; returns the summed loss."""
        p = self.params
        real = rows[:, 1] >= 0  # padding tuples are all −1
        rows = tf.maximum(rows, 0)
        r = tf.gather(self.table, rows)  # [B, 2+K, D] stored rows
        word = tf.where(rows[:, 1] < 2 * self.words, rows[:, 1] - self.words, rows[:, 0])  # the position's word
        keep = (rows[:, 2:] != word[:, None]) & real[:, None]  # the reference skips a negative equal to it
        if p.negatives == "sequential":
            products = row_sums(r[:, :, None] * r[:, None])  # [B, E, E]: r_i·r_j
            norm = tf.sqrt(tf.linalg.diag_part(products))
            coefficients, loss = sequential_moves(
                products / (norm[:, :, None] * norm[:, None, :]), keep, alpha, p.margin, p.correction)
            combine = combine_all_rows
        else:
            e = r.shape[1]
            sums = row_sums(tf.concat([r * r, r * r[:, 1:2, :]], axis=1))  # [B, 2E]: |x_j|², x_j·a
            norm = tf.sqrt(sums[:, :e])
            cosine = sums[:, e:] / (norm * norm[:, 1:2])  # cos(x_j, a)
            coefficients, loss = hinge_coefficients(cosine[:, 0], cosine[:, 2:], keep, alpha, p.margin, p.correction)
            combine = combine_rows
        coefficients *= norm[:, :, None] / norm[:, None, :]  # Δr_i = n_i Σ_j C_ij r_j / n_j
        delta = combine(coefficients, r)
        self.table.scatter_add(tf.IndexedSlices(tf.reshape(delta, [-1, p.dim]), tf.reshape(rows, [-1])))
        return tf.reduce_sum(loss)

    def _renormalise(self, rows: int) -> None:
        """Rescale the first ``rows`` stored rows to unit norm (directions unchanged)."""
        head = self.table[:rows]
        self.table[:rows].assign(head * tf.math.rsqrt(row_sums(head * head))[:, None])

    def _block_loop(self, rows, alpha):
        """All steps of a block in one compiled while-loop; returns the block's total loss."""
        def body(i, total):
            return i + 1, total + self.step(rows[i], alpha[i])

        _, total = tf.while_loop(lambda i, _: i < tf.shape(rows)[0], body, (tf.constant(0), tf.constant(0.0)))
        self._renormalise(2 * self.words)
        return total

    def train_block(self, block: Block) -> float:
        return float(self.strategy.run(self._train_block, args=(block.rows, block.alpha)))

    def renormalise(self) -> None:
        """Every stored row to unit norm (end of an epoch: checkpoints hold exact table rows)."""
        self.strategy.run(self._renormalise_all)


# ----------------------------------------------------------------------------- checkpoints
class Checkpoints:
    """Epoch checkpoints: ``state.json`` names the newest complete ``epoch-<n>.npz``.

    The npz is written (atomically) before the state that points at it, so a run killed at
    any moment leaves either the previous or the new checkpoint, never a torn one. The
    per-epoch RNG is derived from (seed, epoch) and the learning rate from the epoch, so
    the epoch number and the table rows are the whole training state.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def load(self, fingerprint: str) -> tuple[int, dict[str, np.ndarray]] | None:
        state_path = self.directory / "state.json"
        if not state_path.exists():
            return None
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            if state.get("fingerprint") != fingerprint:
                return None  # a different config or corpus: start over rather than mix runs
            # the .npz is a zip: reading every member checks its CRC-32, so flipped or missing
            # bytes fail here rather than train on from damaged vectors
            with np.load(self.directory / state["file"], allow_pickle=False) as z:
                return int(state["epoch"]), {k: z[k] for k in ("u", "v", "d")}
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            log.warning("JoSE checkpoint in %s is damaged (%s: %s); training again from epoch 0",
                        self.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return None

    def save(self, epoch: int, fingerprint: str, params: JoseParams, model: JoseModel, tokens_trained: int) -> None:
        """Write the model's u, v, d as one npz (np.savez's layout), streamed from the table a
        few MB at a time: a checkpoint never holds a copy of a whole part."""
        name = f"epoch-{epoch}.npz"
        with atomic_path(self.directory / name, suffix=".npz") as tmp:
            with zipfile.ZipFile(tmp, "w") as z:
                for key, start, stop in model.parts():
                    with z.open(f"{key}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array_header_1_0(member, {
                            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                            "shape": (stop - start, params.dim)})
                        for chunk in model.row_chunks(start, stop):
                            member.write(chunk.tobytes())
        write_json_atomic(self.directory / "state.json", {
            "epoch": epoch, "file": name, "fingerprint": fingerprint, "seed": params.seed,
            "tokens_trained": tokens_trained, "params": params.model_dump(mode="json"),
        })
        for old in self.directory.glob("epoch-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)


def warm_start_rows(rows: np.ndarray, keys: list[str], previous_keys: list[str] | pd.Index, previous: np.ndarray) -> int:
    """Overwrite ``rows`` (one per key, in place) with the previous run's unit vector where the
    key existed; returns how many did. ``previous_keys`` as a ``pd.Index`` is looked up
    without being hashed again (a part is warm-started a slice at a time)."""
    if previous.shape[1] != rows.shape[1]:
        raise ValueError(f"warm start vectors have dim {previous.shape[1]}, config dim is {rows.shape[1]}")
    index = previous_keys if isinstance(previous_keys, pd.Index) else pd.Index(previous_keys)
    where = index.get_indexer(keys)
    hit = where >= 0
    rows[hit] = normalise_rows(previous[where[hit]].astype(np.float32))
    return int(hit.sum())


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class EpochProgress:
    """What one finished epoch reports (to a log line, a progress bar)."""

    epoch: int  # 1-based
    epochs: int
    tokens_per_second: float
    loss: float  # mean hinge loss per tuple
    eta_seconds: float
    seconds: float


@dataclass
class TrainResult:
    """What training did; the vectors ``u``, ``v``, ``d`` (unit rows) are read from the final
    checkpoint when first asked for, so a caller can free what it no longer needs first
    (``train_jose_stage`` drops the corpus's token arrays). Ask before training into the
    same folder again: a run with other settings replaces that checkpoint."""

    checkpoints: "Checkpoints"
    fingerprint: str
    epochs: int
    epochs_run: int
    resumed_from_epoch: int
    warm_started_words: int
    tokens_trained: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    @functools.cached_property
    def _vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # the last checkpoint holds the final table: read back once the model is gone, rather
        # than copied out of the variable while it is alive
        final = self.checkpoints.load(self.fingerprint)
        if final is None or final[0] != self.epochs:
            raise RuntimeError(f"JoSE: the checkpoint of epoch {self.epochs} in {self.checkpoints.directory} "
                               "could not be read back after training")
        u, v, d = (normalise_rows(final[1].pop(name)) for name in ("u", "v", "d"))
        return u, v, d

    @property
    def u(self) -> np.ndarray:
        return self._vectors[0]

    @property
    def v(self) -> np.ndarray:
        return self._vectors[1]

    @property
    def d(self) -> np.ndarray:
        return self._vectors[2]


def configure_threads() -> None:
    """One TF thread: the compiled step does not gain from more, and more only spin.

    Ignored once TF has started (e.g. a warm Dask worker); the step stays sequential and
    deterministic either way. The tuple sampler uses the stage's other thread.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def train_jose(corpus: Corpus, params: JoseParams, checkpoint_dir: str | os.PathLike,
               warm_start: dict[str, tuple[list[str], np.ndarray]] | None = None,
               progress: Callable[[EpochProgress], None] | None = None,
               strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Train u, v, d; checkpoint after every epoch and resume from the newest checkpoint.

    ``warm_start`` maps "u"/"v" to (words, vectors) and "d" to (doc_ids, vectors) of a
    previous run; matching keys start from those vectors, the rest at random.
    ``progress`` gets one ``EpochProgress`` when an epoch's training ends, just before its
    checkpoint is written (an exception there loses that epoch, as a crash would).
    """
    configure_threads()
    t0 = time.perf_counter()
    n_words = len(corpus.words)
    fingerprint = sha256_text(CHECKPOINT_FORMAT, params.training_fingerprint(), corpus.fingerprint(),
                              sha256_text(*(f"{k}:{len(w)}" for k, (w, _) in sorted((warm_start or {}).items()))))
    checkpoints = Checkpoints(checkpoint_dir)
    restored = checkpoints.load(fingerprint)
    first_epoch = restored[0] if restored is not None else 0
    model = JoseModel(2 * n_words + len(corpus.doc_ids), n_words, params, strategy)
    # u, v, d drawn in that order from one stream (as one array would be), a slice at a
    # time, each slice overwritten by the warm start or the checkpoint where they have rows
    # and written to the variable: the variable is the only full copy of the table
    rng = np.random.default_rng([params.seed, 2**31])
    keys = {"u": corpus.words, "v": corpus.words, "d": corpus.doc_ids}
    warm = {name: (pd.Index(previous_keys), previous) for name, (previous_keys, previous) in (warm_start or {}).items()}
    warm_words = 0
    for name, start, stop in model.parts():
        stored = restored[1].pop(name) if restored is not None else None
        for i in range(0, stop - start, COPY_ROWS):
            rows = random_unit_rows(rng, min(COPY_ROWS, stop - start - i), params.dim)
            if name in warm:
                hits = warm_start_rows(rows, keys[name][i:i + rows.shape[0]], *warm[name])
                warm_words += hits if name == "u" else 0
            if stored is not None:
                rows = stored[i:i + rows.shape[0]]
            model.assign_rows(start + i, rows)
        del stored
    del restored
    sampler = TupleSampler(corpus, params)
    release_freed_memory()  # the parts drawn and the sampler's temporaries
    losses = []
    epoch_seconds = []
    blocks = sampler.stream(range(first_epoch, params.epochs))  # None marks the end of each epoch
    epoch, epoch_loss, tuples, t_epoch = first_epoch, 0.0, 0, time.perf_counter()
    for block in prefetch(blocks) if params.threads > 1 else blocks:
        if block is not None:  # steps × batch tuples in one compiled call
            epoch_loss += model.train_block(block)
            if tuples == 0 and epoch == first_epoch:  # the step was just compiled: XLA's compiler freed
                release_freed_memory()  # ~35 MB of working memory that glibc would keep for the whole run
            tuples += block.tuples
            continue
        epoch += 1  # an epoch is done: unit rows, its line of progress, its checkpoint
        model.renormalise()
        losses.append(epoch_loss / max(tuples, 1))
        epoch_seconds.append(time.perf_counter() - t_epoch)
        if progress is not None:
            progress(EpochProgress(
                epoch=epoch, epochs=params.epochs, loss=losses[-1], seconds=epoch_seconds[-1],
                tokens_per_second=corpus.train_words / epoch_seconds[-1],
                eta_seconds=float(np.mean(epoch_seconds)) * (params.epochs - epoch)))
        checkpoints.save(epoch, fingerprint, params, model, epoch * corpus.train_words)
        epoch_loss, tuples, t_epoch = 0.0, 0, time.perf_counter()
    del model, sampler  # the variable and the compiled step: freed before the vectors are read
    gc.collect()  # tf.function holds bound methods of the model: a reference cycle
    release_freed_memory()
    return TrainResult(
        checkpoints=checkpoints, fingerprint=fingerprint, epochs=params.epochs,
        epochs_run=params.epochs - first_epoch, resumed_from_epoch=first_epoch,
        warm_started_words=warm_words, tokens_trained=(params.epochs - first_epoch) * corpus.train_words,
        seconds=time.perf_counter() - t0, losses=losses, epoch_seconds=epoch_seconds,
    )

# ----------------------------------------------------------------------------- the stage
def _label_rows(corpus: Corpus, label_source: str | None) -> np.ndarray:
    """Rows of documents to classify: labelled, and from ``label_source`` (``x`` or ``builtin:x``)."""
    accepted = {label_source, f"builtin:{label_source}"} if label_source else None
    return np.asarray([i for i, (src, lab) in enumerate(zip(corpus.sources, corpus.labels))
                       if lab is not None and (accepted is None or src in accepted)], dtype=np.int64)


def _doc_texts(tokens_paths: list[str], doc_ids: set[str]) -> dict[str, str]:
    """Space-joined tokens of the given documents (the TF-IDF baseline's input)."""
    texts: dict[str, str] = {}
    for path in tokens_paths:
        df = pd.read_parquet(path, columns=["doc_id", "tokens"])
        df = df[df["doc_id"].isin(doc_ids)]
        texts.update(zip(df["doc_id"], (" ".join(t) for t in df["tokens"])))
    return texts


def _read_warm_start(directory: str | os.PathLike) -> dict[str, tuple[list[str], np.ndarray]]:
    """A previous stage output: vocab.parquet + u.npy/v.npy and docs.parquet + d.npy."""
    directory = Path(directory)
    words = pd.read_parquet(directory / "vocab.parquet", columns=["token"])["token"].tolist()
    docs = pd.read_parquet(directory / "docs.parquet", columns=["doc_id"])["doc_id"].tolist()
    return {"u": (words, np.load(directory / "u.npy")), "v": (words, np.load(directory / "v.npy")),
            "d": (docs, np.load(directory / "d.npy"))}


def evaluate(u: np.ndarray, words: list[str], d: np.ndarray, corpus: Corpus, tokens_paths: list[str],
             params: JoseParams, angles_png: str | os.PathLike | None) -> dict[str, Any]:
    """Neighbours of the probe words, angle statistics (+ PNG), doc-vector vs TF-IDF accuracy."""
    from kexue.embed.evaluate import angle_statistics, document_classification, nearest_neighbours, plot_angle_histogram

    metrics: dict[str, Any] = {"neighbours": nearest_neighbours(u, words, params.probe_words)}
    stats, angles = angle_statistics(u, seed=params.seed)
    metrics["angles"] = stats
    if angles_png is not None:
        plot_angle_histogram(angles, u.shape[1], angles_png)
    rows = _label_rows(corpus, params.label_source)
    labels = [corpus.labels[i] for i in rows]
    if len(set(labels)) >= 2:
        ids = [corpus.doc_ids[i] for i in rows]
        texts = _doc_texts(tokens_paths, set(ids))
        metrics.update(document_classification(d[rows], [texts[i] for i in ids], labels, seed=params.seed))
    return metrics


def train_jose_stage(tokens_paths: list[str], vocab_path: str, out_dir: str, params: JoseParams | dict[str, Any] | None,
                     checkpoint_dir: str, warm_start_dir: str | None = None,
                     progress: Callable[[EpochProgress], None] | None = None, evaluate_vectors: bool = True) -> dict[str, Any]:
    """The ``jose`` stage: train on the tokenise/count artifacts, write vectors, evaluate.

    Reads tokens partitions (doc_id, source, label, tokens) and the vocabulary Parquet
    (token, count, rank, ...); ``params`` is a ``JoseParams`` or a mapping of its fields
    (unknown or invalid keys raise ``ValueError`` naming the key); its ``warm_start`` is the
    caller's business (it decides ``warm_start_dir``). Resumes from ``checkpoint_dir`` if it holds a
    checkpoint of the same config and corpus; ``warm_start_dir`` is a previous stage
    ``out_dir`` whose vectors seed words/documents it knows. Writes into ``out_dir``:
    words.txt / contexts.txt / docs.txt (word2vec text: u, v, d), u.npy, v.npy, d.npy,
    vocab.parquet (token, count; row order of u/v), docs.parquet (doc_id, source, label;
    row order of d) and angles.png. Returns {"files": {name: path}, "metrics": {...}}.
    ``evaluate_vectors=False`` skips the evaluation (and angles.png): the benchmark times
    training alone and evaluates both implementations the same way afterwards.
    """
    from kexue.embed.word2vec import write_word2vec

    params = JoseParams.of(params)
    # TensorFlow's import left 366 MB of its libraries resident that training never touches
    # again: handed back before the stage's data adds to the process (kexue.core.memory)
    released = release_library_pages()
    log.info("jose: %.0f MB of library pages released", (released or 0) / 1e6)
    corpus = load_corpus(tokens_paths, vocab_path, params.min_count)
    warm = _read_warm_start(warm_start_dir) if warm_start_dir else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the row orders of u/v and of d, written now: before the table exists, the writers'
    # buffers do not add to the stage's peak (they did, by 30-60 MB, at the end)
    with _system_memory_pool():  # see load_corpus
        orders = {
            "vocab": write_parquet_atomic(out / "vocab.parquet", pa.table(
                {"token": pa.array(corpus.words, pa.string()), "count": pa.array(corpus.counts, pa.int64())})),
            "doc_order": write_parquet_atomic(out / "docs.parquet", pa.table(
                {name: pa.array(values, pa.string()) for name, values in
                 (("doc_id", corpus.doc_ids), ("source", corpus.sources), ("label", corpus.labels))})),
        }
    release_freed_memory()
    result = train_jose(corpus, params, checkpoint_dir, warm_start=warm, progress=progress)
    corpus_tokens = corpus.train_words
    corpus = corpus.without_tokens()  # 8 bytes a token, freed before the vectors are read back
    files = {
        "words": write_word2vec(out / "words.txt", corpus.words, result.u),
        "contexts": write_word2vec(out / "contexts.txt", corpus.words, result.v),
        "docs": write_word2vec(out / "docs.txt", corpus.doc_ids, result.d),
        "u": save_npy_atomic(out / "u.npy", result.u),
        "v": save_npy_atomic(out / "v.npy", result.v),
        "d": save_npy_atomic(out / "d.npy", result.d),
        **orders,
    }
    metrics: dict[str, Any] = {}
    if evaluate_vectors:
        metrics = evaluate(result.u, corpus.words, result.d, corpus, tokens_paths, params, out / "angles.png")
        files["angles"] = out / "angles.png"
    metrics.update({
        "vocab_size": len(corpus.words), "documents": len(corpus.doc_ids), "corpus_tokens": corpus_tokens,
        "tokens_trained": result.tokens_trained, "epochs": params.epochs, "epochs_run": result.epochs_run,
        "resumed_from_epoch": result.resumed_from_epoch, "warm_started_words": result.warm_started_words,
        "seconds": round(result.seconds, 3),
        "tokens_per_second": round(result.tokens_trained / result.seconds, 1) if result.seconds > 0 else None,
        "epoch_losses": [round(x, 5) for x in result.losses],
        "epoch_seconds": [round(x, 2) for x in result.epoch_seconds],
    })
    return {"files": {k: str(v) for k, v in files.items()}, "metrics": metrics}
