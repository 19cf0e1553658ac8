"""Lazy updates: rows whose gradient is zero keep their weights (and optionally their slots).

For embedding tables most rows get no gradient in a step, yet a dense optimizer still
moves them (momentum, weight decay). ``Lazy`` lets the inner optimizer take its
ordinary step and then restores the rows that received no gradient. A *row* is a
slice along the last axis, as in bert4keras (``K.any(K.not_equal(g, 0), axis=-1,
keepdims=True)``): row i of an embedding table, one input unit of a Dense kernel, the
whole vector of a bias.

Two behaviours:

- ``freeze_slots=False`` (the default) is bert4keras' ``extend_with_lazy_optimization``:
  only the *weight step* of an untouched row is undone; the optimizer's slots keep
  their dense update, so on untouched rows Adam's m and v go on decaying (by β₁, β₂ per
  step) exactly as in dense Adam. When the row is looked up again, its step uses
  moments that have forgotten stale gradients in proportion to how long ago they
  were seen.
- ``freeze_slots=True`` is TF Addons' ``LazyAdam``: the weight row *and* the same row of
  each per-variable slot (moments, Lookahead slow weights, ...) are restored, so a row
  seen again after a long gap resumes with the momentum it had then, at full strength.
  LazyAdam does this because its sparse kernels only touch those rows (a compute
  saving); here gradients are densified anyway (below), so freezing saves nothing.

Why bert4keras' behaviour is the default: it is the seed's, it keeps the moment
estimates those of the dense optimizer (only the movement is sparse), and it needs no
guessing of which optimizer variables are slots of which weight.

Sparse ``IndexedSlices`` gradients (``tf.gather``/``Embedding``) and dense gradients
with all-zero rows are treated alike. Step counters, EMA averages and gradient
accumulators are never rolled back; with gradient accumulation a row counts as touched
if it had a gradient in any micro-batch of the accumulated update.

``IndexedSlices`` gradients are densified before the inner step: the inner optimizer's
moments are dense anyway, the restore is a dense select, and Keras 3's sparse
``update_step`` applies nonlinear terms (Adam's g²) per entry, so a row looked up twice
in a batch would get Σg² instead of (Σg)² (and under ``tf.distribute`` the replicas'
slices are concatenated, duplicating rows).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops
from keras.src.utils import tracking

from kexue.optim.wrapper import OptimizerWrapper, innermost_optimizer, variable_matches


def densify(gradient):
    """A dense tensor for ``IndexedSlices`` (duplicate indices summed), else the gradient."""
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


def touched_rows(gradient) -> "tf.Tensor":
    """Boolean mask of shape ``gradient.shape[:-1] + (1,)``: True where the row has a non-zero entry."""
    return ops.any(ops.not_equal(densify(gradient), 0), axis=-1, keepdims=True)


def _slot_prefix(variable) -> str:
    """Name prefix Keras' ``add_variable_from_reference`` gives slots of ``variable``."""
    if hasattr(variable, "path"):
        return variable.path.replace("/", "_") + "_"
    return str(variable.name).replace("/", "_").replace(":", "_") + "_"


@keras.saving.register_keras_serializable(package="kexue")
class Lazy(OptimizerWrapper):
    """Undo the inner step on rows (slices along the last axis) that received no gradient.

    Args:
        inner_optimizer: optimizer whose dense step is made lazy.
        include: substrings of variable paths to treat lazily (e.g. ``["embedding"]``,
            bert4keras' ``include_in_lazy_optimization``); None means every variable
            of rank ≥ 1.
        freeze_slots: False (default, bert4keras): restore only the weight rows, the
            slots keep decaying; True (TF Addons LazyAdam): restore the slot rows too.
        name: optimizer name.
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        include: list[str] | None = None,
        freeze_slots: bool = False,
        name: str | None = None,
    ):
        super().__init__(inner_optimizer, name=name)
        if not isinstance(freeze_slots, bool):
            raise ValueError(f"`freeze_slots` must be true or false, got {freeze_slots!r}.")
        self.include = None if include is None else list(include)
        self.freeze_slots = freeze_slots

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        base = innermost_optimizer(self.inner_optimizer)
        accumulators = getattr(base, "_accumulated_gradients", None) or [None] * len(var_list)
        self._slots = {}
        self._accumulator = {}
        for variable in var_list:
            if len(variable.shape) >= 1 and variable_matches(variable, self.include):
                key = self._var_key(variable)
                self._slots[key] = []
                self._accumulator[key] = accumulators[base._get_variable_index(variable)]
        if self.freeze_slots:
            self._assign_slots(var_list, base, accumulators)

    def _assign_slots(self, var_list, base, accumulators) -> None:
        """Find the per-variable slots (same shape, named after the variable) of every lazy variable."""
        not_slots = {id(v) for v in getattr(base, "_model_variables_moving_average", []) or []}
        not_slots |= {id(v) for v in accumulators if v is not None}
        candidates = [v for v in self.inner_optimizer.variables if id(v) not in not_slots and len(v.shape) >= 1]
        # A slot belongs to the variable with the longest matching name prefix, so
        # "dense/kernel" does not claim the slots of "dense/kernel_1".
        prefixes = [(_slot_prefix(v), v) for v in var_list]
        for slot in candidates:
            matches = [(len(p), v) for p, v in prefixes if slot.name.startswith(p) and v.shape == slot.shape]
            if matches:
                owner = max(matches, key=lambda m: m[0])[1]
                if self._var_key(owner) in self._slots:
                    self._slots[self._var_key(owner)].append(slot)

    def _wrapped_apply(self, grads, trainable_variables):
        grads = [densify(g) for g in grads]
        restores = []
        for grad, variable in zip(grads, trainable_variables):
            key = self._var_key(variable)
            if grad is None or key not in self._slots:
                continue
            touched = touched_rows(grad)
            accumulator = self._accumulator[key]
            if accumulator is not None:
                touched = ops.logical_or(touched, touched_rows(ops.convert_to_tensor(accumulator)))
            # Under tf.distribute each replica holds its own gradient; the inner step
            # uses their sum, so a row is touched if any replica touched it.
            replica_context = tf.distribute.get_replica_context()
            if replica_context is not None and replica_context.num_replicas_in_sync > 1:
                count = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, ops.cast(touched, "int32"))
                touched = ops.greater(count, 0)
            targets = [variable, *self._slots[key]]  # slots is empty unless freeze_slots
            restores.append((touched, targets, [ops.copy(t) for t in targets]))
        self.inner_optimizer.apply(grads, trainable_variables)
        for touched, targets, olds in restores:
            for target, old in zip(targets, olds):
                self.assign(target, ops.where(touched, target, old))

    def _wrapper_config(self) -> dict:
        return {"include": self.include, "freeze_slots": self.freeze_slots}
