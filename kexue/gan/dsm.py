"""Denoising score matching with annealed Langevin sampling (NCSN), beside the GAN.

The seed's post 从去噪自编码器到生成模型 starts from one fact: the optimal denoiser r of
data noised with N(0, σ²I) satisfies

    r(x) = x + σ² ∇ₓ log p_σ(x),

so (r(x) − x)/σ² is the score of the noised data. Song & Ermon (NeurIPS 2019, "Generative
Modeling by Estimating Gradients of the Data Distribution"; the ICLR 2020 submissions the
post compares are variants of it) learn that score for a ladder of noise levels
σ₁ > σ₂ > … > σ_L and sample by annealed Langevin dynamics, from the coarsest level down:

    α_i = ε σ_i² / σ_L²,   x ← x + (α_i / 2) s_θ(x, σ_i) + √α_i z,   T steps per level,

ending with one denoising step x ← x + σ_L² s_θ(x, σ_L) (the denoiser r itself).

Choices, and why:
- The ladder is geometric from σ₁ = the data's largest pairwise distance (so level 1 can
  move a sample to any mode; Song & Ermon 2020, technique 1) down to σ_L ≈ 0.02, with
  enough levels that neighbouring noise shells overlap in the data's dimension (their
  technique 2: a few tens of levels for 64 pixels, rather than the 10 of 2019). The
  sampler's starting noise then lies where level 1 was trained, and every level's
  starting point where that level was trained.
- The network is the post's denoiser, preconditioned as in Karras et al. (2022, "EDM"):
  r_θ(x, σ) = c_skip x + c_out F_θ(c_in x, log σ) with c_skip = σ_d²/(σ² + σ_d²),
  c_out = σσ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²) (σ_d the data's std), and
  s_θ = (r_θ − x)/σ². Why: F's input and its regression target have unit variance at
  every level, and at large σ an error in F moves r by at most ~σ_d instead of ~σ (the
  1/σ-scaled "s = F/σ" of NCSNv2 trained worse here at the fine levels).
- The loss is denoising score matching, ‖r_θ(x + σz) − x‖², weighted by 1/c_out² (unit
  variance target at every level), σ drawn uniformly from the ladder.
- The body is a residual MLP (8×8 digits flattened: cheaper and better here than 3×3
  convolutions) or residual 3×3 convolutions at full resolution; each block's features
  are scaled and shifted by a function of log σ (FiLM; a plain added bias trained worse).
- Sampling: few Langevin steps per level (T = 2) at a large step (ε/σ_L² = 0.5) on a fine
  ladder beat many steps on a coarse one; see docs/gan-study.md for the measurements.

``ScoreModel`` is a ``keras.Model`` with its own ``train_step`` (trained by ``fit``),
``get_config`` and ``.keras`` round trip. ``train_dsm`` is the resumable run, shaped like
``kexue.gan.train.train_gan``: same files, same history rows for the evaluation table, one
``tf.train.Checkpoint`` (model, optimizer, step, RNG state, run state) per epoch.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import scipy.spatial.distance
import tensorflow as tf
from keras import ops

from kexue.core.artifacts import atomic_path, save_npy_atomic, stable_json, write_json_atomic
from kexue.core.errors import did_you_mean
from kexue.core.seeding import SeedStream
from kexue.optim import build_optimizer

DEFAULT_PARAMS: dict[str, Any] = {
    "seed": 0,
    "steps": 3000,             # rounded up to whole epochs of steps_per_epoch
    "steps_per_epoch": 250,    # train steps per fit epoch = per checkpoint
    "batch_size": 128,
    "body": "mlp",             # mlp: images flattened to vectors | conv: 3×3 convolutions at full resolution
    "width": 128,              # units (mlp) or channels (conv) of every block
    "depth": 2,                # residual blocks
    "levels": 24,              # L noise levels
    "sigma_max": None,         # σ₁; None = the data's largest pairwise distance
    "sigma_min": 0.02,         # σ_L
    # kexue.optim.build_optimizer spec; the schedule's steps are absolute: change them with "steps"
    "optimizer": {"name": "adam", "learning_rate": 2e-3, "schedule": {0: 1.0, 1500: 1.0, 3000: 0.05}},
    "steps_per_level": 2,      # T Langevin steps per noise level
    "epsilon": 2e-4,           # ε: the step at σ_L (α_i = ε σ_i² / σ_L²)
    "denoise": True,           # final step x + σ_L² s(x, σ_L)
    "eval_every": None,        # steps between evaluations; None = only at the end (sampling is the cost)
    "eval_samples": 2000,      # generated images per evaluation (capped at the real set's size)
    "grid": 10,                # sample grids are grid × grid images
}
BODIES = ("mlp", "conv")

# Params that change what is trained: a checkpoint only resumes a run with the same values.
_IDENTITY_KEYS = ("seed", "batch_size", "body", "width", "depth", "levels", "sigma_max", "sigma_min", "optimizer")


def check_params(params: dict[str, Any], where: str = "dsm") -> dict[str, Any]:
    """``params`` if every key is a ``DEFAULT_PARAMS`` key, else ValueError naming it (did you mean)."""
    for key in params:
        if key not in DEFAULT_PARAMS:
            raise ValueError(f"{where}.{key}: unknown key" + did_you_mean(key, DEFAULT_PARAMS))
    return params


def sigma_ladder(x: np.ndarray, levels: int = 10, sigma_min: float = 0.01, sigma_max: float | None = None,
                 max_points: int = 2000, seed: int = 0) -> np.ndarray:
    """Geometric σ₁ > … > σ_L from ``sigma_max`` (default: the largest pairwise distance of ``x``) to ``sigma_min``.

    The distance is taken over at most ``max_points`` rows (a seeded subset) to bound the cost.
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if sigma_max is None:
        flat = np.asarray(x, np.float64).reshape(len(x), -1)
        if len(flat) > max_points:
            flat = flat[np.random.default_rng(seed).choice(len(flat), max_points, replace=False)]
        sigma_max = float(scipy.spatial.distance.pdist(flat).max())
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return np.geomspace(sigma_max, sigma_min, levels)


