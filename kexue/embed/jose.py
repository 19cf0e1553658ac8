"""JoSE: spherical word, context and document embeddings (Meng et al., NeurIPS 2019).

Symbols follow the paper and the reference ``jose.c``:

- ``u`` — center-word vectors (the reference's ``syn0``), one row per vocabulary word;
- ``v`` — context-word vectors (``syn1neg``);
- ``d`` — document vectors (``syn1doc``), one row per document;
- ``margin`` — m in the hinge losses
  word–word  max(0, m − cos(u, v) + cos(u′, v)),
  word–doc   max(0, m − cos(u, d) + cos(u′, d)),
  with u′ drawn from the unigram^0.75 distribution.

All vectors live on the unit sphere and are trained by Riemannian SGD: the Euclidean
gradient is projected onto the tangent space of x, (I − x xᵀ)∇f, the step is scaled by the
reference's update-quantity correction (1 − f for u, 2h for u′, 1 − (f − h) for the
anchor v or d, where f = cos(u, anchor), h = cos(u′, anchor)), and x is renormalised.

Why the training loop looks the way it does: a Python-level step per pair is 10–50× slower
than the C code. Here numpy builds, per epoch and vectorised, every (center, context,
negatives, document) tuple — frequent-word subsampling, randomly shrunk windows, negative
sampling — in large fixed-size blocks (a background thread prepares the next block while
the current one trains), and one XLA-compiled ``tf.while_loop`` runs all steps of a block.
Each step gathers the rows it needs once, uses the same u and u′ rows for the word–word and
the word–document term, and writes back with sparse scatter updates (never a dense
gradient). Within a step all tuples see the same (stale) rows and their updates are summed
— the batched analogue of the reference's lock-free threads.

Determinism: all randomness comes from numpy generators seeded by (seed, epoch), so a run
is reproducible for a seed, and a run resumed from an epoch checkpoint continues exactly as
the uninterrupted run would have.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf

from kexue.core.artifacts import atomic_path, save_npy_atomic, sha256_text, write_json_atomic, write_parquet_atomic
from kexue.embed.params import STRATEGY_NAMES, JoseConfig

log = logging.getLogger(__name__)

RENORM_EVERY = 32  # steps between full renormalisations of the stored rows (see JoseModel)


STRATEGIES: dict[str, Callable[[], tf.distribute.Strategy]] = {
    "default": tf.distribute.get_strategy,
    "one_device_cpu": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
}
assert set(STRATEGIES) == set(STRATEGY_NAMES), "kexue.embed.params.STRATEGY_NAMES must name every strategy"


# ----------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    """The training corpus as index arrays: every in-vocabulary token of every document.

    ``ids[t]`` is the vocabulary row of token t and ``doc[t]`` its document row; documents
    are contiguous. Tokens not in the vocabulary (below ``min_count``, or containing
    whitespace, which word2vec text cannot store) are dropped before windows are formed,
    as in the reference.
    """

    words: list[str]
    counts: np.ndarray  # int64 [V]
    doc_ids: list[str]
    sources: list[str]
    labels: list[str | None]
    ids: np.ndarray  # int32 [N]
    doc: np.ndarray  # int32 [N]

    @property
    def train_words(self) -> int:
        return int(self.ids.shape[0])

    def fingerprint(self) -> str:
        return sha256_text(
            str(len(self.words)), str(len(self.doc_ids)), str(self.train_words),
            sha256_text(*self.words), sha256_text(*self.doc_ids),
        )


def load_corpus(tokens_paths: list[str], vocab_path: str, min_count: int) -> Corpus:
    """Read the tokenise/count artifacts (no re-tokenising) into index arrays."""
    vocab = pd.read_parquet(vocab_path, columns=["token", "count", "rank"]).sort_values("rank")
    vocab = vocab[(vocab["count"] >= min_count) & ~vocab["token"].str.contains(r"\s", regex=True)]
    words = vocab["token"].tolist()
    if not words:
        raise ValueError(f"no vocabulary word has count >= min_count={min_count} in {vocab_path}")
    word_set = pa.array(words, type=pa.string())
    ids_parts, doc_parts = [], []
    doc_ids: list[str] = []
    sources: list[str] = []
    labels: list[str | None] = []
    for path in tokens_paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=["doc_id", "source", "label", "tokens"]):
            tokens = batch.column("tokens")
            lengths = pc.fill_null(pc.list_value_length(tokens), 0).to_numpy()
            rows = pc.fill_null(pc.index_in(tokens.flatten(), value_set=word_set), -1).to_numpy()
            doc_rows = np.repeat(np.arange(len(doc_ids), len(doc_ids) + len(lengths), dtype=np.int32), lengths)
            keep = rows >= 0
            ids_parts.append(rows[keep].astype(np.int32))
            doc_parts.append(doc_rows[keep])
            doc_ids += batch.column("doc_id").to_pylist()
            sources += batch.column("source").to_pylist()
            labels += batch.column("label").to_pylist()
    return Corpus(
        words=words, counts=vocab["count"].to_numpy(np.int64), doc_ids=doc_ids, sources=sources, labels=labels,
        ids=np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32),
        doc=np.concatenate(doc_parts) if doc_parts else np.zeros(0, np.int32),
    )


# ----------------------------------------------------------------------------- tuples (numpy)
@dataclass
class Block:
    """``steps × batch`` training tuples for one compiled call (the tail may be padding)."""

    center: np.ndarray  # int32 [S, B]   rows of u
    context: np.ndarray  # int32 [S, B]  rows of v
    negatives: np.ndarray  # int32 [S, B, K] rows of u
    doc: np.ndarray  # int32 [S, B]      rows of d
    doc_scale: np.ndarray  # float32 [S, B] 1 / (#pairs of the context position)
    alpha: np.ndarray  # float32 [S]    learning rate of each step
    valid: int  # tuples in the block; the rest of the S·B slots are padding
    tokens_done: int  # raw corpus tokens (all epochs) covered once this block is trained


class TupleSampler:
    """Vectorised numpy version of the reference's per-thread sampling loop.

    Per epoch: frequent-word subsampling with the reference's keep probability
    (√(c/(s·T)) + 1)·s·T/c; each kept position gets a window shrunk uniformly to 1..window;
    every (position, neighbour) pair inside the shrunk window and the same document is a
    tuple (center u = neighbour, context v = position word, document d); each tuple gets
    ``negative`` center words from unigram^0.75. The word–document term is applied once per
    tuple scaled by 1/(#pairs of that position), so each position contributes one unit of
    word–document update, as in the reference. Learning rate: linear decay from alpha over
    all epochs' raw tokens, floored at alpha·1e-4 (reference).
    """

    def __init__(self, corpus: Corpus, config: JoseConfig, chunk_tokens: int = 1 << 16):
        self.corpus = corpus
        self.config = config
        self.chunk_tokens = chunk_tokens
        total = max(corpus.train_words, 1)
        threshold = config.sample * total
        counts = corpus.counts.astype(np.float64)
        self.keep_probability = (
            np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts) if config.sample > 0 else np.ones_like(counts)
        )
        # The reference's table of unigram^0.75 (a draw is one random index into it), sized
        # so that each word's share is resolved to ~1/(64·V).
        weights = counts**0.75
        cdf = np.cumsum(weights / weights.sum())
        size = int(min(1 << 24, max(1 << 20, 64 * len(counts))))
        self.negative_table = np.minimum(np.searchsorted(cdf, (np.arange(size) + 0.5) / size), len(counts) - 1).astype(np.int32)
        doc_starts = np.flatnonzero(np.diff(corpus.doc, prepend=-1)) if corpus.train_words else np.zeros(0, np.int64)
        self.doc_starts = np.append(doc_starts, corpus.train_words)

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

    def pairs(self, epoch: int) -> Iterator[tuple[np.ndarray, ...]]:
        """(center, context, doc, doc_scale, negatives, raw_position) arrays, chunk by chunk."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch])
        offsets = np.concatenate([np.arange(-cfg.window, 0), np.arange(1, cfg.window + 1)]).astype(np.int32)
        for start, end in self._chunk_bounds():
            ids = self.corpus.ids[start:end]
            docs = self.corpus.doc[start:end]
            kept = np.flatnonzero(rng.random(end - start) < self.keep_probability[ids])
            k_ids, k_doc = ids[kept], docs[kept]
            m = kept.shape[0]
            span = cfg.window - rng.integers(0, cfg.window, size=m, dtype=np.int32)  # reference: b = rand % window
            neighbour = np.arange(m, dtype=np.int32)[:, None] + offsets[None, :]
            inside = (neighbour >= 0) & (neighbour < m) & (np.abs(offsets)[None, :] <= span[:, None])
            neighbour = np.clip(neighbour, 0, max(m - 1, 0))
            inside &= k_doc[neighbour] == k_doc[:, None]
            position, slot = np.nonzero(inside)  # position-major, like the reference's loop
            per_position = inside.sum(axis=1, dtype=np.int32)
            center = k_ids[neighbour[position, slot]]
            del neighbour, inside
            context = k_ids[position]
            negatives = self.negative_table[
                rng.integers(0, self.negative_table.shape[0], (position.shape[0], cfg.negative), dtype=np.int32)]
            yield (
                center, context, k_doc[position], (1.0 / per_position[position]).astype(np.float32),
                negatives, (start + kept[position]).astype(np.int64),
            )

    def blocks(self, epoch: int) -> Iterator[Block]:
        """Fixed-shape blocks of tuples (the last one padded) so one compiled program serves all."""
        cfg = self.config
        size = cfg.steps_per_block * cfg.batch_size
        pending: list[tuple[np.ndarray, ...]] = []
        pending_n = 0
        for part in self.pairs(epoch):
            pending.append(part)
            pending_n += part[0].shape[0]
            if pending_n >= size:
                merged = tuple(np.concatenate(cols) for cols in zip(*pending))
                full = pending_n // size * size
                for start in range(0, full, size):
                    yield self._block(epoch, tuple(a[start:start + size] for a in merged))
                pending = [tuple(a[full:] for a in merged)]
                pending_n -= full
        if pending_n:
            yield self._block(epoch, tuple(np.concatenate(cols) for cols in zip(*pending)))

    def _block(self, epoch: int, part: tuple[np.ndarray, ...]) -> Block:
        cfg = self.config
        s, b = cfg.steps_per_block, cfg.batch_size
        center, context, doc, scale, negatives, raw = part
        n = center.shape[0]
        pad = s * b - n
        processed = epoch * self.corpus.train_words + raw[::b]
        alpha = cfg.alpha * np.maximum(1e-4, 1.0 - processed / (cfg.epochs * self.corpus.train_words + 1.0))
        return Block(
            center=np.pad(center, (0, pad)).reshape(s, b),
            context=np.pad(context, (0, pad)).reshape(s, b),
            negatives=np.pad(negatives, ((0, pad), (0, 0))).reshape(s, b, cfg.negative),
            doc=np.pad(doc, (0, pad)).reshape(s, b),
            doc_scale=np.pad(scale, (0, pad)).reshape(s, b),
            alpha=np.pad(alpha, (0, s - alpha.shape[0])).astype(np.float32),
            valid=n,
            tokens_done=int(epoch * self.corpus.train_words + raw[-1] + 1),
        )


def prefetch(iterator: Iterator[Block], depth: int = 1) -> Iterator[Block]:
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
def spherical_hinge_step(anchor, positive, negatives, weight, alpha, margin):
    """Riemannian SGD deltas for max(0, m − cos(u, a) + cos(u′_k, a)) on B tuples.

    ``anchor`` a [B, D] (v or d), ``positive`` u [B, D], ``negatives`` u′ [B, K, D], all unit
    rows; ``weight`` [B, K] scales (or masks) each negative's term; ``alpha`` [B] learning rate.
    With f = u·a, h_k = u′_k·a, and only where f − h_k < m (the hinge is active):

        Δu    = α (1 − f)        (a − f u)                    = α(1−f)  · (I − u uᵀ) a
        Δu′_k = α 2h_k           (h_k u′_k − a)               = α·2h_k · −(I − u′u′ᵀ) a
        Δa    = α (1 − (f − h_k)) (u − u′_k − (f − h_k) a)     = α(1−(f−h)) · (I − a aᵀ)(u − u′_k)

    i.e. the negative Euclidean gradient projected on each tangent space times the
    reference's update-quantity correction. Returns (Δu [B,D], Δu′ [B,K,D], Δa [B,D], loss [B]).
    """
    f = tf.reduce_sum(positive * anchor, axis=-1)  # [B]
    h = tf.reduce_sum(negatives * anchor[:, None, :], axis=-1)  # [B, K] (no einsum: XLA CPU batch-dots are slow)
    gap = f[:, None] - h
    active = tf.cast(gap < margin, anchor.dtype) * weight  # [B, K]
    rate = alpha[:, None] * active
    delta_positive = (tf.reduce_sum(rate, axis=1) * (1.0 - f))[:, None] * (anchor - f[:, None] * positive)
    delta_negatives = (rate * 2.0 * h)[:, :, None] * (h[:, :, None] * negatives - anchor[:, None, :])
    c = rate * (1.0 - gap)  # [B, K]
    delta_anchor = (
        tf.reduce_sum(c, axis=1)[:, None] * positive
        - tf.reduce_sum(c[:, :, None] * negatives, axis=1)
        - tf.reduce_sum(c * gap, axis=1)[:, None] * anchor
    )
    loss = tf.reduce_sum(active * (margin - gap), axis=1)
    return delta_positive, delta_negatives, delta_anchor, loss


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Uniform directions on the sphere (normalised Gaussians: exactly isotropic, unlike a cube)."""
    return unit_rows(rng.standard_normal((rows, dim), dtype=np.float32))


# ----------------------------------------------------------------------------- the model
class JoseModel(tf.Module):
    """u, v, d as TF variables (created under the strategy's scope) and the compiled trainer."""

    def __init__(self, u: np.ndarray, v: np.ndarray, d: np.ndarray, config: JoseConfig,
                 strategy: tf.distribute.Strategy | None = None):
        super().__init__(name="jose")
        self.config = config
        self.strategy = strategy or STRATEGIES[config.strategy]()
        with self.strategy.scope():
            self.u = tf.Variable(u, name="u", dtype=tf.float32)
            self.v = tf.Variable(v, name="v", dtype=tf.float32)
            self.d = tf.Variable(d, name="d", dtype=tf.float32)
        self._train_block = tf.function(self._block_loop, jit_compile=True, reduce_retracing=True)

    def vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The unit vectors u, v, d as numpy arrays."""
        return tuple(unit_rows(t.numpy()) for t in (self.u, self.v, self.d))

    @staticmethod
    def _read(table: tf.Variable, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Gather rows and their norms; the vector a row stands for is row / norm."""
        x = tf.gather(table, rows)
        norm = tf.sqrt(tf.reduce_sum(x * x, axis=-1, keepdims=True))
        return x / norm, norm

    def step(self, center, context, negatives, doc, doc_scale, alpha, valid):
        """One batched Riemannian SGD step on B tuples; returns the summed hinge loss.

        Stored rows are kept unnormalised between renormalisations (``renormalise``): a row
        r with norm n stands for x = r/n, and adding n·Δ makes it n·(x + Δ), whose direction
        is exactly the retraction normalise(x + Δ) — so the step is the reference's
        step-then-renormalise without a second gather/scatter pass over the touched rows.
        Rows hit several times in a batch get all their deltas summed (each computed from the
        same read, hence scaled by the same n).
        """
        margin = self.config.margin
        u, u_norm = self._read(self.u, center)  # [B, D] center words (window neighbours)
        v, v_norm = self._read(self.v, context)  # [B, D] context words (window positions)
        u_neg, u_neg_norm = self._read(self.u, negatives)  # [B, K, D] negatives, shared by both terms
        d, d_norm = self._read(self.d, doc)  # [B, D]
        lr = tf.fill(tf.shape(center), alpha)
        word_weight = valid[:, None] * tf.cast(negatives != context[:, None], tf.float32)
        du_w, du_neg_w, dv, loss_w = spherical_hinge_step(v, u, u_neg, word_weight, lr, margin)
        doc_weight = (valid * doc_scale)[:, None] * tf.cast(negatives != center[:, None], tf.float32)
        du_d, du_neg_d, dd, loss_d = spherical_hinge_step(d, u, u_neg, doc_weight, lr, margin)
        self.u.scatter_add(tf.IndexedSlices((du_w + du_d) * u_norm, center))
        self.u.scatter_add(tf.IndexedSlices(
            tf.reshape((du_neg_w + du_neg_d) * u_neg_norm, [-1, self.config.dim]), tf.reshape(negatives, [-1])))
        self.v.scatter_add(tf.IndexedSlices(dv * v_norm, context))
        self.d.scatter_add(tf.IndexedSlices(dd * d_norm, doc))
        return tf.reduce_sum(loss_w) + tf.reduce_sum(loss_d)

    def renormalise(self) -> None:
        """Rescale every stored row to unit norm (directions unchanged); bounds norm growth."""
        for table in (self.u, self.v, self.d):
            table.assign(table * tf.math.rsqrt(tf.reduce_sum(table * table, axis=1, keepdims=True)))

    def _block_loop(self, center, context, negatives, doc, doc_scale, alpha, n_valid):
        """All steps of a block in one compiled while-loop; returns the block's total loss.

        Rows are renormalised every ``RENORM_EVERY`` steps and at the end: norms only grow
        (tangent steps), by at most a few per cent per hit, so this keeps them far from
        float32 overflow at a small fraction of the cost of a per-step renormalisation.
        """
        steps, batch = tf.shape(center)[0], tf.shape(center)[1]

        def body(i, total):
            valid = tf.cast(i * batch + tf.range(batch) < n_valid, tf.float32)
            loss = self.step(center[i], context[i], negatives[i], doc[i], doc_scale[i], alpha[i], valid)
            tf.cond(i % RENORM_EVERY == RENORM_EVERY - 1, self._renormalise_op, tf.no_op)
            return i + 1, total + loss

        _, total = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.constant(0.0)))
        self.renormalise()
        return total

    def _renormalise_op(self):
        self.renormalise()
        return tf.no_op()

    def train_block(self, block: Block) -> float:
        loss = self.strategy.run(self._train_block, args=(
            block.center, block.context, block.negatives, block.doc, block.doc_scale, block.alpha,
            tf.constant(block.valid, tf.int32)))
        return float(loss)


