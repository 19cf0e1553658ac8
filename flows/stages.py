"""Stage runners: how each kind of stage (``task:`` in pipeline.yaml) is submitted to the cluster.

A runner takes the stage's validated parameters model and its inputs' manifests by role
(``{"tokens": ..., "vocabulary": ...}``, wired by the names in pipeline.yaml), submits
Prefect tasks (``.submit``/``.map`` — only those reach Dask), waits with a progress bar,
and returns the stage's manifest and whether every task came from the cache. Which kind
has which runner is the registry's (``flows.registry``), checked when this module loads.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import dask
from prefect import unmapped
from prefect.futures import PrefectFuture, as_completed

from flows import registry
from kexue.core.artifacts import FileRef, Manifest
from kexue.embed.params import JoseParams
from kexue.gan.data import image_source_fingerprint
from kexue.gan.params import DSM_VARIANT, GanEvalParams, GanTrainParams, ImagesParams
from kexue.gan.results import gather_runs
from kexue.graph.params import CommunityParams, GraphParams
from kexue.text.params import CountParams, IngestParams, TokenizeParams
from kexue.text.scores import summarize_partitions
from tasks.caching import Store
from tasks.gan import dsm_run_task, feature_net_task, gan_eval_task, gan_run_task, images_task
from tasks.jose import jose_task
from tasks.jose import previous_output as previous_jose_output
from tasks.graph import communities_task, cooccurrence_merge_task, cooccurrence_partition_task, graph_build_task
from tasks.text import ingest_task, merge_counts_task, source_fingerprints, tokenize_partition_task, vocabulary_task


_SUBMIT = threading.Lock()


class LongTaskSlots:
    """The cluster's task slots, as held by the long tasks (training) of every stage of a run.

    Why: Dask sends a task to a worker when it is submitted, and there it queues behind
    whatever that worker runs. A GAN run submitted while JoSE held one worker and another run
    the other queued behind that run, and the worker that finished JoSE sat idle for half a
    minute (two in another run). Counting every stage's long tasks against the slots, a long
    task is submitted only when a slot is free, and so lands on the free worker.
    """

    def __init__(self, slots: int):
        self.slots, self._held = slots, 0
        self._changed = threading.Condition()

    def submit(self, submit: Callable[[], PrefectFuture]) -> PrefectFuture:
        """Wait until no long task holds some slot, then ``submit()``; the slot frees when the task ends."""
        with self._changed:
            self._changed.wait_for(lambda: self._held < self.slots)
            self._held += 1
        try:
            future = submit()
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future

    def _release(self) -> None:
        with self._changed:
            self._held -= 1
            self._changed.notify_all()


def largest_first(costs: list) -> list[int]:
    """Indices of ``costs`` from the largest down (ties in their order): the order to submit a
    stage's tasks in, as they start in submission order (the LPT rule: the small ones fill the end)."""
    return sorted(range(len(costs)), key=lambda i: costs[i], reverse=True)


def in_original_order(order: list[int], items: list) -> list:
    """``items``, given in ``order`` (as from ``largest_first``), back in their original order."""
    out = [None] * len(items)
    for i, item in zip(order, items):
        out[i] = item
    return out