@keras.saving.register_keras_serializable(package="kexue")
class ScoreModel(keras.Model):
    """Noise-conditional score s_θ(x, σ) on a fixed σ ladder, trained by denoising score matching.

    Args:
        data_shape: shape of one example: (H, W, C) images get a convolutional body,
            (d,) vectors an MLP.
        sigmas: the noise ladder σ₁ > … > σ_L (see :func:`sigma_ladder`).
        width: channels / units per block.
        depth: number of residual blocks.
        sigma_data: data standard deviation, for the input scaling c_in.
        seed: initial weights and the training noise depend on it only.

    ``call((x, sigma))`` returns the score, x-shaped; ``sigma`` is one value per example.
    ``self.step`` counts train steps; ``self.seed_generator`` draws σ indices and noise.
    """

    def __init__(self, data_shape, sigmas, width: int = 32, depth: int = 3, sigma_data: float = 0.5,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.data_shape = tuple(int(d) for d in data_shape)
        if len(self.data_shape) not in (1, 3):
            raise ValueError(f"data_shape must be (d,) or (H, W, C), got {self.data_shape}")
        sigmas = [float(s) for s in sigmas]
        if len(sigmas) < 2 or any(a <= b for a, b in zip(sigmas, sigmas[1:])) or sigmas[-1] <= 0:
            raise ValueError(f"sigmas must be at least 2 positive values, strictly decreasing; got {sigmas}")
        if width < 1 or depth < 1 or sigma_data <= 0:
            raise ValueError(f"need width >= 1, depth >= 1, sigma_data > 0; got {width}, {depth}, {sigma_data}")
        self.sigmas, self.width, self.depth = sigmas, int(width), int(depth)
        self.sigma_data, self.seed = float(sigma_data), int(seed)

        seeds = SeedStream((self.seed, 4))
        images = len(self.data_shape) == 3

        def block(units: int, **kw) -> keras.layers.Layer:
            if images:
                return keras.layers.Conv2D(units, 3, padding="same", kernel_initializer=seeds.glorot_uniform(), **kw)
            return keras.layers.Dense(units, kernel_initializer=seeds.glorot_uniform(), **kw)

        self.embed = keras.layers.Dense(self.width, activation="silu", kernel_initializer=seeds.glorot_uniform(), name="embed")
        self.stem = block(self.width, name="stem")
        self.blocks = [block(self.width, name=f"block{i}") for i in range(self.depth)]
        self.conditions = [keras.layers.Dense(2 * self.width, kernel_initializer=seeds.glorot_uniform(), name=f"cond{i}")
                           for i in range(self.depth)]
        self.head = block(self.data_shape[-1], name="head")
        self.seed_generator = keras.random.SeedGenerator(seeds())
        self.step = keras.Variable(0, dtype="int64", trainable=False, name="step")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def build(self, input_shape=None):
        """Weights from ``data_shape`` alone (the input shapes add nothing), so a loaded model builds."""
        shape = (None, *self.data_shape)
        self.embed.build((None, 1))
        self.stem.build(shape)
        hidden = (*shape[:-1], self.width)
        for layer, condition in zip(self.blocks, self.conditions):
            layer.build(hidden)
            condition.build((None, self.width))
        self.head.build(hidden)
        self.built = True

    def _expand(self, per_example):
        """(batch,) or (batch, k) → broadcastable against (batch, *data_shape[:-1], k)."""
        per_example = ops.reshape(per_example, (ops.shape(per_example)[0], -1))
        for _ in range(len(self.data_shape) - 1):
            per_example = ops.expand_dims(per_example, 1)
        return per_example

    def _coefficients(self, sigma):
        """c_skip, c_out, c_in of Karras et al. (2022), each broadcastable against x."""
        total = ops.square(sigma) + self.sigma_data**2
        c_skip = self.sigma_data**2 / total
        c_out = sigma * self.sigma_data * ops.rsqrt(total)
        return tuple(self._expand(c) for c in (c_skip, c_out, ops.rsqrt(total)))

    def _network(self, x, sigma):
        """F_θ(c_in x, log σ): the residual body, each block's features scaled and shifted by log σ."""
        e = self.embed(ops.expand_dims(ops.log(sigma), -1))
        h = self.stem(x)
        for layer, condition in zip(self.blocks, self.conditions):
            scale, shift = ops.split(self._expand(condition(e)), 2, axis=-1)
            h = h + ops.silu(layer(ops.silu(h)) * (1.0 + scale) + shift)
        return self.head(ops.silu(h))

    def denoiser(self, x, sigma):
        """r_θ(x, σ) = c_skip x + c_out F_θ(c_in x, log σ), with ``sigma`` one value per example."""
        sigma = ops.cast(ops.reshape(sigma, (-1,)), x.dtype)
        c_skip, c_out, c_in = self._coefficients(sigma)
        return c_skip * x + c_out * self._network(c_in * x, sigma)

    def call(self, inputs):
        """The score s_θ(x, σ) = (r_θ(x, σ) − x) / σ² of ``(x, sigma)``, sigma one value per example."""
        x, sigma = inputs
        sigma = ops.cast(ops.reshape(sigma, (-1,)), x.dtype)
        return (self.denoiser(x, sigma) - x) / self._expand(ops.square(sigma))

    def score(self, x, sigma):
        """s_θ(x, σ) for a batch ``x`` at one noise level (a Python float or scalar tensor)."""
        sigma = ops.full((ops.shape(x)[0],), sigma, dtype=x.dtype)
        return self((x, sigma))

    def denoise(self, x, sigma):
        """r_θ(x, σ) for a batch ``x`` at one noise level: the post's denoising autoencoder."""
        return self.denoiser(x, ops.full((ops.shape(x)[0],), sigma, dtype=x.dtype))

    def compute_loss_terms(self, x):
        """Per-example ½ ‖F_θ − F*‖² / dim, F* = (x − c_skip x̃) / c_out, x̃ = x + σz, σ uniform on the ladder.

        This is ‖r_θ(x̃) − x‖² / c_out²: denoising score matching (the same minimiser,
        r = x̃ + σ² ∇log p_σ) with Karras et al.'s weight, under which every level's target
        has unit variance.
        """
        batch = ops.shape(x)[0]
        index = keras.random.randint((batch,), 0, len(self.sigmas), seed=self.seed_generator)
        sigma = ops.take(ops.convert_to_tensor(self.sigmas, dtype=x.dtype), index)
        z = keras.random.normal(ops.shape(x), seed=self.seed_generator, dtype=x.dtype)
        c_skip, c_out, c_in = self._coefficients(sigma)
        x_tilde = x + self._expand(sigma) * z
        target = (x - c_skip * x_tilde) / c_out
        residual = self._network(c_in * x_tilde, sigma) - target
        return 0.5 * ops.mean(ops.reshape(ops.square(residual), (batch, -1)), axis=1)

    def train_step(self, x):
        with tf.GradientTape() as tape:
            loss = ops.mean(self.compute_loss_terms(x))
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.step.assign_add(1)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]  # reset by fit at each epoch start

    def sample(self, n: int, steps_per_level: int = 10, epsilon: float = 5e-5, seed: int = 0,
               denoise: bool = True) -> np.ndarray:
        """``n`` samples by :func:`annealed_langevin` with this network's score."""
        return annealed_langevin(self._compiled_score(), self.sigmas, (n, *self.data_shape),
                                 steps_per_level, epsilon, seed, denoise)

    def _compiled_score(self) -> Callable:
        fn = tf.function(lambda x, sigma: self.score(x, sigma), reduce_retracing=True)
        return lambda x, sigma: fn(tf.constant(x), tf.constant(sigma, tf.float32))

    def get_config(self):
        return {**super().get_config(), "data_shape": list(self.data_shape), "sigmas": list(self.sigmas),
                "width": self.width, "depth": self.depth, "sigma_data": self.sigma_data, "seed": self.seed}


