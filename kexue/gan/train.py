"""One variant's training run for a list of seeds: resumable, FID tracked, best generator kept.

``train_gan`` trains the seeds together, as members of one model (``kexue.gan.cascade_gan``),
when ``vectorize_seeds`` is on, else one after another. Per epoch it logs every member's losses
(history and TensorBoard), evaluates when due, checkpoints (``kexue.gan.checkpoint``) and
reports progress; a killed run called again resumes at the last epoch with the same state,
and ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kexue.core.artifacts import atomic_path, save_npy_atomic, write_json_atomic
from kexue.gan.cascade_gan import CascadeGAN, build_gan
from kexue.gan.checkpoint import GanCheckpoint, generator_weights, set_generator_weights
from kexue.gan.data import image_grid
from kexue.gan.params import GanRunParams

log = logging.getLogger(__name__)

EvalFn = Callable[[np.ndarray, int, bool], dict[str, float]]  # (samples, step, full) -> metrics
Progress = Callable[[int, int, dict[str, Any]], None]  # (steps done, total steps, info)

# Params that change what is trained: a checkpoint only resumes a run with the same values.
_IDENTITY_KEYS = ("cascades", "cascade_weights", "loss", "batch_size", "latent_dim", "width", "d_width", "conditional",
                  "spectral_norm",
                  "d_optimizer", "g_optimizer")


def run_identity(params: GanRunParams) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by a run of ``params``."""
    return {k: v for k, v in params.model_dump(mode="json").items() if k in _IDENTITY_KEYS}


