"""Lazy updates: rows whose gradient is zero keep their weights and optimizer state.

For embedding tables most rows get no gradient in a step, yet a dense Adam still
decays their moments and moves them (momentum, weight decay). ``Lazy`` (as TF
Addons' LazyAdam, generalised to any optimizer like bert4keras'
``extend_with_lazy_optimization``) lets the inner optimizer take its ordinary
step and then restores, along axis 0, every row that received no gradient: the
weight row and the same row of each per-variable slot (moments, Lookahead slow
weights, ...). Sparse ``IndexedSlices`` gradients (``tf.gather``/``Embedding``)
and dense gradients with all-zero rows are treated alike. Step counters, EMA
averages and gradient accumulators are not rolled back; with gradient
accumulation a row counts as touched if it had a gradient in any micro-batch of
the accumulated update.

``IndexedSlices`` gradients are densified before the inner step: the inner
optimizer's moments are dense anyway, the restore is a dense select, and Keras
3's sparse ``update_step`` applies nonlinear terms (Adam's g²) per entry, so a
row looked up twice in a batch would get Σg² instead of (Σg)² (and under
``tf.distribute`` the replicas' slices are concatenated, duplicating rows).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops
from keras.src.utils import tracking

from kexue.optim.wrapper import OptimizerWrapper, innermost_optimizer, variable_matches


def touched_rows(gradient) -> "tf.Tensor":
    """Boolean vector over axis 0: True where the gradient row has a non-zero entry."""
    if isinstance(gradient, tf.IndexedSlices):
        values = ops.reshape(gradient.values, (ops.shape(gradient.values)[0], -1))
        nonzero = ops.cast(ops.any(ops.not_equal(values, 0), axis=1), "int32")
        rows = gradient.dense_shape[0]
        return ops.greater(ops.segment_max(nonzero, gradient.indices, num_segments=rows), 0)
    flat = ops.reshape(gradient, (ops.shape(gradient)[0], -1))
    return ops.any(ops.not_equal(flat, 0), axis=1)


def _slot_prefix(variable) -> str:
    """Name prefix Keras' ``add_variable_from_reference`` gives slots of ``variable``."""
    if hasattr(variable, "path"):
        return variable.path.replace("/", "_") + "_"
    return str(variable.name).replace("/", "_").replace(":", "_") + "_"


@keras.saving.register_keras_serializable(package="kexue")
class Lazy(OptimizerWrapper):
    """Apply the inner step only to rows (axis 0) that received a non-zero gradient.

    Args:
        inner_optimizer: optimizer whose dense step is made lazy.
        include: substrings of variable paths to treat lazily (e.g.
            ``["embedding"]``); None means every variable of rank ≥ 1.
        name: optimizer name.
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        include: list[str] | None = None,
        name: str | None = None,
    ):
        super().__init__(inner_optimizer, name=name)
        self.include = None if include is None else list(include)

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        base = innermost_optimizer(self.inner_optimizer)
        not_slots = {id(v) for v in getattr(base, "_model_variables_moving_average", []) or []}
        accumulators = getattr(base, "_accumulated_gradients", None) or [None] * len(var_list)
        not_slots |= {id(v) for v in accumulators if v is not None}
        candidates = [
            v for v in self.inner_optimizer.variables if id(v) not in not_slots and len(v.shape) >= 1
        ]
        self._slots = {}
        self._accumulator = {}
        lazy_variables = [v for v in var_list if len(v.shape) >= 1 and variable_matches(v, self.include)]
        for variable in lazy_variables:
            key = self._var_key(variable)
            self._slots[key] = []
            self._accumulator[key] = accumulators[base._get_variable_index(variable)]
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
            targets = [variable, *self._slots[key]]
            restores.append((touched, targets, [ops.copy(t) for t in targets]))
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        self.inner_optimizer.apply(grads, trainable_variables)
        for touched, targets, olds in restores:
            for target, old in zip(targets, olds):
                mask = ops.reshape(touched, (-1,) + (1,) * (len(target.shape) - 1))
                self.assign(target, ops.where(mask, target, old))

    def _wrapper_config(self) -> dict:
        return {"include": self.include}
