"""Benchmark: our JoSE stage against the reference C implementation, same corpus and settings.

    python benchmarks/jose.py --reference-src /path/to/Spherical-Text-Embedding/src [--k 1,4] [--epochs 10] [--threads 2]

Builds the corpus from the built-in data (People's Daily + reviews, segmented with rjieba,
whitespace tokens dropped) as a tokens partition + vocabulary Parquet, and as one document
per line, space-separated, for the reference. Copies ``jose.c`` + ``makefile`` from
``--reference-src`` into a temporary folder and builds it with ``make`` (the reference code is
never copied into the repository). Runs each implementation as a child process (2 threads,
identical hyper-parameters), measuring wall seconds and the child's peak RSS
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a fresh launcher per run) and its CPU seconds,
then evaluates both outputs identically (kexue.embed.evaluate) and prints one JSON object.
``--k`` replicates every document k times (new doc ids) to see how time and memory grow; a
list (``--k 1,4``) runs each and reports the growth per unit of k. Two floors are reported:
the peak RSS of a process that only imports TensorFlow (where any TensorFlow implementation
starts), and of one that also compiles (XLA) and runs our training step once on a tiny
table (where ours starts before holding any corpus-sized data). The machine is shared: read
ratios from one run, with the load averages it records.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

LAUNCHER = (
    "import resource, subprocess, sys, time, json\n"
    "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'rc': rc, 'wall_seconds': time.perf_counter() - t, 'cpu_seconds': r.ru_utime + r.ru_stime,\n"
    "  'peak_rss_mb': r.ru_maxrss / 1024}))\n"
)


def build_corpus(work: Path, k: int) -> dict:
    """Tokens Parquet + vocabulary Parquet + reference text file for the built-in corpus × k."""
    import rjieba

    from kexue.text.corpora import peoples_daily, reviews, stopwords

    rows = []
    for name, records in (("builtin:peoples-daily-1998", peoples_daily()), ("builtin:reviews", reviews())):
        for i, rec in enumerate(records):
            tokens = [t for t in rjieba.cut(rec.text) if t.strip()]
            for rep in range(k):
                rows.append((f"{name}:{i}:{rep}", name, rec.label, tokens))
    df = pd.DataFrame(rows, columns=["doc_id", "source", "label", "tokens"])
    df.to_parquet(work / "tokens-00000.parquet", index=False)
    counts, doc_freq = Counter(), Counter()
    with open(work / "text.txt", "w", encoding="utf-8") as f:
        for tokens in df["tokens"]:
            counts.update(tokens)
            doc_freq.update(set(tokens))
            f.write(" ".join(tokens) + "\n")
    stop = stopwords()
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    pd.DataFrame({
        "token": [w for w, _ in items], "count": [c for _, c in items], "doc_freq": [doc_freq[w] for w, _ in items],
        "rank": np.arange(len(items)), "is_stopword": [w in stop for w, _ in items],
        "is_punct": [not any(ch.isalnum() for ch in w) for w, _ in items],
    }).to_parquet(work / "vocab.parquet", index=False)
    return {"documents": len(df), "tokens": int(sum(counts.values())), "distinct_tokens": len(counts)}


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` under a fresh launcher; wall time and the child's peak RSS."""
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} exited with {result['rc']}:\n{out.stderr[-3000:]}")
    return result


def run_ours(work: Path, params: dict) -> None:
    """Child-process entry: our stage, training + writing vectors (evaluation done outside)."""
    from kexue.embed.jose import train_jose_stage

    shutil.rmtree(work / "ours-checkpoints", ignore_errors=True)  # a fresh run, never a resumed one
    result = train_jose_stage([str(work / "tokens-00000.parquet")], str(work / "vocab.parquet"), str(work / "ours"),
                              params, str(work / "ours-checkpoints"), evaluate_vectors=False)
    (work / "ours-metrics.json").write_text(json.dumps(result["metrics"]), encoding="utf-8")