@dataclass
class StageContext:
    store: Store
    progress: Any = None  # flows.progress.RunProgress or None
    result_storage: Any = None  # the run's result-storage block (the cache), saved
    annotations: dict[str, Any] = field(default_factory=dict)  # Dask annotations of this stage's tasks
    slots: int = 1  # task slots of the cluster (worker threads)
    long_tasks: LongTaskSlots | None = None  # shared by the stages of a run (dataclasses.replace keeps it)

    def __post_init__(self):
        if self.long_tasks is None:
            self.long_tasks = LongTaskSlots(self.slots)

    def _task(self, task):
        """The task, persisting its result (and so its cache record) in the run's storage."""
        return task.with_options(result_storage=self.result_storage) if self.result_storage else task

    def submit(self, task, *args, **kwargs) -> PrefectFuture:
        """Submit one task to Dask with this stage's annotations (priority, resources).

        ``dask.annotate`` sets process-wide configuration and stages submit from several
        threads at once, so submissions take turns; waiting for results does not.
        """
        with _SUBMIT, dask.annotate(**self.annotations):
            return self._task(task).submit(*args, **kwargs)

    def submit_long(self, task, *args, **kwargs) -> PrefectFuture:
        """``submit`` once a task slot is free of long tasks (``LongTaskSlots``): for training tasks."""
        return self.long_tasks.submit(functools.partial(self.submit, task, *args, **kwargs))

    def map(self, task, **kwargs) -> list[PrefectFuture]:
        with _SUBMIT, dask.annotate(**self.annotations):
            return list(self._task(task).map(**kwargs))

    def map_files(self, task, name: str, files: list[FileRef], **kwargs) -> list[PrefectFuture]:
        """``map`` the task over ``files`` (passed as argument ``name``), submitting the largest
        file first; the futures come back in the order of ``files``.

        Why: a stage's tasks start in the order they were submitted. Content-defined partitions
        differ in size, and a large one submitted last ran alone at the end of its stage while
        the other workers idled; largest first, the small ones fill the end (the LPT rule).
        """
        order = largest_first([f.bytes for f in files])
        return in_original_order(order, self.map(task, **{name: [files[i] for i in order]}, **kwargs))


@dataclass
class StageOutcome:
    manifest: Manifest
    cached: bool
    tables: dict[str, tuple[list[dict], str]] = field(default_factory=dict)  # key -> (rows, description)


def wait(ctx: StageContext, futures: list[PrefectFuture], label: str) -> list[Any]:
    """Results of futures in submission order, reporting progress as they finish."""
    tracker = ctx.progress.track(label, len(futures)) if ctx.progress else None
    for _ in as_completed(futures):
        if tracker is not None:
            tracker.advance()
    if tracker is not None:
        tracker.close()
    return [f.result() for f in futures]


def wait_bounded(ctx: StageContext, submits: list[Callable[[], PrefectFuture]], label: str) -> list[PrefectFuture]:
    """Submit long tasks as task slots free up (``LongTaskSlots``); their futures in order once all are done.

    Why not all at once: Dask sends a task whose inputs are ready to a worker straight away,
    where it queues. A worker finishing one long task starts the next one queued there before
    another stage's task that became ready at that moment can reach it — so one run's graph
    stage waited 5 minutes behind two GAN runs, despite its higher priority. Here no long task
    waits on a worker: at most one per slot is in Dask, so another stage's task waits for one
    long task at most. Short tasks of other stages are not counted: they do not keep a core
    busy (leaving them a slot made the whole run 2 minutes longer).
    """
    tracker = ctx.progress.track(label, len(submits)) if ctx.progress else None
    futures = []
    for submit in submits:
        future = ctx.long_tasks.submit(submit)
        if tracker is not None:
            future.add_done_callback(lambda _: tracker.advance())
        futures.append(future)
    for _ in as_completed(futures):
        pass
    if tracker is not None:
        tracker.close()
    return futures


def all_cached(futures: list[PrefectFuture]) -> bool:
    return all(f.state.name == "Cached" for f in futures)


Inputs = dict[str, Manifest]  # input role (as in pipeline.yaml) -> the upstream stage's manifest


def run_ingest(ctx: StageContext, params: IngestParams, inputs: Inputs) -> StageOutcome:
    fut = ctx.submit(ingest_task, ctx.store, params, source_fingerprints(params, ctx.store.base_dir))
    (manifest,) = wait(ctx, [fut], "ingest")
    return StageOutcome(manifest, all_cached([fut]))


