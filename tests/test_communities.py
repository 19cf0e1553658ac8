"""Infomap communities stage: artifacts, Pajek round trip, LFR recovery, cosine cohesion."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import infomap
import networkx as nx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import normalized_mutual_info_score

from kexue.graph.communities import (
    community_params,
    detect_communities,
    infomap_network,
    module_cosines,
    read_tree,
    run_infomap,
)
from kexue.graph.cooccurrence import build_graph, partition_cooccurrence
from kexue.graph.io import write_graph
from test_cooccurrence import write_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lfr import lfr_graph, lfr_nmi  # noqa: E402  (a benchmark helper, not library code)


def planted_graph(seed: int, sizes: tuple[int, ...] = (12, 15, 10), directed: bool = False) -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    block = np.repeat(np.arange(len(sizes)), sizes)
    n = len(block)
    density = np.where(block[:, None] == block[None, :], 0.6, 0.03)
    a = (rng.random((n, n)) < density) * rng.uniform(0.3, 2.0, (n, n))
    np.fill_diagonal(a, 0)
    if not directed:
        a = np.triu(a)
        a = a + a.T
    return sp.csr_matrix(a), block


def write_planted(tmp: Path, seed: int, directed: bool = False, **kw) -> tuple[str, np.ndarray, sp.csr_matrix]:
    a, block = planted_graph(seed, directed=directed, **kw)
    tokens = [f"w{i}" for i in range(a.shape[0])]
    tokens[-1] = 'a "b" #c'  # space, quote and hash: Pajek quoting and tree parsing must cope
    write_graph(tmp / "graph", tokens, np.arange(a.shape[0]) + 1, a, directed, graphml_max_nodes=100, meta={})
    return str(tmp / "graph"), block, a


@pytest.mark.parametrize("directed", [False, True])
def test_detect_communities_artifacts_and_codelength_check(tmp_path: Path, directed: bool) -> None:
    graph_dir, block, a = write_planted(tmp_path, 1, directed)
    out = detect_communities(graph_dir, str(tmp_path / "comm"), {"num_trials": 3, "seed": 7, "top_words": 3})
    files, m = out["files"], out["metrics"]
    assert set(files) == {"modules", "module_table", "tree", "codelengths"}
    modules = pd.read_parquet(files["modules"])
    assert modules["id"].tolist() == list(range(len(block)))
    assert modules["token"].tolist() == [f"w{i}" for i in range(len(block) - 1)] + ['a "b" #c']
    assert normalized_mutual_info_score(block, modules["module"]) == pytest.approx(1.0)
    assert modules["flow"].sum() == pytest.approx(1.0)
    table = pd.read_parquet(files["module_table"])
    assert table["size"].sum() == len(block) and m["num_modules"] == len(table) == 3
    assert all(len(words) == 3 for words in table["top_words"])
    top = modules[modules["module"] == table["module"][0]].sort_values("flow", ascending=False)
    assert list(table["top_words"][0]) == top["token"].head(3).tolist()
    assert m["codelength_mapequation_diff"] < 1e-6 and 0 < m["saving_percent"] < 100
    assert m["codelength"] < m["codelength_one_level"]
    assert m["largest_module_share"] == pytest.approx(max(np.bincount(block)) / len(block))
    assert [s for s, _, _ in m["top_modules"]] == sorted(np.bincount(block).tolist(), reverse=True)
    assert json.loads(Path(files["codelengths"]).read_text())["codelength"] == m["codelength"]
    tree = read_tree(files["tree"])
    assert len(tree) == len(block) and set(tree["name"]) == {t.replace('"', "'") for t in modules["token"]}


def test_pajek_file_read_back_by_infomap_gives_the_same_result(tmp_path: Path) -> None:
    graph_dir, _, a = write_planted(tmp_path, 2, sizes=(20, 25, 15, 30))
    from_file = run_infomap(infomap.Network.from_file(str(Path(graph_dir) / "graph.net")), False, seed=5, num_trials=4)
    in_memory = run_infomap(infomap_network(a, directed=False), False, seed=5, num_trials=4)
    assert from_file.codelength == pytest.approx(in_memory.codelength, abs=1e-12)
    assert from_file.num_links == in_memory.num_links == sp.triu(a).nnz
    file_modules = from_file.modules()  # Pajek ids are 1-based
    memory_modules = in_memory.modules()
    file_labels = [file_modules[i + 1] for i in range(a.shape[0])]
    memory_labels = [memory_modules[i] for i in range(a.shape[0])]
    assert normalized_mutual_info_score(file_labels, memory_labels) == pytest.approx(1.0)
    assert from_file.names[1] == "w0"


def test_multilevel_writes_tree_paths(tmp_path: Path) -> None:
    graph_dir, block, _ = write_planted(tmp_path, 3, sizes=(15, 15, 15, 15))
    out = detect_communities(graph_dir, str(tmp_path / "ml"), {"two_level": False, "num_trials": 2})
    modules = pd.read_parquet(out["files"]["modules"])
    assert (modules["path"].str.split(":").str[0].astype(int) == modules["module"]).all()
    assert out["metrics"]["num_levels"] >= 2 and "codelength_mapequation" not in out["metrics"]


def test_directed_setting_must_match_the_graph(tmp_path: Path) -> None:
    graph_dir, _, _ = write_planted(tmp_path, 4)
    with pytest.raises(ValueError, match="communities.directed"):
        detect_communities(graph_dir, str(tmp_path / "x"), {"directed": True})
    with pytest.raises(ValueError, match="(?m)^num_trals$"):
        community_params({"num_trals": 3})
    with pytest.raises(ValueError, match="(?m)^seed$"):
        community_params({"seed": 0})


@pytest.mark.parametrize("directed", [False, True])
def test_cooccurrence_graph_separates_two_topics(tmp_path: Path, directed: bool) -> None:
    rng = np.random.default_rng(0)
    topics = [["股市", "汇率", "美元", "下跌", "成交", "上涨"], ["选手", "冠军", "决赛", "金牌", "男子", "比赛"]]
    docs = [[topics[t][i] for i in rng.integers(0, 6, 30)] for t in (0, 1) for _ in range(40)]
    paths, vocab_path = write_corpus(tmp_path, [docs])
    params = {"window": 3, "min_count": 1, "top_k": 3, "directed": directed}
    counts = partition_cooccurrence(paths[0], vocab_path, params)
    build_graph(counts, vocab_path, str(tmp_path / "graph"), params)
    pajek = (tmp_path / "graph" / "graph.net").read_text(encoding="utf-8")
    assert ("*Arcs" in pajek) == directed and ("*Edges" in pajek) != directed
    out = detect_communities(str(tmp_path / "graph"), str(tmp_path / "comm"), {"num_trials": 3})
    assert out["metrics"]["directed"] == directed and out["metrics"]["codelength_mapequation_diff"] < 1e-6
    modules = pd.read_parquet(out["files"]["modules"])
    topic_of = {w: t for t, words in enumerate(topics) for w in words}
    assert normalized_mutual_info_score(modules["token"].map(topic_of), modules["module"]) == pytest.approx(1.0)


def test_module_cosines_match_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, 4, 30)
    sims = x @ x.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(30, dtype=bool)
    within, between = module_cosines(labels, x)
    assert within == pytest.approx(sims[same & off].mean()) and between == pytest.approx(sims[~same].mean())
    # through the stage: vectors given for the graph's words (and one unknown word)
    graph_dir, block, _ = write_planted(tmp_path, 5)
    centres = rng.normal(size=(3, 6))
    v = centres[block] + 0.3 * rng.normal(size=(len(block), 6))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    words = [f"w{i}" for i in range(len(block) - 1)] + ['a "b" #c', "其他"]
    out = detect_communities(graph_dir, str(tmp_path / "c"), {"num_trials": 2}, vectors=(words, np.vstack([v, v[:1]])))
    m = out["metrics"]
    assert m["cosine_words"] == len(block) and m["within_module_cosine"] > m["between_module_cosine"]


def test_lfr_planted_partition_recovered_at_low_mixing() -> None:
    g, planted = lfr_graph(250, 0.1, seed=1, max_community=60, max_degree=40)
    assert nx.number_of_selfloops(g) == 0 and len(planted) == 250
    row = lfr_nmi(250, mu=0.1, seed=1, num_trials=3, max_community=60, max_degree=40)
    assert row["infomap_nmi"] >= 0.95 and row["louvain_nmi"] > 0.8
    assert row["planted_communities"] == planted.max() + 1
