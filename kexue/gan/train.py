"""DCGAN with a Cascading Rejection discriminator head, and its resumable training run.

Why this shape:
- ``CascadeGAN`` is a ``keras.Model`` with its own ``compile`` and ``train_step``, trained by
  ``fit``; so a ``tf.distribute`` strategy scope wraps it unchanged (losses are scaled by
  the replica count exactly as Keras scales its own) and ``steps_per_execution`` runs many
  steps per ``tf.function`` call — which is what makes a tiny 8×8 GAN fast on one core.
- The discriminator ends in ``CascadingRejection`` (``kexue.gan.cascading``): N scores
  D_1..D_N per image. Each score gets its own GAN loss and the discriminator and
  generator losses are weighted averages over the cascades; N = 1 is the plain baseline.
- ``train_gan`` checkpoints every epoch into one atomically written ``.npz`` (all model,
  optimizer and RNG variables, the step counter, the config, the histories and the best
  generator snapshot), so a killed run resumes at the same step with the same state.

Losses, with D_k the k-th cascade score, c_k the cascade weights (normalised to sum 1):
    hinge:           L_D = Σ c_k (E relu(1 − D_k(x)) + E relu(1 + D_k(G(z))))
                     L_G = Σ c_k (− E D_k(G(z)))
    non_saturating:  L_D = Σ c_k (E softplus(−D_k(x)) + E softplus(D_k(G(z))))
                     L_G = Σ c_k (E softplus(−D_k(G(z))))
"""
from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kexue.core.artifacts import atomic_path, save_npy_atomic, stable_json, write_bytes_atomic, write_json_atomic
from kexue.gan.cascading import CascadingRejection
from kexue.optim import build_optimizer
from kexue.core.seeding import SeedStream

LOSSES = ("hinge", "non_saturating")

DEFAULT_PARAMS: dict[str, Any] = {
    "cascades": 1,            # N: 1 = plain discriminator (baseline)
    "cascade_weights": None,  # per-cascade loss weights; None = uniform
    "loss": "hinge",
    "seed": 0,
    "steps": 2500,            # rounded up to whole epochs; "epochs" overrides when given
    "epochs": None,
    "batch_size": 64,
    "latent_dim": 32,
    "width": 64,              # channels of the widest generator / narrowest discriminator conv
    "spectral_norm": False,
    "d_optimizer": {"name": "adam", "learning_rate": 2e-4, "beta_1": 0.5},  # kexue.optim.build_optimizer specs
    "g_optimizer": {"name": "adam", "learning_rate": 2e-4, "beta_1": 0.5},
    "eval_every": 250,        # steps; evaluation happens at the first epoch end past each multiple
    "eval_samples": 2000,     # generated images per evaluation (capped at the real set's size)
    "best_metric": "fid",     # key of eval_fn's dict; lower is better
    "grid": 10,               # sample grids are grid × grid images
}

# Params that change what is trained: a checkpoint only resumes a run with the same values.
_IDENTITY_KEYS = ("cascades", "cascade_weights", "loss", "seed", "batch_size", "latent_dim",
                  "width", "spectral_norm", "d_optimizer", "g_optimizer")


# --------------------------------------------------------------------------- models

def _halvings(height: int, width: int) -> int:
    """How many stride-2 stages fit: halve while both sides are even and stay ≥ 4."""
    k = 0
    while height % 2 == 0 and width % 2 == 0 and min(height, width) // 2 >= 4:
        height, width, k = height // 2, width // 2, k + 1
    if k == 0:
        raise ValueError(f"image size {height}×{width} must be even and at least 8")
    return k


