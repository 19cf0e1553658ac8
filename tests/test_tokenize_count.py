"""Tokenisation backends agree; counting is exact; segmentation metrics are right."""
from __future__ import annotations

import random
from collections import Counter

import pandas as pd
import pytest

from kexue.text import count as kcount
from kexue.text.corpora import peoples_daily
from kexue.text.tokenize import TokenizeParams, effective_backend, make_segmenter, prf, segmentation_counts, tokenize_partition


@pytest.mark.slow
def test_rjieba_equals_jieba_on_the_whole_peoples_daily_corpus():
    texts = [r.text for r in peoples_daily()]
    rj = make_segmenter(TokenizeParams(backend="rjieba"))
    jb = make_segmenter(TokenizeParams(backend="jieba"))
    differing = [t for t in texts if rj(t) != jb(t)]
    assert len(texts) == 19484
    assert differing == []


def test_backends_agree_without_hmm_too():
    texts = [r.text for _, r in zip(range(2000), peoples_daily())]
    rj = make_segmenter(TokenizeParams(backend="rjieba", hmm=False))
    jb = make_segmenter(TokenizeParams(backend="jieba", hmm=False))
    assert all(rj(t) == jb(t) for t in texts)
    assert any(rj(t) != make_segmenter(TokenizeParams(hmm=True))(t) for t in texts)  # HMM matters


def test_user_dictionary_falls_back_to_jieba_and_is_honoured(tmp_path):
    text = "我在学习科学技术新词很好玩"
    default = make_segmenter(TokenizeParams())(text)
    assert "科学技术新词" not in default
    d = tmp_path / "user.dict"
    d.write_text("科学技术新词 100 n\n", encoding="utf-8")
    p = TokenizeParams(backend="rjieba", user_dict=str(d))
    assert effective_backend(p) == "jieba"
    assert "科学技术新词" in make_segmenter(p)(text)


def test_segmentation_prf_counts_word_spans():
    tp, n_pred, n_gold = segmentation_counts([["中国", "人民", "银行"]], [["中国人民", "银行"]])
    assert (tp, n_pred, n_gold) == (1, 3, 2)
    assert prf(tp, n_pred, n_gold) == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4})


def _span_set(tokens):
    out, pos = set(), 0
    for t in tokens:
        out.add((pos, pos + len(t)))
        pos += len(t)
    return out


def test_batched_segmentation_counts_equal_per_document_span_sets():
    rng = random.Random(7)

    def cut(text):  # a random segmentation of text
        out, i = [], 0
        while i < len(text):
            j = min(len(text), i + rng.randint(1, 4))
            out.append(text[i:j])
            i = j
        return out

    texts = ["".join(rng.choice("中国人民银行经济") for _ in range(rng.randint(0, 30))) for _ in range(200)]
    pred = [cut(t) for t in texts]
    gold = [cut(t) for t in texts]
    gold[5] = gold[5] + ["多余"]  # segmentations of different lengths must not shift later documents
    want = sum(len(_span_set(p) & _span_set(g)) for p, g in zip(pred, gold))
    assert segmentation_counts(pred, gold) == (want, sum(map(len, pred)), sum(map(len, gold)))
    assert segmentation_counts(gold, gold)[0] == sum(map(len, gold))
    assert segmentation_counts([[], ["a"]], [[], ["a"]]) == (1, 1, 1)
    with pytest.raises(ValueError, match="documents"):
        segmentation_counts([["a"]], [])


def test_partition_tokens_and_exact_counts(tmp_path):
    rows = [r for _, r in zip(range(3000), peoples_daily())]
    part = tmp_path / "p.parquet"
    pd.DataFrame({"doc_id": [str(i) for i in range(len(rows))], "source": "pd", "label": None,
                  "text": [r.text for r in rows], "hash": "", "gold_tokens": [list(r.gold_tokens) for r in rows]}).to_parquet(part)
    table, stats = tokenize_partition(part, {})
    tokens = table.to_pandas()
    assert stats["documents"] == 3000 and stats["seg_docs"] == 3000
    assert 0.7 < prf(stats["seg_tp"], stats["seg_pred"], stats["seg_gold"])["f1"] < 0.95
    tpath = tmp_path / "t.parquet"
    tokens.to_parquet(tpath)
    # split the partition's docs in three partials, count in small batches, merge
    halves = [tokens.iloc[i::3] for i in range(3)]
    frames = []
    for i, h in enumerate(halves):
        h.to_parquet(tmp_path / f"h{i}.parquet")
        frames.append(kcount.count_partition(tmp_path / f"h{i}.parquet", batch_docs=7))
    total = kcount.merge_partials([kcount.merge_partials(frames[:2]), frames[2]])
    plain = Counter(t for doc in tokens["tokens"] for t in doc)
    plain_df = Counter(t for doc in tokens["tokens"] for t in set(doc))
    assert dict(zip(total["token"], total["count"])) == plain
    assert dict(zip(total["token"], total["doc_freq"])) == plain_df
    v = kcount.vocabulary(total)
    assert list(v["rank"]) == list(range(len(v)))
    assert v["count"].is_monotonic_decreasing
    flags = dict(zip(v["token"], zip(v["is_stopword"], v["is_punct"])))
    assert flags["，"] == (True, True) or flags["，"][1]
    assert flags["的"][0] and not flags["的"][1]
    assert flags["经济"] == (False, False)
