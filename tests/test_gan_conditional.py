"""The conditional (projection-discriminator) extension of Cascading Rejection."""
import os

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # before TensorFlow starts: tests share 2 cores
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import keras
import numpy as np

from kexue.gan.cascading import CascadingRejection


def _conditional_layer(cascades: int, w: np.ndarray, e: np.ndarray) -> CascadingRejection:
    layer = CascadingRejection(cascades, n_classes=len(e), epsilon=0.0)
    layer.build([(None, w.shape[0]), (None,)])
    layer.kernel.assign(w.astype(np.float32))
    layer.class_embeddings.assign(e.astype(np.float32))
    return layer


def test_conditional_cascade_matches_a_numpy_reference_with_class_directions():
    rng = np.random.default_rng(3)
    d, n, classes = 6, 3, 4
    v = rng.standard_normal((5, d))
    y = np.array([0, 3, 1, 3, 2])
    w = rng.standard_normal((d, n))
    e = rng.standard_normal((classes, d * n))
    expected = np.zeros((5, n))
    for i in range(5):
        u = w + e[y[i]].reshape(d, n)  # u_k(y) = w_k + e_{k,y}
        r = v[i].copy()
        for k in range(n):
            expected[i, k] = r @ u[:, k]
            r = r - expected[i, k] / (u[:, k] @ u[:, k]) * u[:, k]
        assert abs(r @ u[:, n - 1]) < 1e-8  # what is left is orthogonal to the last direction
    layer = _conditional_layer(n, w, e)
    out = keras.ops.convert_to_numpy(layer([v.astype(np.float32), y]))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_one_conditional_cascade_is_the_projection_discriminator_and_round_trips():
    rng = np.random.default_rng(4)
    v = rng.standard_normal((7, 5)).astype(np.float32)
    y = rng.integers(0, 3, 7)
    w, e = rng.standard_normal((5, 1)), rng.standard_normal((3, 5))
    layer = _conditional_layer(1, w, e)
    out = keras.ops.convert_to_numpy(layer([v, y]))[:, 0]
    np.testing.assert_allclose(out, v @ w[:, 0] + np.sum(v * e[y], axis=1), rtol=1e-5)  # ⟨v, w⟩ + ⟨v, e_y⟩

    twin = CascadingRejection.from_config(layer.get_config())
    assert twin.n_classes == 3 and twin.cascades == 1
