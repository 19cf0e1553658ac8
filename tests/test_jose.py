"""JoSE: the Riemannian update, jose.c's loop transcribed, isotropy, params, resume, warm start,
progress, word2vec files and a planted-topic corpus. Small dims and corpora; TF single-threaded."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kexue.embed.evaluate import angle_statistics, theoretical_angle_moments
from kexue.embed.jose import (
    Block, EpochProgress, JoseModel, JoseParams, TupleSampler, hinge_coefficients, load_corpus, random_unit_rows,
    train_jose, train_jose_stage, warm_start_rows,
)
from kexue.embed.word2vec import read_word2vec, write_word2vec

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

SMALL = {"dim": 16, "window": 3, "negative": 2, "min_count": 1, "sample": 0.0, "threads": 1,
         "batch_size": 32, "steps_per_block": 16, "seed": 3, "probe_words": ["w0_0"], "label_source": "synthetic"}


def write_corpus(tmp_path, docs: list[list[str]], labels: list[str | None] | None = None):
    """Tokens + vocabulary Parquet for the given token lists (one document each)."""
    labels = labels or [None] * len(docs)
    df = pd.DataFrame({"doc_id": [f"doc-{i}" for i in range(len(docs))], "source": "synthetic",
                       "label": labels, "tokens": docs})
    tokens_path = tmp_path / "tokens.parquet"
    df.to_parquet(tokens_path, index=False)
    counts = pd.Series([w for toks in docs for w in toks]).value_counts()
    vocab = pd.DataFrame({"token": counts.index, "count": counts.to_numpy(), "doc_freq": 1, "rank": np.arange(len(counts)),
                          "is_stopword": False, "is_punct": False})
    vocab_path = tmp_path / "vocab.parquet"
    vocab.to_parquet(vocab_path, index=False)
    return [str(tokens_path)], str(vocab_path), df


def planted_topic_corpus(tmp_path, topics=4, words_per_topic=25, docs_per_topic=30, length=50, seed=0, extra_word=None):
    """Each document draws its words from its own topic; ids are doc-<topic>-<j>."""
    rng = np.random.default_rng(seed)
    docs, labels, ids = [], [], []
    for t in range(topics):
        for j in range(docs_per_topic):
            docs.append([f"w{t}_{i}" for i in rng.integers(0, words_per_topic, length)])
            labels.append(f"topic{t}")
            ids.append(f"doc-{t}-{j}")
    if extra_word:
        docs.append([extra_word] * 5)
        labels.append(None)
        ids.append("doc-extra")
    tokens_paths, vocab_path, df = write_corpus(tmp_path, docs, labels)
    df["doc_id"] = ids
    df.to_parquet(tokens_paths[0], index=False)
    return tokens_paths, vocab_path, df


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def model_of(u, v, d, params):
    return JoseModel(np.concatenate([u, v, d]), u.shape[0], params)


def deltas(rows, alpha=0.05, margin=0.15, correction="reference"):
    """Δx = C x from ``hinge_coefficients`` for unit rows [B, 2+K, D] (0: u, 1: anchor, 2…: u′)."""
    x = tf.constant(rows, tf.float32)
    f = tf.reduce_sum(x[:, 0] * x[:, 1], -1)
    h = tf.reduce_sum(x[:, 2:] * x[:, 1:2], -1)
    c, loss = hinge_coefficients(f, h, tf.ones_like(h, tf.bool), alpha, margin, correction)
    return tf.einsum("bij,bjd->bid", c, x).numpy(), loss.numpy()


# ------------------------------------------------------------------ the Riemannian update
def test_tangent_deltas_are_orthogonal_and_rows_stay_unit_norm():
    rng = np.random.default_rng(0)
    b, k, dim = 64, 3, 12
    rows = unit(rng.standard_normal((b, 2 + k, dim)))
    delta, loss = deltas(rows)
    assert np.abs(delta).max() > 1e-3  # the hinge is active: non-trivial deltas
    np.testing.assert_allclose(np.sum(delta * rows, -1), 0, atol=1e-6)  # each Δx_i ⟂ x_i
    assert loss.min() >= 0

    # Several compiled blocks on a tiny vocabulary: word rows are unit after each, all rows after renormalise.
    params = JoseParams(dim=dim, batch_size=32, steps_per_block=4, negative=2)
    model = model_of(random_unit_rows(rng, 20, dim), random_unit_rows(rng, 20, dim), random_unit_rows(rng, 5, dim), params)
    before = model.table.numpy().copy()
    for _ in range(3):
        s, bsz = params.steps_per_block, params.batch_size
        tuples = np.concatenate([rng.integers(0, 20, (s, bsz, 1)), rng.integers(20, 45, (s, bsz, 1)),
                                 rng.integers(0, 20, (s, bsz, 2))], axis=2).astype(np.int32)
        tuples[-1, -7:] = -1  # padding
        model.train_block(Block(rows=tuples, alpha=np.full(s, 0.04, np.float32), tuples=s * bsz - 7, tokens_done=0))
        np.testing.assert_allclose(np.linalg.norm(model.table.numpy()[:40], axis=1), 1.0, atol=1e-5)
    model.renormalise()
    np.testing.assert_allclose(np.linalg.norm(model.table.numpy(), axis=1), 1.0, atol=1e-5)
    assert np.abs(model.table.numpy() - before).max() > 1e-3


def test_correction_options_differ_only_for_the_negative():
    """reference: Δu′ = α·2h·(h u′ − a), which pulls u′ toward a when h < 0; paper: α(1 + h), always away."""
    rng = np.random.default_rng(2)
    dim = 10
    a = unit(rng.standard_normal(dim))
    u = unit(a + 0.2 * rng.standard_normal(dim))  # f = cos(u, a) large
    neg = unit(-a + 0.9 * rng.standard_normal(dim))  # h = cos(u′, a) < 0
    rows = np.stack([u, a, neg])[None]
    h = float(neg @ a)
    assert h < 0 and float(u @ a) - h < 1.5
    ref, loss_ref = deltas(rows, margin=1.5, correction="reference")
    paper, loss_paper = deltas(rows, margin=1.5, correction="paper")
    assert float(ref[0, 2] @ a) > 0 > float(paper[0, 2] @ a)
    np.testing.assert_allclose(ref[0, 2], 0.05 * 2 * h * (h * neg - a), atol=1e-6)
    np.testing.assert_allclose(paper[0, 2], 0.05 * (1 + h) * (h * neg - a), atol=1e-6)
    np.testing.assert_allclose(ref[0, :2], paper[0, :2], atol=1e-7)  # u and the anchor: the same rule
    np.testing.assert_allclose(loss_ref, loss_paper)


def reference_hinge(pos, anchor, negatives, word, alpha, margin, correction="reference"):
    """numpy transcription of one jose.c hinge block: rows are updated in place, in the C order.

    ``pos`` and each negative index ``u``; ``anchor`` is (table, row) of v or d; negatives
    equal to the position's ``word`` are skipped, as in the C loop.
    """
    u, (table, a) = pos[0], anchor
    for n in negatives:
        if n == word:
            continue
        f = u[pos[1]] @ table[a]
        h = u[n] @ table[a]
        if f - h >= margin:
            continue
        neu1e = u[pos[1]] - f * table[a] + h * table[a] - u[n]
        u[pos[1]] += alpha * (1 - f) * (table[a] - f * u[pos[1]])
        u[pos[1]] /= np.sqrt(u[pos[1]] @ u[pos[1]])
        g = 2 * h if correction == "reference" else 1 + h
        u[n] += alpha * g * (h * u[n] - table[a])
        u[n] /= np.sqrt(u[n] @ u[n])
        table[a] += alpha * (1 - (f - h)) * neu1e
        table[a] /= np.sqrt(table[a] @ table[a])


def test_single_tuple_update_matches_reference_transcription():
    rng = np.random.default_rng(1)
    dim, alpha, margin = 10, 0.04, 1.9  # a margin every pair violates: all three rows move
    params = JoseParams(dim=dim, negative=1, margin=margin, batch_size=1, steps_per_block=1)
    u0, v0, d0 = random_unit_rows(rng, 5, dim), random_unit_rows(rng, 5, dim), random_unit_rows(rng, 2, dim)

    def one_tuple(anchor_row):
        return Block(rows=np.array([[[1, anchor_row, 3]]], np.int32), alpha=np.array([alpha], np.float32), tuples=1, tokens_done=0)

    for anchor_row, (table, a) in ((5 + 2, ("v", 2)), (10 + 0, ("d", 0))):  # v[2] (word 2), then d[0] (word: u row 1)
        model = model_of(u0, v0, d0, params)
        model.train_block(one_tuple(anchor_row))
        model.renormalise()
        want = {"u": u0.astype(np.float64), "v": v0.astype(np.float64), "d": d0.astype(np.float64)}
        reference_hinge((want["u"], 1), (want[table], a), [3], word=2 if table == "v" else 1, alpha=alpha, margin=margin)
        got = dict(model.table_parts())
        for name in "uvd":
            np.testing.assert_allclose(got[name], want[name], atol=2e-6)
        start = {"v": v0, "d": d0}[table]
        assert np.abs(got["u"][1] - u0[1]).max() > 1e-3 and np.abs(got[table][a] - start[a]).max() > 1e-3


@pytest.mark.parametrize("negatives", ["together", "sequential"])
def test_positions_of_short_documents_match_the_jose_c_loop(tmp_path, negatives):
    """Several positions, K = 2, subsampling off, batch 1: each tuple is one step, as in the C loop.

    The transcription walks the positions as jose.c does — each in-document neighbour q of p
    (window 1: always q = p ± 1) with (u[q], v[p]), then (u[p], d) — and takes only the
    random draws (negatives, learning rate) from the sampler. jose.c applies a tuple's two
    negatives one after the other; the default applies them together, O(α²) away, and so
    does ``sequential`` where a negative is the tuple's own positive (its two updates are
    summed, not chained; frequent in a vocabulary this small): so α is small and the
    *changes* of the vectors are compared. Exactness is tested on one tuple below.
    """
    docs = [["a", "b", "c", "a", "d"], ["c", "b"], ["d"]]
    tokens_paths, vocab_path, _ = write_corpus(tmp_path, docs)
    params = JoseParams(dim=8, window=1, negative=2, sample=0.0, min_count=1, alpha=0.002, epochs=1,
                        batch_size=1, steps_per_block=64, seed=5, negatives=negatives)
    corpus = load_corpus(tokens_paths, vocab_path, params.min_count)
    n_words = len(corpus.words)
    rng = np.random.default_rng(0)
    u0, v0, d0 = random_unit_rows(rng, n_words, 8), random_unit_rows(rng, n_words, 8), random_unit_rows(rng, 3, 8)
    model = model_of(u0, v0, d0, params)
    draws = []
    for block in TupleSampler(corpus, params).blocks(0):
        model.train_block(block)
        draws += [(rows, alpha) for rows, alpha in zip(block.rows[:, 0], block.alpha) if rows[1] >= 0]
    model.renormalise()

    want = {"u": u0.astype(np.float64), "v": v0.astype(np.float64), "d": d0.astype(np.float64)}
    ids, doc_of = corpus.ids, corpus.doc_rows()
    queue = iter(draws)
    for p in range(len(ids)):
        word = ids[p]
        terms = [(ids[q], "v", word) for q in (p - 1, p + 1) if 0 <= q < len(ids) and doc_of[q] == doc_of[p]]
        for positive, table, anchor in [*terms, (word, "d", doc_of[p])]:
            rows, alpha = next(queue)
            offset = n_words if table == "v" else 2 * n_words
            assert (rows[0], rows[1]) == (positive, offset + anchor)  # the tuple jose.c would make here
            reference_hinge((want["u"], positive), (want[table], anchor), rows[2:], word, float(alpha), params.margin)
    assert next(queue, None) is None
    got = dict(model.table_parts())
    for name, start in (("u", u0), ("v", v0), ("d", d0)):
        change = want[name] - start
        assert np.abs(change).max() > 1e-3
        np.testing.assert_allclose(got[name] - start, change, atol=3e-5)


def test_sequential_negatives_follow_the_c_loop_and_together_does_not():
    """One tuple, K = 2 distinct negatives, a large α and a margin every pair violates: jose.c
    evaluates the second negative's hinge on the u and anchor the first one moved.
    ``negatives="sequential"`` gives its rows to rounding; ``together`` (one read, summed
    updates) is O(α²) away, visibly at this α."""
    rng = np.random.default_rng(4)
    dim, alpha, margin = 10, 0.2, 1.9
    u0, v0, d0 = random_unit_rows(rng, 6, dim), random_unit_rows(rng, 6, dim), random_unit_rows(rng, 2, dim)
    block = Block(rows=np.array([[[1, 6 + 2, 3, 4]]], np.int32), alpha=np.array([alpha], np.float32), tuples=1, tokens_done=0)
    want = {"u": u0.astype(np.float64), "v": v0.astype(np.float64), "d": d0.astype(np.float64)}
    reference_hinge((want["u"], 1), (want["v"], 2), [3, 4], word=2, alpha=alpha, margin=margin)
    error = {}
    for negatives in ("sequential", "together"):
        model = model_of(u0, v0, d0, JoseParams(dim=dim, negative=2, margin=margin, batch_size=1, steps_per_block=1,
                                                negatives=negatives))
        model.train_block(block)
        model.renormalise()
        got = dict(model.table_parts())
        error[negatives] = max(np.abs(got[name] - want[name]).max() for name in "uvd")
    assert error["sequential"] < 2e-6 and error["together"] > 1e-3, error


def test_one_token_document_vector_moves(tmp_path):
    docs = [[f"w{i}" for i in range(20)], ["w3"], ["w5", "w7"]]
    tokens_paths, vocab_path, _ = write_corpus(tmp_path, docs)
    params = JoseParams(dim=8, window=2, sample=0.0, min_count=1, epochs=1, batch_size=4, steps_per_block=4, margin=1.0)
    corpus = load_corpus(tokens_paths, vocab_path, params.min_count)
    rng = np.random.default_rng(0)
    d0 = random_unit_rows(rng, 3, 8)
    model = model_of(random_unit_rows(rng, 20, 8), random_unit_rows(rng, 20, 8), d0, params)
    for block in TupleSampler(corpus, params).blocks(0):
        model.train_block(block)
    model.renormalise()
    d = dict(model.table_parts())["d"]
    assert np.abs(d[1] - d0[1]).max() > 1e-3  # the document ["w3"]: no neighbour, one word–document term


# ------------------------------------------------------------------ isotropy
def test_fresh_vectors_match_random_direction_theory():
    dim = 50
    theory_mean, theory_var = theoretical_angle_moments(dim)
    assert theory_mean == pytest.approx(np.pi / 2, abs=1e-6)
    assert theory_var == pytest.approx(1 / (dim - 2), rel=0.05)
    fresh = random_unit_rows(np.random.default_rng(0), 5000, dim)
    stats, angles = angle_statistics(fresh, pairs=50_000)
    assert stats["angle_mean"] == pytest.approx(theory_mean, abs=0.005)
    assert stats["angle_var"] == pytest.approx(theory_var, rel=0.05)
    assert abs(stats["mean_cosine"]) < 0.005
    # the same check detects an anisotropic set (all vectors near one direction)
    skewed, _ = angle_statistics(unit(fresh + 0.3), pairs=50_000)
    assert abs(skewed["angle_mean"] - theory_mean) > 0.05


# ------------------------------------------------------------------ sampling
def test_corpus_is_read_alike_from_dictionary_encoded_and_plain_parquet(tmp_path):
    """The corpus is the one a per-token lookup gives, from either Parquet encoding, across
    files, row groups and batches, with out-of-vocabulary, white-space, null and missing
    tokens dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)] + ["a b", "rare"]
    docs = [[words[j] for j in rng.integers(0, len(words), rng.integers(0, 30))] for _ in range(9000)]
    docs[3], docs[5] = None, ["w1", None, "w2"]
    counts = pd.Series([w for d in docs if d for w in d if w is not None]).value_counts()
    counts["rare"] = 1  # below min_count
    vocab = pd.DataFrame({"token": counts.index, "count": counts.to_numpy(), "rank": np.arange(len(counts))})
    vocab.to_parquet(tmp_path / "vocab.parquet", index=False)
    table = pa.table({"doc_id": [f"d{i}" for i in range(len(docs))], "source": ["s"] * len(docs),
                      "label": [None] * len(docs), "tokens": pa.array(docs, pa.list_(pa.string()))})
    halves = table.slice(0, 4000), table.slice(4000)
    pq.write_table(halves[0], tmp_path / "dict.parquet", use_dictionary=True, row_group_size=1500)
    pq.write_table(halves[1], tmp_path / "plain.parquet", use_dictionary=False)
    assert "RLE_DICTIONARY" in pq.ParquetFile(tmp_path / "dict.parquet").metadata.row_group(0).column(3).encodings

    corpus = load_corpus([str(tmp_path / "dict.parquet"), str(tmp_path / "plain.parquet")], str(tmp_path / "vocab.parquet"), 2)
    kept = [w for w in vocab.sort_values("rank")["token"] if counts[w] >= 2 and " " not in w]
    row = {w: i for i, w in enumerate(kept)}
    assert corpus.words == kept and corpus.counts.tolist() == [counts[w] for w in kept]
    want = [(row[w], i) for i, d in enumerate(docs) for w in (d or []) if w in row]
    assert corpus.ids.tolist() == [r for r, _ in want] and corpus.doc_rows().tolist() == [i for _, i in want]
    assert corpus.doc_ids == [f"d{i}" for i in range(len(docs))] and corpus.labels == [None] * len(docs)