def sample_grid_png(images: np.ndarray, path: str | Path, rows: int, scale: int = 4) -> Path:
    """Tile the first rows×rows images ([-1, 1], NHWC) into a PNG, nearest-neighbour upscaled."""
    from PIL import Image

    rows = min(rows, math.isqrt(len(images)))
    grid = (image_grid(images[: rows * rows], rows) * 255).round().astype(np.uint8)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """(steps, batch) image indices: consecutive seeded permutations of the data, one per epoch.

    Fixed up front so a resumed run sees exactly the batches the uninterrupted run would.
    """
    rng = np.random.default_rng(seed)
    epochs = math.ceil(steps * batch_size / n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


class _Run:
    """One model's run: the GAN, every member's histories, where things are written."""

    def __init__(self, gan: CascadeGAN, p: GanRunParams, out: Path, ckpt: GanCheckpoint,
                 total_steps: int, eval_samples: int, eval_fn: EvalFn | None, progress: Progress | None,
                 labels: np.ndarray | None = None):
        self.gan, self.p, self.out, self.ckpt = gan, p, out, ckpt
        self.total_steps, self.eval_fn, self.progress = total_steps, eval_fn, progress
        self.seeds = gan.seeds
        self.identity = run_identity(p)
        self.state: dict[str, Any] = {
            "identity": self.identity, "step": 0, "epoch": 0, "seconds": 0.0, "eval_seconds": 0.0, "evaluated_at": 0,
            "members": {str(s): {"losses": [], "eval": [], "best": None} for s in self.seeds}}
        self.best: dict[int, dict[str, np.ndarray]] = {}
        if ckpt.exists():
            if (damage := ckpt.damage()) is None:
                self.state, self.best = ckpt.restore(self.identity)
            else:  # start over rather than train on from damaged weights
                log.warning("GAN checkpoint %s is damaged (%s); training again from step 0",
                            ckpt.manager.latest_checkpoint, damage)
        self.resumed_from = self.state["step"]
        self.z_eval = np.stack([np.random.default_rng([s, 1]).standard_normal((eval_samples, p.latent_dim))
                                for s in self.seeds]).astype(np.float32)  # (M, n, latent)
        # conditional: the real labels in a seeded order, so the samples have the real class mix
        self.y_eval = None if labels is None else np.stack(
            [np.random.default_rng([s, 2]).permutation(labels)[:eval_samples] for s in self.seeds]).astype(np.int32)
        self.writers = {s: tf.summary.create_file_writer(str(out / f"s{s}" / "tensorboard")) for s in self.seeds}
        self.t0 = self.saved_at = time.perf_counter()

    def member(self, seed: int) -> dict[str, Any]:
        return self.state["members"][str(seed)]

    def evaluate(self, step: int) -> None:
        """Every member's metrics at ``step``, of the generator it samples from: the averaged one with ``use_ema``."""
        with self.gan.averaged_generators():
            samples = self.gan.generate(self.z_eval, self.y_eval)
            for m, seed in enumerate(self.seeds):
                self._record_eval(m, seed, samples[m], step)

    def _record_eval(self, m: int, seed: int, samples: np.ndarray, step: int) -> None:
        """One member's metrics row, its grid and TensorBoard scalars; its generator kept when best so far."""
        row = {**self.eval_fn(samples, step, step >= self.total_steps), "step": step}  # KID, P/R only at the end
        history = self.member(seed)
        history["eval"].append(row)
        if history["best"] is None or row["fid"] < history["best"]["fid"]:
            history["best"] = row
            self.best[seed] = generator_weights(self.gan.generators[m])
        sample_grid_png(samples, self.out / f"s{seed}" / f"grid_step{step:06d}.png", self.p.grid)
        with self.writers[seed].as_default(step=step):
            for k, v in row.items():
                if k != "step":
                    tf.summary.scalar(f"eval/{k}", v)

    def end_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        step = int(self.gan.step.numpy())
        for seed in self.seeds:
            prefix = f"s{seed}/"
            losses = {k[len(prefix):]: v for k, v in logs.items() if k.startswith(prefix)}
            self.member(seed)["losses"].append({"epoch": epoch, "step": step, **losses})
            with self.writers[seed].as_default(step=step):
                for k, v in losses.items():
                    tf.summary.scalar(f"loss/{k}", v)
        elapsed = time.perf_counter() - self.t0
        if epoch == self.first_epoch:  # includes tracing and compiling the train step
            self.state["first_epoch_seconds"] = elapsed
        self.state.update(step=step, epoch=epoch, seconds=self.state["seconds"] + elapsed)
        every = self.p.eval_every
        if self.eval_fn is not None and (step // every > self.state["evaluated_at"] // every or step >= self.total_steps):
            t_eval = time.perf_counter()
            self.state["evaluated_at"] = step
            self.evaluate(step)
            self.state["eval_seconds"] += time.perf_counter() - t_eval
        for writer in self.writers.values():
            writer.flush()
        if step >= self.total_steps or time.perf_counter() - self.saved_at >= self.p.checkpoint_seconds:
            self.ckpt.save(self.state, self.best)
            self.saved_at = time.perf_counter()
        self.t0 = time.perf_counter()
        if self.progress is not None:
            self.progress(step, self.total_steps, self.info())

    def info(self) -> dict[str, Any]:
        """Steps/s of this run (since it started or resumed), ETA, the members' latest FID."""
        done, seconds = self.state["step"] - self.resumed_from, self.state["seconds"] - self.started_seconds
        rate = done / seconds if seconds > 0 else None
        latest = [self.member(s)["eval"][-1]["fid"] for s in self.seeds if self.member(s)["eval"]]
        return {"seeds": self.seeds, "steps_per_second": rate,
                "eta_seconds": (self.total_steps - self.state["step"]) / rate if rate else None,
                "fid": float(np.mean(latest)) if latest else None}

    def train(self, x: np.ndarray, epochs: int, steps_per_epoch: int, labels: np.ndarray | None = None) -> None:
        self.started_seconds, self.first_epoch = self.state["seconds"], self.state["epoch"] + 1
        if self.state["epoch"] >= epochs:
            return
        # (steps, batch, M): each member's own batches
        order = np.stack([batch_order(len(x), self.p.batch_size, self.total_steps, s) for s in self.seeds], axis=2)
        images = tf.constant(x)
        y = None if labels is None else tf.constant(labels.astype(np.int32))

        def batch(idx):
            return tf.gather(images, idx) if y is None else (tf.gather(images, idx), tf.gather(y, idx))

        # a fixed two-batch prefetch, no autotuning: with autotuning on, destroying the iterator
        # at the end of fit sometimes blocked 2-20 s in a Dask worker (a fifth of a GAN task)
        options = tf.data.Options()
        options.autotune.enabled = False
        data = tf.data.Dataset.from_tensor_slices(order[self.state["step"]:]).map(batch).prefetch(2).with_options(options)
        callback = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: self.end_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()}))
        self.gan.fit(data, epochs=epochs, initial_epoch=self.state["epoch"], steps_per_epoch=steps_per_epoch,
                     callbacks=[callback], shuffle=False, verbose=0)

    def finish(self, steps_per_epoch: int) -> dict[int, dict[str, Any]]:
        """Write every member's generators, samples, grids and history; return its files and metrics."""
        for writer in self.writers.values():
            writer.close()
        with self.gan.averaged_generators():  # "final" is the generator evaluation saw
            return {seed: self._finish_member(m, seed, steps_per_epoch) for m, seed in enumerate(self.seeds)}

    def _finish_member(self, m: int, seed: int, steps_per_epoch: int) -> dict[str, Any]:
        """One member's generators (final, best), samples, grids and history written; its files and metrics."""
        out, history, generator = self.out / f"s{seed}", self.member(seed), self.gan.generators[m]
        files: dict[str, str] = {}
        tags = ("final", "best") if history["best"] is not None else ("final",)
        for tag in tags:
            if tag == "best":  # the snapshot with the lowest FID, kept in the checkpoint
                set_generator_weights(generator, self.best[seed])
            inputs = self.gan.member_inputs(self.z_eval[m], None if self.y_eval is None else self.y_eval[m])
            samples = np.asarray(generator(inputs, training=False), np.float32)
            suffix = "" if tag == "final" else "_best"
            files[f"generator{suffix}"] = str(_save_model(generator, out / f"generator{suffix}.keras"))
            files[f"samples_{tag}"] = str(save_npy_atomic(out / f"samples_{tag}.npy", samples))
            files[f"grid_{tag}"] = str(sample_grid_png(samples, out / f"grid_{tag}.png", self.p.grid))
        for grid in sorted(out.glob("grid_step*.png")):
            files[grid.stem] = str(grid)
        s = self.state
        metrics = {
            "cascades": self.p.cascades, "seed": seed, "loss": self.p.loss, "seeds_together": len(self.seeds),
            "step": s["step"], "epochs": s["epoch"], "steps_per_epoch": steps_per_epoch,
            "resumed_from_step": self.resumed_from,
            "seconds": s["seconds"],  # training incl. checkpoints, compiling and logging; not evaluation
            "eval_seconds": s["eval_seconds"],
            "first_epoch_seconds": s.get("first_epoch_seconds"),
            "steps_per_second": s["step"] / s["seconds"] if s["seconds"] > 0 else None,
            "final_losses": history["losses"][-1] if history["losses"] else None,
            "losses": history["losses"],
            "eval": history["eval"],
            "final_eval": history["eval"][-1] if history["eval"] else None,
            "best_eval": history["best"],
            "averaged_generator": self.gan.averages_generators,  # evaluated and saved: the weights' moving average
        }
        files["history"] = str(write_json_atomic(out / "history.json", metrics))
        for event in sorted((out / "tensorboard").glob("events.*")):
            files[f"tensorboard/{event.name}"] = str(event)
        return {"files": files, "metrics": metrics}


