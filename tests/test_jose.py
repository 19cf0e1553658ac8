"""JoSE: the Riemannian update, the reference's per-pair update, isotropy, resume, warm start,
word2vec files and a planted-topic corpus. Small dims and corpora; TF single-threaded."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kexue.embed.evaluate import angle_statistics, theoretical_angle_moments
from kexue.embed.jose import (
    Block, JoseConfig, JoseModel, TupleSampler, load_corpus, random_unit_rows, spherical_hinge_step,
    train_jose, train_jose_stage, warm_start_rows,
)
from kexue.embed.word2vec import read_word2vec, write_word2vec

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

SMALL = {"dim": 16, "window": 3, "negative": 2, "min_count": 1, "sample": 0.0, "threads": 1,
         "batch_size": 256, "steps_per_block": 8, "seed": 3, "probe_words": ["w0_0"], "label_source": "synthetic"}


def planted_topic_corpus(tmp_path, topics=4, words_per_topic=25, docs_per_topic=30, length=50, seed=0, extra_word=None):
    """Tokens + vocabulary Parquet: each document draws its words from its own topic."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(topics):
        for j in range(docs_per_topic):
            tokens = [f"w{t}_{i}" for i in rng.integers(0, words_per_topic, length)]
            rows.append((f"doc-{t}-{j}", "synthetic", f"topic{t}", tokens))
    if extra_word:
        rows.append(("doc-extra", "synthetic", None, [extra_word] * 5))
    df = pd.DataFrame(rows, columns=["doc_id", "source", "label", "tokens"])
    tokens_path = tmp_path / "tokens.parquet"
    df.to_parquet(tokens_path, index=False)
    counts = pd.Series([w for toks in df["tokens"] for w in toks]).value_counts()
    vocab = pd.DataFrame({"token": counts.index, "count": counts.to_numpy(), "doc_freq": 1, "rank": np.arange(len(counts)),
                          "is_stopword": False, "is_punct": False})
    vocab_path = tmp_path / "vocab.parquet"
    vocab.to_parquet(vocab_path, index=False)
    return [str(tokens_path)], str(vocab_path), df


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------ the Riemannian update
def test_tangent_deltas_are_orthogonal_and_rows_stay_unit_norm():
    rng = np.random.default_rng(0)
    b, k, dim = 64, 3, 12
    anchor, positive = unit(rng.standard_normal((b, dim))), unit(rng.standard_normal((b, dim)))
    negatives = unit(rng.standard_normal((b, k, dim)))
    d_pos, d_neg, d_anchor, loss = spherical_hinge_step(
        tf.constant(anchor, tf.float32), tf.constant(positive, tf.float32), tf.constant(negatives, tf.float32),
        tf.ones((b, k)), tf.fill((b,), 0.05), 0.15)
    assert float(tf.reduce_max(tf.abs(d_pos))) > 1e-3  # the hinge is active: non-trivial deltas
    np.testing.assert_allclose(np.sum(d_pos.numpy() * positive, -1), 0, atol=1e-6)
    np.testing.assert_allclose(np.sum(d_neg.numpy() * negatives, -1), 0, atol=1e-6)
    np.testing.assert_allclose(np.sum(d_anchor.numpy() * anchor, -1), 0, atol=1e-6)
    assert float(tf.reduce_min(loss)) >= 0

    # Several compiled blocks on a tiny vocabulary: every row of u, v, d is unit length after each.
    config = JoseConfig(dim=dim, batch_size=32, steps_per_block=4, negative=2, threads=1)
    model = JoseModel(random_unit_rows(rng, 20, dim), random_unit_rows(rng, 20, dim), random_unit_rows(rng, 5, dim), config)
    before = model.u.numpy().copy()
    for _ in range(3):
        s, bsz = config.steps_per_block, config.batch_size
        model.train_block(Block(
            center=rng.integers(0, 20, (s, bsz)).astype(np.int32), context=rng.integers(0, 20, (s, bsz)).astype(np.int32),
            negatives=rng.integers(0, 20, (s, bsz, 2)).astype(np.int32), doc=rng.integers(0, 5, (s, bsz)).astype(np.int32),
            doc_scale=np.full((s, bsz), 0.25, np.float32), alpha=np.full(s, 0.04, np.float32), valid=s * bsz - 7,
            tokens_done=0))
        for table in (model.u, model.v, model.d):
            np.testing.assert_allclose(np.linalg.norm(table.numpy(), axis=1), 1.0, atol=1e-5)
    assert np.abs(model.u.numpy() - before).max() > 1e-3


