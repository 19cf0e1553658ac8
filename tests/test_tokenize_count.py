"""Tokenisation backends agree; counting is exact; segmentation metrics are right."""
from __future__ import annotations

import random
from collections import Counter
from itertools import chain

import pandas as pd
import pytest

from kexue.text import count as kcount
from kexue.text import tokenize as ktok
from kexue.text.corpora import peoples_daily, reviews
from kexue.text.scores import prf
from kexue.text.tokenize import TokenizeParams, effective_backend, make_segmenter, segmentation_counts, tokenize_partition


def default_corpus_texts() -> list[str]:
    """Every distinct document of the default corpus (People's Daily + reviews)."""
    return list(dict.fromkeys(r.text for r in chain(peoples_daily(), reviews())))


@pytest.mark.slow
@pytest.mark.parametrize("hmm", [True, False])
def test_rjieba_gives_jiebas_tokens_on_every_default_document(hmm):
    texts = default_corpus_texts()
    p = TokenizeParams(backend="rjieba", hmm=hmm)
    rj = make_segmenter(p)
    jb = make_segmenter(TokenizeParams(backend="jieba", hmm=hmm))
    expected = [jb(t) for t in texts]
    assert len(texts) > 36_000
    assert [t for t, want in zip(texts, expected) if rj(t) != want] == []
    # and so does the tokenize stage's path: a batch of texts segmented in one call
    batches = [texts[i:i + ktok.BATCH_DOCS] for i in range(0, len(texts), ktok.BATCH_DOCS)]
    assert [d for b in batches for d in ktok.segment_batch(b, p).to_pylist()] == expected


def test_rjieba_splits_non_chinese_runs_like_jiebas_hmm_path():
    rj = make_segmenter(TokenizeParams(backend="rjieba"))
    jb = make_segmenter(TokenizeParams(backend="jieba"))
    text = "我用C++和AT&T，看www.smallstonesoft.com，2008-6-1到货，1-3天，涨了3.5%，邮件a_b@qq.com"
    assert rj(text) == jb(text)
    assert {"C++", "AT&T", "3.5%"} <= set(rj(text))  # dictionary words and finalseg's numbers stay whole
    assert "www.smallstonesoft.com" not in rj(text) and "2008" in rj(text)
    assert any(rj(t) != make_segmenter(TokenizeParams(hmm=False))(t) for t in default_corpus_texts()[:2000])  # HMM matters


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


def test_partition_tokens_and_exact_counts(tmp_path, monkeypatch):
    rows = [r for _, r in zip(range(3000), peoples_daily())]
    texts = [r.text for r in rows]
    texts[1] = "这是 一段\n有空白的 文字"  # white space is dropped from the tokens (and kept for scoring)
    part = tmp_path / "p.parquet"
    pd.DataFrame({"doc_id": [str(i) for i in range(len(rows))], "source": "pd", "label": None,
                  "text": texts, "hash": "", "gold_tokens": [list(r.gold_tokens) for r in rows]}).to_parquet(part)
    table, counts, stats = tokenize_partition(part, {})
    monkeypatch.setattr(ktok, "BATCH_DOCS", 700)  # the same, segmented (and counted) in five batches
    again = tokenize_partition(part, {})
    assert (again.table, again.stats) == (table, stats)
    assert again.counts.sort_by("token") == counts.sort_by("token")
    tokens = table.to_pandas()
    segment = make_segmenter(TokenizeParams())
    assert [list(t) for t in tokens["tokens"]] == [[w for w in segment(t) if w.strip()] for t in texts]
    assert " " in segment(texts[1]) and "\n" in segment(texts[1])
    assert stats["documents"] == 3000 and stats["seg_docs"] == 3000
    assert stats["seg_pred"] == sum(len(segment(t)) for t in texts)  # scored with the white space
    assert 0.7 < prf(stats["seg_tp"], stats["seg_pred"], stats["seg_gold"])["f1"] < 0.95
    tpath = tmp_path / "t.parquet"
    tokens.to_parquet(tpath)
    # split the partition's docs in three partials, count each, merge as a tree
    thirds = [tokens.iloc[i::3] for i in range(3)]
    partials = []
    for i, part_tokens in enumerate(thirds):
        part_tokens.to_parquet(tmp_path / f"h{i}.parquet")
        partials.append(kcount.count_partition(tmp_path / f"h{i}.parquet"))
    total = kcount.merge_partials([kcount.merge_partials(partials[:2]), partials[2]]).to_pydict()
    plain = Counter(t for doc in tokens["tokens"] for t in doc)
    plain_df = Counter(t for doc in tokens["tokens"] for t in set(doc))
    assert dict(zip(total["token"], total["count"])) == plain
    assert dict(zip(total["token"], total["doc_freq"])) == plain_df
    for taken in (counts, again.counts):  # the counts the tokenize task took from its dictionary codes
        assert dict(zip(taken["token"].to_pylist(), taken["count"].to_pylist())) == plain
        assert dict(zip(taken["token"].to_pylist(), taken["doc_freq"].to_pylist())) == plain_df
    assert kcount.count_tokens(table.column("tokens")).to_pydict() == kcount.count_partition(tpath).to_pydict()
    v = kcount.vocabulary(pd.DataFrame(total))
    assert list(v["rank"]) == list(range(len(v)))
    assert v["count"].is_monotonic_decreasing
    flags = dict(zip(v["token"], zip(v["is_stopword"], v["is_punct"])))
    assert flags["，"] == (True, True) or flags["，"][1]
    assert flags["的"][0] and not flags["的"][1]
    assert flags["经济"] == (False, False)


@pytest.mark.parametrize("backend", ["rjieba", "jieba"])
@pytest.mark.parametrize("hmm", [True, False])
def test_a_batch_segmented_in_one_call_equals_segmenting_each_text(backend, hmm):
    import pyarrow as pa

    from itertools import islice

    texts = [r.text for r in islice(reviews(), 3000)] + ["", " ", "x y", "a", "\u3000\n", "www.x.com 2008-6-1",
                                                      "\xa0", "\u2003好\u2003", "\u200b", "a\u3000\u3000b"]
    p = TokenizeParams(backend=backend, hmm=hmm)
    segment = make_segmenter(p)
    each = pa.array([segment(t) for t in texts], ktok.TOKENS_TYPE)
    got = ktok.segment_batch(texts, p)
    assert got.type == ktok.TOKENS_TYPE and got.null_count == 0
    assert got.equals(each)
    assert ktok.segment_batch(texts + ["a\x1eb"], p)[:-1].equals(each)  # a separator in a text: text by text
    without = pa.array([[w for w in segment(t) if w.strip()] for t in texts], ktok.TOKENS_TYPE)
    assert ktok.drop_whitespace(got).equals(without)


def test_vocabulary_flags_equal_testing_every_token_in_python():
    from itertools import islice

    segment = make_segmenter(TokenizeParams())
    tokens = pd.Series(sorted({t for r in islice(reviews(), 3000) for t in segment(r.text)} | {"", "１９９８", "½", "，。", "a1", "—— "}))
    for test in (kcount.is_punct, kcount.is_number):
        expected = tokens.map(test).to_numpy(dtype=bool)
        assert expected.any() and not expected.all()
        assert (kcount.every_char_passes(tokens, test) == expected).all()
