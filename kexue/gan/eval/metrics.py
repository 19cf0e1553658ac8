"""Evaluation of GAN samples in the features of a classifier trained on the real data.

Why a home-grown feature network: Inception-v3 features (the usual FID backbone) mean a
~100 MB download and 299×299 inputs, both wrong for 8×8 digits on a CPU. Following the
common practice for small datasets (e.g. LeNet-FID on MNIST), we train a small CNN on the
real images and measure generated images in its penultimate features:

- **FID** (Heusel et al. 2017): Fréchet distance of Gaussians fitted to the features.
- **KID** (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (xᵀy / d + 1)³, averaged over random subsets (unbiased, unlike FID).
- **Inception-Score analogue** (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)) with the
  classifier's class probabilities; at most the number of classes.
- **Precision / recall** (Kynkäänniemi et al. 2019): each set's manifold is the union of
  balls reaching each point's k-th nearest neighbour (k = 3); precision is the share of
  generated points inside the real manifold, recall the share of real points inside the
  generated manifold.

Unlabelled data: the classifier needs classes. If no labels are given, the real images are
clustered with k-means (``n_pseudo_classes`` clusters on the raw pixels) and the network
is trained to predict the cluster; ``info["label_source"]`` says ``"kmeans"`` and the
"held-out accuracy" is then agreement with the clusters, not with true classes.

The variant comparison (:func:`compare_variants`) turns per-run metric histories into the
evaluation table (every variant × seed, mean ± std, Welch's t-test against the baseline)
and the PNG plots.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.model_selection import train_test_split

from kexue.core.artifacts import atomic_path, write_text_atomic
from kexue.gan.data import image_grid
from kexue.core.seeding import SeedStream

FEATURE_LAYER = "features"
METRIC_KEYS = ("fid", "kid", "kid_std", "inception_score", "precision", "recall")


# --------------------------------------------------------------------------- feature net

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
    x = _as_images(x)
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
    feats, probs = extractor.predict(_as_images(images), batch_size=batch_size, verbose=0)
    return feats.astype(np.float64), probs.astype(np.float64)


def _as_images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {x.shape}")
    return x


# --------------------------------------------------------------------------- metrics

def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½).

    Numerical care: feature dimensions that are constant in both sets (dead ReLU units,
    common in the classifier) have zero rows and columns in both covariances and add
    nothing to the trace term, so they are dropped exactly before ``sqrtm``. A product
    that is still (near) singular makes ``sqrtm`` warn though its root is usually fine, so
    the root is judged by its residual ‖X² − A‖_F / ‖A‖_F instead: if that exceeds
    ``1e-6`` or the root is not finite, retry with ``eps``·I added to both covariances (as
    in the reference TTUR code). A complex result from round-off is accepted only if its
    imaginary diagonal is negligible.
    """
    diff = mu1 - mu2
    live = (np.diagonal(sigma1) > 0) | (np.diagonal(sigma2) > 0)
    sigma1, sigma2 = sigma1[np.ix_(live, live)], sigma2[np.ix_(live, live)]
    covmean, error = _sqrtm(sigma1 @ sigma2)
    if not error <= 1e-6:  # also catches NaN
        offset = np.eye(sigma1.shape[0]) * eps
        covmean, error = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if max_imag > 1e-3:
            raise ValueError(f"sqrtm of the covariance product has imaginary component {max_imag:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, float]:
    """Matrix square root and its relative residual (NaN if the root is not finite)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(a)
    if not np.isfinite(root).all():
        return root, math.nan
    scale = max(float(np.linalg.norm(a)), np.finfo(float).tiny)
    return root, float(np.linalg.norm(root @ root - a) / scale)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two feature sets (rows are samples)."""
    mu1, sigma1 = _gaussian(feats1)
    mu2, sigma2 = _gaussian(feats2)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def _gaussian(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(feats) < 2:
        raise ValueError("need at least 2 samples to estimate a covariance")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def kernel_inception_distance(
    feats1: np.ndarray,
    feats2: np.ndarray,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and std over ``n_subsets`` random subsets of the unbiased MMD² estimate.

    Subsets are drawn without replacement, of size min(subset_size, n₁, n₂).
    """
    m = min(subset_size, len(feats1), len(feats2))
    if m < 2:
        raise ValueError("need at least 2 samples per set for the unbiased MMD")
    d = feats1.shape[1]
    rng = np.random.default_rng(seed)
    estimates = np.empty(n_subsets)
    for s in range(n_subsets):
        x = feats1[rng.choice(len(feats1), m, replace=False)]
        y = feats2[rng.choice(len(feats2), m, replace=False)]
        k_xx = (x @ x.T / d + 1.0) ** 3
        k_yy = (y @ y.T / d + 1.0) ** 3
        k_xy = (x @ y.T / d + 1.0) ** 3
        estimates[s] = (
            (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
            + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
            - 2.0 * k_xy.mean()
        )
    return float(estimates.mean()), float(estimates.std())


def inception_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp E_x KL(p(y|x) ‖ p(y)) over all samples (one split)."""
    p_y = probs.mean(axis=0, keepdims=True)
    kl = np.sum(probs * (np.log(probs + eps) - np.log(p_y + eps)), axis=1)
    return float(np.exp(kl.mean()))


def _kth_neighbour_radii(feats: np.ndarray, k: int, batch: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point (index 0 of the sort is itself)."""
    if len(feats) <= k:
        raise ValueError(f"need more than k={k} samples for the k-NN manifold")
    radii = np.empty(len(feats))
    for start in range(0, len(feats), batch):
        d = scipy.spatial.distance.cdist(feats[start : start + batch], feats)
        radii[start : start + batch] = np.partition(d, k, axis=1)[:, k]
    return radii


def _share_inside(query: np.ndarray, ref: np.ndarray, ref_radii: np.ndarray, batch: int) -> float:
    """Share of ``query`` points inside at least one ball (ref_i, radius_i)."""
    inside = 0
    for start in range(0, len(query), batch):
        d = scipy.spatial.distance.cdist(query[start : start + batch], ref)
        inside += int(np.count_nonzero((d <= ref_radii[None, :]).any(axis=1)))
    return inside / len(query)


def precision_recall(
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, batch: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds."""
    return _precision_recall(real_feats, _kth_neighbour_radii(real_feats, k, batch), fake_feats, k, batch)


def _precision_recall(
    real_feats: np.ndarray, real_radii: np.ndarray, fake_feats: np.ndarray, k: int, batch: int = 1024
) -> tuple[float, float]:
    """Precision and recall given the real manifold's radii (computed once per real set)."""
    fake_radii = _kth_neighbour_radii(fake_feats, k, batch)
    precision = _share_inside(fake_feats, real_feats, real_radii, batch)
    recall = _share_inside(real_feats, fake_feats, fake_radii, batch)
    return precision, recall


@dataclass(frozen=True)
class RealReference:
    """The real set in feature space, computed once and reused for every evaluation."""

    extractor: keras.Model
    feats: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    radii: np.ndarray
    k: int = 3
    kid_subsets: int = 20  # not the usual 100: ~0.4 s instead of 2 s per call on digits
    kid_subset_size: int = 1000
    seed: int = 0

    @classmethod
    def of(cls, real: np.ndarray, feature_model: keras.Model, **options: Any) -> "RealReference":
        extractor = feature_extractor(feature_model)
        feats, _ = embed(extractor, real)
        mu, sigma = _gaussian(feats)
        radii = _kth_neighbour_radii(feats, options.get("k", cls.k), 1024)
        return cls(extractor, feats, mu, sigma, radii, **options)

    def evaluate(self, fake: np.ndarray) -> dict[str, float]:
        """All metrics of ``fake`` against this reference; keys are :data:`METRIC_KEYS`."""
        feats, probs = embed(self.extractor, fake)
        mu, sigma = _gaussian(feats)
        kid, kid_std = kernel_inception_distance(
            self.feats, feats, n_subsets=self.kid_subsets, subset_size=self.kid_subset_size, seed=self.seed
        )
        precision, recall = _precision_recall(self.feats, self.radii, feats, self.k)
        return {
            "fid": frechet_distance(self.mu, self.sigma, mu, sigma),
            "kid": kid,
            "kid_std": kid_std,
            "inception_score": inception_score(probs),
            "precision": precision,
            "recall": recall,
        }


def evaluate_samples(fake: np.ndarray, real: np.ndarray, feature_model: keras.Model) -> dict[str, float]:
    """FID, KID (mean and std over subsets), IS analogue, precision and recall of ``fake``.

    Both arrays are images (N, H, W[, C]) in the range the feature model was trained on.
    Returns a dict with keys ``fid, kid, kid_std, inception_score, precision, recall``.
    """
    return RealReference.of(real, feature_model).evaluate(fake)


def make_eval_fn(
    real: np.ndarray, feature_model: keras.Model, **options: Any
) -> Callable[[np.ndarray, int], dict[str, float]]:
    """``eval_fn(samples, step) -> {"step": step, **metrics}`` for use during training.

    The real features, their Gaussian and k-NN radii are computed once here. ``options``
    go to :class:`RealReference` (``k``, ``kid_subsets``, ``kid_subset_size``, ``seed``).
    The returned rows are exactly the ``history`` entries :func:`compare_variants` reads.
    """
    reference = RealReference.of(real, feature_model, **options)

    def eval_fn(samples: np.ndarray, step: int) -> dict[str, float]:
        return {"step": int(step), **reference.evaluate(samples)}

    return eval_fn


# --------------------------------------------------------------------------- comparison

RUN_COLUMNS = (
    "fid_final", "fid_best", "best_step", "kid_final", "is_final", "precision_final", "recall_final",
)
SUMMARY_COLUMNS = ("fid_final", "fid_best", "kid_final", "is_final", "precision_final", "recall_final")
TESTED_COLUMNS = ("fid_final", "fid_best")


def run_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One table row from a run record ``{"variant", "seed", "history": [eval_fn rows]}``.

    Final = the last history row (highest step); best = the row with the lowest FID.
    """
    history = sorted(record["history"], key=lambda r: r["step"])
    if not history:
        raise ValueError(f"run {record['variant']}/{record['seed']} has an empty history")
    final = history[-1]
    best = min(history, key=lambda r: r["fid"])
    return {
        "variant": str(record["variant"]),
        "seed": int(record["seed"]),
        "final_step": int(final["step"]),
        "fid_final": float(final["fid"]),
        "fid_best": float(best["fid"]),
        "best_step": int(best["step"]),
        "kid_final": float(final["kid"]),
        "is_final": float(final["inception_score"]),
        "precision_final": float(final["precision"]),
        "recall_final": float(final["recall"]),
    }


def welch_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
    """Welch's t-test of mean(a) vs mean(b); statistic/p are None with fewer than 2 per side."""
    if len(a) < 2 or len(b) < 2:
        return {"t": None, "p": None}
    result = scipy.stats.ttest_ind(a, b, equal_var=False)
    return {"t": _finite_or_none(result.statistic), "p": _finite_or_none(result.pvalue)}


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def summarise(rows: Sequence[Mapping[str, Any]], baseline: str, alpha: float = 0.05) -> dict[str, Any]:
    """Per-variant mean ± std (ddof 1) and Welch's t-test of FID (final and best) vs the baseline.

    The verdict per variant and FID kind is "lower" / "higher" when p < ``alpha``
    (lower FID is better), else "no significant difference".
    """
    frame = pd.DataFrame(list(rows))
    if baseline not in set(frame["variant"]):
        raise ValueError(f"baseline variant {baseline!r} has no runs")
    variants = list(dict.fromkeys(frame["variant"]))  # first-seen order
    per_variant: dict[str, Any] = {}
    for variant in variants:
        sub = frame[frame["variant"] == variant]
        stats: dict[str, Any] = {"n": int(len(sub))}
        for col in SUMMARY_COLUMNS:
            values = sub[col].to_numpy(dtype=float)
            stats[col] = {
                "mean": float(values.mean()),
                "std": _finite_or_none(values.std(ddof=1)) if len(values) > 1 else None,
            }
        per_variant[variant] = stats
    base = frame[frame["variant"] == baseline]
    tests: dict[str, Any] = {}
    for variant in variants:
        if variant == baseline:
            continue
        sub = frame[frame["variant"] == variant]
        tests[variant] = {}
        for col in TESTED_COLUMNS:
            test = welch_test(sub[col].tolist(), base[col].tolist())
            diff = float(sub[col].mean() - base[col].mean())
            if test["p"] is None or test["p"] >= alpha:
                verdict = "no significant difference"
            else:
                verdict = "lower" if diff < 0 else "higher"
            tests[variant][col] = {**test, "mean_diff": diff, "verdict": verdict}
    return {"baseline": baseline, "alpha": alpha, "per_variant": per_variant, "welch_vs_baseline": tests}


def markdown_tables(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """The per-run table and the per-variant mean ± std table with Welch p-values and verdicts, as Markdown."""
    run_header = ["variant", "seed", "final_step", *RUN_COLUMNS]
    lines = ["| " + " | ".join(run_header) + " |", "|" + "---|" * len(run_header)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in run_header) + " |")
    sum_header = ["variant", "n", *SUMMARY_COLUMNS, "p(fid_final)", "p(fid_best)"]
    lines += ["", "| " + " | ".join(sum_header) + " |", "|" + "---|" * len(sum_header)]
    tests = summary["welch_vs_baseline"]
    for variant, stats in summary["per_variant"].items():
        cells = [variant, str(stats["n"])]
        cells += [_fmt_mean_std(stats[c]) for c in SUMMARY_COLUMNS]
        for col in TESTED_COLUMNS:
            if variant == summary["baseline"]:
                cells.append("baseline")
            else:
                cells.append(f"{_fmt(tests[variant][col]['p'])} ({tests[variant][col]['verdict']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_mean_std(stat: Mapping[str, float | None]) -> str:
    if stat["std"] is None:
        return f"{stat['mean']:.4g}"
    return f"{stat['mean']:.4g} ± {stat['std']:.2g}"


def plot_fid_curves(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """PNG of FID over training steps: per variant the mean over seeds with a ±1 std band.

    Seeds are aligned by step; at each step the mean/std use the seeds evaluated there.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    variants = list(dict.fromkeys(str(r["variant"]) for r in records))
    for variant in variants:
        by_step: dict[int, list[float]] = {}
        for record in records:
            if str(record["variant"]) == variant:
                for row in record["history"]:
                    by_step.setdefault(int(row["step"]), []).append(float(row["fid"]))
        steps = np.array(sorted(by_step))
        mean = np.array([np.mean(by_step[s]) for s in steps])
        std = np.array([np.std(by_step[s]) for s in steps])
        n_seeds = max(len(v) for v in by_step.values())
        line, = ax.plot(steps, mean, label=f"{variant} (n={n_seeds})")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (classifier features)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("FID over training: mean ± std over seeds")
    return _save_png(fig, path)


def plot_sample_grids(samples: Mapping[str, np.ndarray], path: str | Path, n: int = 64) -> Path:
    """PNG with one grid of the first ``n`` samples per variant, side by side."""
    fig = Figure(figsize=(3.2 * len(samples), 3.6))
    for i, (variant, images) in enumerate(samples.items()):
        ax = fig.add_subplot(1, len(samples), i + 1)
        grid = image_grid(_as_images(np.asarray(images)[:n]))
        if grid.shape[-1] == 1:
            ax.imshow(grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(grid, interpolation="nearest")
        ax.set_title(variant)
        ax.axis("off")
    fig.tight_layout()
    return _save_png(fig, path)


def _save_png(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def compare_variants(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    baseline: str = "cr1",
    samples: Mapping[str, np.ndarray] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The evaluation step's report: table, mean ± std, Welch's t-tests, PNG plots.

    ``records``: one per (variant, seed) run, ``{"variant": str, "seed": int, "history":
    [eval_fn rows: {"step", "fid", "kid", "kid_std", "inception_score", "precision",
    "recall"}]}``. ``samples``: optional variant → generated images for the side-by-side grid.

    Writes into ``out_dir``: ``fid_over_training.png``, ``samples.png`` (if samples),
    ``evaluation.md``. Returns ``{"files": {name: path}, "metrics": {"rows": [...],
    "per_variant": {...}, "welch_vs_baseline": {...}, "baseline", "alpha",
    "table_markdown": str, "table_html": str}}``. ``rows`` is a list of flat dicts, ready
    for a Prefect table artifact.
    """
    out_dir = Path(out_dir)
    order = {v: i for i, v in enumerate(dict.fromkeys([baseline, *(str(r["variant"]) for r in records)]))}
    rows = sorted((run_row(r) for r in records), key=lambda r: (order[r["variant"]], r["seed"]))
    summary = summarise(rows, baseline, alpha)
    table_md = markdown_tables(rows, summary)
    files = {
        "fid_over_training": plot_fid_curves(records, out_dir / "fid_over_training.png"),
        "evaluation_md": write_text_atomic(out_dir / "evaluation.md", table_md),
    }
    if samples:
        files["samples"] = plot_sample_grids(samples, out_dir / "samples.png")
    metrics = {
        "rows": rows,
        **summary,
        "table_markdown": table_md,
        "table_html": pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.4g}"),
    }
    return {"files": {k: str(v) for k, v in files.items()}, "metrics": metrics}
