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
  s_θ = (r_θ − x)/σ². Why: the network is the denoiser the post starts from; F's input
  and its regression target have unit variance at every level; and at large σ an error
  in F moves r by at most ~σ_d instead of ~σ. (NCSNv2's s = F/σ gave a similar FID on
  digits, docs/gan-study.md.)
- The loss is denoising score matching, ‖r_θ(x + σz) − x‖², weighted by 1/c_out² (unit
  variance target at every level), σ drawn uniformly from the ladder.
- The body is a residual MLP (8×8 digits flattened: cheaper and better here than 3×3
  convolutions) or residual 3×3 convolutions at full resolution; each block's features
  are scaled and shifted by a function of log σ (FiLM; a plain added bias fitted the
  1-D mixture's score at σ ≈ 0.3 about half as well).
- Sampling: few Langevin steps per level (T = 2) at a large step (ε/σ_L² = 0.5) on a fine
  ladder beat many steps on a coarse one; see docs/gan-study.md for the measurements.

``ScoreModel`` is a ``keras.Model`` with its own ``train_step`` (trained by ``fit``),
``get_config`` and ``.keras`` round trip. ``train_dsm`` is the resumable run, shaped like
``kexue.gan.train.train_gan``: same files, same history rows for the evaluation table, one
``tf.train.Checkpoint`` (model, optimizer, step, RNG state, run state) per epoch.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import scipy.spatial.distance
import tensorflow as tf
from keras import ops

from kexue.core.artifacts import atomic_path, save_npy_atomic, stable_json, write_json_atomic
from kexue.core.seeding import SeedStream
from kexue.gan.damage import checkpoint_damage
from kexue.gan.params import DSM_VARIANT, DsmParams
from kexue.optim import build_optimizer

log = logging.getLogger(__name__)

# Params that change what is trained: a checkpoint only resumes a run with the same values.
_IDENTITY_KEYS = ("batch_size", "body", "width", "depth", "levels", "sigma_max", "sigma_min", "optimizer")


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
        # a tuple: Keras would wrap a list attribute in a TrackedList, which does not unpickle
        self.sigmas, self.width, self.depth = tuple(sigmas), int(width), int(depth)
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


def build_score_model(x: np.ndarray, params: DsmParams, seed: int) -> ScoreModel:
    """The compiled, built model for data ``x`` (N, ...) and ``params``; its weights depend on ``seed`` only."""
    sigmas = sigma_ladder(x, params.levels, params.sigma_min, params.sigma_max, seed=seed)
    model = ScoreModel(x.shape[1:], sigmas, params.width, params.depth, sigma_data=float(np.std(x)), seed=seed)
    model.build()
    model.compile(optimizer=build_optimizer(params.optimizer), steps_per_execution=params.steps_per_epoch)
    model.optimizer.build(model.trainable_variables)
    return model


# --------------------------------------------------------------------------- the run

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


EvalFn = Callable[[np.ndarray, int, bool], dict[str, float]]  # (samples, step, full) -> metrics
Progress = Callable[[int, int, dict[str, Any]], None]  # (steps done, total steps, info)


def train_dsm(images_path: str, out_dir: str, params: DsmParams | Mapping[str, Any], seed: int,
              checkpoint_dir: str, progress: Progress | None = None, eval_fn: EvalFn | None = None) -> dict[str, Any]:
    """Train the score model on ``images_path`` (.npy, (N, H, W, C)) for ``seed``; the contract of ``train_gan``.

    Every ``steps_per_epoch`` steps the run checkpoints into ``checkpoint_dir``; calling
    again with the same params continues at the same step (a larger ``steps`` extends a
    run; a change in ``_IDENTITY_KEYS`` is refused). ``eval_fn(samples, step, full)`` gets
    ``eval_samples`` Langevin samples (fixed seed) every ``eval_every`` steps and, with
    ``full``, at the end. ``progress(step, total, info)`` after each epoch, ``info`` as
    ``train_gan``'s.

    Writes ``score_model.keras``, ``samples_final.npy``, ``grid_final.png`` and
    ``history.json`` into ``out_dir``; returns ``{"files", "metrics"}``: the history rows
    the evaluation table reads and the sampling cost (Langevin settings, network
    evaluations and seconds per 1,000 samples).
    """
    from kexue.gan.train import sample_grid_png

    p = params if isinstance(params, DsmParams) else DsmParams.model_validate(params)
    images = np.load(images_path).astype(np.float32)
    x = images.reshape(len(images), -1) if p.body == "mlp" else images
    epochs = math.ceil(p.steps / p.steps_per_epoch)
    total = epochs * p.steps_per_epoch
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"seed": seed, **{k: v for k, v in p.model_dump(mode="json").items() if k in _IDENTITY_KEYS}}

    model = build_score_model(x, p, seed)
    ckpt = _DsmCheckpoint(checkpoint_dir, model)
    state = ckpt.restore(identity) or {"identity": identity, "step": 0, "epoch": 0, "seconds": 0.0,
                                       "eval_seconds": 0.0, "sampling": None, "losses": [], "eval": [],
                                       "evaluated_at": 0}
    resumed_from, n_eval = state["step"], min(p.eval_samples, len(x))
    langevin = {"steps_per_level": p.steps_per_level, "epsilon": p.epsilon, "denoise": p.denoise}

    def draw() -> np.ndarray:
        samples = model.sample(n_eval, seed=seed + 1, **langevin).reshape((n_eval, *images.shape[1:]))
        # Langevin is unbounded (a GAN's tanh is not): without the clip, a quarter of the
        # pixels of digit samples fall outside [-1, 1], and FID counts them as content
        return np.clip(samples, images.min(), images.max()) if p.clip else samples

    def evaluate(step: int) -> np.ndarray:
        t0 = time.perf_counter()
        samples = draw()
        # the Langevin settings travel with the cost, so the evaluation step can re-time the sampler
        state["sampling"] = {**langevin, "network_evaluations_per_sample": network_evaluations(
            p.levels, p.steps_per_level, p.denoise), "seconds_per_1000": 1000 * (time.perf_counter() - t0) / n_eval}
        if eval_fn is not None:
            state["eval"].append({**eval_fn(samples, step, step >= total), "step": step})
        state["eval_seconds"] += time.perf_counter() - t0
        state["evaluated_at"] = step
        return samples

    clock = {"t0": time.perf_counter(), "started": state["seconds"]}

    def end_epoch(epoch: int, logs: dict[str, float]) -> None:
        step = int(model.step.numpy())
        state["losses"].append({"epoch": epoch, "step": step, **logs})
        state.update(step=step, epoch=epoch, seconds=state["seconds"] + time.perf_counter() - clock["t0"])
        if eval_fn is not None and p.eval_every and step // p.eval_every > state["evaluated_at"] // p.eval_every \
                and step < total:
            evaluate(step)
        ckpt.save(state)
        clock["t0"] = time.perf_counter()
        if progress is not None:
            rate = (step - resumed_from) / max(state["seconds"] - clock["started"], 1e-9)
            progress(step, total, {"seeds": [seed], "steps_per_second": rate, "eta_seconds": (total - step) / rate,
                                   "fid": state["eval"][-1]["fid"] if state["eval"] else None, **logs})

    if state["epoch"] < epochs:
        callback = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: end_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()}))
        model.fit(_batches(x, p.batch_size, state["step"], total, seed), epochs=epochs, initial_epoch=state["epoch"],
                  steps_per_epoch=p.steps_per_epoch, callbacks=[callback], shuffle=False, verbose=0)
    # resumed after the final evaluation: the same seed draws the same samples
    samples = evaluate(state["step"]) if state["sampling"] is None or state["evaluated_at"] < state["step"] else draw()
    ckpt.save(state)

    with atomic_path(out / "score_model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    files = {
        "score_model": str(out / "score_model.keras"),
        "samples_final": str(save_npy_atomic(out / "samples_final.npy", samples)),
        "grid_final": str(sample_grid_png(samples, out / "grid_final.png", p.grid)),
    }
    metrics = {
        "variant": DSM_VARIANT, "seed": seed, "step": state["step"], "epochs": state["epoch"],
        "steps_per_epoch": p.steps_per_epoch, "resumed_from_step": resumed_from,
        "seconds": state["seconds"], "eval_seconds": state["eval_seconds"],
        "steps_per_second": state["step"] / state["seconds"] if state["seconds"] > 0 else None,
        "sigmas": list(model.sigmas), "sampling": state["sampling"],
        "final_losses": state["losses"][-1] if state["losses"] else None, "losses": state["losses"],
        "eval": state["eval"], "final_eval": state["eval"][-1] if state["eval"] else None,
        "best_eval": min(state["eval"], key=lambda r: r["fid"]) if state["eval"] else None,
    }
    files["history"] = str(write_json_atomic(out / "history.json", metrics))
    return {"files": files, "metrics": metrics}


