"""Cascading Rejection layer, the CR-GAN with checkpoint/resume, and the image sources."""
import os

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # before TensorFlow starts: tests share 2 cores
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kexue.gan.cascade_gan import CascadeGAN, build_gan, d_loss_terms, g_loss_terms
from kexue.gan.cascading import CascadingRejection, cascade, effective_directions
from kexue.gan.checkpoint import GanCheckpoint
from kexue.gan.data import load_images, write_images
from kexue.gan.eval.features import build_feature_model
from kexue.gan.models import make_discriminator
from kexue.gan.params import GanRunParams
from kexue.gan.train import run_identity, train_gan
from tasks.gan import ProgressLines

# --------------------------------------------------------------------------- cascading rejection


def test_cascade_residual_is_orthogonal_to_the_direction_just_used():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((7, 16)).astype(np.float32)
    w = rng.standard_normal((16, 4)).astype(np.float32)
    scores, residuals = cascade(v, w, epsilon=0.0)
    scores = keras.ops.convert_to_numpy(scores)
    residuals = [keras.ops.convert_to_numpy(r) for r in residuals]
    assert scores.shape == (7, 4) and len(residuals) == 5
    for k in range(4):
        # D_k = <v_k, w_k> and <v_{k+1}, w_k> = 0, relative to the size of the terms
        np.testing.assert_allclose(scores[:, k], residuals[k] @ w[:, k], rtol=1e-5)
        assert np.abs(residuals[k + 1] @ w[:, k]).max() < 1e-5 * np.abs(residuals[k] @ w[:, k]).max()
    # w's are not orthogonal, so later cascades see something different from plain projections
    assert not np.allclose(scores[:, 1], v @ w[:, 1], rtol=1e-3)


def test_cascade_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((5, 9))
    w = rng.standard_normal((9, 3))
    expected, r = [], v.copy()
    for k in range(3):
        d = r @ w[:, k]
        expected.append(d)
        r = r - np.outer(d / (w[:, k] @ w[:, k]), w[:, k])
    layer = CascadingRejection(3, epsilon=0.0)
    layer.build((None, 9))
    layer.kernel.assign(w.astype(np.float32))
    out = keras.ops.convert_to_numpy(layer(v.astype(np.float32)))
    np.testing.assert_allclose(out, np.stack(expected, 1), rtol=1e-4, atol=1e-5)


def test_closed_form_cascade_equals_the_step_by_step_one():
    """The layer's one matmul with effective directions gives every score of the sequential cascade,
    for shared and per-example directions, with epsilon in the rejections."""
    rng = np.random.default_rng(4)
    v = rng.standard_normal((6, 11)).astype(np.float32)
    for n in (1, 2, 5):
        for w in (rng.standard_normal((11, n)), rng.standard_normal((6, 11, n))):
            w = (0.3 * w).astype(np.float32)  # ||w_k||^2 near 1, so epsilon = 0.5 changes every rejection
            expected = keras.ops.convert_to_numpy(cascade(v, w, epsilon=0.5)[0])
            w_eff = keras.ops.convert_to_numpy(effective_directions(w, epsilon=0.5))
            got = v @ w_eff if w.ndim == 2 else np.einsum("bd,bdn->bn", v, w_eff)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_one_cascade_is_exactly_the_linear_score():
    rng = np.random.default_rng(2)
    v = rng.standard_normal((6, 10)).astype(np.float32)
    layer = CascadingRejection(1)
    out = keras.ops.convert_to_numpy(layer(v))
    w = keras.ops.convert_to_numpy(layer.kernel)
    assert out.shape == (6, 1)
    # no rejection happens before the first score: D_1 = <v, w_1>, up to float32 rounding
    np.testing.assert_allclose(out, v.astype(np.float64) @ w.astype(np.float64), rtol=1e-5, atol=1e-6)


def test_layer_validates_its_arguments():
    with pytest.raises(ValueError, match="cascades"):
        CascadingRejection(0)
    with pytest.raises(ValueError, match="cascades"):
        CascadingRejection(1.5)
    with pytest.raises(ValueError, match="epsilon"):
        CascadingRejection(2, epsilon=-1.0)


