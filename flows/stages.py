"""Stage runners: how each ``task:`` of pipeline.yaml is submitted to the cluster.

A runner takes the validated params and the upstream stages' manifests, submits Prefect
tasks (``.submit``/``.map`` — only those reach Dask), waits with a progress bar, and
returns the stage's manifest and whether every task came from the cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from prefect import unmapped
from prefect.futures import PrefectFuture, as_completed

from kexue.core.artifacts import Manifest
from kexue.gan.data import image_source_fingerprint
from kexue.text.tokenize import prf
from tasks.caching import Store
from kexue.gan.params import GanEvalParams, GanTrainParams, ImagesParams
from tasks.gan import feature_net_task, gan_eval_task, gan_run_task, images_task
from tasks.jose import jose_task
from tasks.jose import previous_output as previous_jose_output
from tasks.graph import communities_task, cooccurrence_merge_task, cooccurrence_partition_task, graph_build_task
from tasks.text import (
    count_partition_task,
    ingest_task,
    merge_counts_task,
    source_fingerprints,
    tokenize_partition_task,
    vocabulary_task,
)


@dataclass
class StageContext:
    store: Store
    progress: Any = None  # rich.progress.Progress or None
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    result_storage: str | None = None  # block slug of the run's result storage (the cache)

    def t(self, task):
        """The task, persisting its result (and so its cache record) in the run's storage."""
        return task.with_options(result_storage=self.result_storage) if self.result_storage else task


@dataclass
class StageOutcome:
    manifest: Manifest
    cached: bool
    tables: dict[str, tuple[list[dict], str]] = field(default_factory=dict)  # key -> (rows, description)


def wait(ctx: StageContext, futures: list[PrefectFuture], label: str) -> list[Any]:
    """Results of futures in submission order, advancing a progress bar as they finish."""
    bar = ctx.progress.add_task(label, total=len(futures)) if ctx.progress else None
    for _ in as_completed(futures):
        if bar is not None:
            ctx.progress.advance(bar)
    if bar is not None:
        ctx.progress.remove_task(bar)
    return [f.result() for f in futures]


def all_cached(futures: list[PrefectFuture]) -> bool:
    return all(f.state.name == "Cached" for f in futures)


def run_ingest(ctx: StageContext, params: dict, upstream: dict[str, Manifest]) -> StageOutcome:
    fut = ctx.t(ingest_task).submit(ctx.store, params, source_fingerprints(params, ctx.store.base_dir))
    (manifest,) = wait(ctx, [fut], "ingest")
    return StageOutcome(manifest, all_cached([fut]))


def run_tokenize(ctx: StageContext, params: dict, upstream: dict[str, Manifest]) -> StageOutcome:
    (ingested,) = upstream.values()
    futures = ctx.t(tokenize_partition_task).map(store=unmapped(ctx.store), partition=ingested.partitions, params=unmapped(params))
    results: list[Manifest] = wait(ctx, list(futures), f"tokenize {len(futures)} partitions")
    totals: dict[str, int] = {}
    for m in results:
        for k, v in m.metrics.items():
            if isinstance(v, int):
                totals[k] = totals.get(k, 0) + v
    metrics: dict[str, Any] = {"partitions": len(results), "documents": totals.get("documents", 0),
                               "tokens": totals.get("tokens", 0), "characters": totals.get("characters", 0),
                               "partitions_cached": sum(f.state.name == "Cached" for f in futures)}
    if totals.get("seg_docs"):
        metrics["segmentation"] = {**prf(totals["seg_tp"], totals["seg_pred"], totals["seg_gold"]),
                                   "documents": totals["seg_docs"]}
    metrics["workers"] = sorted({str(m.metrics.get("worker")) for m in results})
    repaired = [r for m in results for r in m.metrics.get("repaired") or []]
    if repaired:
        metrics["repaired"] = repaired
    manifest = Manifest(stage="tokenize", partitions=[m.partitions[0] for m in results], metrics=metrics)
    return StageOutcome(manifest, all_cached(list(futures)))


