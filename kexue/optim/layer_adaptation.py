"""Layer adaptation (LAMB/LARS trust ratio) for any base optimizer.

``keras.optimizers.Lamb`` hard-wires the trust ratio to Adam's update. Here the
ratio rescales whatever step Δ the inner optimizer took (weight decay included,
as in LAMB where the decay term is part of the update u):

    u = -Δ / η,    w ← w + (‖w‖ / ‖u‖) · Δ       (ratio 1 if ‖w‖ = 0 or ‖u‖ = 0)

so every variable ("layer") moves by η‖w‖ per step whatever the gradient scale
(You et al. 2019; the bert4keras ``extend_with_layer_adaptation`` formulation).
"""

from __future__ import annotations

import keras
from keras import ops

from kexue.optim.wrapper import OptimizerWrapper, variable_matches


@keras.saving.register_keras_serializable(package="kexue")
class LayerAdaptation(OptimizerWrapper):
    """Rescale each variable's step by the trust ratio ‖w‖ / ‖Δ/η‖.

    Args:
        inner_optimizer: optimizer whose step is rescaled.
        exclude: substrings of variable paths that keep the plain inner step
            (e.g. ``["bias", "gamma", "beta"]``); None adapts every variable.
        name: optimizer name.
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        exclude: list[str] | None = None,
        name: str | None = None,
    ):
        super().__init__(inner_optimizer, name=name)
        self.exclude = None if exclude is None else list(exclude)

    def _adapts(self, variable) -> bool:
        return self.exclude is None or not variable_matches(variable, self.exclude)

    def _wrapped_apply(self, grads, trainable_variables):
        # η as used by this step: read before the inner apply advances the schedule.
        learning_rate = ops.convert_to_tensor(self.inner_optimizer.learning_rate)
        adapted = [
            (variable, ops.copy(variable))
            for grad, variable in zip(grads, trainable_variables)
            if grad is not None and self._adapts(variable)
        ]
        self.inner_optimizer.apply(grads, trainable_variables)
        for variable, old in adapted:
            delta = ops.subtract(variable, old)
            eta = ops.maximum(ops.cast(learning_rate, variable.dtype), keras.config.epsilon())
            w_norm = ops.sqrt(ops.sum(ops.square(old)))
            u_norm = ops.sqrt(ops.sum(ops.square(delta))) / eta
            safe = ops.logical_and(ops.greater(w_norm, 0.0), ops.greater(u_norm, 0.0))
            ratio = ops.where(safe, w_norm / ops.where(safe, u_norm, 1.0), 1.0)
            self.assign(variable, ops.add(old, ops.multiply(ratio, delta)))

    def _wrapper_config(self) -> dict:
        return {"exclude": self.exclude}
