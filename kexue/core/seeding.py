"""Weight-initialisation seeds drawn from a model's own seed, never from the process-wide RNG.

Why: a Keras initializer (or Dropout layer) created without a seed draws one from Python's
global ``random`` module. ``keras.utils.set_random_seed`` seeds that module, but inside a Dask
worker, or next to Prefect's API client and the embedded server, other threads draw from it
too, at moments that depend on scheduling. So the same seed sometimes gave different weights.
CI caught it: a GAN resumed from its checkpoint diverged from an uninterrupted run of the
same seed, because the uninterrupted run had been initialised differently.
"""
from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np


class SeedStream:
    """Deterministic integer seeds for one model: ``SeedStream((seed, part))()``, call after call."""

    def __init__(self, seed: int | Sequence[int]):
        self._rng = np.random.default_rng(seed)

    def __call__(self) -> int:
        return int(self._rng.integers(1, 2**31 - 1))

    def glorot_uniform(self) -> keras.initializers.Initializer:
        """Keras' default kernel initializer, with its own seed."""
        return keras.initializers.GlorotUniform(seed=self())

    def seed_spectral_norms(self, model: keras.Model) -> None:
        """Re-draw the power-iteration vectors u of every built SpectralNormalization layer.

        Keras creates them with an unseeded TruncatedNormal(stddev=0.02), which no argument
        can seed; drawing the same distribution from this stream makes them reproducible.
        """
        for layer in model.layers:
            if isinstance(layer, keras.layers.SpectralNormalization):
                u = layer.vector_u
                rng = np.random.default_rng(self())
                values = rng.standard_normal(tuple(u.shape))
                while (bad := np.abs(values) > 2).any():  # truncated at two standard deviations, as Keras does
                    values[bad] = rng.standard_normal(int(bad.sum()))
                u.assign((0.02 * values).astype(u.dtype))
