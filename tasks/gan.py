"""Prefect tasks for the GAN branch: images, the feature network, one task per variant, evaluation."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from kexue.core.artifacts import FileRef, Manifest, sha256_text, stable_json
from kexue.gan.params import DSM_VARIANT, DsmParams, FeatureNetParams, GanEvalParams, GanRunParams, ImagesParams
from kexue.gan.results import first_run_files, run_records, seed_key
from tasks.caching import Store, kexue_task
from tasks.progress import emit


def _single_threaded_tf() -> None:
    """One TF thread per task, so two tasks share the two cores instead of fighting over them.

    Only possible before TF has initialised in this worker process; otherwise a no-op.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


@kexue_task("images")
def images_task(store: Store, params: ImagesParams, source_fingerprint: str) -> Manifest:
    from kexue.gan.data import write_images

    out = store.stage_dir("images", sha256_text(stable_json(params), source_fingerprint))
    source = params.source
    if not source.startswith("builtin:") and not Path(source).is_absolute():
        source = str(Path(store.base_dir) / source)
    return Manifest.of_result("images", write_images(source, out, params.size))


@kexue_task("feature-net")
def feature_net_task(store: Store, images: Manifest, params: FeatureNetParams) -> Manifest:
    """The classifier whose features FID, KID, IS and precision/recall are measured in."""
    from kexue.gan.eval.features import save_feature_model, train_feature_model

    _single_threaded_tf()
    x = np.load(images.files["images"].path)
    y = np.load(images.files["labels"].path) if "labels" in images.files else None
    model, info = train_feature_model(x, y, seed=params.seed, epochs=params.epochs)
    out = store.stage_dir("gan", sha256_text("feature-net", images.fingerprint(), stable_json(params)))
    path = save_feature_model(model, out / "feature_net.keras")
    return Manifest(stage="feature-net", files={"model": FileRef.of(path)}, metrics=info)


class ProgressLines:
    """``train_gan``'s progress callback → ``tasks.progress.emit`` lines, at most one per ``every`` seconds."""

    def __init__(self, variant: str, every: float = 5.0):
        self.variant, self.every, self.last = variant, every, -float("inf")

    def __call__(self, step: int, total: int, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if step < total and now - self.last < self.every:
            return
        self.last = now
        rate, eta, fid = info.get("steps_per_second"), info.get("eta_seconds"), info.get("fid")
        seeds = info.get("seeds", [])
        parts = [f"{self.variant} ({'seed' if len(seeds) == 1 else 'seeds'} {', '.join(map(str, seeds))}): step {step}/{total}"]
        if rate:
            parts.append(f"{rate:.1f} steps/s")
        if fid is not None:
            parts.append(f"FID {fid:.2f}")
        if eta is not None and step < total:
            parts.append(f"ETA {eta:.0f} s")
        emit("gan", ", ".join(parts), variant=self.variant, step=step, total=total, **info)


@kexue_task("gan-run", retries=0)
def gan_run_task(store: Store, images: Manifest, feature_net: Manifest, variant: str, params: GanRunParams,
                 seeds: list[int]) -> Manifest:
    """Train one variant for its seeds (together, as one model), tracking FID; resumable from its last checkpoint.

    Files are ``s<seed>/<name>``; metrics ``{"variant", "runs": {seed: summary}}`` (the full
    per-seed histories are in the ``s<seed>/history`` files).
    """
    from kexue.gan.eval.features import load_feature_model
    from kexue.gan.eval.metrics import make_eval_fn
    from kexue.gan.train import train_gan

    _single_threaded_tf()
    key = sha256_text(images.fingerprint(), feature_net.fingerprint(), variant, stable_json(params), stable_json(seeds))
    out, checkpoints = store.stage_dir("gan", key), store.stage_dir("gan-checkpoints", key)
    real = np.load(images.files["images"].path)
    eval_fn = make_eval_fn(real, load_feature_model(feature_net.files["model"].path))
    labels = images.files["labels"].path if "labels" in images.files else None
    results = train_gan(images.files["images"].path, str(out), params, seeds, str(checkpoints),
                        progress=ProgressLines(variant), eval_fn=eval_fn, labels_path=labels)
    files = {seed_key(seed, name): path for seed, r in results.items() for name, path in r["files"].items()}
    runs = {str(seed): {k: v for k, v in r["metrics"].items() if k not in ("losses", "eval")}
            for seed, r in results.items()}
    return Manifest.of_result("gan-run", {"files": files, "metrics": {"variant": variant, "runs": runs}})


@kexue_task("dsm-run", retries=0)
def dsm_run_task(store: Store, images: Manifest, feature_net: Manifest, params: DsmParams, seed: int) -> Manifest:
    """Train the denoising-score-matching generator for one seed, evaluated like a GAN variant; resumable per epoch.

    Files and metrics are shaped as ``gan_run_task``'s, under the variant name ``dsm``.
    """
    from kexue.gan.dsm import train_dsm
    from kexue.gan.eval.features import load_feature_model
    from kexue.gan.eval.metrics import make_eval_fn

    _single_threaded_tf()
    key = sha256_text(images.fingerprint(), feature_net.fingerprint(), DSM_VARIANT, stable_json(params), str(seed))
    out, checkpoints = store.stage_dir("gan", key), store.stage_dir("gan-checkpoints", key)
    eval_fn = make_eval_fn(np.load(images.files["images"].path), load_feature_model(feature_net.files["model"].path))
    result = train_dsm(images.files["images"].path, str(out), params, seed, str(checkpoints),
                       progress=ProgressLines(DSM_VARIANT), eval_fn=eval_fn)
    run = {k: v for k, v in result["metrics"].items() if k not in ("losses", "eval")}
    return Manifest.of_result("gan-run", {"files": {seed_key(seed, k): v for k, v in result["files"].items()},
                                          "metrics": {"variant": DSM_VARIANT, "runs": {str(seed): run}}})


@kexue_task("gan-eval")
def gan_eval_task(store: Store, gan: Manifest, params: GanEvalParams) -> Manifest:
    """Every variant × seed: final/best FID, KID, IS, precision/recall; Welch's t-test vs baseline;
    each variant's sampling cost, timed here back to back (``kexue.gan.eval.cost``)."""
    from kexue.gan.eval.compare import compare_variants
    from kexue.gan.eval.cost import samplers_of, sampling_cost

    _single_threaded_tf()
    paths = {key: ref.path for key, ref in gan.files.items()}
    records, sample_files = run_records(paths)
    samples = {variant: np.load(path) for variant, path in sample_files.items()}
    out = store.stage_dir("gan_eval", sha256_text(gan.fingerprint(), stable_json(params)))
    return Manifest.of_result("gan_eval", compare_variants(
        records, out, baseline=params.baseline, samples=samples, alpha=params.alpha, baselines=params.baselines,
        sampling_cost=sampling_cost(samplers_of(first_run_files(paths)))))