def run_count(ctx: StageContext, params: dict, upstream: dict[str, Manifest]) -> StageOutcome:
    (tokens,) = upstream.values()
    partials = list(ctx.t(count_partition_task).map(store=unmapped(ctx.store), tokens=tokens.partitions, batch_docs=unmapped(params["batch_docs"])))
    # tree merge on the cluster: no task ever holds every partial
    total, merges = tree_reduce(ctx, merge_counts_task, partials, params["merge_fanin"])
    vocab = ctx.t(vocabulary_task).submit(ctx.store, total)
    futures = partials + merges + [vocab]
    wait(ctx, futures, f"count {len(partials)} partitions")
    return StageOutcome(vocab.result(), all_cached(futures))


def upstream_of(upstream: dict[str, Manifest], kind: str, required: bool = True) -> Manifest | None:
    """The input manifest produced by a stage of task ``kind`` (stage names are the user's)."""
    found = [m for m in upstream.values() if m.stage == kind]
    if not found and required:
        raise ValueError(f"this stage needs an input from a {kind!r} stage; add one to its inputs in pipeline.yaml")
    return found[0] if found else None


def tree_reduce(ctx: StageContext, task, leaves: list[PrefectFuture], fanin: int = 2) -> tuple[PrefectFuture, list[PrefectFuture]]:
    """Merge futures pairwise (or ``fanin``-wise) on the cluster; return the root and the merge futures."""
    level, merges = list(leaves), []
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), fanin):
            group = level[i:i + fanin]
            if len(group) == 1:
                nxt.append(group[0])
            else:
                nxt.append(ctx.t(task).submit(ctx.store, group))
                merges.append(nxt[-1])
        level = nxt
    return level[0], merges


def run_graph(ctx: StageContext, params: dict, upstream: dict[str, Manifest]) -> StageOutcome:
    vocab = upstream_of(upstream, "count").files["vocabulary"]
    jose = upstream_of(upstream, "jose", required=params["source"] == "knn")
    futures: list[PrefectFuture] = []
    total = None
    if params["source"] == "cooccurrence":
        tokens = upstream_of(upstream, "tokenize")
        parts = list(ctx.t(cooccurrence_partition_task).map(store=unmapped(ctx.store), tokens=tokens.partitions,
                                                     vocabulary=unmapped(vocab), params=unmapped(params)))
        total, merges = tree_reduce(ctx, cooccurrence_merge_task, parts)
        futures += parts + merges
    build = ctx.t(graph_build_task).submit(ctx.store, total, vocab, params, jose)
    futures.append(build)
    wait(ctx, futures, f"graph ({len(futures)} tasks)")
    return StageOutcome(build.result(), all_cached(futures))


def run_communities(ctx: StageContext, params: dict, upstream: dict[str, Manifest]) -> StageOutcome:
    graph = upstream_of(upstream, "graph")
    jose = upstream_of(upstream, "jose", required=False)
    fut = ctx.t(communities_task).submit(ctx.store, graph, params, jose)
    (manifest,) = wait(ctx, [fut], "communities (infomap)")
    rows = [{"module": i + 1, "size": size, "flow": round(flow, 5), "top words": " ".join(words)}
            for i, (size, flow, words) in enumerate(manifest.metrics.get("top_modules", []))]
    return StageOutcome(manifest, all_cached([fut]), {"top-modules": (rows, "largest InfoMap modules with their top words by flow")})


def run_jose(ctx: StageContext, params: dict, upstream: dict[str, Manifest]) -> StageOutcome:
    tokens = upstream_of(upstream, "tokenize")
    vocab = upstream_of(upstream, "count").files["vocabulary"]
    warm = previous_jose_output(ctx.store) if params.get("warm_start") else None
    fut = ctx.t(jose_task).submit(ctx.store, tokens, vocab, params, warm)
    (manifest,) = wait(ctx, [fut], "jose")
    return StageOutcome(manifest, all_cached([fut]))