def run_step_floor(params: dict) -> None:
    """Child-process entry: TensorFlow imported, our training step compiled and run once on a
    1,000-row table. Its peak RSS is what our stage holds before any corpus-sized data."""
    import numpy as np

    from kexue.core.memory import release_library_pages
    from kexue.embed.jose import Block, JoseModel, configure_threads, random_unit_rows
    from kexue.embed.params import JoseParams

    release_library_pages()  # as the stage does first
    configure_threads()
    p = JoseParams.of(params)
    words = 400
    model = JoseModel(random_unit_rows(np.random.default_rng(0), 2 * words + 200, p.dim), words, p)
    rows = np.random.default_rng(1).integers(0, words, (p.steps_per_block, p.batch_size, 2 + p.negative), dtype=np.int32)
    rows[:, :, 1] += words
    model.train_block(Block(rows=rows, alpha=np.full(p.steps_per_block, p.alpha, np.float32),
                            tuples=rows.shape[0] * rows.shape[1], tokens_done=0))


def evaluate_outputs(words: list[str], u: np.ndarray, d: np.ndarray, work: Path, probes: list[str], seed: int) -> dict:
    from kexue.embed.evaluate import angle_statistics, document_classification, nearest_neighbours

    docs = pd.read_parquet(work / "tokens-00000.parquet")
    labelled = np.flatnonzero(docs["label"].notna().to_numpy() & (docs["source"] == "builtin:reviews").to_numpy())
    texts = [" ".join(t) for t in docs["tokens"].iloc[labelled]]
    stats, _ = angle_statistics(u, seed=seed)
    out = {"angles": stats, "neighbours": nearest_neighbours(u, words, probes)}
    out.update(document_classification(d[labelled], texts, docs["label"].iloc[labelled].tolist(), seed=seed))
    return out


def run_reference(build: Path, work: Path, hp: dict, epochs: int, threads: int, tokens: int, probes: list[str]) -> dict:
    """jose.c on the corpus in ``work``, timed, its outputs evaluated."""
    from kexue.embed.word2vec import read_word2vec

    cmd = [str(build / "jose"), "-train", str(work / "text.txt"), "-word-output", str(work / "ref-u.txt"),
           "-context-output", str(work / "ref-v.txt"), "-doc-output", str(work / "ref-d.txt"),
           "-size", str(hp["dim"]), "-window", str(hp["window"]), "-negative", str(hp["negative"]),
           "-margin", str(hp["margin"]), "-alpha", str(hp["alpha"]), "-min-count", str(hp["min_count"]),
           "-sample", str(hp["sample"]), "-iter", str(epochs), "-threads", str(threads), "-debug", "0"]
    ref = measured(cmd)
    words, u = read_word2vec(work / "ref-u.txt")
    _, d = read_word2vec(work / "ref-d.txt")
    keep = [i for i, w in enumerate(words) if w != "</s>"]  # the reference's line-end token
    ref["tokens_per_second"] = round(epochs * tokens / ref["wall_seconds"], 1)
    ref.update(evaluate_outputs([words[i] for i in keep], u[keep], d, work, probes, seed=0))
    return ref


def run_ours_measured(work: Path, params: dict, tokens: int, probes: list[str]) -> dict:
    """Our stage in a child process, timed, its outputs evaluated."""
    from kexue.embed.word2vec import read_word2vec

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    ours = measured([sys.executable, __file__, "--run-ours", str(work), "--params", json.dumps(params)], env=env)
    metrics = json.loads((work / "ours-metrics.json").read_text(encoding="utf-8"))
    ours["training_seconds"] = metrics["seconds"]
    ours["epoch_seconds"] = metrics["epoch_seconds"]
    ours["tokens_per_second"] = round(params["epochs"] * tokens / ours["wall_seconds"], 1)
    words, u = read_word2vec(work / "ours" / "words.txt")
    _, d = read_word2vec(work / "ours" / "docs.txt")
    ours.update(evaluate_outputs(words, u, d, work, probes, seed=0))
    return ours


