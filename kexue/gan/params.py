"""Parameters of the GAN branch's stages, validated when pipeline.yaml loads (no TensorFlow).

``GanRunParams`` is how one variant trains (every seed of it alike); the ``gan`` stage's
``GanTrainParams`` holds the settings shared by every variant (``train``), the variants as
overrides of them (``cr4: {cascades: 4}``, checked against the same model, so a misspelt
key gets a "did you mean"), and the seeds each variant is trained with. The validated
objects travel typed into the tasks and into ``kexue.gan.train.train_gan``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_serializer, field_validator

from kexue.core.errors import did_you_mean
from kexue.optim.spec import OptimizerSpec

LOSSES = ("hinge", "non_saturating")
DSM_VARIANT = "dsm"  # the evaluation table's name for the score model's runs

# DCGAN's Adam (Radford et al. 2016) at 10x its rate: with 32-image batches, and the generator
# sampled as the moving average of its weights, it reaches a lower FID in far fewer CPU-seconds
# (benchmarks/gan_study.py; docs/gan_study.md, "Defaults" and "The generator's moving average")
_GAN_ADAM = {"name": "adam", "learning_rate": 2e-3, "beta_1": 0.5}
# the generator is evaluated and saved as the moving average of its weights (CascadeGAN.averaged_generators)
_GAN_ADAM_AVERAGED = {**_GAN_ADAM, "use_ema": True, "ema_momentum": 0.99}


class ImagesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = "builtin:digits"  # builtin:digits | path/to/file.npz | path/to/folder
    size: int | None = Field(None, ge=4)  # resize to size×size (e.g. 16 or 32)


class FeatureNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(30, ge=1)
    seed: int = 0


class GanRunParams(BaseModel):
    """How one variant is trained; ``kexue.gan.train.train_gan`` trains it for a list of seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cascades: int = Field(1, ge=1)  # N: 1 = plain discriminator (the baseline)
    cascade_weights: list[float] | None = None  # per-cascade loss weights; None = uniform
    loss: str = "hinge"  # hinge | non_saturating
    steps: int = Field(2000, ge=1)  # rounded up to whole epochs; "epochs" overrides when given
    epochs: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    latent_dim: int = Field(32, ge=1)
    width: int = Field(16, ge=1)  # channels of the widest generator / narrowest discriminator conv
    d_width: int | None = Field(None, ge=1)  # the discriminator's, when it differs from the generator's
    # Class-conditional on the images' labels: G(z, y), and a projection discriminator whose
    # cascade directions depend on y (kexue.gan.cascading)
    conditional: bool = False
    spectral_norm: bool = False
    d_optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec(**_GAN_ADAM))
    g_optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec(**_GAN_ADAM_AVERAGED))
    # All seeds of the variant as members of one model, trained by one compiled step: exact
    # (each member as if alone) unless an optimizer couples variables (global_clipnorm).
    vectorize_seeds: bool = True
    # Compile the train step with XLA. Off by default: in the pipeline's busy Dask workers the
    # XLA step ran no faster than the graph step (131 vs 131 worker-s over the default GAN stage)
    # and compiling it cost 5-10 s more per task (docs/gan_study.md, "The generator's moving average")
    jit_compile: bool = False
    eval_every: int = Field(500, ge=1)  # steps; FID at the first epoch end past each multiple, and at the end
    eval_samples: int = Field(2000, ge=2)  # generated images per evaluation (capped at the real set's size)
    grid: int = Field(10, ge=1)  # sample grids are grid × grid images
    # At most one checkpoint per this many seconds of training, and one at the end (0: every
    # epoch). One holds every member's weights and optimizer state: written every epoch (56
    # steps) it was 8 % of a run; a resumed run redoes at most this much, with the same result.
    checkpoint_seconds: float = Field(20.0, ge=0)

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        if v not in LOSSES:
            raise ValueError(f"unknown loss {v!r}" + did_you_mean(v, LOSSES) + f"; known: {', '.join(LOSSES)}")
        return v

    @field_validator("cascade_weights")
    @classmethod
    def _weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (min(v, default=-1) < 0 or sum(v) <= 0):
            raise ValueError(f"cascade weights must be non-negative with a positive sum, got {v}")
        return v

    def problems(self) -> list[str]:
        """What is wrong with this combination of values (checked once overrides are merged)."""
        found = []
        if self.cascade_weights is not None and len(self.cascade_weights) != self.cascades:
            found.append(f"cascade_weights: {len(self.cascade_weights)} weights for {self.cascades} cascades")
        if self.vectorize_seeds:
            for key in ("d_optimizer", "g_optimizer"):
                if getattr(self, key).global_clipnorm is not None:
                    found.append(f"{key}.global_clipnorm: one norm over every variable would couple the seeds "
                                 "trained together; set vectorize_seeds: false")
        return found

    def checked(self) -> "GanRunParams":
        """Itself, or ``ValueError`` listing ``problems()``."""
        if found := self.problems():
            raise ValueError("; ".join(found))
        return self

    def overridden(self, overrides: "GanRunParams") -> "GanRunParams":
        """These params with every field that ``overrides`` sets explicitly replaced (whole values)."""
        merged = {**self.model_dump(exclude_unset=True), **overrides.model_dump(exclude_unset=True)}
        return GanRunParams.model_validate(merged)


