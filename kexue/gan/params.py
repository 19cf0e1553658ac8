"""Parameters of the GAN branch's stages, validated when pipeline.yaml loads.

Training settings are ``kexue.gan.train.DEFAULT_PARAMS`` keys; a variant is a named override of
them (``cr4: {cascades: 4}``), and every variant is trained once per seed.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kexue.core.errors import did_you_mean


def _check_gan_keys(params: dict[str, Any], where: str) -> dict[str, Any]:
    from kexue.gan.train import DEFAULT_PARAMS

    for key in params:
        if key not in DEFAULT_PARAMS:
            raise ValueError(f"{where}.{key}: unknown key" + did_you_mean(key, DEFAULT_PARAMS))
    return params


class ImagesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = "builtin:digits"  # builtin:digits | path/to/file.npz | path/to/folder
    size: int | None = Field(None, ge=4)  # resize to size×size (e.g. 16 or 32)


class FeatureNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(30, ge=1)
    seed: int = 0


class GanTrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"cr1": {"cascades": 1}, "cr2": {"cascades": 2}, "cr4": {"cascades": 4}})
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)  # kexue.gan.train.DEFAULT_PARAMS overrides for every variant
    feature_net: FeatureNetParams = Field(default_factory=FeatureNetParams)

    @field_validator("train")
    @classmethod
    def _train_keys(cls, v):
        return _check_gan_keys(v, "train")

    @model_validator(mode="after")
    def _variant_keys(self):
        if not self.variants:
            raise ValueError("variants: at least one variant is needed")
        for name, overrides in self.variants.items():
            _check_gan_keys(overrides, f"variants.{name}")
            if "seed" in overrides:
                raise ValueError(f"variants.{name}.seed: seeds are set by 'seeds', for every variant")
        return self

    def runs(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(variant, seed, full training params) for every run."""
        return [(name, seed, {**self.train, **overrides, "seed": seed})
                for name, overrides in self.variants.items() for seed in self.seeds]


class GanEvalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    baseline: str = "cr1"  # the variant every other is tested against (Welch's t-test)
    alpha: float = Field(0.05, gt=0, lt=1)
