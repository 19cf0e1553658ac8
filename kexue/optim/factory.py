"""Build an optimizer from its ``pipeline.yaml`` spec.

One dict selects the base Keras optimizer and switches on the derived variants;
Keras' own constructor arguments do weight decay, gradient accumulation, EMA and
clipping, and ``kexue.optim`` wrappers do the rest. Wrapping order (inner to
outer): base → LayerAdaptation → Lazy → Lookahead, so the trust ratio sees the
full dense step, lazy rows are restored after it, and Lookahead interpolates the
final weights.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import keras

from kexue.optim.layer_adaptation import LayerAdaptation
from kexue.optim.lazy import Lazy
from kexue.optim.lookahead import Lookahead
from kexue.optim.schedule import PiecewiseLinear

DERIVED_KEYS = {
    "name": "Keras optimizer name, e.g. 'adam', 'sgd', 'adamw', 'lamb', 'rmsprop' (default 'adam')",
    "schedule": "{step: multiplier} piecewise-linear learning-rate multipliers",
    "accumulation_steps": "number of micro-batches averaged per update (1 = off)",
    "layer_adaptation": "true (all variables), or variable-path substrings to exclude from it",
    "lookahead": "{k: int, alpha: float} (true = k 5, alpha 0.5), or null",
    "lazy": "true (all variables of rank >= 1), variable-path substrings to include, or "
            "{include: substrings or null, freeze_slots: bool} (see kexue.optim.lazy)",
    "exclude_from_weight_decay": "variable-name patterns (regex search) weight decay skips, e.g. [bias, gamma, beta]",
}
LOOKAHEAD_KEYS = ("k", "alpha")
LAZY_KEYS = ("include", "freeze_slots")


BASE_OPTIMIZERS: dict[str, type[keras.optimizers.Optimizer]] = {
    cls.__name__.lower(): cls
    for cls in vars(keras.optimizers).values()
    if isinstance(cls, type)
    and issubclass(cls, keras.optimizers.Optimizer)
    and cls.__name__ not in ("Optimizer", "LossScaleOptimizer", "MultiOptimizer")  # need other optimizers as arguments
}


def _base_class(name: str) -> type[keras.optimizers.Optimizer]:
    key = str(name).lower()
    if key not in BASE_OPTIMIZERS:
        close = difflib.get_close_matches(key, list(BASE_OPTIMIZERS), n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown optimizer name {name!r}.{hint} Known: {', '.join(sorted(BASE_OPTIMIZERS))}.")
    return BASE_OPTIMIZERS[key]


def _check_keys(keys, allowed, where: str) -> None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown key {key!r} in {where}.{hint} Allowed: {', '.join(sorted(map(str, allowed)))}."
            )


def build_optimizer(spec: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """Return a fresh optimizer for ``spec`` (see ``DERIVED_KEYS`` for the non-Keras keys).

    Every other key is a constructor argument of the chosen Keras optimizer
    (``learning_rate``, ``beta_1``, ``weight_decay``, ``use_ema``, ``clipnorm``, ...).
    Unknown keys raise ``ValueError`` naming the key and the closest valid one.
    """
    spec = dict(spec)
    base_class = _base_class(spec.pop("name", "adam"))
    base_keys = set(inspect.signature(base_class.__init__).parameters) - {"self", "kwargs", "name"}
    _check_keys(spec, base_keys | set(DERIVED_KEYS), f"optimizer spec for {base_class.__name__}")

    schedule = spec.pop("schedule", None)
    accumulation_steps = spec.pop("accumulation_steps", None)
    layer_adaptation = spec.pop("layer_adaptation", False)
    lookahead = spec.pop("lookahead", None)
    lazy = spec.pop("lazy", False)
    no_decay = spec.pop("exclude_from_weight_decay", None)

    if accumulation_steps is not None:
        if int(accumulation_steps) != accumulation_steps or accumulation_steps < 1:
            raise ValueError(f"`accumulation_steps` must be an integer >= 1, got {accumulation_steps!r}.")
        if spec.get("gradient_accumulation_steps") is not None:
            raise ValueError("Give `accumulation_steps` or `gradient_accumulation_steps`, not both.")
        spec["gradient_accumulation_steps"] = int(accumulation_steps) if accumulation_steps > 1 else None
    if "learning_rate" in spec:
        # float() also accepts YAML 1.1's "2e-4", which PyYAML reads as a string.
        spec["learning_rate"] = float(spec["learning_rate"])
    if schedule is not None:
        default_lr = inspect.signature(base_class.__init__).parameters["learning_rate"].default
        spec["learning_rate"] = PiecewiseLinear(spec.get("learning_rate", default_lr), schedule)

    optimizer = base_class(**spec)
    if no_decay is not None:
        optimizer.exclude_from_weight_decay(var_names=_decay_exclusions(no_decay, spec.get("weight_decay")))
    if layer_adaptation:
        optimizer = LayerAdaptation(optimizer, exclude=_patterns(layer_adaptation, "layer_adaptation"))
    if lazy:
        optimizer = _lazy(optimizer, lazy)
    if lookahead:
        if lookahead is True:
            lookahead = {}
        if not isinstance(lookahead, Mapping):
            raise ValueError(f"`lookahead` must be true or a mapping with keys k, alpha; got {lookahead!r}.")
        _check_keys(lookahead, LOOKAHEAD_KEYS, "optimizer spec `lookahead`")
        optimizer = Lookahead(optimizer, **lookahead)
    return optimizer


def _patterns(value: Any, key: str) -> list[str] | None:
    """``true`` → None (all variables); a string or list of strings → list of path substrings."""
    if value is True:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"`{key}` must be true/false, a string or a list of strings; got {value!r}.")


def _lazy(optimizer: keras.optimizers.Optimizer, value: Any) -> Lazy:
    """``lazy: true | patterns`` (bert4keras behaviour) or ``{include, freeze_slots}``."""
    if not isinstance(value, Mapping):
        return Lazy(optimizer, include=_patterns(value, "lazy"))
    _check_keys(value, LAZY_KEYS, "optimizer spec `lazy`")
    include = value.get("include")
    return Lazy(optimizer, include=None if include is None else _patterns(include, "lazy.include"),
                freeze_slots=value.get("freeze_slots", False))


def _decay_exclusions(value: Any, weight_decay: Any) -> list[str]:
    """Validated ``exclude_from_weight_decay`` patterns; they need a ``weight_decay`` to act on.

    Keras matches them (``re.search``) against each variable's name ("kernel", "bias",
    "gamma", "beta", ...). Keras does not serialise the exclusion with the optimizer's
    config: runs rebuild their optimizers from the spec, which carries it.
    """
    patterns = _patterns(value, "exclude_from_weight_decay")
    if patterns is None:
        raise ValueError("`exclude_from_weight_decay` must be a string or a list of strings, e.g. [bias, gamma, beta].")
    if not weight_decay:
        raise ValueError("`exclude_from_weight_decay` is given but `weight_decay` is not: nothing to exclude from.")
    return patterns
