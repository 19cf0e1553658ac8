"""Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back").

The inner optimizer moves the fast weights θ; every k of its updates the slow
weights φ move a fraction α towards them and the fast weights restart there:

    φ ← φ + α (θ − φ),    θ ← φ

k counts *updates* of the inner optimizer (its ``iterations``), so with Keras
gradient accumulation a sync happens every k accumulated updates, not every k
micro-batches. φ starts as a copy of θ, taken at the first ``apply``.
"""

from __future__ import annotations

import keras
from keras import ops
from keras.src.utils import tracking

from kexue.optim.wrapper import OptimizerWrapper


@keras.saving.register_keras_serializable(package="kexue")
class Lookahead(OptimizerWrapper):
    """Slow weights pulled towards the inner optimizer's fast weights every ``k`` updates.

    Args:
        inner_optimizer: the fast optimizer.
        k: number of inner updates between synchronisations (≥ 1).
        alpha: slow-weight step size, in (0, 1].
        name: optimizer name.
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        k: int = 5,
        alpha: float = 0.5,
        name: str | None = None,
    ):
        super().__init__(inner_optimizer, name=name)
        if int(k) != k or k < 1:
            raise ValueError(f"Lookahead `k` must be an integer >= 1, got k={k!r}.")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead `alpha` must be in (0, 1], got alpha={alpha!r}.")
        self.k = int(k)
        self.alpha = float(alpha)

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._slow_weights = self.add_optimizer_variables(var_list, "slow")

    def _pairs(self):
        return [
            (variable, slow)
            for variable, slow in zip(self._trainable_variables, self._slow_weights)
            if slow is not None
        ]

    def _initialize_slow_weights(self):
        for variable, slow in self._pairs():
            self.assign(slow, variable)

    def _synchronize(self):
        for variable, slow in self._pairs():
            alpha = ops.cast(self.alpha, slow.dtype)
            new_slow = ops.add(slow, ops.multiply(alpha, ops.subtract(variable, slow)))
            self.assign(slow, new_slow)
            self.assign(variable, new_slow)

    def _wrapped_apply(self, grads, trainable_variables):
        ops.cond(ops.equal(self._iterations, 0), self._initialize_slow_weights, lambda: None)
        updates_before = ops.copy(self.inner_optimizer.iterations)
        self.inner_optimizer.apply(grads, trainable_variables)
        updates_after = ops.copy(self.inner_optimizer.iterations)
        sync = ops.logical_and(
            # On accumulation micro-steps the inner optimizer did not update: no re-sync.
            ops.greater(updates_after, updates_before),
            ops.equal(ops.mod(updates_after, self.k), 0),
        )
        ops.cond(sync, self._synchronize, lambda: None)

    def _wrapper_config(self) -> dict:
        return {"k": self.k, "alpha": self.alpha}
