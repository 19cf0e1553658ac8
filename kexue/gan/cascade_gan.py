"""The Cascading Rejection GAN: a ``keras.Model`` with its own ``compile`` and ``train_step``.

Why this shape:
- ``CascadeGAN`` is trained by ``fit``; so a ``tf.distribute`` strategy scope wraps it
  unchanged (losses are scaled by the replica count exactly as Keras scales its own) and
  ``steps_per_execution`` runs many steps per compiled call.
- It holds M members: a generator and a discriminator per seed (``kexue.gan.models``), and
  one compiled step trains all of them (the seeds of a variant share one process, one
  compilation and one checkpoint). Each member's loss is its own; the optimizers see the
  sum, whose gradient for a member's weights is that member's gradient, so with optimizers
  that treat variables separately every member trains exactly as it would alone.
- The discriminator ends in ``CascadingRejection`` (``kexue.gan.cascading``): N scores
  D_1..D_N per image. Each score gets its own GAN loss and the discriminator and
  generator losses are weighted averages over the cascades; N = 1 is the plain baseline.

Losses, with D_k the k-th cascade score, c_k the cascade weights (normalised to sum 1):
    hinge:           L_D = Σ c_k (E relu(1 − D_k(x)) + E relu(1 + D_k(G(z))))
                     L_G = Σ c_k (− E D_k(G(z)))
    non_saturating:  L_D = Σ c_k (E softplus(−D_k(x)) + E softplus(D_k(G(z))))
                     L_G = Σ c_k (E softplus(−D_k(G(z))))
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kexue.gan.models import make_discriminator, make_generator
from kexue.gan.params import LOSSES, GanRunParams
from kexue.optim.factory import build_optimizer
from kexue.optim.wrapper import innermost_optimizer


def _distribution_scale(loss):
    """Divide by the replica count: gradients are summed over replicas, as in Keras' own fit."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def d_loss_terms(loss: str, d_real, d_fake):
    """Per-cascade discriminator losses (…, N) from (batch, …, N) scores of real and fake images."""
    if loss == "hinge":
        return ops.mean(ops.relu(1.0 - d_real), axis=0) + ops.mean(ops.relu(1.0 + d_fake), axis=0)
    return ops.mean(ops.softplus(-d_real), axis=0) + ops.mean(ops.softplus(d_fake), axis=0)


def g_loss_terms(loss: str, d_fake):
    """Per-cascade generator losses (…, N) from (batch, …, N) scores of fake images."""
    if loss == "hinge":
        return -ops.mean(d_fake, axis=0)
    return ops.mean(ops.softplus(-d_fake), axis=0)


class MemberMeans(keras.metrics.Metric):
    """Mean over the steps of an epoch of a (members, K) tensor of losses, element by element.

    One metric for every member's losses keeps the per-step bookkeeping to one update.
    """

    def __init__(self, shape: tuple[int, int], name: str = "member_losses", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=shape, initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values):
        self.total.assign_add(ops.cast(values, self.dtype))
        self.count.assign_add(ops.cast(1, self.dtype))

    def result(self):
        return self.total / ops.maximum(self.count, 1)

    def reset_state(self):
        self.total.assign(ops.zeros_like(self.total))
        self.count.assign(0)


