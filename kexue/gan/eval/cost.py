"""Sampling cost of each generator: network evaluations and seconds per 1,000 images.

Why measured here, in the evaluation step, and not inside each training run: runs train in
parallel on shared cores, so a time taken there says as much about the neighbours as about
the sampler. Timing every variant's sampler back to back in one process puts the GAN's one
generator pass and the score model's annealed Langevin chain under the same load, so their
ratio means something (the absolute seconds still depend on the machine and its load).
"""
from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np


def seconds_per_1000(sample: Callable[[int], np.ndarray], n: int = 1000, repeats: int = 3) -> float:
    """Seconds per 1,000 samples of ``sample(n)``: the fastest of ``repeats`` timed calls after a warm-up.

    The warm-up call pays for tracing and first-call allocation, which are not the
    sampler's running cost; the fastest repeat is the least disturbed by other processes.
    """
    sample(min(n, 16))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(n)
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best / n


def _forward(generator: keras.Model, inputs):
    return generator(inputs, training=False)


def generator_sampler(path: str | Path, seed: int = 0) -> Callable[[int], np.ndarray]:
    """``sample(n)``: n images from the ``.keras`` generator at ``path`` (one compiled pass, z ~ N(0, I)).

    Compiled like the score model's step, so neither side pays Keras' per-call ``predict`` overhead.
    """
    import tensorflow as tf

    generator = keras.saving.load_model(path, safe_mode=True, compile=False)
    latent_dim = int(generator.inputs[0].shape[-1])
    rng = np.random.default_rng(seed)
    # a partial, not a lambda: TensorFlow counts traces per code object, so one lambda shared by
    # every variant's sampler (each rightly traced once) would be reported as "retracing"
    forward = tf.function(functools.partial(_forward, generator), reduce_retracing=True)
    embeddings = [layer for layer in generator.layers if isinstance(layer, keras.layers.Embedding)]

    def sample(n: int) -> np.ndarray:
        z = rng.standard_normal((n, latent_dim)).astype(np.float32)
        if not embeddings:
            return np.asarray(forward(z))
        return np.asarray(forward([z, rng.integers(0, embeddings[0].input_dim, n).astype(np.int32)]))  # conditional

    return sample


def score_model_sampler(path: str | Path, langevin: Mapping[str, Any], seed: int = 0) -> Callable[[int], np.ndarray]:
    """``sample(n)``: n samples by annealed Langevin from the ``.keras`` score model at ``path``.

    ``langevin`` holds ``steps_per_level``, ``epsilon`` and ``denoise``, as the run sampled.
    """
    from kexue.gan.dsm import ScoreModel  # importing registers the class for loading

    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    if not isinstance(model, ScoreModel):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a kexue ScoreModel")
    options = {k: langevin[k] for k in ("steps_per_level", "epsilon", "denoise")}
    return lambda n: model.sample(n, seed=seed, **options)


def samplers_of(runs: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[Callable[[int], np.ndarray], int]]:
    """Variant → (sampler, network evaluations per image), from one run's files per variant.

    A run with a ``generator`` file is a GAN (one evaluation per image); one with a
    ``score_model`` is sampled as it was in training, with the Langevin settings its
    ``history`` file records.
    """
    samplers = {}
    for variant, files in runs.items():
        if "score_model" in files:
            sampling = json.loads(Path(files["history"]).read_text())["sampling"]
            samplers[variant] = (score_model_sampler(files["score_model"], sampling),
                                 sampling["network_evaluations_per_sample"])
        elif "generator" in files:
            samplers[variant] = (generator_sampler(files["generator"]), 1)
    return samplers


def sampling_cost(samplers: Mapping[str, tuple[Callable[[int], np.ndarray], int]], n: int = 1000) -> list[dict[str, Any]]:
    """One row per variant: ``{"variant", "network_evaluations_per_image", "seconds_per_1000", "relative"}``.

    ``samplers`` maps a variant to (sample function, network evaluations per image);
    ``relative`` is the time over the fastest variant's.
    """
    rows = [{"variant": name, "network_evaluations_per_image": int(evaluations),
             "seconds_per_1000": seconds_per_1000(sample, n)}
            for name, (sample, evaluations) in samplers.items()]
    fastest = min(r["seconds_per_1000"] for r in rows)
    for row in rows:
        row["relative"] = row["seconds_per_1000"] / fastest
    return rows
