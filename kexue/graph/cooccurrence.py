"""Word graphs: windowed co-occurrence counts, PMI/PPMI edge weights, top-k sparsification,
and the embedding k-nearest-neighbour graph.

Why this shape: the counting is the heavy part and scales with the corpus, so it is a function
of *one* tokens partition (``partition_cooccurrence``) returning a sparse V×V count matrix over
a fixed, filtered vocabulary; partials from Dask workers are simply added (sparse matrices form
a monoid under ``+``). Everything after the sum works on one sparse matrix of the vocabulary's
size, never on Python dicts of pairs.

Counting convention (the brute-force test pins it): filtered-out tokens (rare, stop words,
punctuation) are removed from each document first, then every pair of kept tokens at distance
1..window inside the same document counts once; a word paired with itself is not counted (it
would only become a self-loop). Partials hold each unordered pair once, in the upper triangle
(row < col): half the memory and half the bytes shipped between workers. ``symmetric_counts``
mirrors the summed triangle into the symmetric matrix C with C[a, b] = C[b, a] = n(a, b).
"""
from __future__ import annotations

from functools import reduce
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from kexue.graph.io import write_graph
from kexue.graph.params import GraphParams, Weighting

def graph_params(params: GraphParams | dict[str, Any] | None) -> GraphParams:
    """The validated parameters (a dict is validated; pydantic's error names the bad key)."""
    return params if isinstance(params, GraphParams) else GraphParams.model_validate(params or {})


def select_vocabulary(vocab_path: str, params: GraphParams) -> pd.DataFrame:
    """The graph's nodes: vocabulary rows that pass the filters, in rank order.

    Node id = row position in the returned frame (columns ``token``, ``count``). Every worker
    calls this on the same file, so all partial count matrices share one index.
    """
    vocab = pd.read_parquet(vocab_path, columns=["token", "count", "rank", "is_stopword", "is_punct", "is_number"])
    vocab = vocab.sort_values("rank", kind="stable")
    keep = vocab["count"] >= params.min_count
    if params.exclude_stopwords:
        keep &= ~vocab["is_stopword"].astype(bool)
    if params.exclude_punct:
        keep &= ~vocab["is_punct"].astype(bool)
    if params.exclude_numbers:
        keep &= ~vocab["is_number"].astype(bool)
    selected = vocab.loc[keep, ["token", "count"]]
    if params.max_vocab is not None:
        selected = selected.head(params.max_vocab)
    return selected.reset_index(drop=True)


