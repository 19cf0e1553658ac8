"""Evaluation of spherical embeddings: neighbours, isotropy, document classification.

Why these three: nearest neighbours are what a person checks first; the angle
distribution between random word pairs shows how far the trained vectors are from
isotropic (random unit vectors in n dimensions have angle density
p_n(θ) ∝ sin^{n−2} θ, mean π/2 and variance ≈ 1/(n−2)); and logistic regression on
document vectors, against a TF-IDF baseline on the same folds, measures whether the
document vectors carry the label signal the words carry.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from kexue.core.artifacts import atomic_path


def nearest_neighbours(vectors: np.ndarray, words: Sequence[str], probes: Sequence[str], k: int = 10) -> dict[str, list[list]]:
    """Top-``k`` words by cosine for each probe present in ``words`` (the probe itself excluded)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    row_of = {w: i for i, w in enumerate(words)}
    out: dict[str, list[list]] = {}
    for probe in probes:
        if probe not in row_of:
            continue
        cos = unit @ unit[row_of[probe]]
        cos[row_of[probe]] = -np.inf
        top = np.argpartition(-cos, min(k, len(cos) - 1))[:k]
        top = top[np.argsort(-cos[top])]
        out[probe] = [[words[i], round(float(cos[i]), 4)] for i in top]
    return out


def theoretical_angle_moments(dim: int) -> tuple[float, float]:
    """Mean and variance of the angle between two uniform random directions in ``dim`` dims.

    Computed from p_n(θ) ∝ sin^{n−2} θ on a fine grid (log-space, so large n does not underflow).
    """
    theta = np.linspace(0.0, np.pi, 200_001)[1:-1]
    log_p = (dim - 2) * np.log(np.sin(theta))
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    mean = float((theta * p).sum())
    return mean, float(((theta - mean) ** 2 * p).sum())


def angle_statistics(vectors: np.ndarray, pairs: int = 100_000, seed: int = 0) -> tuple[dict[str, float], np.ndarray]:
    """Angles between ``pairs`` random pairs of distinct rows, their moments and the theory's."""
    rng = np.random.default_rng(seed)
    n = vectors.shape[0]
    if n < 2:
        raise ValueError("need at least two vectors to measure angles")
    a = rng.integers(0, n, pairs)
    b = (a + rng.integers(1, n, pairs)) % n  # never the same row
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = np.clip(np.einsum("ij,ij->i", unit[a], unit[b]), -1.0, 1.0)
    angles = np.arccos(cos)
    theory_mean, theory_var = theoretical_angle_moments(vectors.shape[1])
    stats = {
        "angle_mean": float(angles.mean()), "angle_var": float(angles.var()),
        "theory_angle_mean": theory_mean, "theory_angle_var": theory_var,
        "mean_cosine": float(cos.mean()), "pairs": int(pairs),
    }
    return stats, angles


def plot_angle_histogram(angles: np.ndarray, dim: int, path: str | os.PathLike, title: str = "") -> None:
    """PNG: histogram of the measured angles with the density sin^{n−2} θ overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theta = np.linspace(1e-4, np.pi - 1e-4, 2000)
    log_p = (dim - 2) * np.log(np.sin(theta))
    density = np.exp(log_p - log_p.max())
    density /= density.sum() * (theta[1] - theta[0])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(angles, bins=120, range=(0, np.pi), density=True, alpha=0.6, label="random word pairs")
    ax.plot(theta, density, "r-", lw=1.5, label=f"random directions, p(θ) ∝ sin^{dim - 2} θ")
    ax.set_xlabel("angle θ (radians)")
    ax.set_ylabel("density")
    ax.set_title(title or f"angles between random word vectors (n = {dim})")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def document_classification(doc_vectors: np.ndarray, texts: Sequence[str], labels: Sequence[str],
                            folds: int = 5, seed: int = 0) -> dict[str, float]:
    """5-fold logistic-regression accuracy of doc vectors vs TF-IDF + LR on the same folds.

    ``texts`` are the documents' tokens joined by single spaces (tokens are already
    segmented, so the TF-IDF analyser splits on spaces only).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        raise ValueError("document classification needs at least two labels")
    if not (len(y) == len(texts) == doc_vectors.shape[0]):
        raise ValueError("doc_vectors, texts and labels must have the same length")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    vec_scores, tfidf_scores = [], []
    for train, test in splitter.split(doc_vectors, y):
        clf = LogisticRegression(max_iter=2000)
        clf.fit(doc_vectors[train], y[train])
        vec_scores.append(clf.score(doc_vectors[test], y[test]))
        tfidf = TfidfVectorizer(tokenizer=str.split, token_pattern=None, lowercase=False, sublinear_tf=True)
        x_train = tfidf.fit_transform([texts[i] for i in train])
        x_test = tfidf.transform([texts[i] for i in test])
        clf = LogisticRegression(max_iter=2000)
        clf.fit(x_train, y[train])
        tfidf_scores.append(clf.score(x_test, y[test]))
    return {
        "doc_accuracy": float(np.mean(vec_scores)), "doc_accuracy_std": float(np.std(vec_scores)),
        "tfidf_accuracy": float(np.mean(tfidf_scores)), "tfidf_accuracy_std": float(np.std(tfidf_scores)),
        "labelled_docs": int(len(y)), "folds": int(folds),
    }