# ----------------------------------------------------------------------------- checkpoints
class Checkpoints:
    """Epoch checkpoints: ``state.json`` names the newest complete ``epoch-<n>.npz``.

    The npz is written (atomically) before the state that points at it, so a run killed at
    any moment leaves either the previous or the new checkpoint, never a torn one. The
    per-epoch RNG is derived from (seed, epoch), so the epoch number is the whole RNG state.
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

    def save(self, epoch: int, fingerprint: str, config: JoseConfig, u, v, d, tokens_trained: int) -> None:
        name = f"epoch-{epoch}.npz"
        with atomic_path(self.directory / name, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, u=u, v=v, d=d)
        write_json_atomic(self.directory / "state.json", {
            "epoch": epoch, "file": name, "fingerprint": fingerprint, "seed": config.seed,
            "tokens_trained": tokens_trained, "config": asdict(config),
        })
        for old in self.directory.glob("epoch-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)


def warm_start_rows(keys: list[str], previous_keys: list[str], previous: np.ndarray, fresh: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows for ``keys``: the previous run's vector where the key existed, else ``fresh``."""
    out = fresh.copy()
    where = pd.Index(previous_keys).get_indexer(keys)
    hit = where >= 0
    if previous.shape[1] != fresh.shape[1]:
        raise ValueError(f"warm start vectors have dim {previous.shape[1]}, config dim is {fresh.shape[1]}")
    out[hit] = unit_rows(previous[where[hit]])
    return out, int(hit.sum())