def annealed_langevin(score_fn: Callable[[np.ndarray, float], Any], sigmas, shape: tuple[int, ...],
                      steps_per_level: int = 10, epsilon: float = 5e-5, seed: int = 0,
                      denoise: bool = True) -> np.ndarray:
    """Samples of ``shape`` (float32) by annealed Langevin dynamics on ``score_fn(x, σ)`` over ``sigmas``.

    x₀ ~ N(0, σ₁² I): when σ₁ spans the data, p_σ₁ is close to that Gaussian. The noise
    comes from ``np.random.default_rng(seed)``, so the samples depend on ``seed`` and the
    score only. Score evaluations: L·T, plus one with ``denoise``.
    """
    if steps_per_level < 1 or epsilon <= 0:
        raise ValueError(f"need steps_per_level >= 1 and epsilon > 0, got {steps_per_level}, {epsilon}")
    rng = np.random.default_rng(seed)
    sigma_l = float(sigmas[-1])
    x = (float(sigmas[0]) * rng.standard_normal(shape)).astype(np.float32)
    for sigma in map(float, sigmas):
        alpha = epsilon * sigma**2 / sigma_l**2
        for _ in range(steps_per_level):
            z = rng.standard_normal(shape).astype(np.float32)
            x = x + 0.5 * alpha * np.asarray(score_fn(x, sigma), np.float32) + math.sqrt(alpha) * z
    if denoise:
        x = x + sigma_l**2 * np.asarray(score_fn(x, sigma_l), np.float32)
    return x.astype(np.float32)


