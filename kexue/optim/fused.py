"""Adam and AdamW with their dense step in TensorFlow's fused kernel (``ResourceApplyAdam``).

Why: Keras 3 writes Adam's step as about ten graph ops per variable (two moment updates,
the bias-corrected rate, the division, three assignments); TensorFlow's own kernel does the
same arithmetic as one op. For small models the step is bound by per-op overhead, not by
arithmetic: the default GAN (a few thousand weights per layer, two Adam optimizers) took
2.58 against 2.47 ms per train step and its first, traced epoch 1.01 against 0.75 s with the
fused kernel (docs/gan_study.md, "Adam in TensorFlow's fused kernel").

The rule is Keras' exactly (m ← m + (g − m)(1 − β₁), v ← v + (g² − v)(1 − β₂),
w ← w − η √(1 − β₂ᵗ) / (1 − β₁ᵗ) · m / (√v + ε)); weight decay, clipping, gradient
accumulation and EMA stay in Keras' base class, so every constructor argument means what
it means in Keras. AMSGrad, sparse gradients and other backends take Keras' own step.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


class FusedAdamStep:
    """Mixin for a Keras Adam-family optimizer whose ``update_step`` is Adam's."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices) or keras.backend.backend() != "tensorflow":
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        i = self._get_variable_index(variable)
        t = ops.cast(self.iterations + 1, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[i].handle, v=self._velocities[i].handle,
            # as Keras: β^t from β rounded to float32 (ops.cast), the moments' 1 − β from β in the variable's dtype
            beta1_power=ops.power(ops.cast(self.beta_1, dtype), t), beta2_power=ops.power(ops.cast(self.beta_2, dtype), t),
            lr=ops.cast(learning_rate, dtype), beta1=ops.convert_to_tensor(self.beta_1, dtype),
            beta2=ops.convert_to_tensor(self.beta_2, dtype), epsilon=ops.convert_to_tensor(self.epsilon, dtype),
            grad=ops.cast(gradient, dtype),
        )


@keras.saving.register_keras_serializable(package="kexue")
class Adam(FusedAdamStep, keras.optimizers.Adam):
    """``keras.optimizers.Adam``, same arguments and results, with the fused step (module docstring)."""


@keras.saving.register_keras_serializable(package="kexue")
class AdamW(FusedAdamStep, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW``, same arguments and results, with the fused step (module docstring)."""