def run_tokenize(ctx: StageContext, params: TokenizeParams, inputs: Inputs) -> StageOutcome:
    futures = ctx.map_files(tokenize_partition_task, "partition", inputs["documents"].partitions,
                            store=unmapped(ctx.store), params=unmapped(params))
    results: list[Manifest] = wait(ctx, list(futures), f"tokenize {len(futures)} partitions")
    metrics = summarize_partitions([m.metrics for m in results])
    metrics["partitions_cached"] = sum(f.state.name == "Cached" for f in futures)
    metrics["workers"] = sorted({str(m.metrics.get("worker")) for m in results})
    repaired = [r for m in results for r in m.metrics.get("repaired") or []]
    if repaired:
        metrics["repaired"] = repaired
    # each partition's token counts were taken by its tokenize task; the count stage sums them
    counts = {f"counts/{i:05d}": m.files["counts"] for i, m in enumerate(results)}
    manifest = Manifest(stage="tokenize", partitions=[m.partitions[0] for m in results], files=counts, metrics=metrics)
    return StageOutcome(manifest, all_cached(list(futures)))


def run_count(ctx: StageContext, params: CountParams, inputs: Inputs) -> StageOutcome:
    tokens = inputs["tokens"]
    partials = [ref for key, ref in sorted(tokens.files.items()) if key.startswith("counts/")]
    # a tree of merges on the cluster down to merge_fanin partials: no task ever holds every one
    level, merges = tree_reduce(ctx, merge_counts_task, partials, fanin=params.merge_fanin, until=params.merge_fanin)
    vocab = ctx.submit(vocabulary_task, ctx.store, level)
    wait(ctx, merges + [vocab], f"count {len(tokens.partitions)} partitions")
    return StageOutcome(vocab.result(), all_cached(merges + [vocab]))


def tree_reduce(ctx: StageContext, task, leaves: list, fanin: int = 2, until: int = 1) -> tuple[list, list[PrefectFuture]]:
    """Merge ``leaves`` (futures or values) ``fanin`` at a time on the cluster, level by level,
    until at most ``until`` are left; return those and the merge futures. A group of one
    passes to the next level unmerged."""
    level, merges = list(leaves), []
    while len(level) > until:
        nxt = []
        for i in range(0, len(level), fanin):
            group = level[i:i + fanin]
            if len(group) == 1:
                nxt.append(group[0])
            else:
                nxt.append(ctx.submit(task, ctx.store, group))
                merges.append(nxt[-1])
        level = nxt
    return level, merges


def run_graph(ctx: StageContext, params: GraphParams, inputs: Inputs) -> StageOutcome:
    vocab = inputs["vocabulary"].files["vocabulary"]
    jose = inputs.get("vectors")
    if params.source == "knn" and jose is None:
        raise ValueError("graph: source knn needs word vectors: add 'vectors: <a jose stage>' to its inputs in pipeline.yaml")
    futures: list[PrefectFuture] = []
    total = None
    if params.source == "cooccurrence":
        parts = ctx.map_files(cooccurrence_partition_task, "tokens", inputs["tokens"].partitions,
                              store=unmapped(ctx.store), vocabulary=unmapped(vocab), params=unmapped(params))
        (total,), merges = tree_reduce(ctx, cooccurrence_merge_task, parts)
        futures += parts + merges
    build = ctx.submit(graph_build_task, ctx.store, total, vocab, params, jose)
    futures.append(build)
    wait(ctx, futures, f"graph ({len(futures)} tasks)")
    return StageOutcome(build.result(), all_cached(futures))


def run_communities(ctx: StageContext, params: CommunityParams, inputs: Inputs) -> StageOutcome:
    fut = ctx.submit(communities_task, ctx.store, inputs["graph"], params, inputs.get("vectors"))
    (manifest,) = wait(ctx, [fut], "communities (infomap)")
    rows = [{"module": i + 1, "size": size, "flow": round(flow, 5), "top words": " ".join(words)}
            for i, (size, flow, words) in enumerate(manifest.metrics.get("top_modules", []))]
    return StageOutcome(manifest, all_cached([fut]), {"top-modules": (rows, "largest InfoMap modules with their top words by flow")})