# ----------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    u: np.ndarray
    v: np.ndarray
    d: np.ndarray
    epochs_run: int
    resumed_from_epoch: int
    warm_started_words: int
    tokens_trained: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def configure_threads(threads: int) -> None:
    """Ask TF for ``threads`` threads; ignored once TF has started (e.g. a warm Dask worker)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass


def train_jose(corpus: Corpus, config: JoseConfig, checkpoint_dir: str | os.PathLike,
               warm_start: dict[str, tuple[list[str], np.ndarray]] | None = None,
               progress: Callable[[int, int], None] | None = None,
               strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Train u, v, d; checkpoint after every epoch and resume from the newest checkpoint.

    ``warm_start`` maps "u"/"v" to (words, vectors) and "d" to (doc_ids, vectors) of a
    previous run; matching keys start from those vectors, the rest at random.
    ``progress(tokens_done, tokens_total)`` is called after every block (raw tokens over all
    epochs, as the reference counts them).
    """
    configure_threads(config.threads)
    t0 = time.perf_counter()
    rng = np.random.default_rng([config.seed, 2**31])
    n_words, n_docs = len(corpus.words), len(corpus.doc_ids)
    u = random_unit_rows(rng, n_words, config.dim)
    v = random_unit_rows(rng, n_words, config.dim)
    d = random_unit_rows(rng, n_docs, config.dim)
    warm_words = 0
    if warm_start:
        if "u" in warm_start:
            u, warm_words = warm_start_rows(corpus.words, *warm_start["u"], u)
        if "v" in warm_start:
            v, _ = warm_start_rows(corpus.words, *warm_start["v"], v)
        if "d" in warm_start:
            d, _ = warm_start_rows(corpus.doc_ids, *warm_start["d"], d)
    fingerprint = sha256_text(config.training_fingerprint(), corpus.fingerprint(),
                              sha256_text(*(f"{k}:{len(w)}" for k, (w, _) in sorted((warm_start or {}).items()))))
    checkpoints = Checkpoints(checkpoint_dir)
    first_epoch = 0
    if (restored := checkpoints.load(fingerprint)) is not None:
        first_epoch, arrays = restored
        u, v, d = arrays["u"], arrays["v"], arrays["d"]
    model = JoseModel(u, v, d, config, strategy)
    del u, v, d  # the variables hold them now
    sampler = TupleSampler(corpus, config)
    total_tokens = config.epochs * corpus.train_words
    losses = []
    for epoch in range(first_epoch, config.epochs):
        epoch_loss = 0.0
        for block in prefetch(sampler.blocks(epoch)):
            epoch_loss += model.train_block(block)
            if progress is not None:
                progress(block.tokens_done, total_tokens)
        losses.append(epoch_loss)
        checkpoints.save(epoch + 1, fingerprint, config, *model.vectors(), (epoch + 1) * corpus.train_words)
    u, v, d = model.vectors()
    return TrainResult(
        u=u, v=v, d=d, epochs_run=config.epochs - first_epoch, resumed_from_epoch=first_epoch,
        warm_started_words=warm_words, tokens_trained=(config.epochs - first_epoch) * corpus.train_words,
        seconds=time.perf_counter() - t0, losses=losses,
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
             config: JoseConfig, angles_png: str | os.PathLike | None) -> dict[str, Any]:
    """Neighbours of the probe words, angle statistics (+ PNG), doc-vector vs TF-IDF accuracy."""
    from kexue.embed.evaluate import angle_statistics, document_classification, nearest_neighbours, plot_angle_histogram

    metrics: dict[str, Any] = {"neighbours": nearest_neighbours(u, words, config.probe_words)}
    stats, angles = angle_statistics(u, seed=config.seed)
    metrics["angles"] = stats
    if angles_png is not None:
        plot_angle_histogram(angles, u.shape[1], angles_png)
    rows = _label_rows(corpus, config.label_source)
    labels = [corpus.labels[i] for i in rows]
    if len(set(labels)) >= 2:
        ids = [corpus.doc_ids[i] for i in rows]
        texts = _doc_texts(tokens_paths, set(ids))
        metrics.update(document_classification(d[rows], [texts[i] for i in ids], labels, seed=config.seed))
    return metrics


