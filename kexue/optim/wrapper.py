"""Base class for optimizers that wrap another optimizer and post-process its step.

Keras applies weight decay, gradient accumulation, EMA and clipping inside every
optimizer, but the remaining derived optimizers (layer adaptation, lazy rows,
Lookahead) have to act on *whatever update the base optimizer made*. Following
``keras.optimizers.LossScaleOptimizer``, a wrapper owns ``inner_optimizer``,
delegates ``learning_rate``/``iterations``/EMA finalisation to it, and its
``apply`` calls ``inner_optimizer.apply`` between its own pre- and post-steps.
Wrappers nest, so the variants compose in any order with any Keras optimizer.
"""

from __future__ import annotations

import keras
from keras.src.utils import tracking


def variable_matches(variable, patterns: list[str] | None) -> bool:
    """True if ``patterns`` is None (meaning: every variable) or one is a substring of the path."""
    if patterns is None:
        return True
    path = getattr(variable, "path", variable.name)
    return any(pattern in path for pattern in patterns)


def innermost_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The base (non-wrapper) optimizer at the bottom of a chain of wrappers."""
    while isinstance(optimizer, (OptimizerWrapper, keras.optimizers.LossScaleOptimizer)):
        optimizer = optimizer.inner_optimizer
    return optimizer


class OptimizerWrapper(keras.optimizers.Optimizer):
    """Delegating optimizer; subclasses implement ``_wrapped_apply`` and ``_wrapper_config``.

    Args:
        inner_optimizer: the ``keras.optimizers.Optimizer`` (or wrapper) to wrap.
        name: optimizer name.
    """

    def __init__(self, inner_optimizer: keras.optimizers.Optimizer, name: str | None = None):
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                f"`inner_optimizer` must be a keras.optimizers.Optimizer, got {inner_optimizer!r}."
            )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        if self.built:
            return
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer must already be "
                    "built. Call `optimizer.build(trainable_variables)` first."
                )
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
        self._check_variables_are_known(trainable_variables)
        self._wrapped_apply(list(grads), trainable_variables)
        # Own counter: the number of `apply` calls seen by this wrapper.
        self._iterations.assign_add(1)

    def _wrapped_apply(self, grads, trainable_variables):
        raise NotImplementedError

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        self.inner_optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    def _wrapper_config(self) -> dict:
        raise NotImplementedError

    def get_config(self) -> dict:
        # Like LossScaleOptimizer: base-optimizer arguments belong to the inner optimizer.
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            **self._wrapper_config(),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner_optimizer = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        return cls(inner_optimizer, **config)
