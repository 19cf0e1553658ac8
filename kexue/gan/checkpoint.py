"""Checkpoints of a GAN run: a ``tf.train.Checkpoint`` keyed by variable names.

What it holds: the generator's and discriminator's variables, both optimizers' variables
(moments, iteration counters, Lookahead slow weights, …), every member's noise-RNG state,
the step counter, each member's best-generator snapshot, and the run's JSON state (config
identity, histories). Every variable is stored under its name (``generators/s3_up0/kernel``,
``g_optimizer/lookahead/s3_up0_kernel_slow``), never by its position, so the checkpoint says
what it holds and a variable added elsewhere in the model does not shift the others. (A
``tf.train.Checkpoint`` of the Keras 3 objects themselves would key optimizer slots by
position and skip the functional models' weights.)

``tf.train.CheckpointManager`` writes the new files first and then switches its index file
atomically, so a run killed mid-save resumes from the previous checkpoint.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from kexue.gan.cascade_gan import CascadeGAN
from kexue.gan.damage import checkpoint_damage
from kexue.optim.wrapper import OptimizerWrapper


def _named(variables: Iterable, where: str) -> dict[str, Any]:
    named: dict[str, Any] = {}
    for v in variables:
        path = getattr(v, "path", None) or v.name
        if path in named:
            raise ValueError(f"{where}: two variables are named {path!r}; a checkpoint keyed by name needs unique names")
        named[path] = v
    return named


def _optimizer_variables(optimizer) -> dict[str, Any]:
    """An optimizer's variables (a wrapper's own, then its inner optimizer's, …) keyed
    ``<class>/<variable>``: Keras names optimizers ``adam``, ``adam_1``, … in creation order,
    which differs between processes, so the instance name cannot be part of the key."""
    named: dict[str, Any] = {}
    while True:
        own = optimizer._variables if isinstance(optimizer, OptimizerWrapper) else optimizer.variables
        role = type(optimizer).__name__.lower()
        for key, v in _named(own, role).items():
            named[f"{role}/{key.split('/', 1)[-1]}"] = v
        if not isinstance(optimizer, OptimizerWrapper):
            return named
        optimizer = optimizer.inner_optimizer


class GanCheckpoint:
    """Save and restore one ``CascadeGAN`` run in ``directory`` (the newest checkpoint only).

    ``best`` is ``{seed: {variable path: array}}``: each member's best generator weights so far
    (``generator_weights``).
    """

    def __init__(self, directory: str | Path, gan: CascadeGAN):
        self.directory = Path(directory)
        self.best = {seed: {name: tf.Variable(np.zeros(v.shape, v.dtype), trainable=False)
                            for name, v in _named(g.variables, f"s{seed} generator").items()}
                     for seed, g in zip(gan.seeds, gan.generators)}
        self.state = tf.Variable("", dtype=tf.string, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            generators=_named((v for g in gan.generators for v in g.variables), "generators"),
            discriminators=_named((v for d in gan.discriminators for v in d.variables), "discriminators"),
            d_optimizer=_optimizer_variables(gan.d_optimizer),
            g_optimizer=_optimizer_variables(gan.g_optimizer),
            noise=_named((s.state for s in gan.noise), "noise"),
            step=gan.step,
            best={f"s{seed}": weights for seed, weights in self.best.items()},
            state=self.state,
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep=1)
        self.checkpoint.save_counter  # noqa: B018 - created now (not lazily), so a restore consumes it too

    def exists(self) -> bool:
        return self.manager.latest_checkpoint is not None

    def damage(self) -> str | None:
        """Why the newest checkpoint cannot be trusted (None when every tensor reads back)."""
        return checkpoint_damage(self.manager.latest_checkpoint)

    def save(self, state: dict[str, Any], best: dict[int, dict[str, np.ndarray]]) -> None:
        """Write every variable, ``best`` and the JSON ``state`` as the newest checkpoint."""
        for seed, weights in best.items():
            for name, value in weights.items():
                self.best[seed][name].assign(value)
        self.state.assign(json.dumps(state, default=float))
        self.manager.save(checkpoint_number=state["step"])

    def restore(self, identity: dict[str, Any]) -> tuple[dict[str, Any], dict[int, dict[str, np.ndarray]]]:
        """Restore every variable from the newest checkpoint; return (state, best snapshots).

        Refuses (ValueError) a checkpoint of a different run (``identity`` differs) or one whose
        variables are not exactly this model's.
        """
        path = self.manager.latest_checkpoint
        stored = json.loads(tf.train.load_variable(path, "state/.ATTRIBUTES/VARIABLE_VALUE").decode())
        if json.dumps(stored["identity"], sort_keys=True) != json.dumps(identity, sort_keys=True):
            raise ValueError(f"{path} is from a different run: {stored['identity']} != {identity}")
        try:
            self.checkpoint.restore(path).assert_consumed()
        except (AssertionError, ValueError) as e:  # a name missing on either side; a shape that differs
            raise ValueError(f"{path} does not hold exactly this model's variables: {e}") from None
        state = json.loads(self.state.numpy().decode())
        best = {seed: {name: v.numpy() for name, v in weights.items()}
                for seed, weights in self.best.items() if state["members"][str(seed)]["best"] is not None}
        return state, best


def generator_weights(generator) -> dict[str, np.ndarray]:
    """A generator's variables as ``{path: array}`` (a best-so-far snapshot)."""
    return {name: np.array(v.numpy()) for name, v in _named(generator.variables, generator.name).items()}


def set_generator_weights(generator, weights: dict[str, np.ndarray]) -> None:
    """Assign a ``generator_weights`` snapshot back, by name."""
    for name, v in _named(generator.variables, generator.name).items():
        v.assign(weights[name])