def run_jose(ctx: StageContext, params: JoseParams, inputs: Inputs) -> StageOutcome:
    warm = previous_jose_output(ctx.store) if params.warm_start else None
    fut = ctx.submit_long(jose_task, ctx.store, inputs["tokens"], inputs["vocabulary"].files["vocabulary"], params, warm)
    (manifest,) = wait(ctx, [fut], "jose")
    return StageOutcome(manifest, all_cached([fut]))


def run_images(ctx: StageContext, params: ImagesParams, inputs: Inputs) -> StageOutcome:
    fut = ctx.submit(images_task, ctx.store, params, image_source_fingerprint(params.source, ctx.store.base_dir))
    (manifest,) = wait(ctx, [fut], "images")
    return StageOutcome(manifest, all_cached([fut]))


def run_gan(ctx: StageContext, params: GanTrainParams, inputs: Inputs) -> StageOutcome:
    images, spec = inputs["images"], params
    feature_future = ctx.submit_long(feature_net_task, ctx.store, images, spec.feature_net)
    # The runs get the feature net's manifest, not its future: a future is a Dask dependency,
    # and Dask places a task beside its dependencies' data, so every run queued behind another
    # on the worker that trained the feature net while the other worker sat idle.
    (feature,) = wait(ctx, [feature_future], "gan: feature network")
    # one Dask task per group of a variant's seeds trained together (vectorize_seeds), else one
    # per (variant, seed); the tasks run in parallel across the workers
    runs, jobs = spec.runs(), spec.jobs()
    submits = [functools.partial(ctx.submit, gan_run_task, ctx.store, images, feature, variant, runs[variant], seeds)
               for variant, seeds in jobs]
    cost = [(runs[variant].steps * len(seeds), runs[variant].cascades) for variant, seeds in jobs]
    if spec.dsm is not None:  # the score model beside the GAN: one task per seed
        jobs += [(DSM_VARIANT, [seed]) for seed in spec.seeds]
        submits += [functools.partial(ctx.submit, dsm_run_task, ctx.store, images, feature, spec.dsm, seed)
                    for seed in spec.seeds]
        cost += [(spec.dsm.steps, 1)] * len(spec.seeds)
    # Longest first (member-steps, then cascades): tasks start one per slot as slots free up,
    # so the run started last decides the stage's tail; a short one there leaves no slot idle for long.
    order = largest_first(cost)
    n_variants = len(spec.variants) + (spec.dsm is not None)
    started = wait_bounded(ctx, [submits[i] for i in order],
                           f"gan: {n_variants} variants × {len(spec.seeds)} seeds in {len(submits)} tasks")
    futures = in_original_order(order, started)
    files, table, seconds = gather_runs(
        [(variant, seeds, f.result().files, f.result().metrics) for (variant, seeds), f in zip(jobs, futures)],
        first_seed=spec.seeds[0])
    files["feature_net"] = feature.files["model"]
    metrics = {"runs": table, "feature_net": feature.metrics, "train_seconds_total": seconds}
    return StageOutcome(Manifest(stage="gan", files=files, metrics=metrics), all_cached([feature_future, *futures]))


def run_gan_eval(ctx: StageContext, params: GanEvalParams, inputs: Inputs) -> StageOutcome:
    fut = ctx.submit(gan_eval_task, ctx.store, inputs["runs"], params)
    (manifest,) = wait(ctx, [fut], "gan evaluation")
    return StageOutcome(manifest, all_cached([fut]),
                        {"evaluation": (manifest.metrics.get("rows", []), "GAN evaluation: every variant × seed")})


Runner = Callable[[StageContext, Any, Inputs], StageOutcome]

RUNNERS: dict[str, Runner] = registry.bind_runners(globals())  # fails on import if the registry disagrees