def token_ids(tokens: pa.ChunkedArray | pa.Array, vocabulary: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Map a ``list<str>`` column to (kept token ids, document index of each kept token).

    Works on the dictionary-encoded form (as ``read_dictionary`` gives it straight from
    Parquet): only the distinct strings are looked up in the vocabulary (Arrow ``index_in``),
    then every token is one integer take; no Python loop over tokens.
    """
    value_set = pa.array(vocabulary["token"].tolist(), type=pa.string())
    chunks = tokens.chunks if isinstance(tokens, pa.ChunkedArray) else [tokens]
    ids, lengths = [], []
    for chunk in chunks:
        lengths.append(pc.fill_null(pc.list_value_length(chunk), 0).to_numpy(zero_copy_only=False))
        flat = pc.list_flatten(chunk)
        if not pa.types.is_dictionary(flat.type):
            flat = flat.dictionary_encode()
        lookup = pc.index_in(flat.dictionary.cast(pa.string()), value_set=value_set)
        lookup = np.append(pc.fill_null(lookup, -1).to_numpy(zero_copy_only=False), -1)  # last: null token
        codes = pc.fill_null(flat.indices, len(flat.dictionary)).to_numpy(zero_copy_only=False)
        ids.append(lookup[codes])
    length = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    all_ids = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, dtype=np.int64)
    doc = np.repeat(np.arange(len(length), dtype=np.int64), length)
    kept = all_ids >= 0
    return all_ids[kept], doc[kept]


def window_counts(ids: np.ndarray, doc: np.ndarray, num_words: int, window: int) -> sp.csr_matrix:
    """Upper-triangular co-occurrence counts of a token-id sequence split into documents by ``doc``.

    For each distance d ≤ window the pairs (ids[i], ids[i+d]) in the same document are
    collected as arrays and encoded as one int64 key row·V + col with row < col; sorting the
    keys groups equal pairs, and the sorted unique keys are already CSR order.
    """
    v = np.int64(num_words)
    keys = []
    for d in range(1, window + 1):
        if d >= len(ids):
            break
        a, b = ids[:-d], ids[d:]
        same = (doc[:-d] == doc[d:]) & (a != b)
        a, b = a[same], b[same]
        keys.append(np.minimum(a, b) * v + np.maximum(a, b))
    key = np.sort(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
    first = np.ones(len(key), dtype=bool)
    np.not_equal(key[1:], key[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(key))).astype(np.int64)
    pairs = key[starts]
    rows = pairs // v
    index = np.int32 if num_words < 2**31 else np.int64
    indptr = np.zeros(num_words + 1, dtype=index)
    np.cumsum(np.bincount(rows, minlength=num_words), out=indptr[1:])
    return sp.csr_matrix((counts, (pairs % v).astype(index), indptr), shape=(num_words, num_words))


def symmetric_counts(upper: sp.spmatrix) -> sp.csr_matrix:
    """Mirror summed upper-triangular counts into the symmetric co-occurrence matrix."""
    u = sp.csr_matrix(upper)
    if sp.tril(u, k=-1).nnz:
        raise ValueError("expected upper-triangular counts (row < col), as partition_cooccurrence returns")
    return (u + u.T).tocsr()


def partition_cooccurrence(tokens_path: str, vocab_path: str, params: dict[str, Any]) -> sp.csr_matrix:
    """Co-occurrence counts of one tokens partition (one Dask task per partition).

    Returns an upper-triangular int64 V×V ``csr_matrix`` over
    ``select_vocabulary(vocab_path, params)`` (each unordered pair once); partials of all
    partitions are summed with ``sum_counts`` (or ``+``) and handed to ``build_graph``.
    """
    p = graph_params(params)
    vocabulary = select_vocabulary(vocab_path, p)
    tokens = pq.read_table(tokens_path, columns=["tokens"], read_dictionary=["tokens.list.element"]).column("tokens")
    ids, doc = token_ids(tokens, vocabulary)
    return window_counts(ids, doc, len(vocabulary), p.window)


def sum_counts(parts: Iterable[sp.spmatrix]) -> sp.csr_matrix:
    """Sum partial count matrices (they must share the vocabulary, hence the shape)."""
    parts = list(parts)
    if not parts:
        raise ValueError("sum_counts needs at least one partial count matrix")
    shapes = {x.shape for x in parts}
    if len(shapes) != 1:
        raise ValueError(f"partial count matrices disagree on shape: {sorted(shapes)}")
    return sp.csr_matrix(reduce(lambda x, y: x + y, parts))


def weight_matrix(counts: sp.spmatrix, weighting: Weighting = "ppmi", alpha: float = 0.75) -> sp.csr_matrix:
    """Edge weights on the non-zeros of ``counts`` (natural log).

    - ``count``: the counts themselves.
    - ``pmi``: log( C_wc · N / (C_w · C_c) ), signed; N = Σ C, C_w row sums, C_c column sums.
    - ``ppmi``: max(0, log( P(w,c) / (P(w) · P_α(c)) )) with the context distribution smoothed
      as P_α(c) = C_c^α / Σ C_c'^α (Levy, Goldberg & Dagan 2015). Smoothing raises rare
      contexts' probability, damping PMI's bias towards rare pairs. The result is not
      symmetric even for symmetric counts; ``undirected_weights`` averages the two directions.
    """
    c = sp.csr_matrix(counts, dtype=np.float64)
    c.eliminate_zeros()
    if weighting == "count":
        return c
    if weighting not in ("pmi", "ppmi"):
        raise ValueError(f"weighting must be 'count', 'pmi' or 'ppmi', got {weighting!r}")
    total = c.sum()
    row = np.asarray(c.sum(axis=1)).ravel()
    col = np.asarray(c.sum(axis=0)).ravel()
    coo = c.tocoo()
    if weighting == "pmi":
        values = np.log(coo.data * total / (row[coo.row] * col[coo.col]))
    else:
        p_context = col**alpha / (col**alpha).sum()
        values = np.maximum(np.log((coo.data / total) / ((row[coo.row] / total) * p_context[coo.col])), 0.0)
    out = sp.csr_matrix((values, (coo.row, coo.col)), shape=c.shape)
    if weighting == "ppmi":
        out.eliminate_zeros()
    return out


def undirected_weights(weights: sp.spmatrix) -> sp.csr_matrix:
    """Symmetrise by averaging w(a→b) and w(b→a): one weight per undirected edge."""
    w = sp.csr_matrix(weights)
    return ((w + w.T) * 0.5).tocsr()


def top_k_edges(weights: sp.spmatrix, k: int) -> sp.csr_matrix:
    """Keep an edge a→b if it is among a's k strongest out-edges or b's k strongest in-edges.

    For a symmetric matrix this is "each node keeps its k strongest edges, union of both
    ends", so no node loses all of its edges to hubs. Ties are broken by the smaller
    neighbour id, making the result deterministic.
    """
    w = sp.csr_matrix(weights, dtype=np.float64)
    w.sum_duplicates()
    keep_out = _row_top_k_mask(w, k)
    keep_in = _row_top_k_mask(w.T.tocsr(), k).T.tocsr()
    keep = ((keep_out + keep_in) > 0).astype(np.float64)
    return w.multiply(keep).tocsr()


def _row_top_k_mask(w: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """0/1 matrix marking each row's k largest entries (ties: smaller column first)."""
    row_of = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    order = np.lexsort((w.indices, -w.data, row_of))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - w.indptr[row_of[order]]
    selected = rank < k
    return sp.csr_matrix(
        (np.ones(int(selected.sum())), (row_of[selected], w.indices[selected])), shape=w.shape
    )


def cooccurrence_edges(counts: sp.spmatrix, params: GraphParams) -> sp.csr_matrix:
    """Symmetric counts → weighted, thresholded, sparsified adjacency (weights > 0, no self-loops).

    Marginals for PMI come from all counts; pairs seen fewer than ``min_edge_count`` times are
    dropped afterwards, then non-positive weights, then top-k.
    """
    c = sp.csr_matrix(counts)
    w = weight_matrix(c, params.weighting, params.alpha)
    frequent = (c >= params.min_edge_count).astype(np.float64)
    w = w.multiply(frequent).tocsr()
    if not params.directed:
        w = undirected_weights(w)
    w = (w - sp.diags(w.diagonal())).tocsr()
    w.data[w.data < 0] = 0
    w.eliminate_zeros()
    if params.top_k is not None:
        w = top_k_edges(w, params.top_k)
    return w


def knn_graph(vectors: np.ndarray, k: int, block: int = 2048) -> sp.csr_matrix:
    """Symmetric k-nearest-neighbour graph by cosine (weights = cosine, positive ones only).

    Each word links to its k most similar other words; the union of both ends is kept (the
    cosine is the same number either way, so symmetrising is a max). Rows are normalised
    here, so JoSE's unit vectors and any others work. Similarities are computed a block of
    rows at a time, so memory is O(block × V), not O(V²).
    """
    x = np.asarray(vectors, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    n = x.shape[0]
    if n < 2:
        raise ValueError("knn_graph needs at least two vectors")
    k = min(k, n - 1)
    rows, cols, vals = [], [], []
    for start in range(0, n, block):
        sims = x[start:start + block] @ x.T
        local = np.arange(sims.shape[0])
        sims[local, start + local] = -np.inf  # no self-neighbours
        nbrs = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        rows.append(np.repeat(start + local, k))
        cols.append(nbrs.ravel())
        vals.append(sims[local[:, None], nbrs].ravel())
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float64)
    positive = v > 0
    directed = sp.csr_matrix((v[positive], (r[positive], c[positive])), shape=(n, n))
    return directed.maximum(directed.T).tocsr()


def build_graph(
    counts: sp.spmatrix | None,
    vocab_path: str,
    out_dir: str,
    params: dict[str, Any],
    vectors: tuple[list[str], np.ndarray] | None = None,
) -> dict[str, Any]:
    """The graph stage after the counts are summed: weight, sparsify, write artifacts.

    ``source='cooccurrence'`` needs ``counts``, the summed upper-triangular
    ``partition_cooccurrence`` output;
    ``source='knn'`` needs ``vectors`` = (words, unit-vector matrix) and ignores ``counts``.
    Nodes left without edges are dropped (they cannot belong to any flow module), so node
    ids are positions among the kept words. Returns ``{"files": {...}, "metrics": {...}}``.
    """
    p = graph_params(params)
    vocabulary = select_vocabulary(vocab_path, p)
    metrics: dict[str, Any] = {"source": p.source, "vocabulary_size": len(vocabulary)}
    if p.source == "cooccurrence":
        if counts is None:
            raise ValueError("graph.source = 'cooccurrence' needs the summed co-occurrence counts")
        if counts.shape != (len(vocabulary), len(vocabulary)):
            raise ValueError(f"counts shape {counts.shape} does not match the filtered vocabulary ({len(vocabulary)} words)")
        adjacency = cooccurrence_edges(symmetric_counts(counts), p)
        metrics.update(weighting=p.weighting, window=p.window, cooccurrence_pairs=int(counts.sum()))
    else:
        if vectors is None:
            raise ValueError("graph.source = 'knn' needs word vectors (JoSE output)")
        words, matrix = vectors
        row_of = {w: i for i, w in enumerate(words)}
        vocabulary = vocabulary[vocabulary["token"].isin(row_of)].reset_index(drop=True)
        adjacency = knn_graph(matrix[[row_of[t] for t in vocabulary["token"]]], p.knn_k)
        metrics.update(knn_k=p.knn_k)

    degree = np.diff(adjacency.indptr) + np.diff(adjacency.tocsc().indptr)
    connected = np.flatnonzero(degree > 0)
    adjacency = adjacency[connected][:, connected].tocsr()
    kept = vocabulary.iloc[connected]
    files = write_graph(
        out_dir,
        kept["token"].tolist(),
        kept["count"].to_numpy(),
        adjacency,
        p.directed,
        p.graphml_max_nodes,
        meta={"params": p.model_dump(mode="json")},
    )
    num_edges = adjacency.nnz if p.directed else (sp.triu(adjacency).nnz)
    metrics.update(
        num_nodes=len(kept),
        num_edges=int(num_edges),
        isolated_dropped=int(len(vocabulary) - len(kept)),
        mean_degree=float(2 * num_edges / max(len(kept), 1)) if not p.directed else float(num_edges / max(len(kept), 1)),
        graphml_written="graphml" in files,
    )
    return {"files": files, "metrics": metrics}
