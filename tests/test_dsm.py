"""Denoising score matching (kexue.gan.dsm): the learned score against an analytic one,
annealed Langevin against known moments, and the model's config / save / resume."""
import os

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # before TensorFlow starts: tests share 2 cores
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

from pathlib import Path

import keras
import numpy as np
import pytest
from scipy.special import logsumexp

from kexue.gan.data import load_images
from kexue.gan.params import DsmParams
from kexue.gan.dsm import (
    ScoreModel,
    _batches,
    annealed_langevin,
    build_score_model,
    network_evaluations,
    sigma_ladder,
    train_dsm,
)


class GaussianMixture:
    """Σ_k π_k N(μ_k, s_k² I) and the analytic score of its noised version p_σ."""

    def __init__(self, mu, s, pi):
        self.mu, self.s, self.pi = (np.asarray(a, float) for a in (mu, s, pi))
        self.dim = self.mu.shape[1]

    def sample(self, n: int, seed: int, sigma: float = 0.0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        k = rng.choice(len(self.pi), n, p=self.pi)
        std = np.sqrt(self.s[k] ** 2 + sigma**2)[:, None]
        return (self.mu[k] + std * rng.standard_normal((n, self.dim))).astype(np.float32)

    def score(self, x, sigma: float) -> np.ndarray:
        """∇ log p_σ(x), p_σ = Σ π_k N(μ_k, (s_k² + σ²) I): responsibilities times each Gaussian's score."""
        var = self.s**2 + sigma**2
        d = np.asarray(x, float)[:, None, :] - self.mu[None]
        log_w = np.log(self.pi) - 0.5 * (d**2).sum(-1) / var - 0.5 * self.dim * np.log(var)
        w = np.exp(log_w - logsumexp(log_w, axis=1, keepdims=True))
        return (w[..., None] * (-d / var[:, None])).sum(1)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.pi @ self.mu
        second = sum(p * (np.outer(m, m) + s**2 * np.eye(self.dim)) for p, m, s in zip(self.pi, self.mu, self.s))
        return mean, second - np.outer(mean, mean)


MIXTURE_1D = GaussianMixture([[-1.5], [1.5]], [0.5, 0.5], [0.3, 0.7])
MIXTURE_2D = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.5, 0.5, 0.5], [0.5, 0.3, 0.2])


def test_sigma_ladder_is_geometric_from_the_largest_pairwise_distance():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    sigmas = sigma_ladder(x, levels=4, sigma_min=0.04)
    np.testing.assert_allclose(sigmas, [5.0, 5.0 * 0.2, 5.0 * 0.04, 0.04])
    assert network_evaluations(10, 5, denoise=True) == 51
    with pytest.raises(ValueError, match="sigma_min"):
        sigma_ladder(x, levels=4, sigma_min=9.0)


