"""Metrics of GAN samples in the feature network's features (``kexue.gan.eval.features``).

- **FID** (Heusel et al. 2017): Fréchet distance of Gaussians fitted to the features.
- **KID** (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (xᵀy / d + 1)³, averaged over random subsets (unbiased, unlike FID).
- **Inception-Score analogue** (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)) with the
  classifier's class probabilities; at most the number of classes.
- **Precision / recall** (Kynkäänniemi et al. 2019): each set's manifold is the union of
  balls reaching each point's k-th nearest neighbour (k = 3); precision is the share of
  generated points inside the real manifold, recall the share of real points inside the
  generated manifold.

During training only FID and the IS analogue are measured at each evaluation (cheap: one
forward pass and one matrix square root); KID and precision/recall, which cost pairwise
kernels and distances, only at the final one (``make_eval_fn``'s ``full``).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import scipy.linalg

from kexue.gan.eval.features import embed, feature_extractor

METRIC_KEYS = ("fid", "kid", "kid_std", "inception_score", "precision", "recall")
TRAINING_KEYS = ("fid", "inception_score")  # measured at every evaluation during training


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
        k_xx, k_yy, k_xy = (_cubed(a @ b.T / d + 1.0) for a, b in ((x, x), (y, y), (x, y)))
        estimates[s] = (
            (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
            + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
            - 2.0 * k_xy.mean()
        )
    return float(estimates.mean()), float(estimates.std())


def _cubed(k: np.ndarray) -> np.ndarray:
    """k³ in place, by two multiplications: ``** 3`` calls pow per element, several times slower."""
    k3 = k * k
    k3 *= k
    return k3


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """‖a_i − b_j‖² for every pair, as ‖a‖² + ‖b‖² − 2ab: one matrix product (BLAS), several
    times faster than ``cdist``; in float64, clipped at 0 against rounding."""
    a, b = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
    d2 = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :]
    d2 -= 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0, out=d2)


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
        d2 = _squared_distances(feats[start : start + batch], feats)
        radii[start : start + batch] = np.sqrt(np.partition(d2, k, axis=1)[:, k])
    return radii


def _share_inside(query: np.ndarray, ref: np.ndarray, ref_radii: np.ndarray, batch: int) -> float:
    """Share of ``query`` points inside at least one ball (ref_i, radius_i)."""
    inside = 0
    for start in range(0, len(query), batch):
        d2 = _squared_distances(query[start : start + batch], ref)
        inside += int(np.count_nonzero((d2 <= np.square(ref_radii)[None, :]).any(axis=1)))
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

    def evaluate(self, fake: np.ndarray, full: bool = True) -> dict[str, float]:
        """Metrics of ``fake`` against this reference: :data:`METRIC_KEYS`, or with ``full=False``
        only :data:`TRAINING_KEYS` (no pairwise kernels or distances)."""
        feats, probs = embed(self.extractor, fake)
        mu, sigma = _gaussian(feats)
        row = {"fid": frechet_distance(self.mu, self.sigma, mu, sigma), "inception_score": inception_score(probs)}
        if full:
            row["kid"], row["kid_std"] = kernel_inception_distance(
                self.feats, feats, n_subsets=self.kid_subsets, subset_size=self.kid_subset_size, seed=self.seed
            )
            row["precision"], row["recall"] = _precision_recall(self.feats, self.radii, feats, self.k)
        return row


def evaluate_samples(fake: np.ndarray, real: np.ndarray, feature_model: keras.Model) -> dict[str, float]:
    """FID, KID (mean and std over subsets), IS analogue, precision and recall of ``fake``.

    Both arrays are images (N, H, W[, C]) in the range the feature model was trained on.
    Returns a dict with keys ``fid, kid, kid_std, inception_score, precision, recall``.
    """
    return RealReference.of(real, feature_model).evaluate(fake)


EvalFn = Callable[[np.ndarray, int, bool], dict[str, float]]


def make_eval_fn(real: np.ndarray, feature_model: keras.Model, **options: Any) -> EvalFn:
    """``eval_fn(samples, step, full) -> {"step": step, **metrics}`` for use during training.

    ``full`` asks for every metric (the final evaluation), else only :data:`TRAINING_KEYS`.
    The real features, their Gaussian and k-NN radii are computed once here. ``options``
    go to :class:`RealReference` (``k``, ``kid_subsets``, ``kid_subset_size``, ``seed``).
    The returned rows are exactly the ``history`` entries ``compare_variants`` reads.
    """
    reference = RealReference.of(real, feature_model, **options)

    def eval_fn(samples: np.ndarray, step: int, full: bool = True) -> dict[str, float]:
        return {"step": int(step), **reference.evaluate(samples, full)}

    return eval_fn
