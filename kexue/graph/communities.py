"""Communities of the word graph with Infomap, checked against our own map equation.

Why Infomap: it minimises the map equation — the description length of a random walk on the
graph — so a word module is a region where the walker (reading along co-occurrences) lingers,
which is what a topic is. We call the reference implementation (the ``infomap`` package,
through its ``infomap.run(...) -> Result`` API) and recompute the two-level codelength of its
partition with ``kexue.graph.mapequation`` as an independent check.

Also here: cosine cohesion of modules under word vectors, and the LFR benchmark helper
(planted partitions, NMI of Infomap vs networkx Louvain).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import infomap
import numpy as np
import pandas as pd
import scipy.sparse as sp

from kexue.core.artifacts import atomic_path, write_json_atomic, write_parquet_atomic
from kexue.graph.io import PAJEK_FILE, read_graph
from kexue.graph.mapequation import directed_flow, module_codelength, undirected_flow
from kexue.graph.params import CommunityParams

MODULES_FILE = "modules.parquet"
MODULE_TABLE_FILE = "module_table.parquet"
TREE_FILE = "communities.tree"
CODELENGTHS_FILE = "codelengths.json"


def community_params(params: CommunityParams | dict[str, Any] | None) -> CommunityParams:
    """The validated parameters (a dict is validated; pydantic's error names the bad key)."""
    return params if isinstance(params, CommunityParams) else CommunityParams.model_validate(params or {})


def infomap_network(adjacency: sp.spmatrix, directed: bool) -> infomap.Network:
    """An Infomap ``Network`` with nodes 0..n-1 (isolated ones included) and weighted links.

    An undirected graph is handed over with each edge once (upper triangle of the symmetric
    adjacency), exactly what our Pajek ``*Edges`` section holds.
    """
    a = sp.csr_matrix(adjacency)
    links = (a if directed else sp.triu(a)).tocoo()
    return infomap.Network.from_edge_index(
        np.vstack([links.row, links.col]), edge_weight=links.data, num_nodes=a.shape[0], directed=directed
    )


def run_infomap(
    network: infomap.Network, directed: bool, two_level: bool = True, seed: int = 123, num_trials: int = 10, markov_time: float = 1.0
) -> infomap.Result:
    """One place where Infomap's options are set, so the stage, tests and benchmark agree."""
    return infomap.run(
        network, two_level=two_level, directed=directed, seed=seed, num_trials=num_trials, markov_time=markov_time
    )


def module_cosines(modules: np.ndarray, vectors: np.ndarray) -> tuple[float, float]:
    """Mean cosine over word pairs in the same module and over pairs in different modules.

    Uses Σ_{i≠j∈m} v_i·v_j = ‖Σ_{i∈m} v_i‖² − Σ_i ‖v_i‖² on unit rows, so it is O(n·d)
    instead of O(n²·d).
    """
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    labels = np.unique(np.asarray(modules), return_inverse=True)[1]
    n = len(labels)
    sq = np.einsum("ij,ij->i", v, v)
    sums = np.zeros((labels.max() + 1, v.shape[1]))
    np.add.at(sums, labels, v)
    sizes = np.bincount(labels)
    within_sum = (np.einsum("ij,ij->i", sums, sums) - np.bincount(labels, weights=sq)).sum()
    within_pairs = (sizes * (sizes - 1)).sum()
    total = v.sum(axis=0)
    all_sum = total @ total - sq.sum()
    between_pairs = n * (n - 1) - within_pairs
    within = within_sum / within_pairs if within_pairs else float("nan")
    between = (all_sum - within_sum) / between_pairs if between_pairs else float("nan")
    return float(within), float(between)


def detect_communities(
    graph_dir: str,
    out_dir: str,
    params: dict[str, Any],
    vectors: tuple[list[str], np.ndarray] | None = None,
) -> dict[str, Any]:
    """The communities stage: Infomap on the graph in ``graph_dir``, artifacts into ``out_dir``.

    Infomap reads the graph's Pajek file itself (its C++ parser is the fast path, and it is
    the same file a user would give the Infomap CLI). Files written: ``modules.parquet``
    (id, token, module = top module, flow, path = tree path like ``2:1:3``),
    ``module_table.parquet`` (module, size, flow, top_words), ``communities.tree`` and
    ``codelengths.json``. ``vectors`` = (words, unit vectors) adds module cosine cohesion.
    Returns ``{"files": {...}, "metrics": {...}}``.
    """
    started = time.perf_counter()
    p = community_params(params)
    nodes, adjacency, meta = read_graph(graph_dir)
    if p.directed is not None and p.directed != meta["directed"]:
        raise ValueError(
            f"communities.directed = {p.directed} but the graph in {graph_dir} is "
            f"{'directed' if meta['directed'] else 'undirected'}; set graph.directed instead"
        )
    directed = bool(meta["directed"])
    tokens = nodes["token"].tolist()
    n = len(tokens)
    if n == 0 or adjacency.nnz == 0:
        raise ValueError(f"graph in {graph_dir} has no edges; nothing to cluster")

    t0 = time.perf_counter()
    result = run_infomap(
        infomap.Network.from_file(str(Path(graph_dir) / PAJEK_FILE)), directed, p.two_level, p.seed, p.num_trials, p.markov_time
    )
    infomap_seconds = time.perf_counter() - t0

    out = Path(out_dir)
    with atomic_path(out / TREE_FILE, suffix=".tree") as tmp:
        result.write_tree(tmp)
        tree = read_tree(tmp)
    table = pd.DataFrame(
        {
            "id": tree["node_id"].to_numpy(np.int64) - 1,  # Pajek ids are 1-based
            "module": tree["path"].str.split(":", n=1).str[0].astype(np.int64).to_numpy(),
            "tree_flow": tree["flow"].to_numpy(np.float64),
            "path": tree["path"].to_numpy(),
        }
    ).sort_values("id", ignore_index=True)
    if len(table) != n or not np.array_equal(table["id"].to_numpy(), np.arange(n)):
        raise RuntimeError(f"Infomap's tree covers {len(table)} nodes, the graph has {n}")
    # The tree file prints flow to 6 digits; recompute it exactly with the same flow model
    # and insist that it agrees, which also checks that we model Infomap's walk correctly.
    flow = directed_flow(adjacency) if directed else undirected_flow(adjacency)
    if not np.allclose(table["tree_flow"], flow.node_flow, rtol=1e-4, atol=1e-9):
        raise RuntimeError("node flow recomputed by kexue.graph.mapequation disagrees with Infomap's")
    table = table.drop(columns="tree_flow")
    table.insert(1, "token", tokens)
    table.insert(3, "flow", flow.node_flow)
    modules = table["module"].to_numpy()
    module_table = _module_table(table, p.top_words)
    files = {
        "modules": str(write_parquet_atomic(out / MODULES_FILE, table)),
        "module_table": str(write_parquet_atomic(out / MODULE_TABLE_FILE, module_table)),
        "tree": str(out / TREE_FILE),
    }

    codelengths = {
        "codelength_one_level": float(result.one_level_codelength),
        "codelength": float(result.codelength),
        "index_codelength": float(result.index_codelength),
        "module_codelength": float(result.module_codelength),
        "saving_percent": 100.0 * float(result.relative_codelength_savings),
    }
    if p.two_level and p.markov_time == 1.0:
        # Our map equation on Infomap's partition: same flow model, so it must agree.
        ours = module_codelength(flow, modules)
        codelengths["codelength_mapequation"] = ours.total
        codelengths["codelength_mapequation_diff"] = abs(ours.total - float(result.codelength))
    files["codelengths"] = str(write_json_atomic(out / CODELENGTHS_FILE, codelengths))

    by_size = module_table.sort_values(["size", "flow"], ascending=False, kind="stable")
    metrics: dict[str, Any] = {
        **codelengths,
        "num_nodes": n,
        "num_modules": int(result.num_top_modules),
        "num_levels": int(result.num_levels),
        "largest_module_share": float(module_table["size"].max() / n),
        "top_modules": [[int(r.size), float(r.flow), list(r.top_words)] for r in by_size.head(p.top_modules).itertuples()],
        "directed": directed,
        "infomap_seconds": infomap_seconds,
    }
    if vectors is not None:
        words, matrix = vectors
        row_of = {w: i for i, w in enumerate(words)}
        covered = np.array([t in row_of for t in tokens])
        if covered.sum() >= 2:
            rows = [row_of[t] for t in np.asarray(tokens)[covered]]
            within, between = module_cosines(modules[covered], np.asarray(matrix)[rows])
            metrics.update(within_module_cosine=within, between_module_cosine=between, cosine_words=int(covered.sum()))
    metrics["stage_seconds"] = time.perf_counter() - started
    return {"files": files, "metrics": metrics}


def read_tree(path: str | Path) -> pd.DataFrame:
    """Infomap ``.tree`` file → columns path (str), flow, name, node_id.

    The header is the leading block of ``#`` lines; they are skipped by count rather than
    with ``comment='#'``, which would cut data lines of tokens containing ``#``.
    """
    with open(path, encoding="utf-8") as f:
        header = 0
        for line in f:
            if not line.startswith("#"):
                break
            header += 1
    return pd.read_csv(
        path, sep=" ", skiprows=header, header=None, names=["path", "flow", "name", "node_id"],
        quotechar='"', dtype={"path": str, "flow": np.float64, "name": str, "node_id": np.int64},
        keep_default_na=False, encoding="utf-8",
    )


def _module_table(table: pd.DataFrame, top_words: int) -> pd.DataFrame:
    """One row per top module: size, flow and its highest-flow words, largest flow first."""
    ranked = table.sort_values(["module", "flow"], ascending=[True, False], kind="stable")
    module_ids, starts, sizes = np.unique(ranked["module"].to_numpy(), return_index=True, return_counts=True)
    tokens = ranked["token"].to_numpy(dtype=object)
    out = pd.DataFrame(
        {
            "module": module_ids.astype(np.int64),
            "size": sizes.astype(np.int64),
            "flow": np.add.reduceat(ranked["flow"].to_numpy(), starts),
            "top_words": [tokens[s:s + min(c, top_words)].tolist() for s, c in zip(starts, sizes)],
        }
    )
    return out.sort_values("flow", ascending=False, kind="stable").reset_index(drop=True)
