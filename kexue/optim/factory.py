"""Build an optimizer from its validated spec (``kexue.optim.spec.OptimizerSpec``).

The spec selects the base Keras optimizer (Adam and AdamW with TensorFlow's fused step,
``kexue.optim.fused``) and switches on the derived variants;
Keras' own constructor arguments do weight decay, gradient accumulation, EMA and
clipping, and ``kexue.optim`` wrappers do the rest. Wrapping order (inner to
outer): base → LayerAdaptation → Lazy → Lookahead, so the trust ratio sees the
full dense step, lazy rows are restored after it, and Lookahead interpolates the
final weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import keras
from pydantic import ValidationError

from kexue.optim import fused
from kexue.optim.layer_adaptation import LayerAdaptation
from kexue.optim.lazy import Lazy
from kexue.optim.lookahead import Lookahead
from kexue.optim.schedule import PiecewiseLinear
from kexue.optim.spec import LazySpec, OptimizerSpec

BASE_OPTIMIZERS: dict[str, type[keras.optimizers.Optimizer]] = {
    cls.__name__.lower(): cls
    for cls in vars(keras.optimizers).values()
    if isinstance(cls, type)
    and issubclass(cls, keras.optimizers.Optimizer)
    and cls.__name__ not in ("Optimizer", "LossScaleOptimizer", "MultiOptimizer")  # need other optimizers as arguments
}
# the same optimizers with TensorFlow's fused step: same arguments and results, fewer ops (kexue.optim.fused)
BASE_OPTIMIZERS.update(adam=fused.Adam, adamw=fused.AdamW)


def as_spec(spec: OptimizerSpec | Mapping[str, Any]) -> OptimizerSpec:
    """``spec`` itself, or the mapping validated (``ValueError`` naming the key, with a did-you-mean)."""
    if isinstance(spec, OptimizerSpec):
        return spec
    from kexue.core.config import _format_validation_error

    try:
        return OptimizerSpec.model_validate(dict(spec))
    except ValidationError as e:
        raise ValueError(_format_validation_error(e, "optimizer spec", OptimizerSpec)) from None


def build_optimizer(spec: OptimizerSpec | Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """Return a fresh optimizer for ``spec`` (an ``OptimizerSpec``, or a mapping validated as one)."""
    spec = as_spec(spec)
    base_class = BASE_OPTIMIZERS[spec.name]
    kwargs = spec.keras_arguments()
    if spec.accumulation_steps > 1:
        kwargs["gradient_accumulation_steps"] = spec.accumulation_steps
    if spec.schedule is not None:
        default_lr = inspect.signature(base_class.__init__).parameters["learning_rate"].default
        kwargs["learning_rate"] = PiecewiseLinear(kwargs.get("learning_rate", default_lr), spec.schedule)

    optimizer = base_class(**kwargs)
    if spec.exclude_from_weight_decay is not None:
        # Keras matches the patterns (re.search) against each variable's name ("kernel", "bias",
        # "gamma", ...); it does not serialise them with the optimizer: runs rebuild from the spec.
        optimizer.exclude_from_weight_decay(var_names=_patterns(spec.exclude_from_weight_decay))
    if spec.layer_adaptation:
        optimizer = LayerAdaptation(optimizer, exclude=_patterns(spec.layer_adaptation))
    if spec.lazy:
        lazy = spec.lazy if isinstance(spec.lazy, LazySpec) else LazySpec(include=None if spec.lazy is True else spec.lazy)
        include = None if lazy.include is None else _patterns(lazy.include)
        optimizer = Lazy(optimizer, include=include, freeze_slots=lazy.freeze_slots)
    if spec.lookahead is not None:
        optimizer = Lookahead(optimizer, k=spec.lookahead.k, alpha=spec.lookahead.alpha)
    return optimizer


def _patterns(value: bool | str | list[str]) -> list[str] | None:
    """``true`` → None (all variables); a string or list of strings → list of path substrings."""
    if value is True:
        return None
    return [value] if isinstance(value, str) else list(value)