def reference_update(anchor, positive, negative, alpha, margin):
    """numpy transcription of one jose.c hinge block (one negative): returns new u, u', anchor."""
    f = positive @ anchor
    h = negative @ anchor
    if f - h >= margin:
        return positive, negative, anchor
    neu1e = positive - f * anchor + h * anchor - negative
    positive = positive + alpha * (1 - f) * (anchor - f * positive)
    positive = positive / np.sqrt(positive @ positive)
    negative = negative + alpha * (2 * h) * (h * negative - anchor)
    negative = negative / np.sqrt(negative @ negative)
    anchor = anchor + alpha * (1 - (f - h)) * neu1e
    anchor = anchor / np.sqrt(anchor @ anchor)
    return positive, negative, anchor


def one_tuple_block(doc_scale, alpha):
    return Block(center=np.array([[1]], np.int32), context=np.array([[2]], np.int32),
                 negatives=np.array([[[3]]], np.int32), doc=np.array([[0]], np.int32),
                 doc_scale=np.array([[doc_scale]], np.float32), alpha=np.array([alpha], np.float32), valid=1, tokens_done=0)


def test_single_pair_update_matches_reference_transcription():
    rng = np.random.default_rng(1)
    dim, alpha, margin = 10, 0.04, 0.15
    config = JoseConfig(dim=dim, negative=1, margin=margin, batch_size=1, steps_per_block=1, threads=1)
    u0, v0, d0 = random_unit_rows(rng, 5, dim), random_unit_rows(rng, 5, dim), random_unit_rows(rng, 2, dim)

    # word–word term alone (doc_scale 0): u = u[center], v = v[context], u' = u[negative]
    model = JoseModel(u0, v0, d0, config)
    model.train_block(one_tuple_block(0.0, alpha))
    want_u, want_neg, want_v = reference_update(v0[2].astype(np.float64), u0[1], u0[3], alpha, margin)
    u, v, d = model.vectors()
    np.testing.assert_allclose(u[1], want_u, atol=2e-6)
    np.testing.assert_allclose(u[3], want_neg, atol=2e-6)
    np.testing.assert_allclose(v[2], want_v, atol=2e-6)
    np.testing.assert_allclose(u[[0, 2, 4]], u0[[0, 2, 4]], atol=1e-6)
    assert np.abs(u[1] - u0[1]).max() > 1e-3

    # word–document term alone: make the word–word hinge inactive (v[context] = u[center]).
    v1 = v0.copy()
    v1[2] = u0[1]
    model = JoseModel(u0, v1, d0, config)
    model.train_block(one_tuple_block(1.0, alpha))
    want_u, want_neg, want_d = reference_update(d0[0].astype(np.float64), u0[1], u0[3], alpha, margin)
    u, v, d = model.vectors()
    np.testing.assert_allclose(u[1], want_u, atol=2e-6)
    np.testing.assert_allclose(u[3], want_neg, atol=2e-6)
    np.testing.assert_allclose(d[0], want_d, atol=2e-6)
    np.testing.assert_allclose(v[2], v1[2], atol=1e-6)


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
def test_tuples_stay_inside_documents_and_windows(tmp_path):
    tokens_paths, vocab_path, df = planted_topic_corpus(tmp_path, topics=2, docs_per_topic=5, length=20)
    config = JoseConfig.from_params({**SMALL, "epochs": 1})
    corpus = load_corpus(tokens_paths, vocab_path, config.min_count)
    assert corpus.train_words == sum(map(len, df["tokens"]))
    center, context, doc, scale, negatives, raw = next(TupleSampler(corpus, config).pairs(0))
    topic_of_word = np.array([int(w[1]) for w in corpus.words])
    topic_of_doc = np.array([int(i.split("-")[1]) for i in corpus.doc_ids])
    assert (topic_of_word[center] == topic_of_doc[doc]).all() and (topic_of_word[context] == topic_of_doc[doc]).all()
    # each position's doc weights sum to one
    sums = pd.Series(scale).groupby(raw).sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=1e-5)
    assert negatives.shape == (center.shape[0], config.negative)