def test_tuples_stay_inside_documents_and_windows(tmp_path):
    tokens_paths, vocab_path, df = planted_topic_corpus(tmp_path, topics=2, docs_per_topic=5, length=20)
    params = JoseParams.model_validate({**SMALL, "epochs": 1})
    corpus = load_corpus(tokens_paths, vocab_path, params.min_count)
    assert corpus.train_words == sum(map(len, df["tokens"]))
    sampler = TupleSampler(corpus, params)
    rows, raw = next(sampler.tuples(0))
    topic_of_word = np.array([int(w[1]) for w in corpus.words])
    topic_of_doc = np.array([int(i.split("-")[1]) for i in corpus.doc_ids])
    positive, anchor = rows[:, 0], rows[:, 1]
    is_doc = anchor >= sampler.d_offset
    word_anchor = anchor[~is_doc] - sampler.v_offset
    assert (topic_of_word[positive[~is_doc]] == topic_of_word[word_anchor]).all()
    assert (topic_of_word[positive[is_doc]] == topic_of_doc[anchor[is_doc] - sampler.d_offset]).all()
    # one word–document tuple per position, after that position's word–word tuples, its word as the positive
    assert is_doc.sum() == corpus.train_words and np.unique(raw[is_doc]).shape[0] == corpus.train_words
    np.testing.assert_array_equal(positive[is_doc], corpus.ids[raw[is_doc]])
    np.testing.assert_array_equal(word_anchor, corpus.ids[raw[~is_doc]])
    assert (np.diff(raw) >= 0).all()
    assert is_doc[pd.Series(np.arange(len(raw))).groupby(raw).max().to_numpy()].all()
    per_position = pd.Series(~is_doc).groupby(raw).sum()
    assert per_position.max() <= 2 * params.window and rows.shape[1] == 2 + params.negative


