"""The optimizer spec of ``pipeline.yaml``, validated without importing TensorFlow.

Why a pydantic model here and not checks inside ``build_optimizer``: config checking
(``kexue check``) must name a bad key or value in the first second, without starting
TensorFlow; ``kexue.optim.factory.build_optimizer`` then builds from a spec that is already
valid. Unknown keys are pydantic ``extra="forbid"`` errors, which ``kexue.core.config``
formats with a "did you mean".

A spec selects a Keras optimizer by ``name`` and gives its constructor arguments (only
those the chosen optimizer takes, see ``KERAS_ARGUMENTS``), plus the derived variants of
``kexue.optim``: ``schedule``, ``accumulation_steps``, ``layer_adaptation``, ``lookahead``,
``lazy``. Arguments left out keep the Keras default.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kexue.core.errors import did_you_mean

_COMMON = ("learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum",
           "ema_overwrite_frequency", "loss_scale_factor")
_ADAM = ("beta_1", "beta_2", "epsilon")

# The constructor arguments each Keras optimizer takes (besides ``name`` and
# ``gradient_accumulation_steps``, which ``accumulation_steps`` sets). Written out so that
# checking needs no TensorFlow; tests/test_optim_spec.py compares it with Keras' signatures.
KERAS_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "adadelta": (*_COMMON, "rho", "epsilon"),
    "adafactor": (*_COMMON, "beta_2_decay", "epsilon_1", "epsilon_2", "clip_threshold", "relative_step"),
    "adagrad": (*_COMMON, "initial_accumulator_value", "epsilon"),
    "adam": (*_COMMON, *_ADAM, "amsgrad"),
    "adamax": (*_COMMON, *_ADAM),
    "adamw": (*_COMMON, *_ADAM, "amsgrad"),
    "ftrl": (*_COMMON, "learning_rate_power", "initial_accumulator_value", "l1_regularization_strength",
             "l2_regularization_strength", "l2_shrinkage_regularization_strength", "beta"),
    "lamb": (*_COMMON, *_ADAM),
    "lion": (*_COMMON, "beta_1", "beta_2"),
    "muon": (*_COMMON, "adam_beta_1", "adam_beta_2", "adam_weight_decay", "epsilon", "exclude_layers",
             "exclude_embeddings", "muon_a", "muon_b", "muon_c", "adam_lr_ratio", "momentum", "ns_steps",
             "nesterov", "rms_rate"),
    "nadam": (*_COMMON, *_ADAM),
    "rmsprop": (*_COMMON, "rho", "momentum", "epsilon", "centered"),
    "schedulefreeadamw": (*_COMMON, *_ADAM, "warmup_steps"),
    "sgd": (*_COMMON, "momentum", "nesterov"),
}

Fraction = Field(None, ge=0, lt=1)  # decay rates and momenta in [0, 1)
Positive = Field(None, gt=0)


class LookaheadSpec(BaseModel):
    """Lookahead (``kexue.optim.lookahead``): sync the slow weights every ``k`` updates."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    k: int = Field(5, ge=1)
    alpha: float = Field(0.5, gt=0, le=1)


