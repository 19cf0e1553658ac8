"""Benchmark of the graph and communities stages; prints one JSON document.

1. Co-occurrence build on the built-in People's Daily corpus ×5: the pipeline way (2 single-
   threaded Dask worker processes mapping ``partition_cooccurrence`` over the tokens
   partitions, partials summed on the cluster) against a naive single-process Python
   dict-of-pairs loop; seconds, ratio (goal ≥ 5×), peak RSS of each.
2. Graph + communities with default settings on the built-in corpus (×1): Infomap's own time
   versus the whole communities stage (goal: overhead ≤ 25 %), largest module share (goal
   < 20 %), codelength saving (goal > 5 %), the 15 largest modules with their top words.
3. LFR table: NMI against the planted partition for Infomap and networkx Louvain at
   μ = 0.1, 0.3, 0.5 (n = 1000, average degree 15, seeds 1-3).

Tokenising (rjieba, once) and writing the Parquet inputs (vocabulary via kexue.text.count) happen
before any timing. The machine is shared: the load average is recorded, and each build is
timed ``--repeats`` times (best reported, all listed).

    .venv/bin/python benchmarks/graph.py [--scale 5] [--partitions 8] [--repeats 2] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from kexue.graph.communities import community_params, detect_communities
from lfr import lfr_nmi
from kexue.graph.cooccurrence import build_graph, graph_params, partition_cooccurrence, select_vocabulary, sum_counts
from kexue.text.corpora import peoples_daily
from kexue.text.count import count_partition, merge_partials, vocabulary


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB.

    Not ``ru_maxrss``: Linux keeps that across exec, so a freshly spawned worker would report
    its parent's peak. VmHWM belongs to the address space and starts anew in each process.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_inputs(docs: list[list[str]], out: Path, partitions: int) -> tuple[list[str], str]:
    """Tokens partitions and the vocabulary Parquet, made with the count stage's functions."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, idx in enumerate(np.array_split(np.arange(len(docs)), partitions)):
        path = out / f"tokens-{i:03d}.parquet"
        pd.DataFrame(
            {"doc_id": [str(j) for j in idx], "source": "builtin:peoples-daily-1998", "label": None, "tokens": [docs[j] for j in idx]}
        ).to_parquet(path, index=False)
        paths.append(str(path))
    vocab_path = out / "vocabulary.parquet"
    vocabulary(merge_partials([count_partition(p) for p in paths])).to_parquet(vocab_path, index=False)
    return paths, str(vocab_path)


def naive_counts(paths: list[str], vocab_path: str, params: dict) -> dict:
    """Reference: one process, a Python dict keyed by word pairs (what the stage must beat).

    Same counting convention as the stage: filtered tokens removed first, each unordered pair
    of distinct words within the window counted once.
    """
    baseline = peak_rss_mb()
    t0 = time.perf_counter()
    keep = set(select_vocabulary(vocab_path, graph_params(params))["token"])
    window = graph_params(params).window
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    for path in paths:
        for doc in pq.read_table(path, columns=["tokens"]).column("tokens").to_pylist():
            kept = [t for t in doc if t in keep]
            for i, a in enumerate(kept):
                for b in kept[i + 1:i + 1 + window]:
                    if a < b:
                        pairs[a, b] += 1
                    elif b < a:
                        pairs[b, a] += 1
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline,
            "total": int(sum(pairs.values())), "distinct_pairs": len(pairs)}


def parallel_counts(client, paths: list[str], vocab_path: str, params: dict) -> tuple[float, object]:
    """The pipeline stage's shape: one task per partition, partials tree-summed on the cluster."""
    t0 = time.perf_counter()
    futures = client.map(partition_cooccurrence, paths, vocab_path=vocab_path, params=params, pure=False)
    while len(futures) > 1:
        futures = [client.submit(sum_counts, futures[i:i + 2], pure=False) for i in range(0, len(futures), 2)]
    total = futures[0].result()
    return time.perf_counter() - t0, total