def network_evaluations(levels: int, steps_per_level: int, denoise: bool) -> int:
    """Score-network calls per sample of annealed Langevin: L·T, plus one for the denoising step."""
    return levels * steps_per_level + int(bool(denoise))


def build_score_model(x: np.ndarray, params: dict[str, Any]) -> ScoreModel:
    """The compiled model for data ``x`` and ``params`` (see ``DEFAULT_PARAMS``), built."""
    p = {**DEFAULT_PARAMS, **params}
    sigmas = sigma_ladder(x, p["levels"], p["sigma_min"], p["sigma_max"], seed=int(p["seed"]))
    model = ScoreModel(x.shape[1:], sigmas, p["width"], p["depth"], sigma_data=float(np.std(x)), seed=int(p["seed"]))
    model.build()
    model.compile(optimizer=build_optimizer(p["optimizer"]), steps_per_execution=int(p["steps_per_epoch"]))
    model.optimizer.build(model.trainable_variables)
    return model


# --------------------------------------------------------------------------- the run

def _checkpoint(model: ScoreModel, state: tf.Variable) -> tf.train.Checkpoint:
    # The SeedGenerator's state is not part of the model's checkpoint graph: name it.
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer, rng=model.seed_generator.state, state=state)


def _batches(x: np.ndarray, batch: int, start: int, total: int, seed: int) -> tf.data.Dataset:
    """Batch of step s = rows drawn with replacement by a stateless RNG keyed on (seed, s).

    Keyed on the step, so a resumed run sees exactly the batches an uninterrupted one would.
    """
    images = tf.constant(x)
    n = len(x)

    def draw(step):
        index = tf.random.stateless_uniform((batch,), seed=tf.stack([tf.cast(seed, tf.int64), step]),
                                            maxval=n, dtype=tf.int64)
        return tf.gather(images, index)

    return tf.data.Dataset.range(start, total).map(draw).prefetch(tf.data.AUTOTUNE)