@pytest.mark.parametrize("line_end", [True, False])
def test_negatives_follow_the_reference_table_with_its_line_end_token(tmp_path, line_end):
    """jose.c's unigram^0.75 table holds ``</s>`` with one count per line (document), and a
    draw of it becomes a uniform word: with 400 one-token documents that is a large share."""
    docs = [["a"]] * 300 + [[f"r{i}"] for i in range(10)] * 10
    tokens_paths, vocab_path, _ = write_corpus(tmp_path, docs)
    params = JoseParams(dim=4, min_count=1, sample=0.0, line_end_negatives=line_end)
    corpus = load_corpus(tokens_paths, vocab_path, params.min_count)
    sampler = TupleSampler(corpus, params)
    drawn = np.concatenate([rows[:, 2:].ravel() for epoch in range(25) for rows, _ in sampler.tuples(epoch)])
    weight = corpus.counts ** 0.75
    line_end_weight = len(docs) ** 0.75 if line_end else 0.0
    expected = (weight + line_end_weight / len(weight)) / (weight.sum() + line_end_weight)
    observed = np.bincount(drawn, minlength=len(weight)) / drawn.shape[0]
    np.testing.assert_allclose(observed, expected, atol=0.015)  # 20,000 draws: 3.5 standard errors


def test_blocks_spread_consecutive_tuples_over_steps(tmp_path):
    tokens_paths, vocab_path, _ = planted_topic_corpus(tmp_path, topics=1, docs_per_topic=3, length=20)
    params = JoseParams.model_validate({**SMALL, "epochs": 2, "batch_size": 8, "steps_per_block": 4})
    corpus = load_corpus(tokens_paths, vocab_path, params.min_count)
    sampler = TupleSampler(corpus, params)
    flat = np.concatenate([rows for rows, _ in sampler.tuples(0)])
    blocks = list(sampler.blocks(0))
    assert blocks[0].rows.shape == (4, 8, 4) and sum(b.tuples for b in blocks) == flat.shape[0]
    # step s holds tuple s of each run of 4 consecutive tuples
    np.testing.assert_array_equal(blocks[0].rows[:, 1], flat[4:8])
    np.testing.assert_array_equal(blocks[0].rows[2, :], flat[2:32:4])
    assert (blocks[-1].rows[..., 1] < 0).sum() == 32 - blocks[-1].tuples  # padding
    assert blocks[-1].tokens_done == corpus.train_words
    alphas = np.concatenate([b.alpha for b in blocks])
    assert alphas[0] < params.alpha and (np.diff(alphas) <= 0).all() and alphas[-1] > params.alpha / 2 - 1e-3