def bench_cooccurrence(docs: list[list[str]], work: Path, scale: int, partitions: int, repeats: int) -> dict:
    """Naive run in a fresh spawned process (its own peak memory); best of ``repeats`` each."""
    from distributed import Client, LocalCluster

    paths, vocab_path = write_inputs(docs * scale, work / f"x{scale}", partitions)
    params: dict = {}  # stage defaults
    naive_runs = []
    for _ in range(repeats):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            naive_runs.append(pool.apply(naive_counts, (paths, vocab_path, params)))
    naive = min(naive_runs, key=lambda r: r["seconds"])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        idle = client.run(peak_rss_mb)
        runs = [parallel_counts(client, paths, vocab_path, params) for _ in range(repeats + 1)]
        peaks = client.run(peak_rss_mb)
    total = runs[0][1]
    if int(total.sum()) != naive["total"] or total.nnz != naive["distinct_pairs"]:
        raise AssertionError(f"parallel counts {total.sum()}/{total.nnz} != naive {naive['total']}/{naive['distinct_pairs']}")
    cold = runs[0][0]
    warm = min(seconds for seconds, _ in runs[1:])
    return {
        "corpus": f"builtin:peoples-daily-1998 x{scale}",
        "documents": len(docs) * scale,
        "tokens": sum(map(len, docs)) * scale,
        "partitions": partitions,
        "vocabulary_nodes": total.shape[0],
        "pair_count_total": naive["total"],
        "distinct_pairs": naive["distinct_pairs"],
        "naive_dict_seconds_runs": [r["seconds"] for r in naive_runs],
        "parallel_2_workers_seconds_runs": [seconds for seconds, _ in runs],
        "naive_dict_seconds": naive["seconds"],
        "parallel_2_workers_seconds_cold": cold,
        "parallel_2_workers_seconds": warm,
        "speedup": naive["seconds"] / warm,
        "speedup_cold": naive["seconds"] / cold,
        "parallel_worker_peak_rss_mb": sorted(peaks.values()),
        "parallel_worker_idle_rss_mb": sorted(idle.values()),
        "naive_peak_rss_mb": naive["peak_rss_mb"],
        "naive_baseline_rss_mb": naive["baseline_rss_mb"],
    }


def load_vectors(jose_dir: str) -> tuple[list[str], np.ndarray]:
    """(words, u) from a JoSE stage output directory (vocab.parquet gives u.npy's row order)."""
    words = pd.read_parquet(Path(jose_dir) / "vocab.parquet")["token"].tolist()
    return words, np.load(Path(jose_dir) / "u.npy")


def bench_communities(docs: list[list[str]], work: Path, vectors: tuple[list[str], np.ndarray] | None) -> dict:
    paths, vocab_path = write_inputs(docs, work / "x1", 4)
    t0 = time.perf_counter()
    counts = sum_counts(partition_cooccurrence(p, vocab_path, {}) for p in paths)
    graph = build_graph(counts, vocab_path, str(work / "graph"), {})
    graph_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    comm = detect_communities(str(work / "graph"), str(work / "communities"), {}, vectors=vectors)
    stage_seconds = time.perf_counter() - t0
    m = comm["metrics"]
    cosine = {k: m[k] for k in ("within_module_cosine", "between_module_cosine", "cosine_words") if k in m}
    if vectors is not None:
        knn = build_graph(None, vocab_path, str(work / "knn-graph"), {"source": "knn"}, vectors=vectors)
        knn_comm = detect_communities(str(work / "knn-graph"), str(work / "knn-communities"), {}, vectors=vectors)["metrics"]
        cosine["knn_graph"] = {
            "graph": knn["metrics"],
            **{k: knn_comm[k] for k in ("num_modules", "largest_module_share", "saving_percent", "within_module_cosine", "between_module_cosine")},
            "largest_modules": knn_comm["top_modules"][:5],
        }
    return {
        "graph_defaults": graph_params({}).model_dump(mode="json"),
        "communities_defaults": community_params({}).model_dump(mode="json"),
        "graph_seconds_single_process": graph_seconds,
        "graph_metrics": graph["metrics"],
        "infomap_seconds": m["infomap_seconds"],
        "communities_stage_seconds": stage_seconds,
        "overhead_percent": 100.0 * (stage_seconds - m["infomap_seconds"]) / m["infomap_seconds"],
        "num_modules": m["num_modules"],
        "largest_module_share": m["largest_module_share"],
        "codelength_one_level": m["codelength_one_level"],
        "codelength": m["codelength"],
        "saving_percent": m["saving_percent"],
        "codelength_mapequation_diff": m["codelength_mapequation_diff"],
        "largest_modules": m["top_modules"],
        "jose_cosine": cosine or None,
    }


def bench_lfr() -> list[dict]:
    rows = []
    for mu in (0.1, 0.3, 0.5):
        for seed in (1, 2, 3):
            rows.append(lfr_nmi(1000, mu, seed, average_degree=15, num_trials=5, max_degree=50, max_community=100))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each co-occurrence build (best is reported)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--jose-dir", default=None, help="a JoSE stage output dir: adds module cosines and a kNN graph")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kexue-graph-bench-"))

    import rjieba

    t0 = time.perf_counter()
    docs = [rjieba.cut(r.text) for r in peoples_daily()]
    report = {
        "load_average_at_start": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "tokenise_seconds_untimed": time.perf_counter() - t0,
        "cooccurrence": bench_cooccurrence(docs, work, args.scale, args.partitions, args.repeats),
        "communities": bench_communities(docs, work, load_vectors(args.jose_dir) if args.jose_dir else None),
        "lfr": bench_lfr(),
        "load_average_at_end": os.getloadavg(),
    }
    json.dump(report, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