class CascadeGAN(keras.Model):
    """Generators G_m and discriminators D_m (ending in CascadingRejection) of M members, trained adversarially.

    ``fit(real_images_dataset)`` runs ``train_step`` on real batches (batch, M, H, W, C), a
    batch for each member (the batch axis first, where a distribution strategy splits it): one D update then one G update, on
    the same fakes G(z), z ~ N(0, I) from each member's own ``SeedGenerator``. ``self.step`` counts completed train steps (checkpointed with the
    weights). Logs are ``s<seed>/d_loss``, ``s<seed>/g_loss``, ``s<seed>/d_loss_k``, ``s<seed>/g_loss_k``.
    """

    def __init__(self, generators: Sequence[keras.Model], discriminators: Sequence[keras.Model],
                 seeds: Sequence[int], conditional: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not len(generators) == len(discriminators) == len(seeds) > 0:
            raise ValueError("one generator and one discriminator per seed are needed")
        self.generators = list(generators)
        self.discriminators = list(discriminators)
        self.seeds = [int(s) for s in seeds]
        self.conditional = bool(conditional)  # then batches are (images, labels), and G and D take labels too
        self.latent_dim = int(generators[0].inputs[0].shape[-1])
        self.cascades = int(discriminators[0].output_shape[-1])
        self.noise = [keras.random.SeedGenerator(s, name=f"s{s}_noise") for s in self.seeds]
        self.step = keras.Variable(0, dtype="int64", trainable=False, name="step")
        self._generate = None

    def compile(
        self,
        d_optimizer: keras.optimizers.Optimizer,
        g_optimizer: keras.optimizers.Optimizer,
        loss: str = "hinge",
        cascade_weights: Sequence[float] | None = None,
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
        self.tracker = MemberMeans((len(self.seeds), len(self.loss_names())))

    def loss_names(self) -> list[str]:
        """d_loss, g_loss, then d_loss_k, g_loss_k for each cascade k = 1..N (per member)."""
        per_cascade = [f"{p}_loss_{k}" for k in range(1, self.cascades + 1) for p in ("d", "g")]
        return ["d_loss", "g_loss"] + per_cascade

    @property
    def metrics(self):
        return [self.tracker]  # reset by fit at each epoch start

    def member_inputs(self, x, y):
        """A member's model inputs: ``x``, or ``[x, y]`` when conditional."""
        return [x, y] if self.conditional else x

    def _split(self, data):
        """(images, labels per member or None) of a batch: (batch, M, H, W, C) and (batch, M)."""
        return data if self.conditional else (data, None)

    def call(self, data, training=False):
        """Cascade scores (batch, M, N) of images (batch, M, H, W, C) [and labels], each member on its own."""
        images, labels = self._split(data)
        return ops.stack([d(self.member_inputs(images[:, m], None if labels is None else labels[:, m]), training=training)
                          for m, d in enumerate(self.discriminators)], axis=1)

    def _fake(self, m, batch, y):
        z = keras.random.normal((batch, self.latent_dim), seed=self.noise[m])
        return self.generators[m](self.member_inputs(z, y), training=True)

    def train_step(self, data):
        real, labels = self._split(data)
        batch = ops.shape(real)[0]
        c = ops.convert_to_tensor(self.cascade_weights, dtype="float32")
        # fakes are drawn for the real batch's labels, so D sees the same classes on both sides
        y = [None if labels is None else labels[:, m] for m in range(len(self.seeds))]

        # G(z) once per step, as in DCGAN's reference loop: D learns to reject these fakes (the G
        # tape paused, so no gradient reaches G), then G learns from the updated D's scores of the
        # same fakes. A second draw for G made the step 15 % slower for an FID within the seeds'
        # spread (docs/gan_study.md, "One draw of fakes per step").
        with tf.GradientTape() as g_tape:
            fakes = [self._fake(m, batch, y[m]) for m in range(len(self.seeds))]
            with g_tape.stop_recording():
                with tf.GradientTape() as d_tape:
                    d_terms = []
                    for m, d in enumerate(self.discriminators):
                        # one pass over real and fake together: D has no batch statistics, so this is exact
                        images = ops.concatenate([real[:, m], fakes[m]], axis=0)
                        scores = d(self.member_inputs(images, None if y[m] is None else ops.concatenate([y[m], y[m]], axis=0)),
                                   training=True)
                        d_terms.append(d_loss_terms(self.loss_name, scores[:batch], scores[batch:]))
                    d_k = ops.stack(d_terms)  # (M, N)
                    d_member = ops.sum(c * d_k, axis=-1)
                    d_loss = ops.sum(d_member)
                d_vars = [v for d in self.discriminators for v in d.trainable_variables]
                self.d_optimizer.apply(d_tape.gradient(_distribution_scale(d_loss), d_vars), d_vars)
            g_k = ops.stack([g_loss_terms(self.loss_name, d(self.member_inputs(fakes[m], y[m]), training=True))
                             for m, d in enumerate(self.discriminators)])
            g_member = ops.sum(c * g_k, axis=-1)
            g_loss = ops.sum(g_member)
        g_vars = [v for g in self.generators for v in g.trainable_variables]
        self.g_optimizer.apply(g_tape.gradient(_distribution_scale(g_loss), g_vars), g_vars)

        self.step.assign_add(1)
        per_cascade = ops.reshape(ops.stack([d_k, g_k], axis=-1), (len(self.seeds), 2 * self.cascades))
        self.tracker.update_state(ops.concatenate([d_member[:, None], g_member[:, None], per_cascade], axis=1))
        means = self.tracker.result()
        return {f"s{seed}/{name}": means[m, j]
                for m, seed in enumerate(self.seeds) for j, name in enumerate(self.loss_names())}

    @property
    def averages_generators(self) -> bool:
        """Whether the generator optimizer keeps a moving average of the weights (Keras ``use_ema``)."""
        return bool(innermost_optimizer(self.g_optimizer).use_ema)

    @contextlib.contextmanager
    def averaged_generators(self) -> Iterator[None]:
        """Inside, every generator holds the moving average of its weights; its own weights after.

        Why sample from the average: a GAN's generator weights circle around a good solution
        rather than settle on it, and their exponential moving average, which training never
        sees, is that solution's estimate (Yazıcı et al. 2019, "The Unusual Effectiveness of
        Averaging in GAN Training"). Here it took cr1's FID on the digits from 7.8 to 4.6 at
        the same steps. The average is Keras' own (``use_ema`` of the generator optimizer,
        held in the optimizer and so in the checkpoint); without it this changes nothing.
        """
        if not self.averages_generators:
            yield
            return
        g_vars = [v for g in self.generators for v in g.trainable_variables]
        own = [v.numpy() for v in g_vars]
        self.g_optimizer.finalize_variable_values(g_vars)  # the average, written into the variables
        try:
            yield
        finally:
            for v, value in zip(g_vars, own):
                v.assign(value)

    def generate(self, z, labels=None) -> np.ndarray:
        """Images (M, n, H, W, C) from codes z (M, n, latent) [and labels (M, n)], each member's own, in inference mode."""
        if self._generate is None:
            self._generate = tf.function(lambda codes, y: ops.stack(
                [g(self.member_inputs(codes[m], None if y is None else y[m]), training=False)
                 for m, g in enumerate(self.generators)]))
        return ops.convert_to_numpy(self._generate(ops.convert_to_tensor(z),
                                                   None if labels is None else ops.convert_to_tensor(labels)))


def build_gan(image_shape: tuple[int, int, int], params: GanRunParams, seeds: Sequence[int],
              steps_per_execution: int = 1, n_classes: int | None = None) -> CascadeGAN:
    """The compiled GAN of ``params`` with one member per seed, optimizer slots built.

    ``steps_per_execution`` train steps run inside one call of ``fit`` (compiled by XLA with
    ``params.jit_compile``). ``n_classes`` is needed with ``params.conditional``.
    """
    if params.conditional and not n_classes:
        raise ValueError("a conditional GAN needs n_classes (the images' labels)")
    classes = n_classes if params.conditional else None
    d_width = params.d_width or params.width
    gan = CascadeGAN(
        [make_generator(image_shape, params.latent_dim, params.width, seed=s, n_classes=classes) for s in seeds],
        [make_discriminator(image_shape, params.cascades, d_width, params.spectral_norm, seed=s, n_classes=classes)
         for s in seeds],
        seeds, conditional=params.conditional,
    )
    gan.compile(build_optimizer(params.d_optimizer), build_optimizer(params.g_optimizer), loss=params.loss,
                cascade_weights=params.cascade_weights, steps_per_execution=steps_per_execution,
                jit_compile=params.jit_compile)
    gan.d_optimizer.build([v for d in gan.discriminators for v in d.trainable_variables])
    gan.g_optimizer.build([v for g in gan.generators for v in g.trainable_variables])
    return gan
