"""Word-graph artifacts: node table, edge list, Pajek ``.net`` and GraphML; and reading them back.

Why several formats: Parquet is what our own stages read (typed, fast, columnar); Pajek is
what Infomap's command-line tool reads, so a user can rerun the reference binary on exactly
our graph; GraphML opens in networkx/Gephi, but only for graphs small enough to be useful
there. All files are written atomically (``kexue.core.artifacts``).

Conventions: node ids are 0-based in Parquet and 1-based in Pajek (Pajek's rule). An
undirected graph stores each edge once with ``source < target``; a directed one stores arcs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from kexue.core.artifacts import atomic_path, write_json_atomic, write_parquet_atomic, write_text_atomic

NODES_FILE = "nodes.parquet"
EDGES_FILE = "edges.parquet"
PAJEK_FILE = "graph.net"
GRAPHML_FILE = "graph.graphml"
META_FILE = "graph.json"


def edge_arrays(adjacency: sp.spmatrix, directed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source, target, weight) of the non-zero links; undirected: upper triangle only."""
    a = sp.coo_matrix(adjacency)
    a.sum_duplicates()
    keep = a.data != 0
    if not directed:
        keep &= a.row <= a.col
    order = np.lexsort((a.col[keep], a.row[keep]))
    return a.row[keep][order].astype(np.int64), a.col[keep][order].astype(np.int64), a.data[keep][order]


def pajek_text(tokens: list[str], adjacency: sp.spmatrix, directed: bool) -> str:
    """Pajek network text: ``*Vertices`` with quoted names, then ``*Edges`` or ``*Arcs``.

    Weights are written with 17 significant digits so reading the file back gives the same
    doubles; a double quote inside a name would end the quoted name, so it becomes ``'``.
    """
    src, dst, w = edge_arrays(adjacency, directed)
    names = [t.replace('"', "'") for t in tokens]
    lines = [f"*Vertices {len(tokens)}"]
    lines += [f'{i + 1} "{name}"' for i, name in enumerate(names)]
    lines.append(f"{'*Arcs' if directed else '*Edges'} {len(src)}")
    lines += [f"{s} {t} {x:.17g}" for s, t, x in zip((src + 1).tolist(), (dst + 1).tolist(), w.tolist())]
    return "\n".join(lines) + "\n"


def write_graph(
    out_dir: str | Path,
    tokens: list[str],
    counts: np.ndarray,
    adjacency: sp.spmatrix,
    directed: bool,
    graphml_max_nodes: int,
    meta: dict[str, Any],
) -> dict[str, str]:
    """Write nodes/edges Parquet, Pajek, meta JSON and (if small enough) GraphML.

    Returns ``{name: path}`` of the files written.
    """
    out = Path(out_dir)
    n = len(tokens)
    if adjacency.shape != (n, n) or len(counts) != n:
        raise ValueError(f"{n} tokens but adjacency {adjacency.shape} and {len(counts)} counts")
    src, dst, w = edge_arrays(adjacency, directed)
    files = {
        "nodes": write_parquet_atomic(
            out / NODES_FILE,
            pd.DataFrame({"id": np.arange(n, dtype=np.int64), "token": tokens, "count": np.asarray(counts, dtype=np.int64)}),
        ),
        "edges": write_parquet_atomic(out / EDGES_FILE, pd.DataFrame({"source": src, "target": dst, "weight": w})),
        "pajek": write_text_atomic(out / PAJEK_FILE, pajek_text(tokens, adjacency, directed)),
        "meta": write_json_atomic(out / META_FILE, {**meta, "directed": directed, "num_nodes": n, "num_edges": int(len(src))}),
    }
    if n <= graphml_max_nodes:
        import networkx as nx  # only here: importing it costs ~0.5 s on every fresh Dask worker

        g = nx.DiGraph() if directed else nx.Graph()
        g.add_nodes_from((i, {"token": t, "count": int(c)}) for i, (t, c) in enumerate(zip(tokens, counts)))
        g.add_weighted_edges_from(zip(src.tolist(), dst.tolist(), w.tolist()))
        with atomic_path(out / GRAPHML_FILE, suffix=".graphml") as tmp:
            nx.write_graphml(g, tmp)
        files["graphml"] = out / GRAPHML_FILE
    return {k: str(v) for k, v in files.items()}


def read_graph(graph_dir: str | Path) -> tuple[pd.DataFrame, sp.csr_matrix, dict[str, Any]]:
    """(nodes table, adjacency, meta) of a graph written by ``write_graph``.

    The adjacency of an undirected graph is returned symmetric (both directions).
    """
    d = Path(graph_dir)
    meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    nodes = pd.read_parquet(d / NODES_FILE)
    edges = pd.read_parquet(d / EDGES_FILE)
    n = len(nodes)
    a = sp.csr_matrix(
        (edges["weight"].to_numpy(np.float64), (edges["source"].to_numpy(), edges["target"].to_numpy())), shape=(n, n)
    )
    if not meta["directed"]:
        a = (a + a.T - sp.diags(a.diagonal())).tocsr()
    return nodes, a, meta
