"""Co-occurrence counts, edge weights, sparsification, kNN graph and graph artifacts."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from kexue.graph.cooccurrence import (
    GraphParams,
    build_graph,
    cooccurrence_edges,
    graph_params,
    knn_graph,
    partition_cooccurrence,
    select_vocabulary,
    sum_counts,
    symmetric_counts,
    token_ids,
    top_k_edges,
    weight_matrix,
)
from kexue.graph.io import read_graph

STOP = {"的", "了"}
PUNCT = {"，", "。"}


def write_corpus(tmp: Path, partitions: list[list[list[str]]]) -> tuple[list[str], str]:
    """Tokens partitions + vocabulary Parquet in the pipeline's formats; returns (paths, vocab)."""
    counts, doc_freq = Counter(), Counter()
    paths = []
    for p, docs in enumerate(partitions):
        for d in docs:
            counts.update(d)
            doc_freq.update(set(d))
        path = tmp / f"tokens-{p}.parquet"
        pd.DataFrame(
            {"doc_id": [f"{p}-{i}" for i in range(len(docs))], "source": "test", "label": None, "tokens": docs}
        ).to_parquet(path, index=False)
        paths.append(str(path))
    vocab = pd.DataFrame({"token": list(counts), "count": list(counts.values())})
    vocab = vocab.sort_values(["count", "token"], ascending=[False, True], ignore_index=True)
    vocab["doc_freq"] = vocab["token"].map(doc_freq)
    vocab["rank"] = np.arange(len(vocab))
    vocab["is_stopword"] = vocab["token"].isin(STOP)
    vocab["is_punct"] = vocab["token"].isin(PUNCT)
    vocab["is_number"] = False
    vocab_path = tmp / "vocab.parquet"
    vocab.to_parquet(vocab_path, index=False)
    return paths, str(vocab_path)


def random_docs(rng: np.random.Generator, num_docs: int) -> list[list[str]]:
    words = ["甲", "乙", "丙", "丁", "戊", "己", "庚", "辛", "稀"] + sorted(STOP) + sorted(PUNCT)
    p = np.array([8, 7, 6, 6, 5, 4, 3, 3, 0, 5, 4, 6, 5], dtype=float)
    docs = [[words[i] for i in rng.choice(len(words), size=rng.integers(0, 25), p=p / p.sum())] for _ in range(num_docs)]
    return docs + [[], ["甲"], ["乙", "稀", "丙"]]  # 稀 occurs once per call: below min_count


def brute_force_counts(docs: list[list[str]], index: dict[str, int], window: int) -> np.ndarray:
    """The definition, as a dict-free double loop over kept tokens of each document."""
    out = np.zeros((len(index), len(index)), dtype=np.int64)
    for doc in docs:
        kept = [index[t] for t in doc if t in index]
        for i in range(len(kept)):
            for j in range(i + 1, min(i + window + 1, len(kept))):
                if kept[i] != kept[j]:
                    out[kept[i], kept[j]] += 1
                    out[kept[j], kept[i]] += 1
    return out


@pytest.mark.parametrize("window", [1, 3, 5])
def test_sparse_counts_equal_brute_force(tmp_path: Path, window: int) -> None:
    rng = np.random.default_rng(window)
    parts = [random_docs(rng, 30), random_docs(rng, 20)]
    paths, vocab_path = write_corpus(tmp_path, parts)
    params = {"window": window, "min_count": 3}
    vocabulary = select_vocabulary(vocab_path, graph_params(params))
    index = {t: i for i, t in enumerate(vocabulary["token"])}
    assert "稀" not in index and not (set(index) & (STOP | PUNCT))  # filters applied

    partials = [partition_cooccurrence(p, vocab_path, params) for p in paths]
    for partial, docs in zip(partials, parts):
        assert sp.tril(partial).nnz == 0  # each unordered pair once, above the diagonal
        np.testing.assert_array_equal(symmetric_counts(partial).toarray(), brute_force_counts(docs, index, window))
    total = symmetric_counts(sum_counts(partials))
    np.testing.assert_array_equal(total.toarray(), brute_force_counts(parts[0] + parts[1], index, window))
    with pytest.raises(ValueError, match="upper-triangular"):
        symmetric_counts(total)