# ------------------------------------------------------------------ params
def test_params_are_validated_by_name():
    with pytest.raises(ValueError, match="window"):
        JoseParams.of({"window": 0})
    with pytest.raises(ValueError, match="wndow"):
        JoseParams.of({"wndow": 5})
    with pytest.raises(ValueError, match="strategy"):
        JoseParams.of({"strategy": "tpu"})
    with pytest.raises(ValueError, match="correction"):
        JoseParams.of({"correction": "papr"})
    with pytest.raises(ValueError, match="probe_words"):
        JoseParams.of({"probe_words": "中国"})
    with pytest.raises(ValueError, match="warm_start"):
        JoseParams.of({"warm_start": "yes"})
    params = JoseParams.of({"probe_words": ["a"], "warm_start": True})
    assert params.probe_words == ("a",) and JoseParams.of(params) is params
    assert JoseParams.of(None) == JoseParams()
    # evaluation settings and threads do not invalidate a checkpoint; the correction does
    assert params.training_fingerprint() == JoseParams(threads=1).training_fingerprint()
    assert JoseParams(correction="paper").training_fingerprint() != JoseParams().training_fingerprint()


# ------------------------------------------------------------------ checkpoints, resume, warm start, progress
class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_after_interrupted_epoch_equals_the_uninterrupted_run(tmp_path):
    tokens_paths, vocab_path, _ = planted_topic_corpus(tmp_path, topics=2, docs_per_topic=10)
    params = JoseParams.model_validate({**SMALL, "epochs": 3})
    corpus = load_corpus(tokens_paths, vocab_path, params.min_count)
    reports: list[EpochProgress] = []
    full = train_jose(corpus, params, tmp_path / "ck-full", progress=reports.append)
    assert [r.epoch for r in reports] == [1, 2, 3] and all(r.epochs == 3 for r in reports)
    assert all(r.tokens_per_second > 0 and r.loss > 0 and r.seconds > 0 for r in reports)
    assert reports[-1].eta_seconds == 0 < reports[0].eta_seconds

    def kill_in_second_epoch(report: EpochProgress) -> None:
        if report.epoch == 2:  # epoch 2 is trained but not yet checkpointed: its work is lost
            raise Interrupt

    with pytest.raises(Interrupt):
        train_jose(corpus, params, tmp_path / "ck", progress=kill_in_second_epoch)
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["epoch"] == 1
    resumed = train_jose(corpus, params.model_copy(update={"threads": 2}), tmp_path / "ck")
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 2
    for a, b in ((full.u, resumed.u), (full.v, resumed.v), (full.d, resumed.d)):
        np.testing.assert_array_equal(a, b)  # bit for bit, the background sampler included
    # a checkpoint of another configuration is not resumed
    other = train_jose(corpus, params.model_copy(update={"correction": "paper"}), tmp_path / "ck")
    assert other.resumed_from_epoch == 0
    assert np.abs(other.u - full.u).max() > 1e-3


