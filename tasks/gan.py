"""Prefect tasks for the GAN branch: images, the feature network, one task per (variant, seed), evaluation."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kexue.core.artifacts import FileRef, Manifest, sha256_text, stable_json
from kexue.gan.params import FeatureNetParams, GanEvalParams, ImagesParams
from tasks.caching import Store, kexue_task



def _single_threaded_tf() -> None:
    """One TF thread per task, so two runs share the two cores instead of fighting over them.

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
    from kexue.gan.eval.metrics import save_feature_model, train_feature_model

    _single_threaded_tf()
    x = np.load(images.files["images"].path)
    y = np.load(images.files["labels"].path) if "labels" in images.files else None
    model, info = train_feature_model(x, y, seed=params.seed, epochs=params.epochs)
    out = store.stage_dir("gan", sha256_text("feature-net", images.fingerprint(), stable_json(params)))
    path = save_feature_model(model, out / "feature_net.keras")
    return Manifest(stage="feature-net", files={"model": FileRef.of(path)}, metrics=info)


@kexue_task("gan-run", retries=0)
def gan_run_task(store: Store, images: Manifest, feature_net: Manifest, variant: str, params: dict[str, Any]) -> Manifest:
    """Train one variant for one seed, tracking FID over training; resumable per epoch."""
    from kexue.gan.train import train_gan
    from kexue.gan.eval.metrics import load_feature_model, make_eval_fn

    _single_threaded_tf()
    key = sha256_text(images.fingerprint(), feature_net.fingerprint(), variant, stable_json(params))
    out, checkpoints = store.stage_dir("gan", key), store.stage_dir("gan-checkpoints", key)
    real = np.load(images.files["images"].path)
    # 10 KID subsets during training keeps each evaluation under a CPU-second
    eval_fn = make_eval_fn(real, load_feature_model(feature_net.files["model"].path), kid_subsets=10)
    result = train_gan(images.files["images"].path, str(out), params, str(checkpoints), eval_fn=eval_fn)
    result["metrics"]["variant"] = variant
    return Manifest.of_result("gan-run", result)


@kexue_task("gan-eval")
def gan_eval_task(store: Store, gan: Manifest, params: GanEvalParams) -> Manifest:
    """Every variant × seed: final/best FID, KID, IS, precision/recall; Welch's t-test vs baseline."""
    from kexue.gan.eval.metrics import compare_variants

    records, samples = [], {}
    for name, ref in sorted(gan.files.items()):  # "<variant>/s<seed>/history"
        if name.endswith("/history"):
            variant, seed, _ = name.split("/")
            history = json.loads(Path(ref.path).read_text())
            records.append({"variant": variant, "seed": int(seed[1:]), "history": history["eval"]})
            if variant not in samples:
                samples[variant] = np.load(gan.files[f"{variant}/{seed}/samples_final"].path)
    out = store.stage_dir("gan_eval", sha256_text(gan.fingerprint(), stable_json(params)))
    return Manifest.of_result("gan_eval", compare_variants(records, out, baseline=params.baseline, samples=samples, alpha=params.alpha))