@pytest.mark.slow  # trains a TF model for tens of seconds: CI runs it, make test-fast skips it
def test_learned_score_matches_the_analytic_score_of_a_2d_gaussian_mixture():
    """Trained by DSM on mixture samples, s_θ(x, σ_i) is within a stated relative L2 error
    of the analytic ∇ log p_σ at every level, on points drawn from p_σ.

    Stated tolerance: 10 % for σ ≥ 0.5, 25 % below. Why larger at small σ: the DSM target
    −z/σ has noise of size 1/σ around a score of size ~1/s, so the fine levels need many
    more steps to average it out (they reach ~10 % with 3× the steps).
    """
    data = MIXTURE_2D.sample(20000, seed=0)
    steps = 2000
    params = DsmParams(width=64, depth=3, levels=5, sigma_min=0.1, batch_size=256, steps_per_epoch=steps,
                       optimizer={"name": "adam", "learning_rate": 3e-3,
                                  "schedule": {0: 1.0, steps // 2: 1.0, steps: 0.02}})
    model = build_score_model(data, params, seed=0)
    model.fit(_batches(data, 256, 0, steps, seed=0), epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    errors = {}
    for i, sigma in enumerate(model.sigmas):
        x = MIXTURE_2D.sample(4000, seed=10 + i, sigma=sigma)
        truth = MIXTURE_2D.score(x, sigma)
        learned = keras.ops.convert_to_numpy(model.score(x, sigma))
        errors[round(sigma, 3)] = float(np.sqrt(((learned - truth) ** 2).sum() / (truth**2).sum()))
    for sigma, error in errors.items():
        assert error < (0.10 if sigma >= 0.5 else 0.25), errors
    # The denoiser r(x) = x + σ² s(x) is the same function seen from the post's side.
    x = MIXTURE_2D.sample(5, seed=99, sigma=1.0)
    sigma = model.sigmas[2]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.denoise(x, sigma)),
                               x + sigma**2 * keras.ops.convert_to_numpy(model.score(x, sigma)), rtol=1e-5)


@pytest.mark.parametrize("mixture", [MIXTURE_1D, MIXTURE_2D], ids=["1d", "2d"])
def test_annealed_langevin_with_the_analytic_score_reproduces_the_mixture_moments(mixture):
    """Mean, covariance and mode weights of 5,000 samples, to about 2-3 standard errors.

    A fine ladder (30 levels) matters more than many steps per level for the mode weights:
    once the modes separate Langevin cannot move mass between them, so each level must
    start close to its own equilibrium.
    """
    n = 5000
    sigmas = np.geomspace(8.0, 0.01, 30)
    x = annealed_langevin(mixture.score, sigmas, (n, mixture.dim), steps_per_level=30,
                          epsilon=0.5 * sigmas[-1] ** 2, seed=0)
    mean, cov = mixture.moments()
    np.testing.assert_allclose(x.mean(0), mean, atol=0.06)
    np.testing.assert_allclose(np.atleast_2d(np.cov(x.T)), cov, rtol=0.06, atol=0.03)
    nearest = np.argmin(((x[:, None, :] - mixture.mu[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=len(mixture.pi)) / n, mixture.pi, atol=0.03)


# --------------------------------------------------------------------------- model and run

def _tiny_model(seed=0):
    return ScoreModel((8, 8, 1), np.geomspace(4.0, 0.05, 3),
                      width=8, depth=1, sigma_data=0.7, seed=seed)


def test_score_model_round_trips_through_config_and_keras_file(tmp_path):
    model = _tiny_model(seed=5)
    model.build()
    config = model.get_config()
    for key in ("data_shape", "sigmas", "width", "depth", "sigma_data", "seed"):
        assert key in config
    twin = ScoreModel.from_config(config)
    twin.build()
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)  # same seed, same initial weights

    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    path = tmp_path / "score.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is ScoreModel and loaded.get_config() == config
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.score(x, 0.3)),
                               keras.ops.convert_to_numpy(model.score(x, 0.3)), rtol=1e-6)
    assert loaded.sample(3, steps_per_level=2, seed=1).shape == (3, 8, 8, 1)
    with pytest.raises(ValueError, match="decreasing"):
        ScoreModel((8, 8, 1), [0.1, 1.0])


# SGD with momentum, as in the GAN's resume test: forgetting the optimizer state or the
# noise RNG moves the weights well beyond float rounding.
TINY = {"width": 8, "depth": 1, "levels": 3, "sigma_min": 0.05, "batch_size": 16, "steps_per_epoch": 4,
        "steps_per_level": 2, "eval_samples": 16, "grid": 4,
        "optimizer": {"name": "sgd", "learning_rate": 0.02, "momentum": 0.9}}


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "images.npy"
    np.save(path, load_images("builtin:digits").x[:64])
    return str(path)


def _weights(out_dir: Path):
    return keras.saving.load_model(out_dir / "score_model.keras", safe_mode=True).get_weights()


def test_train_dsm_checkpoints_and_resumes_like_an_uninterrupted_run(tmp_path, tiny_images):
    calls = []

    def eval_fn(samples, step, full):
        calls.append((step, full))
        assert samples.shape == (16, 8, 8, 1) and np.abs(samples).max() <= 1.0  # clipped to the data's range
        return {"fid": float(np.mean(samples**2))}

    def run(name, steps, **kw):
        return train_dsm(tiny_images, str(tmp_path / name), {**TINY, "steps": steps}, 2, str(tmp_path / f"ckpt_{name}"),
                         **kw)

    first = run("run", 8, eval_fn=eval_fn)
    m = first["metrics"]
    assert (m["step"], m["epochs"], m["resumed_from_step"], calls) == (8, 2, 0, [(8, True)])
    assert m["sampling"]["network_evaluations_per_sample"] == 3 * 2 + 1
    assert m["sampling"]["steps_per_level"] == 2 and m["sampling"]["seconds_per_1000"] > 0
    for key in ("score_model", "samples_final", "grid_final", "history"):
        assert Path(first["files"][key]).exists()

    progress = []
    resumed = run("run", 16, eval_fn=eval_fn, progress=lambda step, total, info: progress.append((step, total, info)))
    r = resumed["metrics"]
    assert (r["resumed_from_step"], r["step"]) == (8, 16)
    assert [(s, t) for s, t, _ in progress] == [(12, 16), (16, 16)] and progress[0][2]["seeds"] == [2]
    assert [row["step"] for row in r["losses"]] == [4, 8, 12, 16] and [row["step"] for row in r["eval"]] == [8, 16]

    straight = run("straight", 16)
    for a, b in zip(_weights(tmp_path / "run"), _weights(tmp_path / "straight")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.load(resumed["files"]["samples_final"]), np.load(straight["files"]["samples_final"]),
                               atol=1e-4)

    again = run("run", 16)
    assert again["metrics"]["resumed_from_step"] == 16 and again["metrics"]["eval"] == r["eval"]
    with pytest.raises(ValueError, match="different run"):
        train_dsm(tiny_images, str(tmp_path / "run"), {**TINY, "width": 16, "steps": 16}, 2, str(tmp_path / "ckpt_run"))
