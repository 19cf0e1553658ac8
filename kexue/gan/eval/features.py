"""The feature network that GAN samples are measured in: a small classifier of the real images.

Why a home-grown feature network: Inception-v3 features (the usual FID backbone) mean a
~100 MB download and 299×299 inputs, both wrong for 8×8 digits on a CPU. Following the
common practice for small datasets (e.g. LeNet-FID on MNIST), we train a small CNN on the
real images and measure generated images in its penultimate features. It is trained once
per image set and cached (the ``feature-net`` task), so every GAN run shares it.

Unlabelled data: the classifier needs classes. If no labels are given, the real images are
clustered with k-means (``n_pseudo_classes`` clusters on the raw pixels) and the network
is trained to predict the cluster; ``info["label_source"]`` says ``"kmeans"`` and the
"held-out accuracy" is then agreement with the clusters, not with true classes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn.cluster import KMeans
from sklearn.model_selection import train_test_split

from kexue.core.artifacts import atomic_path
from kexue.core.seeding import SeedStream
from kexue.gan.data import as_images

FEATURE_LAYER = "features"


def build_feature_model(input_shape: tuple[int, int, int], n_classes: int, seed: int = 0) -> keras.Model:
    """Small CNN classifier whose penultimate Dense layer (named ``features``) is the embedding.

    Why this shape: conv + 2×2 max-pool stages until the map is at most 4×4 (one stage for
    8×8 digits, three for 32×32), one more conv, then a 128-wide ReLU layer. Built only
    from stock Keras layers so that it loads with ``safe_mode=True``.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    seeds = SeedStream((seed, 3))  # initial weights and dropout masks depend on seed only
    height, width, _ = input_shape
    n_down = max(0, math.ceil(math.log2(min(height, width) / 4)))
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i in range(n_down):
        x = keras.layers.Conv2D(32 * 2**i, 3, padding="same", activation="relu", kernel_initializer=seeds.glorot_uniform())(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(32 * 2**n_down, 3, padding="same", activation="relu", kernel_initializer=seeds.glorot_uniform())(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu", name=FEATURE_LAYER, kernel_initializer=seeds.glorot_uniform())(x)
    x = keras.layers.Dropout(0.3, seed=seeds())(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probs", kernel_initializer=seeds.glorot_uniform())(x)
    return keras.Model(inputs, outputs, name="feature_classifier")


def train_feature_model(
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    test_fraction: float = 0.2,
    n_pseudo_classes: int = 10,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train the feature classifier on real images ``x`` (N, H, W, C) in [-1, 1].

    ``y`` are integer class labels; without them k-means pseudo-labels are used (see the
    module docstring). A stratified ``test_fraction`` is held out to report accuracy.
    Deterministic for a seed when TF runs single-threaded: the initial weights and dropout
    masks come from ``seed`` alone (``kexue.core.seeding``), ``keras.utils.set_random_seed`` seeds
    the shuffling, and the split and k-means take ``seed`` too.

    Returns the trained model and ``info`` with ``held_out_accuracy``,
    ``label_source`` ("labels" | "kmeans"), ``n_classes``, ``n_train``, ``n_test``, ``seed``.
    """
    x = as_images(x)
    if y is None:
        label_source = "kmeans"
        flat = x.reshape(len(x), -1)
        y = KMeans(n_clusters=n_pseudo_classes, random_state=seed, n_init=10).fit_predict(flat)
    else:
        label_source = "labels"
        y = np.asarray(y)
        if y.shape != (len(x),):
            raise ValueError(f"y must have shape ({len(x)},), got {y.shape}")
    classes, y = np.unique(y, return_inverse=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    keras.utils.set_random_seed(seed)
    model = build_feature_model(x.shape[1:], len(classes), seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    probs = model.predict(x_test, batch_size=512, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == y_test))
    info = {
        "held_out_accuracy": accuracy,
        "label_source": label_source,
        "n_classes": int(len(classes)),
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "seed": int(seed),
    }
    return model, info


def save_feature_model(model: keras.Model, path: str | Path) -> Path:
    """Save the classifier as a ``.keras`` file, atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"feature model path must end in .keras, got {path}")
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path


def load_feature_model(path: str | Path) -> keras.Model:
    """Load a classifier saved by :func:`save_feature_model` (safe mode: no code in the file runs)."""
    return keras.models.load_model(path, safe_mode=True, compile=False)


def feature_extractor(model: keras.Model) -> keras.Model:
    """Model mapping images to (penultimate features, class probabilities) of the classifier.

    Build it once and reuse it: each new Keras model traces its own predict function.
    """
    return keras.Model(model.inputs, [model.get_layer(FEATURE_LAYER).output, model.output])


def embed(extractor: keras.Model, images: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, 128) and class probabilities (N, C) of ``images`` from a :func:`feature_extractor`, float64."""
    feats, probs = extractor.predict(as_images(images), batch_size=batch_size, verbose=0)
    return feats.astype(np.float64), probs.astype(np.float64)
