"""Tests of the GAN evaluation: feature classifier, FID/KID/IS/precision-recall, comparison."""
from __future__ import annotations

import os

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import math

import numpy as np
import pytest
import scipy.stats
from PIL import Image
from sklearn.datasets import load_digits

from kexue.gan.eval import compare, features, metrics

NOISE_LEVELS = (0.0, 0.1, 0.2, 0.4, 0.8)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images / 8.0 - 1.0).astype(np.float32)[..., None], d.target


@pytest.fixture(scope="module")
def trained(digits):
    x, y = digits
    return features.train_feature_model(x, y, seed=0)


@pytest.fixture(scope="module")
def halves(digits):
    """Two disjoint random halves of the real digits: same distribution, different samples."""
    x, _ = digits
    perm = np.random.default_rng(0).permutation(len(x))
    half = len(x) // 2
    return x[perm[:half]], x[perm[half:]]


@pytest.fixture(scope="module")
def noisy_metrics(trained, halves):
    """Metrics of half A plus Gaussian noise (clipped to [-1, 1]) against half B, per level."""
    model, _ = trained
    a, b = halves
    rng = np.random.default_rng(1)
    eval_fn = metrics.make_eval_fn(b, model)
    return {
        s: eval_fn(np.clip(a + rng.normal(0.0, s, a.shape), -1.0, 1.0).astype(np.float32), step=i)
        for i, s in enumerate(NOISE_LEVELS)
    }


# ----------------------------------------------------------------------------- classifier

@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_classifier_reaches_97_percent_held_out(trained):
    _, info = trained
    assert info["label_source"] == "labels"
    assert info["n_classes"] == 10
    assert info["n_test"] == 360
    assert info["held_out_accuracy"] >= 0.97


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_feature_model_round_trips_through_keras_file_in_safe_mode(trained, digits, tmp_path):
    model, _ = trained
    x, _ = digits
    path = features.save_feature_model(model, tmp_path / "features.keras")
    loaded = features.load_feature_model(path)
    feats, probs = features.embed(features.feature_extractor(model), x[:50])
    feats2, probs2 = features.embed(features.feature_extractor(loaded), x[:50])
    assert feats.shape == (50, 128) and probs.shape == (50, 10)
    np.testing.assert_allclose(feats2, feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs2, probs, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=".keras"):
        features.save_feature_model(model, tmp_path / "features.h5")


@pytest.mark.slow
def test_training_is_deterministic_for_a_seed(digits):
    x, y = digits
    m1, i1 = features.train_feature_model(x, y, seed=3, epochs=2)
    m2, i2 = features.train_feature_model(x, y, seed=3, epochs=2)
    m3, _ = features.train_feature_model(x, y, seed=4, epochs=2)
    assert i1 == i2
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(m1.get_weights()[0], m3.get_weights()[0])


def test_unlabelled_data_falls_back_to_kmeans_pseudo_labels(digits):
    x, _ = digits
    model, info = features.train_feature_model(x, None, seed=0, epochs=5, n_pseudo_classes=6)
    assert info["label_source"] == "kmeans"
    assert info["n_classes"] == 6
    assert model.output_shape == (None, 6)
    assert info["held_out_accuracy"] >= 0.8  # k-means clusters of digits are learnable


def test_other_image_sizes_get_a_deeper_network(digits):
    x, y = digits
    x16 = np.repeat(np.repeat(x[:300], 2, axis=1), 2, axis=2)  # 16×16 by pixel doubling
    x16 = np.concatenate([x16, x16], axis=-1)  # 2 channels
    model, info = features.train_feature_model(x16, y[:300], seed=0, epochs=1)
    assert model.input_shape == (None, 16, 16, 2)
    assert sum(layer.__class__.__name__ == "MaxPooling2D" for layer in model.layers) == 2
    feats, probs = features.embed(features.feature_extractor(model), x16[:10])
    assert feats.shape == (10, 128)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert info["n_train"] + info["n_test"] == 300


# ----------------------------------------------------------------------------- FID