def test_params_are_validated_by_name():
    with pytest.raises(ValueError, match="'window'"):
        JoseConfig.from_params({"window": 0})
    with pytest.raises(ValueError, match="wndow"):
        JoseConfig.from_params({"wndow": 5})
    with pytest.raises(ValueError, match="'strategy'"):
        JoseConfig.from_params({"strategy": "tpu"})
    assert JoseConfig.from_params({"probe_words": ["a"]}).probe_words == ("a",)


# ------------------------------------------------------------------ checkpoints, resume, warm start
class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_after_interrupted_epoch_continues_from_checkpoint(tmp_path):
    tokens_paths, vocab_path, _ = planted_topic_corpus(tmp_path, topics=2, docs_per_topic=10)
    config = JoseConfig.from_params({**SMALL, "epochs": 3, "steps_per_block": 2})
    corpus = load_corpus(tokens_paths, vocab_path, config.min_count)
    full = train_jose(corpus, config, tmp_path / "ck-full")

    seen = []

    def kill_in_second_epoch(done, total):
        seen.append(done)
        if done > 1.3 * corpus.train_words:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_jose(corpus, config, tmp_path / "ck", progress=kill_in_second_epoch)
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert state["epoch"] == 1 and max(seen) < 2 * corpus.train_words
    resumed = train_jose(corpus, config, tmp_path / "ck")
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 2
    for a, b in ((full.u, resumed.u), (full.v, resumed.v), (full.d, resumed.d)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # a checkpoint of another configuration is not resumed
    other = train_jose(corpus, JoseConfig.from_params({**SMALL, "epochs": 3, "steps_per_block": 2, "seed": 4}), tmp_path / "ck")
    assert other.resumed_from_epoch == 0


def test_warm_start_keeps_known_words_and_initialises_new_ones():
    rng = np.random.default_rng(0)
    previous = random_unit_rows(rng, 3, 4)
    fresh = random_unit_rows(rng, 3, 4)
    rows, hits = warm_start_rows(["b", "new", "a"], ["a", "b", "c"], previous, fresh)
    assert hits == 2
    np.testing.assert_allclose(rows[0], previous[1])
    np.testing.assert_allclose(rows[2], previous[0])
    np.testing.assert_allclose(rows[1], fresh[1])


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
    params = {**SMALL, "epochs": 4, "alpha": 0.04}
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

    # warm start from that output on a corpus with one new word
    (tmp_path / "b").mkdir()
    tokens_b, vocab_b, _ = planted_topic_corpus(tmp_path / "b", extra_word="newword")
    warm = train_jose_stage(tokens_b, vocab_b, str(tmp_path / "out-b"), {**params, "epochs": 1}, str(tmp_path / "ck-b"),
                            warm_start_dir=str(tmp_path / "out"), evaluate_vectors=False)
    assert warm["metrics"]["warm_started_words"] == len(pd.read_parquet(vocab_path))
    assert warm["metrics"]["vocab_size"] == len(pd.read_parquet(vocab_path)) + 1