def train_gan(
    images_path: str,
    out_dir: str,
    params: GanRunParams | Mapping[str, Any],
    seeds: Sequence[int],
    checkpoint_dir: str,
    progress: Progress | None = None,
    eval_fn: EvalFn | None = None,
    labels_path: str | None = None,
) -> dict[int, dict[str, Any]]:
    """Train one GAN variant for every seed on ``images_path`` (.npy, (N, H, W, C) in [-1, 1]).

    Every epoch (⌊N / batch⌋ steps) the run checkpoints into ``checkpoint_dir``; calling
    again with the same params continues from there with the same step counter (a larger
    ``steps`` extends a run; changing anything in ``_IDENTITY_KEYS`` is refused).
    ``eval_fn(samples, step, full)`` gets ``eval_samples`` generated images per seed from a
    fixed z every ``eval_every`` steps and at the end (``full`` then: every metric); each
    seed's generator with the lowest FID is kept. With ``use_ema`` on the generator optimizer
    the generator evaluated, kept and saved is the moving average of its weights
    (``CascadeGAN.averaged_generators``); training goes on from its own weights.
    ``progress(step, total, info)`` is called after each epoch, ``info`` with
    ``steps_per_second``, ``eta_seconds``, ``fid`` (the members' mean latest FID) and ``seeds``.

    Writes into ``out_dir/s<seed>/``: ``generator.keras`` (final), ``samples_final.npy``,
    ``grid_final.png``, ``history.json``, ``tensorboard/`` event files, and with ``eval_fn``
    also ``generator_best.keras``, ``samples_best.npy``, ``grid_best.png`` and
    ``grid_stepNNNNNN.png`` per evaluation. Returns ``{seed: {"files": {name: path}, "metrics": ...}}``.

    ``conditional`` params need ``labels_path`` (.npy of integer labels, one per image): real
    batches carry their labels, fakes are drawn for the same labels, and evaluation samples
    follow the real class mix.

    To distribute, call it inside ``strategy.scope()``: the GAN is built in the caller's
    strategy and ``fit`` distributes the batches. TensorFlow's thread counts are the caller's.
    """
    p = params if isinstance(params, GanRunParams) else GanRunParams.model_validate(params)
    p.checked()
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and not empty, got {list(seeds)}")
    x = np.load(images_path).astype(np.float32)
    if x.ndim != 4:
        raise ValueError(f"{images_path}: expected (N, H, W, C) images, got shape {x.shape}")
    labels = _labels(labels_path, len(x)) if p.conditional else None
    steps_per_epoch = len(x) // p.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(x)} images are fewer than one batch of {p.batch_size}")
    epochs = p.epochs if p.epochs is not None else math.ceil(p.steps / steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    out = Path(out_dir)
    groups = [list(seeds)] if p.vectorize_seeds else [[s] for s in seeds]
    results: dict[int, dict[str, Any]] = {}
    for i, group in enumerate(groups):
        gan = build_gan(tuple(x.shape[1:]), p, group, steps_per_execution=steps_per_epoch,
                        n_classes=None if labels is None else int(labels.max()) + 1)
        ckpt = GanCheckpoint(Path(checkpoint_dir) / ("seeds-" + "-".join(map(str, group))), gan)
        report = None if progress is None else _offset_progress(progress, i * total_steps, len(groups) * total_steps)
        run = _Run(gan, p, out, ckpt, total_steps, min(p.eval_samples, len(x)), eval_fn, report, labels)
        run.train(x, epochs, steps_per_epoch, labels)
        results.update(run.finish(steps_per_epoch))
    return results


def _labels(path: str | None, n: int) -> np.ndarray:
    """Integer class labels 0..C-1 for n images, or ValueError saying what is missing."""
    if path is None:
        raise ValueError("conditional: true needs the images' labels; this image source has none")
    labels = np.load(path)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"{path}: expected {n} non-negative integer labels, got {labels.dtype} {labels.shape}")
    return labels


def _offset_progress(progress: Progress, done_before: int, total: int) -> Progress:
    """Progress of one group of seeds as part of all groups trained one after another."""
    return lambda step, _, info: progress(done_before + step, total, info)


def _save_model(model: keras.Model, path: Path) -> Path:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path
