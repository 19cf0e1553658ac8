"""Sampling cost of each generator: network evaluations and seconds per 1,000 images.

Why measured here, in the evaluation step, and not inside each training run: runs train in
parallel on shared cores, so a time taken there says as much about the neighbours as about
the sampler. Timing every variant's sampler back to back in one process puts the GAN's one
generator pass and the score model's annealed Langevin chain under the same load, so their
ratio means something (the absolute seconds still depend on the machine and its load).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np


def seconds_per_1000(sample: Callable[[int], np.ndarray], n: int = 1000, repeats: int = 2) -> float:
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


def generator_sampler(path: str | Path, seed: int = 0) -> Callable[[int], np.ndarray]:
    """``sample(n)``: n images from the ``.keras`` generator at ``path`` (one pass, z ~ N(0, I))."""
    generator = keras.saving.load_model(path, safe_mode=True, compile=False)
    latent_dim = int(generator.input_shape[-1])
    rng = np.random.default_rng(seed)
    return lambda n: generator.predict(rng.standard_normal((n, latent_dim)).astype(np.float32),
                                       batch_size=1024, verbose=0)


def score_model_sampler(path: str | Path, langevin: Mapping[str, Any], seed: int = 0) -> Callable[[int], np.ndarray]:
    """``sample(n)``: n samples by annealed Langevin from the ``.keras`` score model at ``path``.

    ``langevin`` holds ``steps_per_level``, ``epsilon`` and ``denoise``, as the run sampled.
    """
    import kexue.gan.dsm  # noqa: F401  registers ScoreModel for loading

    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    options = {k: langevin[k] for k in ("steps_per_level", "epsilon", "denoise")}
    return lambda n: model.sample(n, seed=seed, **options)


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