def test_filters_can_keep_stopwords_and_punctuation(tmp_path: Path) -> None:
    paths, vocab_path = write_corpus(tmp_path, [[["甲", "的", "，", "乙"], ["甲", "的", "，", "乙"]]])
    params = {"window": 1, "min_count": 1, "exclude_stopwords": False, "exclude_punct": False}
    vocabulary = select_vocabulary(vocab_path, graph_params(params))
    assert set(vocabulary["token"]) == {"甲", "的", "，", "乙"}
    index = {t: i for i, t in enumerate(vocabulary["token"])}
    counts = symmetric_counts(partition_cooccurrence(paths[0], vocab_path, params)).toarray()
    assert counts[index["甲"], index["乙"]] == 0 and counts[index["的"], index["，"]] == 2
    # with the default filters 甲 and 乙 become neighbours
    default = symmetric_counts(partition_cooccurrence(paths[0], vocab_path, {"window": 1, "min_count": 1}))
    assert default.toarray().tolist() == [[0, 2], [2, 0]]


def test_token_ids_plain_and_dictionary_columns_with_nulls() -> None:
    vocabulary = pd.DataFrame({"token": ["乙", "甲"], "count": [3, 2]})
    plain = pa.array([["甲", None, "乙", "丙"], None, [], ["乙"]], type=pa.list_(pa.string()))
    encoded = pa.chunked_array([plain.slice(0, 2), plain.slice(2)]).cast(pa.list_(pa.dictionary(pa.int32(), pa.string())))
    for column in (plain, encoded):
        ids, doc = token_ids(column, vocabulary)
        assert ids.tolist() == [1, 0, 0] and doc.tolist() == [0, 0, 3]


def test_ppmi_and_pmi_match_hand_computed_example() -> None:
    # N = 12; row/column sums (3, 5, 4); P_0.75(c) = c^0.75 / (3^0.75 + 5^0.75 + 4^0.75)
    counts = sp.csr_matrix(np.array([[0, 2, 1], [2, 0, 3], [1, 3, 0]]))
    pmi = weight_matrix(counts, "pmi").toarray()
    assert pmi[0, 1] == pytest.approx(math.log(2 * 12 / (3 * 5)))  # log 1.6 = 0.4700
    assert pmi[0, 2] == pytest.approx(0.0)  # 1·12 / (3·4) = 1
    assert pmi[1, 2] == pytest.approx(math.log(3 * 12 / (5 * 4)))
    ppmi = weight_matrix(counts, "ppmi", alpha=0.75).toarray()
    # PPMI(0,1) = log((2/12) / ((3/12) · 5^.75/Z)) with Z = 8.4516: log 1.6849 = 0.5218
    expected = np.array(
        [[0.0, 0.5218164549457291, 0.0], [0.39411004900423147, 0.0, 0.58381360277356], [0.0, 0.6395994906021126, 0.0]]
    )
    np.testing.assert_allclose(ppmi, expected, rtol=1e-12)
    # smoothing is what makes it asymmetric; α = 1 is plain positive PMI
    np.testing.assert_allclose(weight_matrix(counts, "ppmi", alpha=1.0).toarray(), np.maximum(pmi, 0), atol=1e-12)
    np.testing.assert_array_equal(weight_matrix(counts, "count").toarray(), counts.toarray())


