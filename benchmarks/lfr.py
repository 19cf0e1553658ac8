"""LFR benchmark graphs (networkx) and the NMI of Infomap and Louvain against the planted
partition: used by benchmarks/graph.py and tests/test_communities.py, not by the pipeline."""
from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from kexue.graph.communities import infomap_network, run_infomap


def lfr_graph(
    n: int, mu: float, seed: int, average_degree: float = 15, tau1: float = 3.0, tau2: float = 1.5,
    min_community: int = 20, max_community: int | None = None, max_degree: int | None = None,
) -> tuple[nx.Graph, np.ndarray]:
    """networkx LFR benchmark graph and its planted community label per node (0..n-1)."""
    g = nx.LFR_benchmark_graph(
        n, tau1, tau2, mu, average_degree=average_degree, min_community=min_community,
        max_community=max_community, max_degree=max_degree, seed=seed,
    )
    g.remove_edges_from(nx.selfloop_edges(g))
    label_of: dict[frozenset, int] = {}
    labels = np.array([label_of.setdefault(frozenset(g.nodes[v]["community"]), len(label_of)) for v in range(n)])
    return g, labels


def lfr_nmi(
    n: int = 1000, mu: float = 0.1, seed: int = 1, average_degree: float = 15, num_trials: int = 5, **lfr_kwargs: Any
) -> dict[str, Any]:
    """NMI against the planted partition of an LFR graph: Infomap (two-level) vs Louvain.

    ``realised_mu`` is the fraction of edges that actually join different planted communities:
    networkx's generator overshoots the requested μ (networkx issue #6809), so read the NMI
    against the realised value.
    """
    g, planted = lfr_graph(n, mu, seed, average_degree, **lfr_kwargs)
    ends = np.array(g.edges(), dtype=np.int64).reshape(-1, 2)
    adjacency = nx.to_scipy_sparse_array(g, nodelist=range(n), format="csr")
    result = run_infomap(infomap_network(adjacency, directed=False), directed=False, seed=seed, num_trials=num_trials)
    found = result.modules()
    infomap_labels = np.array([found[v] for v in range(n)])
    louvain = nx.community.louvain_communities(g, seed=seed)
    louvain_labels = np.empty(n, dtype=np.int64)
    for i, members in enumerate(louvain):
        louvain_labels[list(members)] = i
    return {
        "n": n,
        "mu": mu,
        "seed": seed,
        "realised_mu": float((planted[ends[:, 0]] != planted[ends[:, 1]]).mean()),
        "mean_degree": 2 * g.number_of_edges() / n,
        "planted_communities": int(planted.max() + 1),
        "infomap_modules": int(result.num_top_modules),
        "louvain_modules": len(louvain),
        "infomap_nmi": float(normalized_mutual_info_score(planted, infomap_labels)),
        "louvain_nmi": float(normalized_mutual_info_score(planted, louvain_labels)),
    }