def test_one_sampling_thread_serves_every_epoch(tmp_path, monkeypatch):
    """A new prefetch thread per epoch got a new glibc arena that kept what it freed: the
    resident set grew ~40 MB per epoch on the default corpus (1.36 GB after 8 epochs, 1.11 GB
    with one thread for the run)."""
    import kexue.embed.jose as jose

    tokens_paths, vocab_path, _ = planted_topic_corpus(tmp_path, topics=2, docs_per_topic=6)
    corpus = load_corpus(tokens_paths, vocab_path, 1)
    threads: list[int] = []
    real = jose.prefetch

    def counted(iterator, depth=2):
        threads.append(1)
        return real(iterator, depth)

    monkeypatch.setattr(jose, "prefetch", counted)
    result = train_jose(corpus, JoseParams.model_validate({**SMALL, "epochs": 3, "threads": 2}), tmp_path / "ck")
    assert result.epochs_run == 3 and len(result.losses) == 3
    assert len(threads) == 1


def test_each_epoch_report_becomes_one_progress_line():
    import logging

    from tasks.jose import report_epoch

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.records: list[logging.LogRecord] = []

        def emit(self, record):
            self.records.append(record)

    keep, logger = Keep(), logging.getLogger("kexue.progress")  # outside a flow run: tasks.progress logs here
    level = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        report_epoch(EpochProgress(epoch=2, epochs=5, tokens_per_second=123456.7, loss=0.1234, eta_seconds=42.4, seconds=14.0))
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    (record,) = keep.records
    assert record.getMessage() == "jose: epoch 2/5: 123,457 tokens/s, loss 0.1234, 14 s, ETA 42 s"