class _EpochEnd(keras.callbacks.Callback):
    def __init__(self, fn: Callable[[dict[str, float]], None]):
        super().__init__()
        self.fn = fn

    def on_epoch_end(self, epoch, logs=None):
        self.fn({k: float(v) for k, v in (logs or {}).items()})


def train_dsm(
    images_path: str,
    out_dir: str,
    params: dict[str, Any],
    checkpoint_dir: str,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    eval_fn: Callable[[np.ndarray, int], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train the score model on ``images_path`` (.npy, (N, ...)); resumable; same contract as ``train_gan``.

    Every ``steps_per_epoch`` steps the run checkpoints into ``checkpoint_dir``; calling
    again with the same params continues at the same step (a larger ``steps`` extends a
    run; a change in ``_IDENTITY_KEYS`` is refused). ``eval_fn(samples, step)`` gets
    ``eval_samples`` Langevin samples (fixed seed) every ``eval_every`` steps and at the end.

    Writes ``score_model.keras``, ``samples_final.npy``, ``grid_final.png`` and
    ``history.json`` into ``out_dir``; returns ``{"files", "metrics"}`` with the history
    rows ``kexue.gan.eval.metrics.compare_variants`` reads and the sampling cost
    (network evaluations and seconds per 1,000 samples).
    """
    from kexue.gan.train import sample_grid_png

    check_params(params)
    p = {**DEFAULT_PARAMS, **params}
    if p["body"] not in BODIES:
        raise ValueError(f"dsm.body: unknown body {p['body']!r}" + did_you_mean(p["body"], BODIES))
    images = np.load(images_path).astype(np.float32)
    x = images.reshape(len(images), -1) if p["body"] == "mlp" else images
    spe, batch, seed = int(p["steps_per_epoch"]), int(p["batch_size"]), int(p["seed"])
    epochs = math.ceil(int(p["steps"]) / spe)
    total = epochs * spe
    out, ckpt_dir = Path(out_dir), Path(checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = json.loads(json.dumps({k: p[k] for k in _IDENTITY_KEYS}))  # as the checkpoint will hold it

    model = build_score_model(x, p)
    state_var = tf.Variable("", dtype=tf.string, trainable=False)
    manager = tf.train.CheckpointManager(_checkpoint(model, state_var), str(ckpt_dir), max_to_keep=1)
    state: dict[str, Any] = {"identity": identity, "step": 0, "epoch": 0, "seconds": 0.0, "eval_seconds": 0.0,
                             "sampling": None, "losses": [], "eval": [], "evaluated_at": 0}
    if manager.latest_checkpoint:
        # The run state first: a checkpoint of another run is refused before any shape clash.
        tf.train.Checkpoint(state=state_var).read(manager.latest_checkpoint).expect_partial()
        state = json.loads(state_var.numpy().decode())
        if stable_json(state["identity"]) != stable_json(identity):
            raise ValueError(f"{ckpt_dir} is from a different run: {state['identity']} != {identity}")
        manager.checkpoint.read(manager.latest_checkpoint).assert_existing_objects_matched()
    resumed_from = state["step"]
    n_eval = min(int(p["eval_samples"]), len(x))
    langevin = {k: p[k] for k in ("steps_per_level", "epsilon", "denoise")}

    def evaluate(step: int) -> np.ndarray:
        t0 = time.perf_counter()
        samples = model.sample(n_eval, seed=seed + 1, **langevin).reshape((n_eval, *images.shape[1:]))
        sampling_seconds = time.perf_counter() - t0
        # the Langevin settings travel with the cost, so the evaluation step can re-time the sampler
        state["sampling"] = {**langevin, "network_evaluations_per_sample": network_evaluations(
            p["levels"], p["steps_per_level"], p["denoise"]), "seconds_per_1000": 1000 * sampling_seconds / n_eval}
        if eval_fn is not None:
            state["eval"].append({"step": step, **eval_fn(samples, step)})
        state["eval_seconds"] += time.perf_counter() - t0
        state["evaluated_at"] = step
        return samples

    clock = {"t0": time.perf_counter()}

    def end_epoch(logs: dict[str, float]) -> None:
        step = int(model.step.numpy())
        state["losses"].append({"epoch": state["epoch"] + 1, "step": step, **logs})
        state.update(step=step, epoch=state["epoch"] + 1, seconds=state["seconds"] + time.perf_counter() - clock["t0"])
        every = p["eval_every"]
        if eval_fn is not None and every and step // every > state["evaluated_at"] // every and step < total:
            evaluate(step)
        state_var.assign(json.dumps(state))
        manager.save()
        clock["t0"] = time.perf_counter()
        if progress is not None:
            progress(step, total, logs)

    if state["epoch"] < epochs:
        data = _batches(x, batch, state["step"], total, seed)
        model.fit(data, epochs=epochs, initial_epoch=state["epoch"], steps_per_epoch=spe,
                  callbacks=[_EpochEnd(end_epoch)], shuffle=False, verbose=0)
    if state["sampling"] is None or state["evaluated_at"] < state["step"]:
        samples = evaluate(state["step"])
    else:  # resumed after the final evaluation: the same seed gives the same samples
        samples = model.sample(n_eval, seed=seed + 1, **langevin).reshape((n_eval, *images.shape[1:]))
    state_var.assign(json.dumps(state))
    manager.save()

    files = {
        "score_model": str(_save_model(model, out / "score_model.keras")),
        "samples_final": str(save_npy_atomic(out / "samples_final.npy", samples)),
        "grid_final": str(sample_grid_png(samples, out / "grid_final.png", p["grid"])),
    }
    final = state["eval"][-1] if state["eval"] else None
    metrics = {
        "variant": "dsm", "seed": seed, "step": state["step"], "epochs": state["epoch"], "steps_per_epoch": spe,
        "resumed_from_step": resumed_from,
        "seconds": state["seconds"], "eval_seconds": state["eval_seconds"],
        "steps_per_second": state["step"] / state["seconds"] if state["seconds"] > 0 else None,
        "sigmas": model.sigmas, "sampling": state["sampling"],
        "final_losses": state["losses"][-1] if state["losses"] else None, "losses": state["losses"],
        "eval": state["eval"], "final_eval": final,
        "best_eval": min(state["eval"], key=lambda r: r["fid"]) if state["eval"] else None,
    }
    files["history"] = str(write_json_atomic(out / "history.json", metrics))
    return {"files": files, "metrics": metrics}


def _save_model(model: keras.Model, path: Path) -> Path:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path
