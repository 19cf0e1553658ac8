"""Prefect tasks for the word graph: co-occurrence per partition, tree sum, build, InfoMap.

The library modules (SciPy, pandas, infomap) are imported inside the tasks, as in
``tasks.text``: the flow process only submits these.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kexue.core.artifacts import FileRef, Manifest, save_content_addressed, sha256_text, stable_json
from kexue.graph.params import CommunityParams, GraphParams
from tasks.caching import Store, kexue_task

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp


def _save_matrix(store: Store, m: sp.spmatrix) -> FileRef:
    import scipy.sparse as sp

    # uncompressed: zlib took 1.8 s a matrix (default corpus) for a file 6x smaller, and these
    # partial counts are read once, by the next merge
    return save_content_addressed(store.stage_dir("graph") / "counts", ".npz",
                                  lambda t: sp.save_npz(t, sp.csr_matrix(m), compressed=False))


@kexue_task("cooccurrence-partition")
def cooccurrence_partition_task(store: Store, tokens: FileRef, vocabulary: FileRef, params: GraphParams) -> FileRef:
    """Windowed counts of one tokens partition (upper triangle, sparse) — one Dask task each."""
    from kexue.graph import cooccurrence as kcooc

    return _save_matrix(store, kcooc.partition_cooccurrence(tokens.path, vocabulary.path, params))


@kexue_task("cooccurrence-merge")
def cooccurrence_merge_task(store: Store, parts: list[FileRef]) -> FileRef:
    import scipy.sparse as sp

    from kexue.graph import cooccurrence as kcooc

    return _save_matrix(store, kcooc.sum_counts(sp.load_npz(p.path) for p in parts))


def load_vectors(jose: Manifest | None) -> tuple[list[str], np.ndarray] | None:
    """(words, unit vectors) from a JoSE manifest: the word order Parquet and u.npy."""
    if jose is None:
        return None
    import numpy as np
    import pandas as pd

    words = pd.read_parquet(jose.files["vocab"].path)["token"].tolist()
    return words, np.load(jose.files["u"].path)


@kexue_task("graph-build")
def graph_build_task(store: Store, counts: FileRef | None, vocabulary: FileRef, params: GraphParams,
                     jose: Manifest | None = None) -> Manifest:
    import scipy.sparse as sp

    from kexue.graph import cooccurrence as kcooc

    key = sha256_text(counts.sha256 if counts else "knn", vocabulary.sha256, stable_json(params),
                      jose.fingerprint() if jose else "")
    out = store.stage_dir("graph", key)
    matrix = sp.load_npz(counts.path) if counts else None
    return Manifest.of_result("graph", kcooc.build_graph(matrix, vocabulary.path, str(out), params, load_vectors(jose)))


@kexue_task("communities")
def communities_task(store: Store, graph: Manifest, params: CommunityParams, jose: Manifest | None = None) -> Manifest:
    from kexue.graph import communities as kcom

    out = store.stage_dir("communities", sha256_text(graph.fingerprint(), stable_json(params), jose.fingerprint() if jose else ""))
    graph_dir = str(Path(graph.files["pajek"].path).parent)
    return Manifest.of_result("communities", kcom.detect_communities(graph_dir, str(out), params, load_vectors(jose)))