def test_warm_start_keeps_known_words_and_initialises_new_ones():
    rng = np.random.default_rng(0)
    previous = random_unit_rows(rng, 3, 4) * 2.0  # rows are normalised on the way in
    fresh = random_unit_rows(rng, 3, 4)
    rows = fresh.copy()
    hits = warm_start_rows(rows, ["b", "new", "a"], ["a", "b", "c"], previous)
    assert hits == 2
    np.testing.assert_allclose(rows[0], previous[1] / 2, rtol=1e-6)
    np.testing.assert_allclose(rows[2], previous[0] / 2, rtol=1e-6)
    np.testing.assert_allclose(rows[1], fresh[1])
    with pytest.raises(ValueError, match="dim 4"):
        warm_start_rows(np.zeros((3, 5), np.float32), ["a"] * 3, ["a", "b", "c"], previous)


# ------------------------------------------------------------------ word2vec files
def test_word2vec_round_trip_and_gensim(tmp_path):
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(0)
    words = ["中国", "经济", "a_b", "x"]
    vectors = rng.standard_normal((4, 7)).astype(np.float32)
    path = write_word2vec(tmp_path / "w.txt", words, vectors)
    keys, back = read_word2vec(path)
    assert keys == words
    np.testing.assert_allclose(back, vectors, atol=1e-6)
    kv = KeyedVectors.load_word2vec_format(str(path), binary=False)
    assert kv.index_to_key == words
    np.testing.assert_allclose(kv["经济"], vectors[1], atol=1e-6)
    with pytest.raises(ValueError, match="whitespace"):
        write_word2vec(tmp_path / "bad.txt", ["a b"], vectors[:1])