@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_fid_of_a_set_against_itself_is_zero(trained, digits):
    model, _ = trained
    x, _ = digits
    row = metrics.evaluate_samples(x, x, model)
    assert abs(row["fid"]) < 1e-6
    assert row["precision"] == 1.0 and row["recall"] == 1.0


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_fid_grows_monotonically_with_added_noise(noisy_metrics):
    fids = [noisy_metrics[s]["fid"] for s in NOISE_LEVELS]
    assert fids[0] < 5.0  # two halves of the real data: the floor
    assert all(lo < hi for lo, hi in zip(fids, fids[1:])), fids
    assert fids[-1] > 5 * fids[0]


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_fid_of_uniform_noise_is_far_from_real(trained, halves):
    model, _ = trained
    _, b = halves
    noise = np.random.default_rng(2).uniform(-1.0, 1.0, b.shape).astype(np.float32)
    row = metrics.evaluate_samples(noise, b, model)
    assert row["fid"] > 50.0
    assert row["precision"] < 0.3


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 2.0, 6), rng.uniform(0.1, 2.0, 6)
    # Dead units (zero variance in both sets) make the product singular; the result must not change.
    var1[:2] = var2[:2] = 0.0
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_handles_a_rank_deficient_covariance():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(5, 20))  # 5 samples in 20 dimensions: rank-4 covariance
    f2 = rng.normal(size=(5, 20))
    fid = metrics.fid_from_features(f1, f2)
    assert math.isfinite(fid) and fid > 0
    assert abs(metrics.fid_from_features(f1, f1)) < 1e-5 * fid


# ----------------------------------------------------------------------------- KID / IS / P&R

@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_kid_is_near_zero_for_two_halves_and_grows_with_noise(noisy_metrics):
    kids = [noisy_metrics[s]["kid"] for s in NOISE_LEVELS]
    assert abs(kids[0]) < 0.1 * kids[-1]
    assert all(lo < hi for lo, hi in zip(kids, kids[1:])), kids