class LazySpec(BaseModel):
    """Lazy row updates (``kexue.optim.lazy``): which variables, and whether slot rows freeze too."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    include: str | list[str] | None = None  # variable-path substrings; None = every variable of rank >= 1
    freeze_slots: bool = False  # TF Addons LazyAdam's behaviour; False = bert4keras' (slots keep decaying)


class OptimizerSpec(BaseModel):
    """One optimizer: a Keras optimizer by name, its arguments, and the derived variants."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "adam"

    # Keras constructor arguments (None = that optimizer's default); see KERAS_ARGUMENTS.
    learning_rate: float | None = Positive
    weight_decay: float | None = Field(None, ge=0)
    beta_1: float | None = Fraction
    beta_2: float | None = Fraction
    epsilon: float | None = Positive
    amsgrad: bool | None = None
    momentum: float | None = Fraction
    nesterov: bool | None = None
    rho: float | None = Fraction
    centered: bool | None = None
    clipnorm: float | None = Positive
    clipvalue: float | None = Positive
    global_clipnorm: float | None = Positive
    use_ema: bool | None = None
    ema_momentum: float | None = Fraction
    ema_overwrite_frequency: int | None = Field(None, ge=1)
    loss_scale_factor: float | None = Positive
    initial_accumulator_value: float | None = Field(None, ge=0)
    beta_2_decay: float | None = None
    epsilon_1: float | None = Positive
    epsilon_2: float | None = Positive
    clip_threshold: float | None = Positive
    relative_step: bool | None = None
    learning_rate_power: float | None = Field(None, le=0)
    l1_regularization_strength: float | None = Field(None, ge=0)
    l2_regularization_strength: float | None = Field(None, ge=0)
    l2_shrinkage_regularization_strength: float | None = Field(None, ge=0)
    beta: float | None = None
    adam_beta_1: float | None = Fraction
    adam_beta_2: float | None = Fraction
    adam_weight_decay: float | None = Field(None, ge=0)
    exclude_layers: list[str] | None = None
    exclude_embeddings: bool | None = None
    muon_a: float | None = None
    muon_b: float | None = None
    muon_c: float | None = None
    adam_lr_ratio: float | None = Positive
    ns_steps: int | None = Field(None, ge=1)
    rms_rate: float | None = Positive
    warmup_steps: int | None = Field(None, ge=0)

    # Derived variants (kexue.optim)
    schedule: dict[int, float] | None = None  # {step: learning-rate multiplier}, piecewise linear
    accumulation_steps: int = Field(1, ge=1)  # micro-batches averaged per update
    layer_adaptation: bool | str | list[str] = False  # true, or variable-path substrings to exclude
    lookahead: LookaheadSpec | None = None  # true = {k: 5, alpha: 0.5}
    lazy: bool | str | list[str] | LazySpec = False  # true (rank >= 1), path substrings to include, or {include, freeze_slots}
    exclude_from_weight_decay: str | list[str] | None = None  # variable-name patterns weight decay skips, e.g. [bias, gamma, beta]

    @field_validator("name", mode="before")
    @classmethod
    def _known_name(cls, v: Any) -> str:
        name = str(v).lower()
        if name not in KERAS_ARGUMENTS:
            raise ValueError(f"unknown optimizer {v!r}" + did_you_mean(name, KERAS_ARGUMENTS)
                             + f"; known: {', '.join(KERAS_ARGUMENTS)}")
        return name

    @field_validator("lookahead", mode="before")
    @classmethod
    def _lookahead_switch(cls, v: Any) -> Any:
        return {} if v is True else (None if v is False else v)

    @field_validator("schedule")
    @classmethod
    def _schedule_points(cls, v: dict[int, float] | None) -> dict[int, float] | None:
        if v is not None and (not v or min(v) < 0 or min(v.values()) < 0):
            raise ValueError("schedule: {step >= 0: multiplier >= 0, ...} with at least one point")
        return v

    @model_validator(mode="after")
    def _arguments_of_this_optimizer(self) -> "OptimizerSpec":
        if self.exclude_from_weight_decay is not None and not self.weight_decay:
            raise ValueError("exclude_from_weight_decay is given but weight_decay is not: nothing to exclude from")
        allowed = KERAS_ARGUMENTS[self.name]
        for key in self.keras_arguments():
            if key not in allowed:
                raise ValueError(f"{key!r} is not an argument of {self.name}" + did_you_mean(key, allowed)
                                 + f"; its arguments: {', '.join(allowed)}")
        return self

    def keras_arguments(self) -> dict[str, Any]:
        """The Keras constructor arguments that were given (the rest keep Keras' defaults)."""
        derived = ("name", "schedule", "accumulation_steps", "layer_adaptation", "lookahead", "lazy",
                   "exclude_from_weight_decay")
        return {k: getattr(self, k) for k in self.model_fields_set if k not in derived and getattr(self, k) is not None}