def train_jose_stage(tokens_paths: list[str], vocab_path: str, out_dir: str, params: dict[str, Any] | None,
                     checkpoint_dir: str, warm_start_dir: str | None = None,
                     progress: Callable[[int, int], None] | None = None, evaluate_vectors: bool = True) -> dict[str, Any]:
    """The ``jose`` stage: train on the tokenise/count artifacts, write vectors, evaluate.

    Reads tokens partitions (doc_id, source, label, tokens) and the vocabulary Parquet
    (token, count, rank, ...); ``params`` are ``JoseConfig`` fields (unknown or invalid keys
    raise ``ValueError`` naming the key). Resumes from ``checkpoint_dir`` if it holds a
    checkpoint of the same config and corpus; ``warm_start_dir`` is a previous stage
    ``out_dir`` whose vectors seed words/documents it knows. Writes into ``out_dir``:
    words.txt / contexts.txt / docs.txt (word2vec text: u, v, d), u.npy, v.npy, d.npy,
    vocab.parquet (token, count; row order of u/v), docs.parquet (doc_id, source, label;
    row order of d) and angles.png. Returns {"files": {name: path}, "metrics": {...}}.
    ``evaluate_vectors=False`` skips the evaluation (and angles.png): the benchmark times
    training alone and evaluates both implementations the same way afterwards.
    """
    from kexue.embed.word2vec import write_word2vec

    config = JoseConfig.from_params(params)
    corpus = load_corpus(tokens_paths, vocab_path, config.min_count)
    warm = _read_warm_start(warm_start_dir) if warm_start_dir else None
    result = train_jose(corpus, config, checkpoint_dir, warm_start=warm, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "words": write_word2vec(out / "words.txt", corpus.words, result.u),
        "contexts": write_word2vec(out / "contexts.txt", corpus.words, result.v),
        "docs": write_word2vec(out / "docs.txt", corpus.doc_ids, result.d),
        "u": save_npy_atomic(out / "u.npy", result.u),
        "v": save_npy_atomic(out / "v.npy", result.v),
        "d": save_npy_atomic(out / "d.npy", result.d),
        "vocab": write_parquet_atomic(out / "vocab.parquet", pd.DataFrame({"token": corpus.words, "count": corpus.counts})),
        "doc_order": write_parquet_atomic(out / "docs.parquet", pd.DataFrame(
            {"doc_id": corpus.doc_ids, "source": corpus.sources, "label": corpus.labels})),
    }
    metrics: dict[str, Any] = {}
    if evaluate_vectors:
        metrics = evaluate(result.u, corpus.words, result.d, corpus, tokens_paths, config, out / "angles.png")
        files["angles"] = out / "angles.png"
    metrics.update({
        "vocab_size": len(corpus.words), "documents": len(corpus.doc_ids), "corpus_tokens": corpus.train_words,
        "tokens_trained": result.tokens_trained, "epochs": config.epochs, "epochs_run": result.epochs_run,
        "resumed_from_epoch": result.resumed_from_epoch, "warm_started_words": result.warm_started_words,
        "seconds": round(result.seconds, 3),
        "tokens_per_second": round(result.tokens_trained / result.seconds, 1) if result.seconds > 0 else None,
        "epoch_losses": [round(x, 3) for x in result.losses],
    })
    return {"files": {k: str(v) for k, v in files.items()}, "metrics": metrics}