def test_top_k_keeps_each_nodes_strongest_edges_union() -> None:
    edges = {(0, 1): 5, (0, 2): 4, (0, 3): 3, (0, 4): 2, (0, 5): 1, (3, 4): 10, (1, 2): 0.5, (2, 6): 0.5, (2, 7): 0.5}
    n = 8
    w = sp.lil_matrix((n, n))
    for (a, b), x in edges.items():
        w[a, b] = w[b, a] = x
    kept = top_k_edges(w.tocsr(), k=2)
    kept_set = {(a, b) for a, b in zip(*sp.triu(kept).nonzero())}
    # 0 keeps (0,1),(0,2); 3 and 4 keep (3,4) and their edge to 0; 5 keeps its only edge;
    # 2's ties at 0.5 go to the smaller neighbour (1) — but 6 and 7 keep their only edges.
    expected = {(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (3, 4), (1, 2), (2, 6), (2, 7)}
    assert kept_set == expected
    kept1 = top_k_edges(w.tocsr(), k=1)
    assert {(a, b) for a, b in zip(*sp.triu(kept1).nonzero())} == {(0, 1), (3, 4), (0, 5), (0, 2), (2, 6), (2, 7)}
    assert kept1[0, 1] == 5 and kept1[1, 0] == 5  # weights are kept, matrix stays symmetric


def test_edge_threshold_weighting_and_no_self_loops() -> None:
    counts = sp.csr_matrix(np.array([[4, 3, 1, 0], [3, 0, 2, 5], [1, 2, 0, 1], [0, 5, 1, 0]]))
    w = cooccurrence_edges(counts, GraphParams(weighting="count", min_edge_count=2, top_k=None))
    assert w.toarray().tolist() == [[0, 3, 0, 0], [3, 0, 2, 5], [0, 2, 0, 0], [0, 5, 0, 0]]
    ppmi = cooccurrence_edges(counts, GraphParams(min_edge_count=1, top_k=None))
    assert (ppmi != ppmi.T).nnz == 0 and ppmi.diagonal().sum() == 0 and ppmi.data.min() > 0


def test_knn_graph_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = knn_graph(x, k=4, block=7)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    for i in range(60):
        nearest = np.argsort(-sims[i])[:4]
        for j in nearest:
            if sims[i, j] > 0:
                assert g[i, j] == pytest.approx(sims[i, j]) and g[j, i] == pytest.approx(sims[i, j])
    assert (g != g.T).nnz == 0 and g.diagonal().sum() == 0
    # an edge exists only if one end has the other among its 4 nearest
    rows, cols = g.nonzero()
    for i, j in zip(rows, cols):
        assert j in np.argsort(-sims[i])[:4] or i in np.argsort(-sims[j])[:4]


def test_build_graph_writes_readable_artifacts(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    paths, vocab_path = write_corpus(tmp_path, [random_docs(rng, 60)])
    params = {"window": 3, "min_count": 2, "top_k": 3, "min_edge_count": 1}
    counts = partition_cooccurrence(paths[0], vocab_path, params)
    out = build_graph(counts, vocab_path, str(tmp_path / "graph"), params)
    files, metrics = out["files"], out["metrics"]
    assert set(files) == {"nodes", "edges", "pajek", "meta", "graphml"}
    nodes, adjacency, meta = read_graph(tmp_path / "graph")
    assert meta["directed"] is False and metrics["num_nodes"] == len(nodes) == adjacency.shape[0]
    expected = cooccurrence_edges(symmetric_counts(counts), graph_params(params)).toarray()
    vocabulary = select_vocabulary(vocab_path, graph_params(params))
    keep = [vocabulary["token"].tolist().index(t) for t in nodes["token"]]
    np.testing.assert_allclose(adjacency.toarray(), expected[np.ix_(keep, keep)])
    edges = pd.read_parquet(files["edges"])
    assert (edges["source"] < edges["target"]).all() and len(edges) == metrics["num_edges"]
    g = nx.read_graphml(files["graphml"])
    assert g.number_of_nodes() == len(nodes) and g.number_of_edges() == len(edges)
    lines = Path(files["pajek"]).read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"*Vertices {len(nodes)}" and lines[len(nodes) + 1] == f"*Edges {len(edges)}"
    small = build_graph(counts, vocab_path, str(tmp_path / "g2"), {**params, "graphml_max_nodes": 2})
    assert "graphml" not in small["files"] and small["metrics"]["graphml_written"] is False


def test_build_graph_from_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _, vocab_path = write_corpus(tmp_path, [random_docs(rng, 40)])
    words = ["甲", "乙", "丙", "丁", "戊", "己", "不在词表"]
    x = rng.normal(size=(len(words), 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = build_graph(None, vocab_path, str(tmp_path / "knn"), {"source": "knn", "knn_k": 2, "min_count": 1}, vectors=(words, x))
    nodes, adjacency, _ = read_graph(tmp_path / "knn")
    assert set(nodes["token"]) <= set(words[:-1]) and out["metrics"]["source"] == "knn"
    assert adjacency.nnz > 0


@pytest.mark.parametrize(
    "params, key",
    [({"windw": 5}, "windw"), ({"window": 0}, "window"), ({"weighting": "tfidf"}, "weighting"),
     ({"alpha": 1.5}, "alpha"), ({"top_k": 0}, "top_k")],
)
def test_bad_params_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"(?m)^{key}$"):
        graph_params(params)
