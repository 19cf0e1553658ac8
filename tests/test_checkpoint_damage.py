"""A damaged training checkpoint is detected, said in one line, and training starts again
from the last good state (step/epoch 0: only the newest checkpoint is kept) — never resumed
from damaged weights. JoSE's epoch ``.npz`` and the GAN's ``tf.train.Checkpoint`` both."""
from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from kexue.embed.jose import JoseParams, load_corpus, train_jose
from kexue.gan.data import load_images
from kexue.gan.params import GanRunParams
from kexue.gan.train import train_gan
from test_jose import SMALL, planted_topic_corpus


def _overwrite_middle(path, n=64):
    """Flip ``n`` bytes in the middle of a file, keeping its size (what a bad disk or a stray
    write does; a truncation is the easier case)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def _one_line_warnings(caplog, needle):
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and needle in r.getMessage()]
    assert all("\n" not in line for line in lines), lines
    return lines


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_damaged_jose_epoch_checkpoint_is_detected_and_training_starts_over(tmp_path, caplog):
    tokens_paths, vocab_path, _ = planted_topic_corpus(tmp_path, topics=2, docs_per_topic=8, length=30)
    corpus = load_corpus(tokens_paths, vocab_path, 1)
    two = JoseParams.model_validate({**SMALL, "epochs": 2})
    straight = train_jose(corpus, two, tmp_path / "straight")

    train_jose(corpus, two, tmp_path / "ck")
    (npz,) = (tmp_path / "ck").glob("epoch-*.npz")
    _overwrite_middle(npz)
    with caplog.at_level(logging.WARNING):
        again = train_jose(corpus, two, tmp_path / "ck")
    (line,) = _one_line_warnings(caplog, "JoSE checkpoint")
    assert "damaged" in line and str(tmp_path / "ck") in line
    assert again.resumed_from_epoch == 0 and again.epochs_run == 2
    np.testing.assert_allclose(again.u, straight.u, atol=1e-5)  # retrained, not the damaged vectors
    # and the new checkpoint is good: a third call resumes from it without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert train_jose(corpus, two, tmp_path / "ck").resumed_from_epoch == 2
    assert not _one_line_warnings(caplog, "JoSE checkpoint")


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "images.npy"
    np.save(path, load_images("builtin:digits").x[:128])  # 4 steps per epoch at batch 32
    return str(path)


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_damaged_gan_checkpoint_is_detected_and_training_starts_over(tmp_path, tiny_images, caplog):
    p = GanRunParams(width=8, latent_dim=8, batch_size=32, vectorize_seeds=False, jit_compile=False)
    train_gan(tiny_images, str(tmp_path / "run"), p.model_copy(update={"epochs": 1}), [0], str(tmp_path / "ckpt"))
    (data,) = (tmp_path / "ckpt").rglob("ckpt-*.data-*")
    _overwrite_middle(data)
    with caplog.at_level(logging.WARNING):
        result = train_gan(tiny_images, str(tmp_path / "run"), p.model_copy(update={"epochs": 2}), [0],
                           str(tmp_path / "ckpt"))
    (line,) = _one_line_warnings(caplog, "GAN checkpoint")
    assert "damaged" in line and "ckpt-" in line
    assert result[0]["metrics"]["resumed_from_step"] == 0 and result[0]["metrics"]["step"] == 8

    train_gan(tiny_images, str(tmp_path / "straight"), p.model_copy(update={"epochs": 2}), [0],
              str(tmp_path / "ckpt_straight"))
    trained_again = keras.saving.load_model(tmp_path / "run" / "s0" / "generator.keras", safe_mode=True)
    straight = keras.saving.load_model(tmp_path / "straight" / "s0" / "generator.keras", safe_mode=True)
    for a, b in zip(trained_again.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow  # trains a TF model for seconds: CI runs it, make test-fast skips it
def test_damaged_score_model_checkpoint_is_detected_and_training_starts_over(tmp_path, tiny_images, caplog):
    from test_dsm import TINY

    from kexue.gan.dsm import train_dsm

    train_dsm(tiny_images, str(tmp_path / "run"), {**TINY, "steps": 4}, 0, str(tmp_path / "ckpt"))
    (data,) = (tmp_path / "ckpt").rglob("ckpt-*.data-*")
    _overwrite_middle(data)
    with caplog.at_level(logging.WARNING):
        again = train_dsm(tiny_images, str(tmp_path / "run"), {**TINY, "steps": 8}, 0, str(tmp_path / "ckpt"))
    (line,) = _one_line_warnings(caplog, "score-model checkpoint")
    assert "damaged" in line and "ckpt-" in line
    assert again["metrics"]["resumed_from_step"] == 0 and again["metrics"]["step"] == 8

    straight = train_dsm(tiny_images, str(tmp_path / "straight"), {**TINY, "steps": 8}, 0, str(tmp_path / "ckpt_straight"))
    for a, b in zip(np.load(again["files"]["samples_final"]), np.load(straight["files"]["samples_final"])):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # trained again from step 0, not from damaged weights
