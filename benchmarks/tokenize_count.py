"""Tokenise + count the built-in People's Daily corpus replicated k times, six ways.

    python benchmarks/tokenize_count.py --k 5

Prints JSON: for each method wall seconds, characters/second, peak memory (the method's
process tree, and each of its processes), the speed ratio to the naive loop and to
rjieba's own rate (``rjieba_bound``: segmenting every text with ``rjieba.cut`` on all
cores, nothing else), and whether its counts are identical to the naive loop's. Methods:

- naive: ``d[t] = d.get(t, 0) + 1`` over ``jieba.lcut`` of each document, one process
- batched: the same segmentation, counted per batch with Counter and merged
- pool2: multiprocessing.Pool(2), each worker counts its chunk, partials merged
- jieba_parallel2: ``jieba.enable_parallel(2)`` on the whole text, then counted
- pipeline_jieba / pipeline_rjieba: the kexue flow's tokenize + count stages on a
  LocalCluster of 2 single-threaded Dask workers, started as `kexue run` starts it (stage
  seconds from the run summary; the flow run around them is ``run_wall_seconds``); peak
  memory is also given per process (the flow process as ``root``, the API, the fork
  server, each worker)

Whitespace-only tokens are dropped by every method (the pipeline drops them).

Each method runs ``--repeat`` times, the methods interleaved, and its fastest run is the one
reported (``wall_seconds_runs`` lists them all): on a shared machine noise only ever slows a
run, and one 0.7 s measurement of the bound ranged over 0.62-1.19 s in an hour here. Summed peak
memory is the largest of the runs; the per-process table is the fastest run's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys
import tempfile
import time
from collections import Counter
from itertools import chain, islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def corpus(k: int) -> list[str]:
    from kexue.text.corpora import peoples_daily

    texts = [r.text for r in peoples_daily() if r.text.strip()]
    return texts * k


def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def _save(counts: Counter, out: str) -> None:
    with open(out, "wb") as f:
        pickle.dump(dict(counts), f)


def naive(k: int, out: str) -> dict:
    jieba = _jieba()
    texts = corpus(k)
    t0 = time.perf_counter()
    tokens: dict[str, int] = {}
    for text in texts:
        for t in jieba.lcut(text):
            if t.strip():
                tokens[t] = tokens.get(t, 0) + 1
    wall = time.perf_counter() - t0
    _save(Counter(tokens), out)
    return {"wall_seconds": wall, "characters": sum(map(len, texts))}


def _count_batched(texts: list[str], batch: int = 2000) -> Counter:
    import jieba

    total = Counter()
    it = iter(texts)
    while chunk := list(islice(it, batch)):
        total.update(Counter(t for t in chain.from_iterable(jieba.lcut(x) for x in chunk) if t.strip()))
    return total


def batched(k: int, out: str) -> dict:
    _jieba()
    texts = corpus(k)
    t0 = time.perf_counter()
    counts = _count_batched(texts)
    wall = time.perf_counter() - t0
    _save(counts, out)
    return {"wall_seconds": wall, "characters": sum(map(len, texts))}


def _pool_init() -> None:
    _jieba()


def pool2(k: int, out: str) -> dict:
    import multiprocessing as mp

    texts = corpus(k)
    t0 = time.perf_counter()
    n = len(texts)
    chunks = [texts[i:i + n // 8 + 1] for i in range(0, n, n // 8 + 1)]
    with mp.get_context("fork").Pool(2, initializer=_pool_init) as pool:
        counts = Counter()
        for part in pool.imap_unordered(_count_batched, chunks):
            counts.update(part)
    wall = time.perf_counter() - t0
    _save(counts, out)
    return {"wall_seconds": wall, "characters": sum(map(len, texts))}


def jieba_parallel2(k: int, out: str) -> dict:
    jieba = _jieba()
    texts = corpus(k)
    t0 = time.perf_counter()
    jieba.enable_parallel(2)
    tokens = jieba.lcut("\n".join(texts))
    counts = Counter(t for t in tokens if t.strip())
    jieba.disable_parallel()
    wall = time.perf_counter() - t0
    _save(counts, out)
    return {"wall_seconds": wall, "characters": sum(map(len, texts))}


def _segment_only(texts: list[str]) -> int:
    import rjieba

    for text in texts:
        rjieba.cut(text, True)
    return len(texts)


def rjieba_bound(k: int, out: str) -> dict:
    """rjieba alone on every core of the machine (2 here): what no tokenizer built on it can beat."""
    import multiprocessing as mp

    texts = corpus(k)
    n = len(texts)
    cores = min(2, os.cpu_count() or 1)
    chunks = [texts[i:i + n // cores + 1] for i in range(0, n, n // cores + 1)]
    with mp.get_context("fork").Pool(cores, initializer=__import__, initargs=("rjieba",)) as pool:
        pool.map(len, [[]] * cores)  # workers up and rjieba loaded before the clock starts
        t0 = time.perf_counter()
        pool.map(_segment_only, chunks)
        wall = time.perf_counter() - t0
    _save(Counter(), out)
    return {"wall_seconds": wall, "characters": sum(map(len, texts)), "processes_used": cores}


def pipeline(backend: str, k: int, out: str, partition_bytes: int) -> dict:
    """The real flow (LocalCluster, embedded Prefect API), in a fresh project folder."""
    work = Path(tempfile.mkdtemp(prefix="kexue-bench-"))
    corpus_file = work / "corpus.jsonl"
    with open(corpus_file, "w", encoding="utf-8") as f:
        for i, text in enumerate(corpus(k)):
            f.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
    (work / "conf").mkdir()
    (work / "pipeline.yaml").write_text((ROOT / "pipeline.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (work / "conf" / "bench.yaml").write_text(
        f"data_dir: {work / 'data'}\ndask: {{n_workers: 2, threads_per_worker: 1, dashboard_address: '127.0.0.1:0'}}\n"
        "prefect: {api: environment}\n", encoding="utf-8")
    os.environ.update({"PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "ERROR"})
    from flows import runtime
    from flows.registry import load

    # max_partition_factor 1: no partition beyond partition_bytes. The content-defined cuts fall
    # at the same documents in every copy of a replicated corpus: at k=5, five partitions of about
    # one copy each and a small one, i.e. three rounds on two workers
    overrides = [f"ingest.sources=[{corpus_file}]", "ingest.deduplicate=false",
                 f"ingest.partition_bytes={partition_bytes}", "ingest.max_partition_factor=1.0",
                 f"tokenize.backend={backend}"]
    pipeline_yaml, profile = str(work / "pipeline.yaml"), str(work / "conf" / "bench.yaml")
    cfg = load(pipeline_yaml, profile, overrides)
    runtime.prepare(cfg)
    # as `kexue run` does: the API and the cluster start side by side (keep stdout for the JSON)
    with runtime.run_services(cfg, embed_api=True) as services, contextlib.redirect_stdout(sys.stderr):
        from flows.pipeline import pipeline as flow

        services.ready()
        t0 = time.perf_counter()
        summary = flow(pipeline_yaml, profile, overrides, ["count"], dask_address=services.dask_address)
        run_wall = time.perf_counter() - t0
    stages = {s["name"]: s for s in summary["stages"]}
    import pandas as pd

    vocab = pd.read_parquet(stages["count"]["files"]["vocabulary"])
    _save(Counter(dict(zip(vocab["token"], vocab["count"].astype(int)))), out)
    return {"wall_seconds": stages["tokenize"]["seconds"] + stages["count"]["seconds"],
            "tokenize_seconds": stages["tokenize"]["seconds"], "count_seconds": stages["count"]["seconds"],
            "characters": stages["tokenize"]["metrics"]["characters"],
            "run_wall_seconds": run_wall, "ingest_seconds": stages["ingest"]["seconds"],
            "partitions": stages["tokenize"]["metrics"]["partitions"],
            "tokenize_workers": stages["tokenize"]["metrics"]["workers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5, help="replicate the corpus k times")
    ap.add_argument("--methods", default="naive,batched,pool2,jieba_parallel2,rjieba_bound,pipeline_jieba,pipeline_rjieba")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each method (interleaved); the fastest is reported")
    ap.add_argument("--partition-bytes", type=int, default=14_000_000,
                    help="target bytes per partition, also cut hard there. The cuts are content-defined, so "
                         "they fall at the same documents in every copy of the replicated corpus: at k=5 "
                         "this gives five partitions of about one copy each and a small one")
    args = ap.parse_args()
    load_before = os.getloadavg()
    out_dir = Path(tempfile.mkdtemp(prefix="kexue-bench-counts-"))
    runs: dict[str, list[dict]] = {}
    counts: dict[str, Counter] = {}
    for _ in range(args.repeat):
        for name in args.methods.split(","):
            out = str(out_dir / f"{name}.pkl")
            if name.startswith("pipeline_"):
                res = measure(pipeline, name.split("_", 1)[1], args.k, out, args.partition_bytes)
            else:
                res = measure(globals()[name], args.k, out)
            with open(out, "rb") as f:
                got = pickle.load(f)
            if counts.setdefault(name, got) != got:
                raise RuntimeError(f"{name}: counts differ between runs")
            runs.setdefault(name, []).append(res)
            print(f"{name}: {res['wall_seconds']:.3f}s", file=sys.stderr)
    results = {}
    for name, rs in runs.items():
        res = dict(min(rs, key=lambda r: r["wall_seconds"]))
        res["wall_seconds_runs"] = [round(r["wall_seconds"], 3) for r in rs]
        res["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rs)
        res["peak_pss_mib"] = max(r["peak_pss_mib"] for r in rs)
        res["chars_per_second"] = round(res["characters"] / res["wall_seconds"])
        res["wall_seconds"] = round(res["wall_seconds"], 3)
        results[name] = res
    base, bound = results.get("naive"), results.get("rjieba_bound")
    for name, res in results.items():
        if base:
            res["speedup_vs_naive"] = round(base["wall_seconds"] / res["wall_seconds"], 2)
            if name != "rjieba_bound":
                res["counts_identical_to_naive"] = counts[name] == counts["naive"]
        if bound and name != "rjieba_bound":
            res["fraction_of_rjieba_bound"] = round(bound["wall_seconds"] / res["wall_seconds"], 3)
    dump({"benchmark": "tokenize_count", "k": args.k, "repeat": args.repeat, "cpu_count": os.cpu_count(),
          "load_average_before": load_before, "load_average_at_end": os.getloadavg(), "methods": results,
          "goal": "pipeline_rjieba: speedup_vs_naive >= 10 and fraction_of_rjieba_bound >= 0.4 at k=5, "
                  "identical counts, peak RSS <= 1 GiB"})


if __name__ == "__main__":
    main()
