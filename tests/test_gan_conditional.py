"""The conditional (projection-discriminator) extension of Cascading Rejection."""
import os

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # before TensorFlow starts: tests share 2 cores
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import keras
import numpy as np
import pytest

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


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_conditional_gan_trains_on_labels_resumes_and_its_sampler_draws_classes(tmp_path):
    """train_gan with conditional: true: G(z, y) and the projection D; resumed == straight; labels are required."""
    from kexue.gan.data import load_images
    from kexue.gan.eval.cost import generator_sampler
    from kexue.gan.params import GanRunParams
    from kexue.gan.train import train_gan

    data = load_images("builtin:digits")
    np.save(tmp_path / "x.npy", data.x[:128])
    np.save(tmp_path / "y.npy", data.y[:128])
    x, y = str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
    p = GanRunParams(cascades=2, conditional=True, width=4, d_width=8, latent_dim=8, batch_size=32, eval_every=8,
                     eval_samples=64, grid=4, jit_compile=False, d_optimizer={"name": "sgd", "learning_rate": 0.02})
    with pytest.raises(ValueError, match="labels"):
        train_gan(x, str(tmp_path / "nolabels"), p, [0], str(tmp_path / "ck0"))

    train_gan(x, str(tmp_path / "run"), p.model_copy(update={"epochs": 1}), [0, 1], str(tmp_path / "ck"), labels_path=y)
    resumed = train_gan(x, str(tmp_path / "run"), p.model_copy(update={"epochs": 2}), [0, 1], str(tmp_path / "ck"),
                        labels_path=y)
    straight = train_gan(x, str(tmp_path / "straight"), p.model_copy(update={"epochs": 2}), [0, 1],
                         str(tmp_path / "ck2"), labels_path=y)
    assert resumed[1]["metrics"]["resumed_from_step"] == 4 and resumed[1]["metrics"]["step"] == 8
    for seed in (0, 1):
        g = keras.saving.load_model(resumed[seed]["files"]["generator"], safe_mode=True)
        assert len(g.inputs) == 2  # [z, y]
        twin = keras.saving.load_model(straight[seed]["files"]["generator"], safe_mode=True)
        for a, b in zip(g.get_weights(), twin.get_weights()):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    d = resumed[0]["files"]
    assert np.load(d["samples_final"]).shape == (64, 8, 8, 1)
    # the same code with another label gives another image: the label is used
    z = np.zeros((2, 8), np.float32)
    out = keras.ops.convert_to_numpy(g([z, np.array([0, 7], np.int32)], training=False))
    assert np.abs(out[0] - out[1]).max() > 1e-4
    assert generator_sampler(d["generator"])(10).shape == (10, 8, 8, 1)