def _cr_model():
    x = keras.Input((12,))
    h = keras.layers.Dense(8)(x)
    out = CascadingRejection(3, kernel_initializer="he_normal", kernel_regularizer=keras.regularizers.L2(0.01),
                             epsilon=1e-9, name="cr")(h)
    return keras.Model(x, out)


def test_layer_config_round_trip():
    layer = CascadingRejection(3, kernel_initializer="he_normal", kernel_regularizer="l2", epsilon=1e-6, name="cr")
    config = layer.get_config()
    assert config["cascades"] == 3 and config["epsilon"] == 1e-6
    clone = CascadingRejection.from_config(config)
    assert clone.get_config() == config
    assert keras.saving.get_registered_object("kexue>CascadingRejection") is CascadingRejection


def test_layer_survives_clone_model_and_keras_save_load(tmp_path):
    model = _cr_model()
    x = np.random.default_rng(3).standard_normal((4, 12)).astype(np.float32)
    expected = model.predict(x, verbose=0)

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    assert clone.get_layer("cr").get_config() == model.get_layer("cr").get_config()
    np.testing.assert_allclose(clone.predict(x, verbose=0), expected, rtol=1e-6)

    path = tmp_path / "cr.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("cr"), CascadingRejection)
    assert loaded.get_layer("cr").cascades == 3
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6)


def test_discriminator_has_one_score_per_cascade_and_optional_spectral_norm():
    d = make_discriminator((8, 8, 1), cascades=4, width=8, spectral_norm=True)
    assert d.output_shape == (None, 4)
    assert any(isinstance(layer, keras.layers.SpectralNormalization) for layer in d.layers)
    assert not any(isinstance(layer, keras.layers.SpectralNormalization)
                   for layer in make_discriminator((16, 16, 3), 2, 8).layers)


def test_gan_rejects_bad_loss_and_weights():
    with pytest.raises(ValueError, match="loss"):
        GanRunParams(loss="wasserstein")
    with pytest.raises(ValueError, match="cascade_weights"):
        build_gan((8, 8, 1), GanRunParams(cascades=2, width=8, cascade_weights=[1.0]), [0])


def test_initial_weights_depend_on_the_seed_only_even_while_other_threads_use_random():
    """Keras draws unseeded initializers' seeds from the global `random`, which Prefect and Dask
    threads also use; our models seed every initializer, Dropout and spectral-norm vector."""
    stop = threading.Event()

    def draw_from_global_random():
        while not stop.is_set():
            random.random()

    def weights():
        gan = build_gan((8, 8, 1), _tiny(spectral_norm=True), [3])
        features = build_feature_model((8, 8, 1), 10, seed=3)
        return [*gan.generators[0].get_weights(), *gan.discriminators[0].get_weights(), *features.get_weights()]

    first = weights()
    thread = threading.Thread(target=draw_from_global_random, daemon=True)
    thread.start()
    try:
        second = weights()
    finally:
        stop.set()
        thread.join()
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = build_gan((8, 8, 1), TINY, [4])
    assert not np.array_equal(other.generators[0].get_weights()[0], first[0])
    # a member's initial weights are its seed's, whichever seeds train with it
    together = build_gan((8, 8, 1), _tiny(spectral_norm=True), [5, 3])
    for a, b in zip(together.generators[1].get_weights(), first):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- training + resume

# SGD with momentum gives the "trained together vs alone" comparison a clear margin: a float
# rounding difference stays ~1e-7, while a member seeing another member's gradient or noise
# would move its weights by far more.
_SGD = {"name": "sgd", "learning_rate": 0.02, "momentum": 0.9}
TINY = GanRunParams(cascades=2, width=8, latent_dim=8, batch_size=32, eval_every=8, eval_samples=64, grid=4,
                    jit_compile=False,  # compiling costs more than these few steps; the resume test uses XLA
                    d_optimizer=_SGD,
                    # a derived optimizer with its own state (slow weights): resume must restore it too
                    g_optimizer={"name": "adam", "learning_rate": 2e-4, "beta_1": 0.5, "lookahead": {"k": 3, "alpha": 0.5}})
