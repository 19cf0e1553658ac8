"""Embedding evaluation: neighbours, angle histogram file, document classification vs TF-IDF."""
from __future__ import annotations

import numpy as np
from PIL import Image

from kexue.embed.evaluate import angle_statistics, document_classification, nearest_neighbours, plot_angle_histogram


def test_nearest_neighbours_ranks_by_cosine_and_skips_missing_probes():
    words = ["a", "b", "c", "d"]
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    out = nearest_neighbours(vectors, words, ["a", "zzz"], k=2)
    assert list(out) == ["a"]
    assert [w for w, _ in out["a"]] == ["b", "c"]
    assert out["a"][0][1] > out["a"][1][1]


def test_angle_histogram_is_a_png(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((300, 20))
    _, angles = angle_statistics(vectors, pairs=2000)
    plot_angle_histogram(angles, 20, tmp_path / "angles.png")
    with Image.open(tmp_path / "angles.png") as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_document_classification_separates_informative_from_random_vectors():
    rng = np.random.default_rng(0)
    n = 200
    labels = np.array(["pos", "neg"])[rng.integers(0, 2, n)]
    texts = [("good nice" if y == "pos" else "bad awful") + " the a" for y in labels]
    informative = rng.standard_normal((n, 8)) + np.where(labels == "pos", 2.0, -2.0)[:, None]
    good = document_classification(informative, texts, labels.tolist())
    assert good["doc_accuracy"] > 0.95 and good["tfidf_accuracy"] > 0.95
    noise = document_classification(rng.standard_normal((n, 8)), texts, labels.tolist())
    assert noise["doc_accuracy"] < 0.7