def test_kid_is_unbiased_for_samples_of_one_gaussian():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    shifted = rng.normal(0.5, 1.0, size=(400, 8))
    same, same_std = metrics.kernel_inception_distance(a, b, n_subsets=20, subset_size=200)
    diff, _ = metrics.kernel_inception_distance(a, shifted, n_subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert diff > 20 * abs(same)


def test_inception_score_bounds():
    one_hot = np.eye(10)[np.arange(1000) % 10]
    assert metrics.inception_score(one_hot) == pytest.approx(10.0, rel=1e-6)
    assert metrics.inception_score(np.eye(10)[np.zeros(100, int)]) == pytest.approx(1.0)
    assert metrics.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_real_digits_score_near_ten_classes_and_noise_lower(noisy_metrics):
    assert noisy_metrics[0.0]["inception_score"] > 9.0
    assert noisy_metrics[0.8]["inception_score"] < noisy_metrics[0.0]["inception_score"]


def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 5))
    assert metrics.precision_recall(real, real.copy()) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_precision_recall_of_a_collapsed_generator():
    """Samples from one corner of the real distribution: precise but with poor recall."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 2))
    corner = real[(real[:, 0] > 1.0) & (real[:, 1] > 1.0)]
    fake = corner + rng.normal(scale=0.01, size=corner.shape)
    precision, recall = metrics.precision_recall(real, fake)
    assert precision > 0.9
    assert recall < 0.2


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_noise_lowers_precision(noisy_metrics):
    assert noisy_metrics[0.8]["precision"] < noisy_metrics[0.0]["precision"] - 0.3


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_eval_fn_rows_carry_step_and_every_metric(noisy_metrics):
    row = noisy_metrics[0.2]
    assert row["step"] == 2
    assert set(row) == {"step", *metrics.METRIC_KEYS}
    assert all(math.isfinite(row[k]) for k in metrics.METRIC_KEYS)


# ----------------------------------------------------------------------------- comparison

def _synthetic_records() -> list[dict]:
    """cr1 worst, cr4 clearly better, cr2 like cr1; FID falls then rises (overfitting)."""
    rng = np.random.default_rng(0)
    level = {"cr1": 20.0, "cr2": 19.5, "cr4": 12.0}
    records = []
    for variant, base in level.items():
        for seed in range(5):
            offset = rng.normal(0.0, 1.0)
            history = []
            for i, step in enumerate(range(0, 5000, 500)):
                fid = base + offset + 30.0 * math.exp(-i) + 0.4 * max(0, i - 5)
                history.append({"step": step, "fid": fid, "kid": fid / 10, "kid_std": 0.1,
                                "inception_score": 9.0 - fid / 20, "precision": 0.8, "recall": 0.7})
            records.append({"variant": variant, "seed": seed, "history": history[::-1]})  # unsorted on purpose
    return records


def _welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch p-value from the formula (Welch–Satterthwaite degrees of freedom)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * scipy.stats.t.sf(abs(t), df)


def test_compare_variants_table_tests_and_plots(tmp_path):
    records = _synthetic_records()
    samples = {v: np.random.default_rng(0).uniform(-1, 1, (64, 8, 8, 1)) for v in ("cr1", "cr2", "cr4")}
    result = compare.compare_variants(records, tmp_path, baseline="cr1", samples=samples)
    metrics = result["metrics"]

    rows = metrics["rows"]
    assert len(rows) == 15
    assert [r["variant"] for r in rows[:5]] == ["cr1"] * 5  # baseline first
    r0 = next(r for r in rows if r["variant"] == "cr4" and r["seed"] == 0)
    h0 = sorted(next(rec for rec in records if rec["variant"] == "cr4" and rec["seed"] == 0)["history"],
                key=lambda h: h["step"])
    assert r0["final_step"] == 4500 and r0["fid_final"] == pytest.approx(h0[-1]["fid"])
    assert r0["fid_best"] == pytest.approx(min(h["fid"] for h in h0))
    assert r0["best_step"] == 2500

    finals = {v: np.array([r["fid_final"] for r in rows if r["variant"] == v]) for v in ("cr1", "cr2", "cr4")}
    stats = metrics["per_variant"]["cr4"]["fid_final"]
    assert stats["mean"] == pytest.approx(finals["cr4"].mean())
    assert stats["std"] == pytest.approx(finals["cr4"].std(ddof=1))
    for variant in ("cr2", "cr4"):
        test = metrics["welch_vs_baseline"][variant]["fid_final"]
        assert test["p"] == pytest.approx(_welch_p(finals[variant], finals["cr1"]), rel=1e-9)
        expected = scipy.stats.ttest_ind(finals[variant], finals["cr1"], equal_var=False)
        assert test["t"] == pytest.approx(expected.statistic)
    assert metrics["welch_vs_baseline"]["cr4"]["fid_final"]["verdict"] == "lower"
    assert metrics["welch_vs_baseline"]["cr2"]["fid_final"]["verdict"] == "no significant difference"
    assert "cr1" not in metrics["welch_vs_baseline"]

    table = metrics["table_markdown"]
    assert table.count("\n| cr4 |") == 6  # 5 runs + 1 summary line
    assert "±" in table and "baseline" in table and "(lower)" in table
    assert "<table" in metrics["table_html"]
    assert (tmp_path / "evaluation.md").read_text(encoding="utf-8") == table
    for name in ("fid_over_training", "samples"):
        with Image.open(result["files"][name]) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_compare_variants_without_enough_seeds_reports_no_p_value(tmp_path):
    records = [r for r in _synthetic_records() if r["seed"] == 0]
    metrics = compare.compare_variants(records, tmp_path)["metrics"]
    assert metrics["per_variant"]["cr1"]["fid_final"]["std"] is None
    assert metrics["welch_vs_baseline"]["cr4"]["fid_final"]["p"] is None
    with pytest.raises(ValueError, match="baseline"):
        compare.compare_variants(records, tmp_path, baseline="plain")


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_eval_fn_during_training_measures_only_the_cheap_metrics(trained, halves):
    model, _ = trained
    a, b = halves
    eval_fn = metrics.make_eval_fn(b, model)
    row = eval_fn(a, step=7, full=False)
    assert set(row) == {"step", *metrics.TRAINING_KEYS}
    assert row["fid"] == pytest.approx(eval_fn(a, step=7)["fid"])  # the same FID as the full evaluation


def test_timing_many_generators_back_to_back_logs_no_retracing_warning(tmp_path):
    """Each generator's sampler traces once; TensorFlow must not call that "retracing" (it did
    with one lambda shared by every sampler, and printed the warning at the end of each run)."""
    import logging

    from kexue.gan.eval.cost import generator_sampler
    from kexue.gan.models import make_generator

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect()
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        for seed in range(7):  # TensorFlow warns from the 5th trace of one function on
            path = tmp_path / f"g{seed}.keras"
            make_generator((8, 8, 1), 8, 8, seed=seed).save(path)
            assert generator_sampler(path)(16).shape == (16, 8, 8, 1)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [m for m in messages if "retracing" in m]