def run_images(ctx: StageContext, params: ImagesParams | dict, upstream: dict[str, Manifest]) -> StageOutcome:
    params = ImagesParams.model_validate(params)  # a no-op once the registry passes the model itself
    fut = ctx.t(images_task).submit(ctx.store, params, image_source_fingerprint(params.source, ctx.store.base_dir))
    (manifest,) = wait(ctx, [fut], "images")
    return StageOutcome(manifest, all_cached([fut]))


# what the gan stage's manifest keeps of each run (the run folders hold the rest:
# TensorBoard events, a grid per evaluation); grids only for the first seed
RUN_FILES = ("history", "samples_final", "generator", "generator_best")
GRID_FILES = ("grid_final", "grid_best")


def run_gan(ctx: StageContext, params: GanTrainParams | dict, upstream: dict[str, Manifest]) -> StageOutcome:
    images = upstream_of(upstream, "images")
    spec = GanTrainParams.model_validate(params)  # a no-op once the registry passes the model itself
    feature = ctx.t(feature_net_task).submit(ctx.store, images, spec.feature_net)
    # one Dask task per variant, training its seeds together: variants run in parallel across the workers
    futures = {variant: ctx.t(gan_run_task).submit(ctx.store, images, feature, variant, p, spec.seeds)
               for variant, p in spec.runs().items()}
    wait(ctx, [feature, *futures.values()], f"gan: {len(futures)} variants × {len(spec.seeds)} seeds")
    files = {"feature_net": feature.result().files["model"]}
    table = []
    for variant, fut in futures.items():
        m = fut.result()
        for seed in spec.seeds:
            keep = RUN_FILES + (GRID_FILES if seed == spec.seeds[0] else ())
            files.update({f"{variant}/s{seed}/{k}": m.files[f"s{seed}/{k}"] for k in keep if f"s{seed}/{k}" in m.files})
            run = m.metrics["runs"][str(seed)]
            best, final = run.get("best_eval") or {}, run.get("final_eval") or {}
            table.append({"variant": variant, "seed": seed, "steps": run["step"],
                          "fid_final": final.get("fid"), "fid_best": best.get("fid"), "best_step": best.get("step"),
                          "seconds": round(run["seconds"], 1), "steps_per_second": run["steps_per_second"],
                          "resumed_from_step": run["resumed_from_step"]})
    metrics = {"runs": table, "feature_net": feature.result().metrics,
               # seeds of a variant train together: each variant's seconds count once
               "train_seconds_total": round(sum(fut.result().metrics["runs"][str(spec.seeds[0])]["seconds"]
                                                for fut in futures.values()), 1)}
    return StageOutcome(Manifest(stage="gan", files=files, metrics=metrics), all_cached([feature, *futures.values()]))


def run_gan_eval(ctx: StageContext, params: GanEvalParams | dict, upstream: dict[str, Manifest]) -> StageOutcome:
    params = GanEvalParams.model_validate(params)  # a no-op once the registry passes the model itself
    fut = ctx.t(gan_eval_task).submit(ctx.store, upstream_of(upstream, "gan"), params)
    (manifest,) = wait(ctx, [fut], "gan evaluation")
    return StageOutcome(manifest, all_cached([fut]),
                        {"evaluation": (manifest.metrics.get("rows", []), "GAN evaluation: every variant × seed")})


Runner = Callable[[StageContext, dict, dict[str, Manifest]], StageOutcome]

RUNNERS: dict[str, Runner] = {
    "ingest": run_ingest,
    "tokenize": run_tokenize,
    "count": run_count,
    "jose": run_jose,
    "graph": run_graph,
    "images": run_images,
    "gan_train": run_gan,
    "gan_eval": run_gan_eval,
    "communities": run_communities,
}


def summarize_files(manifest: Manifest) -> dict[str, Any]:
    files: dict[str, Any] = {k: v.path for k, v in manifest.files.items()}
    if manifest.partitions:
        files["partitions"] = [p.path for p in manifest.partitions]
    return files