SEEDS = [3, 4]


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> str:
    x = load_images("builtin:digits").x[:128]  # 4 steps per epoch at batch 32
    path = tmp_path_factory.mktemp("img") / "images.npy"
    np.save(path, x)
    return str(path)


def _eval_fn(calls):
    def eval_fn(samples, step, full):
        calls.append((step, full))
        assert samples.shape == (64, 8, 8, 1) and np.abs(samples).max() <= 1.0
        return {"fid": float(np.mean(samples ** 2)), "step": step}
    return eval_fn


def _saved_generator(out_dir: Path, seed: int) -> keras.Model:
    return keras.saving.load_model(out_dir / f"s{seed}" / "generator.keras", safe_mode=True)


def _generator_weights(out_dir: Path, seed: int):
    return _saved_generator(out_dir, seed).get_weights()


def _tiny(**update) -> GanRunParams:
    return GanRunParams.model_validate({**TINY.model_dump(exclude_unset=True), **update})


@pytest.mark.slow
def test_gan_trains_checkpoints_and_resumes_equal_to_an_uninterrupted_run(tmp_path, tiny_images):
    """Compiled with XLA (an option; the other tests use the default graph step); g: Adam +
    Lookahead, d: SGD: resumed == straight."""
    calls: list[tuple[int, bool]] = []
    first = train_gan(tiny_images, str(tmp_path / "run"), _tiny(epochs=2, jit_compile=True), SEEDS, str(tmp_path / "ckpt"),
                      eval_fn=_eval_fn(calls))
    m = first[3]["metrics"]
    assert m["step"] == 8 and m["epochs"] == 2 and m["resumed_from_step"] == 0 and m["seeds_together"] == 2
    assert [r["step"] for r in m["losses"]] == [4, 8]
    assert {"d_loss", "g_loss", "d_loss_1", "d_loss_2", "g_loss_1", "g_loss_2"} <= set(m["final_losses"])
    assert all(np.isfinite(v) for v in m["final_losses"].values())
    assert m["final_losses"] != first[4]["metrics"]["final_losses"]  # two members, two runs
    assert calls == [(8, True), (8, True)] and m["best_eval"]["step"] == 8
    for key in ("generator", "generator_best", "samples_final", "grid_final", "history"):
        assert Path(first[3]["files"][key]).exists() and Path(first[4]["files"][key]).exists()
    assert Image.open(first[3]["files"]["grid_final"]).size == ((4 * 9 - 1) * 4,) * 2  # 4×4 tiles of 8 px, 1-px gaps, ×4

    progress: list[tuple[int, int]] = []
    resumed = train_gan(tiny_images, str(tmp_path / "run"), _tiny(epochs=4, jit_compile=True), SEEDS, str(tmp_path / "ckpt"),
                        progress=lambda step, total, info: progress.append((step, total, sorted(info))),
                        eval_fn=_eval_fn(calls))
    r = resumed[3]["metrics"]
    assert r["resumed_from_step"] == 8 and r["step"] == 16 and r["epochs"] == 4
    assert progress == [(12, 16, ["eta_seconds", "fid", "seeds", "steps_per_second"]),
                        (16, 16, ["eta_seconds", "fid", "seeds", "steps_per_second"])]
    assert [row["step"] for row in r["losses"]] == [4, 8, 12, 16]  # history carried over
    assert [row["step"] for row in r["eval"]] == [8, 16] and calls[2:] == [(16, True), (16, True)]

    # An uninterrupted 4-epoch run ends with the same generators as the resumed one.
    straight = train_gan(tiny_images, str(tmp_path / "straight"), _tiny(epochs=4, jit_compile=True), SEEDS,
                         str(tmp_path / "ckpt_straight"))
    assert straight[4]["metrics"]["step"] == 16
    for seed in SEEDS:
        for a, b in zip(_generator_weights(tmp_path / "run", seed), _generator_weights(tmp_path / "straight", seed)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

    # Per-cascade losses are in each member's TensorBoard event files.
    tags = set()
    for key, path in resumed[4]["files"].items():
        if key.startswith("tensorboard/"):
            for event in tf.compat.v1.train.summary_iterator(path):
                tags.update(v.tag for v in event.summary.value)
    assert {"loss/d_loss_1", "loss/d_loss_2", "loss/g_loss_2", "eval/fid"} <= tags

    # A finished run called again trains nothing more; a different variant is refused.
    again = train_gan(tiny_images, str(tmp_path / "run"), _tiny(epochs=4), SEEDS, str(tmp_path / "ckpt"))
    assert again[3]["metrics"]["resumed_from_step"] == 16 and again[3]["metrics"]["step"] == 16
    with pytest.raises(ValueError, match="different run"):
        train_gan(tiny_images, str(tmp_path / "run"), _tiny(cascades=4, epochs=4), SEEDS, str(tmp_path / "ckpt"))


class _Interrupted(Exception):
    pass


def _interrupt_at(at_step: int):
    def progress(step, total, info):
        if step == at_step:
            raise _Interrupted
    return progress


@pytest.mark.parametrize("checkpoint_seconds, resumed_from", [(0, 8), (3600, 0)])
def test_checkpoints_at_most_one_per_checkpoint_seconds_and_one_at_the_end(tmp_path, tiny_images, checkpoint_seconds,
                                                                         resumed_from):
    """0 writes one every epoch, so a run interrupted after its second epoch resumes there; with
    an hour between them only the end writes one, so the interrupted run starts over."""
    p = _tiny(epochs=3, checkpoint_seconds=checkpoint_seconds)
    with pytest.raises(_Interrupted):
        train_gan(tiny_images, str(tmp_path / "run"), p, [3], str(tmp_path / "ckpt"), progress=_interrupt_at(8))
    again = train_gan(tiny_images, str(tmp_path / "run"), p, [3], str(tmp_path / "ckpt"))
    assert (again[3]["metrics"]["resumed_from_step"], again[3]["metrics"]["step"]) == (resumed_from, 12)
    done = train_gan(tiny_images, str(tmp_path / "run"), p, [3], str(tmp_path / "ckpt"))  # the end wrote one
    assert done[3]["metrics"]["resumed_from_step"] == 12


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_resume_equals_uninterrupted_run_under_the_default_adam(tmp_path, tiny_images):
    """Adam on both sides, the generator's averaged (the pipeline's optimizers), seeds one after
    another: the saved generators are the averages, so the average must resume too."""
    averaged = {"name": "adam", "learning_rate": 2e-4, "beta_1": 0.5, "use_ema": True, "ema_momentum": 0.9}
    adam = GanRunParams(width=8, latent_dim=8, batch_size=32, vectorize_seeds=False, jit_compile=False,
                        g_optimizer=averaged)
    train_gan(tiny_images, str(tmp_path / "run"), adam.model_copy(update={"epochs": 1}), [0, 1], str(tmp_path / "ckpt"))
    train_gan(tiny_images, str(tmp_path / "run"), adam.model_copy(update={"epochs": 3}), [0, 1], str(tmp_path / "ckpt"))
    train_gan(tiny_images, str(tmp_path / "straight"), adam.model_copy(update={"epochs": 3}), [0, 1],
              str(tmp_path / "ckpt_straight"))
    for seed in (0, 1):
        for a, b in zip(_generator_weights(tmp_path / "run", seed), _generator_weights(tmp_path / "straight", seed)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_the_generator_evaluated_and_saved_is_the_average_of_its_weights(tmp_path, tiny_images):
    """``use_ema`` on the generator optimizer: evaluation and the saved generators use the moving
    average of the weights, and training goes on from the generator's own weights."""
    def run(name, epochs, momentum=None, evaluate=True):  # 128 images in batches of 128: a step per epoch
        g = {"name": "adam", "learning_rate": 1e-3, **({"use_ema": True, "ema_momentum": momentum} if momentum else {})}
        train_gan(tiny_images, str(tmp_path / name), _tiny(batch_size=128, eval_every=1, epochs=epochs, g_optimizer=g),
                  [3], str(tmp_path / f"{name}_ckpt"), eval_fn=_eval_fn([]) if evaluate else None)
        return [w.numpy() for w in _saved_generator(tmp_path / name, 3).trainable_weights]

    # the saved generator is Keras' average a_t = β a_(t-1) + (1 - β) w_t, from a_1 = w_1, of the
    # weights w_t after each step, which are what a run without the average saves after t steps
    own = [run(f"own_{t}", t) for t in (1, 2, 3)]
    expected = own[0]
    for w in own[1:]:
        expected = [0.5 * a + 0.5 * b for a, b in zip(expected, w)]
    averaged = run("evaluated", 3, momentum=0.5)
    for a, b in zip(averaged, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(averaged, own[2])) > 1e-4  # the average is not the last weights
    # evaluating every step (the average swapped in and out) leaves training as it is without evaluation
    for a, b in zip(averaged, run("not_evaluated", 3, momentum=0.5, evaluate=False)):
        np.testing.assert_array_equal(a, b)


def test_a_seed_trains_the_same_alone_as_together_with_others(tmp_path, tiny_images):
    sgd = _tiny(epochs=2, g_optimizer=_SGD)
    train_gan(tiny_images, str(tmp_path / "alone"), sgd, [4], str(tmp_path / "ckpt_alone"))
    train_gan(tiny_images, str(tmp_path / "together"), sgd, [3, 4], str(tmp_path / "ckpt_together"))
    for a, b in zip(_generator_weights(tmp_path / "alone", 4), _generator_weights(tmp_path / "together", 4)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_checkpoint_names_what_it_holds(tmp_path, tiny_images):
    train_gan(tiny_images, str(tmp_path / "run"), _tiny(epochs=1), SEEDS, str(tmp_path / "ckpt"))
    (prefix,) = {p.with_suffix("") for p in (tmp_path / "ckpt" / "seeds-3-4").glob("ckpt-*.index")}
    names = {name for name, _ in tf.train.list_variables(str(prefix))}
    for held in ("generators/s3_up0.Skernel", "discriminators/s4_cascading_rejection.Skernel",
                 "g_optimizer/lookahead.Ss3_up0_kernel_slow",  # Lookahead's slow weights
                 "d_optimizer/sgd.Ss4_features_kernel_momentum", "noise/s3_noise.Sseed_generator_state", "step",
                 "best/s4/s4_image.Skernel"):
        assert any(n.startswith(held) for n in names), held
    # nothing is keyed by its position in a list
    assert not any("/_variables/" in n or "layer_with_weights" in n for n in names)
    # restoring into a model whose variables differ is refused, naming the checkpoint
    other = build_gan((8, 8, 1), _tiny(cascades=3), SEEDS)
    with pytest.raises(ValueError, match="exactly this model"):
        GanCheckpoint(tmp_path / "ckpt" / "seeds-3-4", other).restore(run_identity(_tiny(epochs=1)))


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_train_step_runs_under_a_distribution_strategy(tiny_images):
    x = np.load(tiny_images)[:64]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        gan = build_gan((8, 8, 1), _tiny(loss="non_saturating", cascade_weights=[3, 1]), SEEDS, steps_per_execution=2)
    assert isinstance(gan, CascadeGAN)
    pairs = np.stack([x, x[::-1]], axis=1)  # (batch, members, H, W, C)
    logs = gan.fit(tf.data.Dataset.from_tensor_slices(pairs).batch(32), epochs=1, shuffle=False, verbose=0).history
    assert int(gan.step.numpy()) == 2
    # the reported losses are the weighted averages of the per-cascade ones (weights 3:1)
    for seed in SEEDS:
        for p in ("d", "g"):
            np.testing.assert_allclose(logs[f"s{seed}/{p}_loss"][-1], 0.75 * logs[f"s{seed}/{p}_loss_1"][-1]
                                       + 0.25 * logs[f"s{seed}/{p}_loss_2"][-1], rtol=1e-5)
        # non-saturating D loss per cascade is softplus(-D(x)) + softplus(D(G(z))) > 0
        assert logs[f"s{seed}/d_loss_1"][-1] > 0 and logs[f"s{seed}/d_loss_2"][-1] > 0


def test_a_train_step_draws_each_members_fakes_once(tiny_images):
    """D and G learn from the same G(z) in a step: one generator pass per member, not one per player."""
    gan = build_gan((8, 8, 1), _tiny(), SEEDS)
    draws, fake = [], gan._fake
    gan._fake = lambda m, batch, y: draws.append(m) or fake(m, batch, y)
    x = np.load(tiny_images)[:32]
    before = [v.numpy() for v in gan.generators[0].trainable_variables]
    gan.train_step(tf.constant(np.stack([x, x[::-1]], axis=1)))  # eagerly: the Python runs once per step
    assert sorted(draws) == [0, 1]
    # and G still learned from them: its gradient went through D's scores of those fakes
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, gan.generators[0].trainable_variables))


def test_progress_lines_are_throttled_and_name_the_numbers(monkeypatch):
    lines = []
    monkeypatch.setattr("tasks.gan.emit", lambda stage, message, **fields: lines.append((stage, message, fields)))
    clock = iter([0.0, 1.0, 6.0, 7.0])
    monkeypatch.setattr("tasks.gan.time.monotonic", lambda: next(clock))
    report = ProgressLines("cr2", every=5.0)
    info = {"seeds": [0, 1], "steps_per_second": 40.0, "eta_seconds": 12.0, "fid": 8.5}
    for step in (28, 56, 84, 112):
        report(step, 112, info)
    assert [fields["step"] for _, _, fields in lines] == [28, 84, 112]  # 56 came too soon; the last always shows
    stage, message, fields = lines[0]
    assert stage == "gan" and message == "cr2 (seeds 0, 1): step 28/112, 40.0 steps/s, FID 8.50, ETA 12 s"
    assert fields["variant"] == "cr2" and fields["total"] == 112 and fields["fid"] == 8.5
    monkeypatch.setattr("tasks.gan.time.monotonic", lambda: 0.0)
    ProgressLines("cr1")(56, 112, {"seeds": [3]})  # the default task trains one seed
    assert lines[-1][1] == "cr1 (seed 3): step 56/112"


def test_kexue_check_rejects_bad_gan_values_naming_the_key_without_tensorflow():
    script = """
import sys
from typer.testing import CliRunner
from flows.cli import app
for override in ("gan.train.batch_size=-1", "gan.train.loss=hinje", "gan.variants={cr4: {cascdes: 4}}",
                 "gan.train.d_optimizer={name: adan}", "gan.dsm={steps_per_levle: 3}", "gan.dsm={body: cnn}",
                 "gan.variants={dsm: {cascades: 2}}"):
    result = CliRunner().invoke(app, ["check", "--set", override])
    print(result.exit_code, result.output.strip().splitlines()[-1])
print("tensorflow imported:", "tensorflow" in sys.modules)
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(root)}).stdout.splitlines()
    assert out[0].startswith("2 ") and "stages.gan.params: train.batch_size: Input should be greater than or equal to 1" in out[0]
    assert out[1].startswith("2 ") and "train.loss:" in out[1] and "did you mean 'hinge'" in out[1]
    assert out[2].startswith("2 ") and "variants.cr4.cascdes: unknown key (did you mean 'cascades'?)" in out[2]
    assert out[3].startswith("2 ") and "train.d_optimizer.name:" in out[3] and "did you mean 'adam'" in out[3]
    assert out[4].startswith("2 ") and "dsm.steps_per_levle: unknown key (did you mean 'steps_per_level'?)" in out[4]
    assert out[5].startswith("2 ") and "dsm.body:" in out[5] and "'mlp'" in out[5]
    assert out[6].startswith("2 ") and "'dsm' names the score model" in out[6]
    assert out[7] == "tensorflow imported: False"


def test_loss_terms_match_their_formulas():
    d_real = np.array([[2.0, -0.5], [0.5, 0.0]], np.float32)
    d_fake = np.array([[-2.0, 0.5], [0.0, 1.0]], np.float32)
    hinge_d = np.maximum(0, 1 - d_real).mean(0) + np.maximum(0, 1 + d_fake).mean(0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(d_loss_terms("hinge", d_real, d_fake)), hinge_d, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(g_loss_terms("hinge", d_fake)), -d_fake.mean(0), rtol=1e-6)
    ns_d = np.logaddexp(0, -d_real).mean(0) + np.logaddexp(0, d_fake).mean(0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(d_loss_terms("non_saturating", d_real, d_fake)), ns_d, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(g_loss_terms("non_saturating", d_fake)),
                               np.logaddexp(0, -d_fake).mean(0), rtol=1e-5)


# --------------------------------------------------------------------------- image sources


def test_builtin_digits_scaled_and_resized():
    digits = load_images("builtin:digits")
    assert digits.x.shape == (1797, 8, 8, 1) and digits.x.dtype == np.float32
    assert digits.x.min() == -1.0 and digits.x.max() == 1.0
    assert sorted(np.unique(digits.y)) == list(range(10)) and digits.quarantined == []
    big = load_images("builtin:digits", size=16)
    assert big.x.shape == (1797, 16, 16, 1) and -1.0 <= big.x.min() and big.x.max() <= 1.0
    with pytest.raises(ValueError, match="unknown built-in"):
        load_images("builtin:cifar")


def test_npz_source_scales_uint8_and_quarantines_non_finite_rows(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 6), dtype=np.uint8)
    x[0, 0, 0], x[1, 0, 0] = 0, 255
    np.savez(tmp_path / "u8.npz", x=x, y=np.arange(5))
    s = load_images(str(tmp_path / "u8.npz"))
    assert s.x.shape == (5, 6, 6, 1) and s.x.min() == -1.0 and s.x.max() == 1.0
    np.testing.assert_array_equal(s.y, np.arange(5))

    f = np.random.default_rng(1).random((4, 8, 8, 3)).astype(np.float32)  # [0, 1] floats
    f[2, 1, 1, 0] = np.nan
    np.savez(tmp_path / "f.npz", x=f)
    s = load_images(str(tmp_path / "f.npz"))
    assert s.x.shape == (3, 8, 8, 3) and s.y is None
    np.testing.assert_allclose(s.x[0], f[0] * 2 - 1, rtol=1e-6)
    assert [(q.location, q.reason) for q in s.quarantined] == [(f"{tmp_path / 'f.npz'}:x[2]", "non-finite pixel values")]


def test_folder_source_labels_subfolders_and_quarantines_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(tmp_path / "dog" / "j.jpg")
    good = (tmp_path / "cat" / "0.png").read_bytes()
    (tmp_path / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "dog" / "fake.png").write_bytes(b"this is not an image at all")
    (tmp_path / "dog" / "notes.txt").write_text("hello")

    s = load_images(str(tmp_path))
    assert s.x.shape == (5, 10, 10, 1) and s.class_names == ["cat", "dog"]
    assert list(s.y) == [0, 0, 1, 1, 1]
    reasons = {Path(q.location).name: q.reason for q in s.quarantined}
    assert set(reasons) == {"truncated.png", "fake.png", "notes.txt"}
    assert "truncated" in reasons["truncated.png"].lower()
    assert reasons["fake.png"].startswith("unreadable image")
    assert reasons["notes.txt"].startswith("not a PNG/JPEG")
    assert all(q.source == str(tmp_path) for q in s.quarantined)

    out = write_images(str(tmp_path), tmp_path / "out", size=8)
    assert out["metrics"]["images"] == 5 and out["metrics"]["quarantined"] == 3
    assert np.load(out["files"]["images"]).shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(np.load(out["files"]["labels"]), [0, 0, 1, 1, 1])
    assert len(json.loads(Path(out["files"]["quarantine"]).read_text())["quarantined"]) == 3


def test_seeds_split_into_tasks_of_at_most_seeds_per_task():
    from kexue.gan.params import GanTrainParams

    spec = GanTrainParams.model_validate({"variants": {"cr1": {"cascades": 1}, "cr4": {"cascades": 4}},
                                          "seeds": [0, 1, 2, 3, 4], "seeds_per_task": 3})
    assert spec.jobs() == [("cr1", [0, 1, 2]), ("cr1", [3, 4]), ("cr4", [0, 1, 2]), ("cr4", [3, 4])]
    assert GanTrainParams.model_validate({"variants": {"cr1": {}}, "seeds": [0, 1]}).jobs() == [("cr1", [0, 1])]
    separate = GanTrainParams.model_validate({"variants": {"cr1": {"vectorize_seeds": False}}, "seeds": [0, 1],
                                              "seeds_per_task": 2})
    assert separate.jobs() == [("cr1", [0]), ("cr1", [1])]