class _DsmCheckpoint:
    """The newest ``tf.train.Checkpoint`` of a run: model, optimizer, step, noise-RNG state, run state.

    The SeedGenerator's state is not part of the model's checkpoint graph, so it is named
    here; the run state (JSON: identity, histories) is a string variable saved with the rest.
    """

    def __init__(self, directory: str, model: ScoreModel):
        self.state = tf.Variable("", dtype=tf.string, trainable=False)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, rng=model.seed_generator.state,
                                         state=self.state)
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1)

    def restore(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        """The saved run state after restoring every variable, or None without a usable checkpoint.

        The run state is read first: a checkpoint of another run is refused before any shape clash.
        """
        path = self.manager.latest_checkpoint
        if not path:
            return None
        if (damage := checkpoint_damage(path)) is not None:  # start over rather than train on from damaged weights
            log.warning("score-model checkpoint %s is damaged (%s); training again from step 0", path, damage)
            return None
        tf.train.Checkpoint(state=self.state).read(path).expect_partial()
        state = json.loads(self.state.numpy().decode())
        if stable_json(state["identity"]) != stable_json(identity):
            raise ValueError(f"{path} is from a different run: {state['identity']} != {identity}")
        self.manager.checkpoint.read(path).assert_existing_objects_matched()
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.state.assign(json.dumps(state))
        self.manager.save()