def compare(ref: dict, ours: dict) -> tuple[dict, dict]:
    """The comparison table and the issue's goals for one corpus size."""
    c = {
        "speed_ratio_reference_over_ours": round(ref["wall_seconds"] / ours["wall_seconds"], 3),
        "cpu_ratio_reference_over_ours": round(ref["cpu_seconds"] / ours["cpu_seconds"], 3),
        "doc_accuracy": {"reference": ref["doc_accuracy"], "ours": ours["doc_accuracy"]},
        "tfidf_accuracy": ours["tfidf_accuracy"],
        "mean_cosine": {"reference": ref["angles"]["mean_cosine"], "ours": ours["angles"]["mean_cosine"]},
        "angle_mean": {"reference": ref["angles"]["angle_mean"], "ours": ours["angles"]["angle_mean"],
                       "theory": ours["angles"]["theory_angle_mean"]},
        "angle_var": {"reference": ref["angles"]["angle_var"], "ours": ours["angles"]["angle_var"],
                      "theory": ours["angles"]["theory_angle_var"]},
        "peak_rss_mb": {"reference": ref["peak_rss_mb"], "ours": ours["peak_rss_mb"],
                        "ratio_ours_over_reference": round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 3)},
    }
    goals = {
        "speed_ratio>=1.0": c["speed_ratio_reference_over_ours"] >= 1.0,
        "doc_accuracy>=reference": ours["doc_accuracy"] >= ref["doc_accuracy"],
        "mean_cosine<=reference": ours["angles"]["mean_cosine"] <= ref["angles"]["mean_cosine"],
        "peak_memory<=1.5x": c["peak_rss_mb"]["ratio_ours_over_reference"] <= 1.5,
    }
    return c, goals


def scaling(runs: dict[int, dict]) -> dict:
    """Growth of time and memory from the smallest k to each larger one, per unit of k.

    ``time_slope`` = (t(k) / t(k0)) / (k / k0): 1.0 is linear, below 1 is sublinear.
    """
    k0 = min(runs)
    out = {}
    for k in sorted(runs)[1:]:
        row = {}
        for who in ("reference", "ours"):
            if who in runs[k]:
                a, b = runs[k0][who], runs[k][who]
                row[who] = {"time_slope": round(b["wall_seconds"] / a["wall_seconds"] / (k / k0), 3),
                            "cpu_slope": round(b["cpu_seconds"] / a["cpu_seconds"] / (k / k0), 3),
                            "memory_mb_per_k": round((b["peak_rss_mb"] - a["peak_rss_mb"]) / (k - k0), 1)}
        out[f"k{k0}->k{k}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-src", required=False, help="folder with the reference jose.c and makefile")
    parser.add_argument("--k", default="1", help="replicate the corpus k times; a comma list runs each (e.g. 1,4)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="keep the work files here (default: a temp dir)")
    parser.add_argument("--params", default="{}", help="extra JSON params for our stage (e.g. batch_size)")
    parser.add_argument("--run-ours", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--step-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_ours:
        run_ours(Path(args.run_ours), json.loads(args.params))
        return
    if args.step_floor:
        run_step_floor(json.loads(args.params))
        return

    root = Path(args.workdir or tempfile.mkdtemp(prefix="jose-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    hp = {"dim": 100, "window": 5, "negative": 2, "margin": 0.15, "alpha": 0.04, "min_count": 5, "sample": 1e-3}
    params = {**hp, "epochs": args.epochs, "threads": args.threads, "seed": 0, **json.loads(args.params)}
    ks = [int(k) for k in args.k.split(",")]
    report: dict = {"k": ks, "params": params, "load_average_before": os.getloadavg(), "runs": {}}
    quiet_tf = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    report["tensorflow_import_floor"] = measured([sys.executable, "-c", "import tensorflow"], env=quiet_tf)
    report["compiled_step_floor"] = measured(
        [sys.executable, __file__, "--step-floor", "--params", json.dumps(params)], env=quiet_tf)
    probes = ["中国", "经济", "北京", "足球", "银行", "教育"]
    build = root / "reference-build"
    if args.reference_src:
        build.mkdir(exist_ok=True)
        for name in ("jose.c", "makefile"):
            shutil.copy(Path(args.reference_src) / name, build / name)
        subprocess.run(["make", "-C", str(build)], check=True, capture_output=True)

    for k in ks:
        work = root / f"k{k}"
        work.mkdir(exist_ok=True)
        run: dict = {"load_average_before": os.getloadavg()}
        t = time.perf_counter()
        run["corpus"] = build_corpus(work, k)
        run["corpus"]["build_seconds"] = round(time.perf_counter() - t, 2)
        tokens = run["corpus"]["tokens"]
        if args.reference_src:
            run["reference"] = run_reference(build, work, hp, args.epochs, args.threads, tokens, probes)
        run["ours"] = run_ours_measured(work, params, tokens, probes)
        if "reference" in run:
            run["comparison"], run["goals_met"] = compare(run["reference"], run["ours"])
        run["load_average_after"] = os.getloadavg()
        report["runs"][k] = run
    if len(ks) > 1:
        report["scaling"] = scaling(report["runs"])
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, ensure_ascii=False, indent=1))
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
