"""DCGAN generator and Cascading Rejection discriminator, one pair per seed ("member").

Every layer is named after its member's seed (``s3_up0``), so the variables of several
members trained in one model (``kexue.gan.cascade_gan``) have distinct, stable names: the
checkpoint keys them by name. Each generator is a plain model of stock Keras layers, saved
as ``.keras`` and loaded without kexue.

Why not one network with stacked (grouped) weights for all members: on a CPU the
convolutions of this size are bound by arithmetic, not by per-op overhead, and XLA's grouped
convolution with its filter gradient ran many times slower than the members' separate
convolutions, an im2col batched matmul no faster than them (``benchmarks/gan_study.py
--kernels``); per-member layers in one compiled step cost the same and keep every member a
stock model.
"""
from __future__ import annotations

import keras

from kexue.core.seeding import SeedStream
from kexue.gan.cascading import CascadingRejection


def halvings(height: int, width: int) -> int:
    """How many stride-2 stages fit: halve while both sides are even and stay ≥ 4."""
    k = 0
    while height % 2 == 0 and width % 2 == 0 and min(height, width) // 2 >= 4:
        height, width, k = height // 2, width // 2, k + 1
    if k == 0:
        raise ValueError(f"image size {height}×{width} must be even and at least 8")
    return k


def make_generator(image_shape: tuple[int, int, int], latent_dim: int = 32, width: int = 16, seed: int = 0) -> keras.Model:
    """z → Dense to (H/2^k, W/2^k, width·2^k) → k × (ConvT stride 2, BN, ReLU) → Conv 3×3 tanh.

    k stride-2 stages so the first feature map is 4×4 for 8/16/32-pixel images (7×7 for 28).
    The initial weights depend on ``seed`` only (``kexue.core.seeding``).
    """
    seeds, name = SeedStream((seed, 1)), f"s{seed}_"
    h, w, c = image_shape
    k = halvings(h, w)
    z = keras.Input((latent_dim,), name=f"{name}z")
    channels = width * 2 ** (k - 1)
    x = keras.layers.Dense((h >> k) * (w >> k) * 2 * channels, use_bias=False,
                           kernel_initializer=seeds.glorot_uniform(), name=f"{name}project")(z)
    x = keras.layers.BatchNormalization(name=f"{name}project_bn")(x)
    x = keras.layers.ReLU(name=f"{name}project_relu")(x)
    x = keras.layers.Reshape((h >> k, w >> k, 2 * channels), name=f"{name}project_map")(x)
    for i in range(k):
        x = keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same", use_bias=False,
                                         kernel_initializer=seeds.glorot_uniform(), name=f"{name}up{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}up{i}_bn")(x)
        x = keras.layers.ReLU(name=f"{name}up{i}_relu")(x)
        channels = max(channels // 2, width)
    x = keras.layers.Conv2D(c, 3, padding="same", activation="tanh", kernel_initializer=seeds.glorot_uniform(),
                            name=f"{name}image")(x)
    return keras.Model(z, x, name=f"{name}generator")


def make_discriminator(
    image_shape: tuple[int, int, int], cascades: int = 1, width: int = 16, spectral_norm: bool = False, seed: int = 0
) -> keras.Model:
    """x → k × (Conv stride 2, LeakyReLU) → Conv 3×3 → flatten = v → CascadingRejection(N).

    ``spectral_norm`` wraps every convolution in ``keras.layers.SpectralNormalization``;
    the cascade head stays plain (its rejection is invariant to the scale of each w_k).
    The initial weights depend on ``seed`` only (``kexue.core.seeding``).
    """
    seeds, name = SeedStream((seed, 2)), f"s{seed}_"
    h, w, _ = image_shape
    k = halvings(h, w)

    def conv(filters: int, size: int, strides: int, label: str) -> keras.layers.Layer:
        layer = keras.layers.Conv2D(filters, size, strides=strides, padding="same",
                                    kernel_initializer=seeds.glorot_uniform(), name=f"{name}{label}")
        return keras.layers.SpectralNormalization(layer, name=f"{name}{label}_sn") if spectral_norm else layer

    x_in = keras.Input(image_shape, name=f"{name}image")
    x, filters = x_in, width
    for i in range(k):
        x = conv(filters, 4, 2, f"down{i}")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"{name}down{i}_lrelu")(x)
        filters *= 2
    x = conv(filters, 3, 1, "features")(x)
    x = keras.layers.LeakyReLU(0.2, name=f"{name}features_lrelu")(x)
    v = keras.layers.Flatten(name=f"{name}v")(x)
    scores = CascadingRejection(cascades, kernel_initializer=seeds.glorot_uniform(), name=f"{name}cascading_rejection")(v)
    model = keras.Model(x_in, scores, name=f"{name}discriminator")
    seeds.seed_spectral_norms(model)
    return model
