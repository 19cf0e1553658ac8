"""Piecewise-linear learning-rate schedule given as ``{step: multiplier}``.

Keras ships ``PiecewiseConstantDecay`` (steps, no interpolation) and warm-up only
inside ``CosineDecay``; a schedule written as a handful of ``step: multiplier``
points — warm-up, plateau, decay — is what configs want, so this is the one
schedule we add. Convention (as in bert4keras' ``piecewise_linear``): the
multiplier is interpolated linearly between the given steps and held constant
after the last one; if step 0 is not given the schedule starts from 0, i.e.
``{1000: 1.0}`` is a linear warm-up over 1000 steps.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import ops


def normalize_schedule(schedule: Mapping[int | str, float]) -> dict[int, float]:
    """Validate ``{step: multiplier}`` and return it with int keys, 0 included, sorted.

    Keys may be strings because JSON (``.keras`` files, serialized configs) has only
    string keys.
    """
    if not schedule:
        raise ValueError("`schedule` must contain at least one {step: multiplier} entry.")
    points: dict[int, float] = {}
    for step, multiplier in schedule.items():
        step_int = int(step)
        if step_int < 0 or step_int != float(step):
            raise ValueError(f"Schedule steps must be non-negative integers, got {step!r}.")
        if step_int in points:
            raise ValueError(f"Schedule step {step_int} is given twice.")
        points[step_int] = float(multiplier)
    points.setdefault(0, 0.0)
    return dict(sorted(points.items()))


@keras.saving.register_keras_serializable(package="kexue")
class PiecewiseLinear(keras.optimizers.schedules.LearningRateSchedule):
    """``learning_rate * multiplier(step)`` with ``multiplier`` piecewise linear.

    Args:
        learning_rate: base learning rate the multipliers scale.
        schedule: ``{step: multiplier}``; see the module docstring for the conventions.

    The step is the optimizer's raw ``_iterations`` counter, i.e. the number of
    ``apply()`` calls; with Keras gradient accumulation that counts micro-batches,
    not weight updates (Keras' documented behaviour for all schedules).
    """

    def __init__(self, learning_rate: float, schedule: Mapping[int | str, float]):
        self.learning_rate = float(learning_rate)
        self.schedule = normalize_schedule(schedule)

    def __call__(self, step):
        steps = list(self.schedule)
        values = list(self.schedule.values())
        t = ops.cast(step, "float32")
        multiplier = ops.full_like(t, values[-1])
        # Walk segments from last to first so the earliest matching segment wins.
        for i in range(len(steps) - 2, -1, -1):
            slope = (values[i + 1] - values[i]) / (steps[i + 1] - steps[i])
            segment = values[i] + slope * (t - steps[i])
            multiplier = ops.where(t < steps[i + 1], segment, multiplier)
        return self.learning_rate * multiplier

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "schedule": dict(self.schedule)}
