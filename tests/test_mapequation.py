"""Our two-level map equation against the codelength Infomap reports for the same partition."""
from __future__ import annotations

import infomap
import numpy as np
import pytest
import scipy.sparse as sp

from kexue.graph.communities import infomap_network, run_infomap
from kexue.graph.mapequation import codelength, directed_flow, undirected_flow

TOL = 1e-6  # bits; observed agreement is ~1e-13

FLOW_MODELS = [
    pytest.param(False, {}, id="undirected"),
    pytest.param(True, {}, id="directed-unrecorded"),
    pytest.param(True, {"recorded_teleportation": True}, id="directed-recorded"),
    pytest.param(True, {"to_nodes": True}, id="directed-to-nodes"),
]


def random_graph(seed: int, n: int, directed: bool, self_loops: bool = False, blocks: int = 1) -> np.ndarray:
    """Weighted random graph; with ``blocks`` > 1 links are denser inside planted blocks."""
    rng = np.random.default_rng(seed)
    block = np.arange(n) * blocks // n
    density = np.where(block[:, None] == block[None, :], 0.12 if blocks == 1 else 0.35, 0.02)
    a = (rng.random((n, n)) < density) * rng.uniform(0.5, 3.0, (n, n))
    if not self_loops:
        np.fill_diagonal(a, 0)
    if not directed:
        a = np.triu(a)
        a = a + a.T - np.diag(np.diag(a))
    return a


def ours(a: np.ndarray, labels: np.ndarray, directed: bool, extra: dict) -> float:
    return codelength(
        sp.csr_matrix(a), labels, directed=directed,
        recorded_teleportation=extra.get("recorded_teleportation", False),
        teleport_to_nodes=extra.get("to_nodes", False),
    )


@pytest.mark.parametrize("directed, extra", FLOW_MODELS)
@pytest.mark.parametrize("seed", [1, 2])
def test_fixed_partition_codelength_equals_infomap(directed: bool, extra: dict, seed: int) -> None:
    a = random_graph(seed, 35, directed)
    labels = np.random.default_rng(seed + 10).integers(0, 4, a.shape[0])
    net = infomap_network(sp.csr_matrix(a), directed)
    result = net.run(
        options=infomap.Options(no_infomap=True, two_level=True, directed=directed, **extra),
        initial_partition={i: int(m) for i, m in enumerate(labels)},
    )
    assert result.num_top_modules == len(set(labels.tolist()))
    mine = ours(a, labels, directed, extra)
    assert abs(mine.total - result.codelength) < TOL
    assert abs(mine.index - result.index_codelength) < TOL
    assert abs(mine.one_level - result.one_level_codelength) < TOL


@pytest.mark.parametrize("directed, extra", FLOW_MODELS[:2])
@pytest.mark.parametrize("self_loops", [False, True])
def test_optimised_partition_codelength_equals_infomap(directed: bool, extra: dict, self_loops: bool) -> None:
    a = random_graph(7, 60, directed, self_loops, blocks=3)
    result = run_infomap(infomap_network(sp.csr_matrix(a), directed), directed, seed=3, num_trials=2)
    found = result.modules()
    labels = np.array([found[i] for i in range(a.shape[0])])
    mine = ours(a, labels, directed, extra)
    assert result.num_top_modules > 1
    assert abs(mine.total - result.codelength) < TOL
    assert abs(mine.saving - result.relative_codelength_savings) < TOL


def test_flows_are_distributions_and_handle_dangling_nodes() -> None:
    a = random_graph(3, 20, directed=True)
    a[5, :] = 0  # dangling node: no out-links
    for recorded in (False, True):
        flow = directed_flow(sp.csr_matrix(a), recorded_teleportation=recorded)
        assert flow.node_flow.sum() == pytest.approx(1.0) and (flow.node_flow >= 0).all()
    u = undirected_flow(sp.csr_matrix(random_graph(3, 20, directed=False)))
    assert u.node_flow.sum() == pytest.approx(1.0) and u.link_flow.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="symmetric"):
        undirected_flow(sp.csr_matrix(a))


def test_one_module_costs_the_node_entropy() -> None:
    a = random_graph(4, 25, directed=False)
    one = codelength(sp.csr_matrix(a), np.zeros(25, dtype=int))
    p = a.sum(axis=1) / a.sum()
    p = p[p > 0]
    assert one.index == pytest.approx(0.0, abs=1e-12)
    assert one.total == pytest.approx(-(p * np.log2(p)).sum())