# ------------------------------------------------------------------ the stage on planted topics
def test_stage_on_planted_topics_separates_documents_and_warm_starts(tmp_path):
    tokens_paths, vocab_path, df = planted_topic_corpus(tmp_path)
    params = JoseParams.model_validate({**SMALL, "epochs": 4, "alpha": 0.04})
    result = train_jose_stage(tokens_paths, vocab_path, str(tmp_path / "out"), params, str(tmp_path / "ck"))
    files, metrics = result["files"], result["metrics"]
    for name in ("words", "contexts", "docs", "u", "v", "d", "vocab", "doc_order", "angles"):
        assert (tmp_path / "out").joinpath(files[name].split("/")[-1]).exists(), name
    doc_ids, d = read_word2vec(files["docs"])
    assert doc_ids == df["doc_id"].tolist()
    topic = np.array([i.split("-")[1] for i in doc_ids])
    cos = unit(d) @ unit(d).T
    same = cos[(topic[:, None] == topic[None, :]) & ~np.eye(len(topic), dtype=bool)].mean()
    different = cos[topic[:, None] != topic[None, :]].mean()
    assert same > different + 0.3, (same, different)
    assert metrics["doc_accuracy"] > 0.9
    assert metrics["neighbours"]["w0_0"][0][0].startswith("w0_")
    assert metrics["tokens_trained"] == 4 * sum(map(len, df["tokens"]))
    assert metrics["angles"]["theory_angle_mean"] == pytest.approx(np.pi / 2, abs=1e-6)

    # warm start from that output on a corpus with one new word (params as a plain mapping)
    (tmp_path / "b").mkdir()
    tokens_b, vocab_b, _ = planted_topic_corpus(tmp_path / "b", extra_word="newword")
    warm = train_jose_stage(tokens_b, vocab_b, str(tmp_path / "out-b"), {**SMALL, "epochs": 1}, str(tmp_path / "ck-b"),
                            warm_start_dir=str(tmp_path / "out"), evaluate_vectors=False)
    assert warm["metrics"]["warm_started_words"] == len(pd.read_parquet(vocab_path))
    assert warm["metrics"]["vocab_size"] == len(pd.read_parquet(vocab_path)) + 1


def test_sampler_finds_each_tokens_document_from_the_lengths(tmp_path):
    """Documents with no in-vocabulary token (empty, or only rare words) hold no positions;
    every chunk's tokens still get their own document's row."""
    docs = [["a", "b", "a"], [], ["rare"], ["b"], ["a", "a", "b", "b"], [], ["b", "a"]]
    tokens_paths, vocab_path, _ = write_corpus(tmp_path, docs)
    corpus = load_corpus(tokens_paths, vocab_path, 2)
    assert corpus.doc_lengths.tolist() == [3, 0, 0, 1, 4, 0, 2]
    sampler = TupleSampler(corpus, JoseParams.model_validate({**SMALL, "min_count": 2}), chunk_tokens=2)
    bounds = list(sampler._chunk_bounds())
    assert len(bounds) > 2 and bounds[-1][1] == corpus.train_words
    got = np.concatenate([sampler._documents(start, end) for start, end in bounds])
    np.testing.assert_array_equal(got, [0, 0, 0, 3, 4, 4, 4, 4, 6, 6])
    np.testing.assert_array_equal(got, corpus.doc_rows())