class DsmParams(BaseModel):
    """The denoising-score-matching generator (``kexue.gan.dsm``), trained once per seed as variant ``dsm``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(3000, ge=1)  # rounded up to whole epochs of steps_per_epoch
    steps_per_epoch: int = Field(250, ge=1)  # train steps per fit epoch = per checkpoint
    batch_size: int = Field(128, ge=1)
    body: Literal["mlp", "conv"] = "mlp"  # mlp: images flattened to vectors | conv: 3×3 convolutions
    width: int = Field(128, ge=1)  # units (mlp) or channels (conv) of every block
    depth: int = Field(2, ge=1)  # residual blocks
    levels: int = Field(24, ge=2)  # L noise levels
    sigma_max: float | None = Field(None, gt=0)  # σ₁; None = the data's largest pairwise distance
    sigma_min: float = Field(0.02, gt=0)  # σ_L
    # the schedule's steps are absolute: change them with "steps"
    optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec(
        name="adam", learning_rate=2e-3, schedule={0: 1.0, 1500: 1.0, 3000: 0.05}))
    steps_per_level: int = Field(2, ge=1)  # T Langevin steps per noise level
    epsilon: float = Field(2e-4, gt=0)  # ε, the step at σ_L: α_i = ε σ_i² / σ_L²
    denoise: bool = True  # final step x + σ_L² s(x, σ_L)
    clip: bool = True  # clip samples to the training data's range, as image samplers do
    eval_every: int | None = Field(None, ge=1)  # steps between evaluations; None = only at the end
    eval_samples: int = Field(2000, ge=2)  # generated images per evaluation (capped at the real set's size)
    grid: int = Field(10, ge=1)  # sample grids are grid × grid images


def _default_variants() -> dict[str, GanRunParams]:
    return {f"cr{n}": GanRunParams(cascades=n) for n in (1, 2, 4)}


class GanTrainParams(BaseModel):
    """The ``gan`` stage: every variant × seed, FID tracked in the feature network's features."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    train: GanRunParams = Field(default_factory=GanRunParams)  # shared by every variant
    variants: dict[str, GanRunParams] = Field(default_factory=_default_variants, min_length=1, validate_default=True)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    # With vectorize_seeds, a variant's seeds are split into models of at most this many
    # members, one task each (None: all in one). pipeline.yaml's 1 (a task per seed): without
    # XLA a member's step costs the same alone as in a model, and small tasks fill both workers
    # to the end (three variants as three tasks leave a core idle while the third trains alone).
    seeds_per_task: int | None = Field(None, ge=1)
    feature_net: FeatureNetParams = Field(default_factory=FeatureNetParams)
    dsm: DsmParams | None = None  # also train the score model as variant "dsm" (one task per seed)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @field_validator("variants")
    @classmethod
    def _dsm_name_is_free(cls, variants: dict[str, GanRunParams]) -> dict[str, GanRunParams]:
        if DSM_VARIANT in variants:
            raise ValueError(f"{DSM_VARIANT!r} names the score model (the dsm key); give this GAN variant another name")
        return variants

    @field_validator("variants")
    @classmethod
    def _consistent_with_train(cls, variants: dict[str, GanRunParams], info: ValidationInfo) -> dict[str, GanRunParams]:
        train = info.data.get("train")
        for name, overrides in variants.items():
            if train is not None and (found := train.overridden(overrides).problems()):
                raise ValueError("; ".join(f"{name} (with train): {p}" for p in found))
        return variants

    @field_serializer("variants")
    def _only_overrides(self, variants: dict[str, GanRunParams]) -> dict[str, dict]:
        """A variant is what it overrides: dumping its defaults too would override ``train`` when reloaded."""
        return {name: v.model_dump(mode="json", exclude_unset=True) for name, v in variants.items()}

    def jobs(self) -> list[tuple[str, list[int]]]:
        """(variant, seeds) of every training task: a variant's seeds in groups of
        ``seeds_per_task`` when they train together, else one task per seed."""
        k = self.seeds_per_task or len(self.seeds)
        return [(variant, self.seeds[i:i + size])
                for variant, p in self.runs().items()
                for size in ([k] if p.vectorize_seeds else [1])
                for i in range(0, len(self.seeds), size)]

    def runs(self) -> dict[str, GanRunParams]:
        """Variant name → its full training params (``train`` overridden by the variant)."""
        return {name: self.train.overridden(overrides) for name, overrides in self.variants.items()}


class GanEvalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    baseline: str = "cr1"  # the variant every other is tested against (Welch's t-test)
    # variant → its own baseline, for studies that compare within groups (e.g. each width's N = 4 vs N = 1)
    baselines: dict[str, str] = Field(default_factory=dict)
    alpha: float = Field(0.05, gt=0, lt=1)