def make_generator(image_shape: tuple[int, int, int], latent_dim: int = 32, width: int = 64, seed: int = 0) -> keras.Model:
    """z → Dense to (H/2^k, W/2^k, width·2^(k-1)) → k × (ConvTranspose stride 2, BN, ReLU) → tanh.

    k stride-2 stages so the first feature map is 4×4 for 8/16/32-pixel images (7×7 for 28).
    The initial weights depend on ``seed`` only (``kexue.core.seeding``).
    """
    seeds = SeedStream((seed, 1))
    h, w, c = image_shape
    k = _halvings(h, w)
    z = keras.Input((latent_dim,), name="z")
    channels = width * 2 ** (k - 1)
    x = keras.layers.Dense((h >> k) * (w >> k) * 2 * channels, use_bias=False, kernel_initializer=seeds.glorot_uniform())(z)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Reshape((h >> k, w >> k, 2 * channels))(x)
    for _ in range(k):
        x = keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same", use_bias=False,
                                         kernel_initializer=seeds.glorot_uniform())(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        channels = max(channels // 2, width)
    x = keras.layers.Conv2D(c, 3, padding="same", activation="tanh", name="image", kernel_initializer=seeds.glorot_uniform())(x)
    return keras.Model(z, x, name="generator")


def make_discriminator(
    image_shape: tuple[int, int, int], cascades: int = 1, width: int = 64, spectral_norm: bool = False, seed: int = 0
) -> keras.Model:
    """x → k × (Conv stride 2, LeakyReLU) → Conv 3×3 → flatten = v → CascadingRejection(N).

    ``spectral_norm`` wraps every convolution in ``keras.layers.SpectralNormalization``;
    the cascade head stays plain (its rejection is invariant to the scale of each w_k).
    The initial weights depend on ``seed`` only (``kexue.core.seeding``).
    """
    seeds = SeedStream((seed, 2))
    h, w, _ = image_shape
    k = _halvings(h, w)

    def conv(filters: int, size: int, strides: int) -> keras.layers.Layer:
        layer = keras.layers.Conv2D(filters, size, strides=strides, padding="same", kernel_initializer=seeds.glorot_uniform())
        return keras.layers.SpectralNormalization(layer) if spectral_norm else layer

    x_in = keras.Input(image_shape, name="image")
    x = x_in
    filters = width
    for _ in range(k):
        x = conv(filters, 4, 2)(x)
        x = keras.layers.LeakyReLU(0.2)(x)
        filters *= 2
    x = conv(filters, 3, 1)(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    v = keras.layers.Flatten(name="v")(x)
    scores = CascadingRejection(cascades, kernel_initializer=seeds.glorot_uniform(), name="cascading_rejection")(v)
    model = keras.Model(x_in, scores, name="discriminator")
    seeds.seed_spectral_norms(model)
    return model


# --------------------------------------------------------------------------- GAN model

def _distribution_scale(loss):
    """Divide by the replica count: gradients are summed over replicas, as in Keras' own fit."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def _d_loss_terms(loss: str, d_real, d_fake):
    """Per-cascade (N,) discriminator losses from (batch, N) scores of real and fake images."""
    if loss == "hinge":
        return ops.mean(ops.relu(1.0 - d_real), axis=0) + ops.mean(ops.relu(1.0 + d_fake), axis=0)
    return ops.mean(ops.softplus(-d_real), axis=0) + ops.mean(ops.softplus(d_fake), axis=0)


def _g_loss_terms(loss: str, d_fake):
    """Per-cascade (N,) generator losses from (batch, N) scores of fake images."""
    if loss == "hinge":
        return -ops.mean(d_fake, axis=0)
    return ops.mean(ops.softplus(-d_fake), axis=0)


class CascadeGAN(keras.Model):
    """Generator G and discriminator D (ending in CascadingRejection), trained adversarially.

    ``fit(real_images_dataset)`` runs ``train_step``: one D update then one G update per
    batch, with fresh z ~ N(0, I) from the model's own ``SeedGenerator`` each time.
    ``self.step`` counts completed train steps (checkpointed and restored with the weights).
    """

    def __init__(self, generator: keras.Model, discriminator: keras.Model, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.seed = seed
        self.latent_dim = int(generator.input_shape[-1])
        self.cascades = int(discriminator.output_shape[-1])
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.step = keras.Variable(0, dtype="int64", trainable=False, name="step")

    def compile(
        self,
        d_optimizer: keras.optimizers.Optimizer,
        g_optimizer: keras.optimizers.Optimizer,
        loss: str = "hinge",
        cascade_weights: list[float] | None = None,
        **kwargs,
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        weights = np.ones(self.cascades) if cascade_weights is None else np.asarray(cascade_weights, float)
        if weights.shape != (self.cascades,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"cascade_weights must be {self.cascades} non-negative numbers with a "
                             f"positive sum, got {cascade_weights!r}")
        super().compile(**kwargs)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_name = loss
        self.cascade_weights = [float(c) for c in weights / weights.sum()]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names()}

    def metric_names(self) -> list[str]:
        """d_loss, g_loss, then d_loss_k, g_loss_k for each cascade k = 1..N."""
        per_cascade = [f"{p}_loss_{k}" for k in range(1, self.cascades + 1) for p in ("d", "g")]
        return ["d_loss", "g_loss"] + per_cascade

    @property
    def metrics(self):
        return list(self.trackers.values())  # reset by fit at each epoch start

    def call(self, images, training=False):
        """Cascade scores (batch, N) of ``images``: the model's input is what ``fit`` feeds it."""
        return self.discriminator(images, training=training)

    def _noise(self, batch):
        return keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)

    def train_step(self, real):
        batch = ops.shape(real)[0]
        c = ops.convert_to_tensor(self.cascade_weights, dtype="float32")

        with tf.GradientTape() as tape:
            fake = self.generator(self._noise(batch), training=True)
            d_real = self.discriminator(real, training=True)
            d_fake = self.discriminator(fake, training=True)
            d_k = _d_loss_terms(self.loss_name, d_real, d_fake)
            d_loss = ops.sum(c * d_k)
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply(tape.gradient(_distribution_scale(d_loss), d_vars), d_vars)

        with tf.GradientTape() as tape:
            fake = self.generator(self._noise(batch), training=True)
            d_fake = self.discriminator(fake, training=True)
            g_k = _g_loss_terms(self.loss_name, d_fake)
            g_loss = ops.sum(c * g_k)
        g_vars = self.generator.trainable_variables
        self.g_optimizer.apply(tape.gradient(_distribution_scale(g_loss), g_vars), g_vars)

        self.step.assign_add(1)
        self.trackers["d_loss"].update_state(d_loss)
        self.trackers["g_loss"].update_state(g_loss)
        for k in range(self.cascades):
            self.trackers[f"d_loss_{k + 1}"].update_state(d_k[k])
            self.trackers[f"g_loss_{k + 1}"].update_state(g_k[k])
        return {name: m.result() for name, m in self.trackers.items()}


def build_gan(image_shape: tuple[int, int, int], params: dict[str, Any], steps_per_execution: int = 1) -> CascadeGAN:
    """The compiled GAN for ``params`` (see ``DEFAULT_PARAMS``), optimizer slots built.

    ``steps_per_execution`` train steps run inside one ``tf.function`` call of ``fit``.
    """
    p = {**DEFAULT_PARAMS, **params}
    seed = int(p["seed"])  # every random draw below is seeded from it explicitly: no global reseeding
    gan = CascadeGAN(
        make_generator(image_shape, p["latent_dim"], p["width"], seed=seed),
        make_discriminator(image_shape, p["cascades"], p["width"], p["spectral_norm"], seed=seed),
        seed=seed,
    )
    gan.compile(build_optimizer(p["d_optimizer"]), build_optimizer(p["g_optimizer"]),
                loss=p["loss"], cascade_weights=p["cascade_weights"], steps_per_execution=steps_per_execution)
    gan.d_optimizer.build(gan.discriminator.trainable_variables)
    gan.g_optimizer.build(gan.generator.trainable_variables)
    return gan


# --------------------------------------------------------------------------- checkpoints

def _variable_groups(gan: CascadeGAN) -> dict[str, list]:
    """Every variable a resumed run needs, in a fixed order per group."""
    return {
        "generator": list(gan.generator.variables),
        "discriminator": list(gan.discriminator.variables),
        "d_optimizer": list(gan.d_optimizer.variables),
        "g_optimizer": list(gan.g_optimizer.variables),
        "gan": [gan.step, gan.seed_generator.state],
    }


def _arrays(variables: list, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/{i:04d}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(variables)}


def _assign(variables: list, arrays: dict[str, np.ndarray], prefix: str) -> None:
    keys = sorted(k for k in arrays if k.startswith(prefix + "/"))
    if len(keys) != len(variables):
        raise ValueError(f"checkpoint has {len(keys)} {prefix} variables, the model {len(variables)}")
    for v, key in zip(variables, keys):
        if tuple(arrays[key].shape) != tuple(v.shape):
            raise ValueError(f"checkpoint {key} has shape {arrays[key].shape}, variable {v.path} {v.shape}")
        v.assign(arrays[key])


def save_checkpoint(path: Path, gan: CascadeGAN, state: dict[str, Any], best_generator: dict[str, np.ndarray]) -> None:
    """One atomic .npz: all variables, the best-generator snapshot and the JSON ``state``."""
    arrays: dict[str, np.ndarray] = {}
    for group, variables in _variable_groups(gan).items():
        arrays.update(_arrays(variables, group))
    arrays.update({f"best/{k}": v for k, v in best_generator.items()})
    arrays["state"] = np.array(json.dumps(state, default=float))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: Path, gan: CascadeGAN, identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Restore every variable of ``gan`` from ``path``; return (state, best-generator arrays).

    Refuses (ValueError) a checkpoint whose run ``identity`` differs from ``identity``.
    """
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    state = json.loads(str(arrays["state"]))
    if stable_json(state["identity"]) != stable_json(identity):
        raise ValueError(f"{path} is from a different run: {state['identity']} != {identity}")
    for group, variables in _variable_groups(gan).items():
        _assign(variables, arrays, group)
    best = {k[len("best/"):]: v for k, v in arrays.items() if k.startswith("best/")}
    return state, best


# --------------------------------------------------------------------------- training run

def sample_grid_png(images: np.ndarray, path: str | Path, rows: int, scale: int = 4) -> Path:
    """Tile the first rows×rows images ([-1, 1], NHWC) into a PNG, nearest-neighbour upscaled."""
    from PIL import Image

    from kexue.gan.data import image_grid

    rows = min(rows, math.isqrt(len(images)))
    grid = (image_grid(images[: rows * rows], rows) * 255).round().astype(np.uint8)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def _batch_order(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """(steps, batch) image indices: consecutive seeded permutations of the data, one per epoch.

    Fixed up front so a resumed run sees exactly the batches the uninterrupted run would.
    """
    rng = np.random.default_rng(seed)
    epochs = math.ceil(steps * batch_size / n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


class _RunCallback(keras.callbacks.Callback):
    """Per epoch: log losses (history + TensorBoard), evaluate when due, checkpoint."""

    def __init__(self, run: "_Run"):
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        self.run.end_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})


class _Run:
    """State of one ``train_gan`` call: the GAN, its histories and where things are written."""

    def __init__(self, gan, out_dir, ckpt_path, p, state, best, z_eval, eval_fn, progress, total_steps):
        self.gan, self.out, self.ckpt_path, self.p = gan, out_dir, ckpt_path, p
        self.state, self.best = state, best
        self.z_eval, self.eval_fn, self.progress, self.total_steps = z_eval, eval_fn, progress, total_steps
        self.writer = tf.summary.create_file_writer(str(out_dir / "tensorboard"))
        self.t0 = time.perf_counter()

    def samples(self) -> np.ndarray:
        return keras.ops.convert_to_numpy(self.gan.generator(self.z_eval, training=False)).astype(np.float32)

    def evaluate(self, step: int) -> None:
        samples = self.samples()
        row = {"step": step, **self.eval_fn(samples, step)}
        self.state["eval"].append(row)
        metric = self.p["best_metric"]
        if metric not in row:
            raise KeyError(f"eval_fn returned {sorted(row)}, no best_metric {metric!r}")
        if self.state["best"] is None or row[metric] < self.state["best"][metric]:
            self.state["best"] = row
            self.best = _arrays(self.gan.generator.variables, "generator")
        sample_grid_png(samples, self.out / f"grid_step{step:06d}.png", self.p["grid"])
        with self.writer.as_default(step=step):
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float, np.floating)):
                    tf.summary.scalar(f"eval/{k}", v)

    def end_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        step = int(self.gan.step.numpy())
        self.state["losses"].append({"epoch": epoch, "step": step, **logs})
        with self.writer.as_default(step=step):
            for k, v in logs.items():
                tf.summary.scalar(f"loss/{k}", v)
        self.writer.flush()
        self.state.update(step=step, epoch=epoch,
                          seconds=self.state["seconds"] + time.perf_counter() - self.t0)
        if self.eval_fn is not None and (step // self.p["eval_every"] > self.state["evaluated_at"] // self.p["eval_every"]
                                         or step >= self.total_steps):
            t_eval = time.perf_counter()
            self.state["evaluated_at"] = step
            self.evaluate(step)
            self.state["eval_seconds"] += time.perf_counter() - t_eval
        self.t0 = time.perf_counter()
        save_checkpoint(self.ckpt_path, self.gan, self.state, self.best)
        if self.progress is not None:
            self.progress(step, self.total_steps, logs)


def train_gan(
    images_path: str,
    out_dir: str,
    params: dict[str, Any],
    checkpoint_dir: str,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    eval_fn: Callable[[np.ndarray, int], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train one GAN variant on ``images_path`` (.npy, (N, H, W, C) in [-1, 1]); resumable.

    ``params`` override ``DEFAULT_PARAMS``. Every epoch (⌊N / batch⌋ steps) the run
    checkpoints to ``checkpoint_dir/checkpoint.npz``; calling again with the same params
    continues from there with the same step counter (a larger ``steps`` extends a run;
    changing anything in ``_IDENTITY_KEYS`` is refused). ``eval_fn(samples, step)`` gets
    ``eval_samples`` generated images from a fixed z every ``eval_every`` steps and at the
    end; the generator with the lowest ``best_metric`` is kept. ``progress(step, total,
    losses)`` is called after each epoch.

    Writes into ``out_dir``: ``generator.keras`` (final), ``samples_final.npy``,
    ``grid_final.png``, ``history.json``, ``tensorboard/`` event files, and with ``eval_fn``
    also ``generator_best.keras``, ``samples_best.npy``, ``grid_best.png`` and
    ``grid_stepNNNNNN.png`` per evaluation. Returns ``{"files": {name: path}, "metrics": ...}``.

    To distribute, call it inside ``strategy.scope()``: the GAN is built in the caller's
    strategy and ``fit`` distributes the batches. TensorFlow's thread counts are the
    caller's (set ``TF_NUM_INTRAOP_THREADS=1`` per worker to run one variant per core).
    """
    p = {**DEFAULT_PARAMS, **params}
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown GAN params {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    x = np.load(images_path).astype(np.float32)
    if x.ndim != 4:
        raise ValueError(f"{images_path}: expected (N, H, W, C) images, got shape {x.shape}")
    batch = int(p["batch_size"])
    steps_per_epoch = len(x) // batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(x)} images are fewer than one batch of {batch}")
    epochs = int(p["epochs"]) if p["epochs"] is not None else math.ceil(int(p["steps"]) / steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    out, ckpt_dir = Path(out_dir), Path(checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "checkpoint.npz"
    identity = {k: p[k] for k in _IDENTITY_KEYS}

    gan = build_gan(tuple(x.shape[1:]), p, steps_per_execution=steps_per_epoch)
    state: dict[str, Any] = {"identity": identity, "step": 0, "epoch": 0, "seconds": 0.0, "eval_seconds": 0.0,
                             "losses": [], "eval": [], "best": None, "evaluated_at": 0}
    best: dict[str, np.ndarray] = {}
    if ckpt_path.exists():
        state, best = load_checkpoint(ckpt_path, gan, identity)
    resumed_from = state["step"]

    z_eval = np.random.default_rng([int(p["seed"]), 1]).standard_normal(
        (min(int(p["eval_samples"]), len(x)), int(p["latent_dim"]))).astype(np.float32)
    run = _Run(gan, out, ckpt_path, p, state, best, z_eval, eval_fn, progress, total_steps)
    if state["epoch"] < epochs:
        order = _batch_order(len(x), batch, total_steps, int(p["seed"]))[state["step"]:]
        images = tf.constant(x)
        data = (tf.data.Dataset.from_tensor_slices(order)
                .map(lambda idx: tf.gather(images, idx)).prefetch(tf.data.AUTOTUNE))
        gan.fit(data, epochs=epochs, initial_epoch=state["epoch"], steps_per_epoch=steps_per_epoch,
                callbacks=[_RunCallback(run)], shuffle=False, verbose=0)
    run.writer.close()

    files: dict[str, str] = {}
    for tag in ("final", "best") if state["best"] is not None else ("final",):
        if tag == "best":  # the snapshot with the lowest best_metric, written from the checkpoint
            for v, key in zip(gan.generator.variables, sorted(run.best)):
                v.assign(run.best[key])
        samples = run.samples()
        suffix = "" if tag == "final" else "_best"
        files[f"generator{suffix}"] = str(_save_model(gan.generator, out / f"generator{suffix}.keras"))
        files[f"samples_{tag}"] = str(save_npy_atomic(out / f"samples_{tag}.npy", samples))
        files[f"grid_{tag}"] = str(sample_grid_png(samples, out / f"grid_{tag}.png", p["grid"]))
    for grid in sorted(out.glob("grid_step*.png")):
        files[grid.stem] = str(grid)
    metrics = {
        "variant": f"cr{p['cascades']}",
        "cascades": p["cascades"], "seed": p["seed"], "loss": p["loss"],
        "step": state["step"], "epochs": state["epoch"], "steps_per_epoch": steps_per_epoch,
        "resumed_from_step": resumed_from,
        "seconds": state["seconds"],  # training incl. checkpoints, tracing and logging; not evaluation
        "eval_seconds": state["eval_seconds"],
        "steps_per_second": state["step"] / state["seconds"] if state["seconds"] > 0 else None,
        "final_losses": state["losses"][-1] if state["losses"] else None,
        "losses": state["losses"],
        "eval": state["eval"],
        "final_eval": state["eval"][-1] if state["eval"] else None,
        "best_eval": state["best"],
    }
    files["history"] = str(write_json_atomic(out / "history.json", metrics))
    for event in sorted((out / "tensorboard").glob("events.*")):
        files[f"tensorboard/{event.name}"] = str(event)
    return {"files": files, "metrics": metrics}


def _save_model(model: keras.Model, path: Path) -> Path:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path
