"""JoSE's hyper-parameters, without TensorFlow: validated wherever pipeline.yaml loads.

Kept apart from ``kexue.embed.jose`` so checking a config (and every Dask worker that unpickles
the flow) does not import TensorFlow — seconds and hundreds of MB per process.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from kexue.core.artifacts import sha256_text, stable_json

DEFAULT_PROBE_WORDS = ("中国", "经济", "北京", "足球", "银行", "教育")
STRATEGY_NAMES = ("default", "one_device_cpu")  # kexue.embed.jose.STRATEGIES builds them


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class JoseConfig:
    """Hyper-parameters; the defaults are the reference's.

    ``epochs`` is 10, the reference's value. On the ~2.7 M-token built-in corpus, 10 passes
    instead of 5 raise the 5-fold accuracy of a classifier on the document vectors from 0.68
    to 0.74 (the reference: 0.68 to 0.74). Word vectors stay more isotropic than the
    reference's (mean cosine of random pairs 0.19 vs 0.21). It doubles the training time
    (about 95 s on 2 cores), a small cost next to the GAN branch. Measured with
    ``benchmarks/jose.py``.
    """

    dim: int = 100
    window: int = 5
    negative: int = 2
    margin: float = 0.15
    alpha: float = 0.04
    min_count: int = 5
    sample: float = 1e-3
    epochs: int = 10
    seed: int = 0
    threads: int = 2
    batch_size: int = 4096
    steps_per_block: int = 64
    probe_words: tuple[str, ...] = DEFAULT_PROBE_WORDS
    label_source: str | None = "reviews"
    strategy: str = "default"

    def __post_init__(self) -> None:
        positive_ints = ("dim", "window", "negative", "min_count", "epochs", "threads", "batch_size", "steps_per_block")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"jose param {name!r} must be a positive integer, got {value!r}")
        for name, low, high in (("margin", 0.0, 2.0), ("alpha", 0.0, 10.0), ("sample", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
                raise ValueError(f"jose param {name!r} must be a number in [{low}, {high}], got {value!r}")
        if self.dim < 3:
            raise ValueError(f"jose param 'dim' must be at least 3, got {self.dim}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"jose param 'seed' must be a non-negative integer, got {self.seed!r}")
        if not all(isinstance(w, str) for w in self.probe_words):
            raise ValueError(f"jose param 'probe_words' must be a list of strings, got {self.probe_words!r}")
        if self.label_source is not None and not isinstance(self.label_source, str):
            raise ValueError(f"jose param 'label_source' must be a string or null, got {self.label_source!r}")
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"jose param 'strategy' must be one of {sorted(STRATEGY_NAMES)}, got {self.strategy!r}")

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "JoseConfig":
        """Build from a ``pipeline.yaml`` mapping; unknown keys are an error that names them."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown jose param(s) {unknown}; known: {sorted(known)}")
        if "probe_words" in params:
            if isinstance(params["probe_words"], str):
                raise ValueError("jose param 'probe_words' must be a list of strings, not one string")
            params["probe_words"] = tuple(params["probe_words"])
        return cls(**params)

    def training_fingerprint(self) -> str:
        """What a checkpoint must agree on to be resumed (evaluation settings excluded)."""
        keys = ("dim", "window", "negative", "margin", "alpha", "min_count", "sample", "epochs", "seed", "batch_size")
        return sha256_text(stable_json({k: getattr(self, k) for k in keys}))


class JoseParams(BaseModel):
    """The ``jose`` stage's parameters: every JoseConfig field plus ``warm_start``.

    Unknown keys are refused by pydantic (``extra="forbid"``), so the config loader's one
    did-you-mean formatter names them; values are checked by JoseConfig.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    dim: int = JoseConfig.dim
    window: int = JoseConfig.window
    negative: int = JoseConfig.negative
    margin: float = JoseConfig.margin
    alpha: float = JoseConfig.alpha
    min_count: int = JoseConfig.min_count
    sample: float = JoseConfig.sample
    epochs: int = JoseConfig.epochs
    seed: int = JoseConfig.seed
    threads: int = JoseConfig.threads
    batch_size: int = JoseConfig.batch_size
    steps_per_block: int = JoseConfig.steps_per_block
    probe_words: tuple[str, ...] = DEFAULT_PROBE_WORDS
    label_source: str | None = JoseConfig.label_source
    strategy: str = JoseConfig.strategy
    warm_start: bool = False  # start from the last finished training's vectors (retraining)

    @model_validator(mode="after")
    def _values(self):
        self.config()
        return self

    def config(self) -> JoseConfig:
        """The training hyper-parameters (everything but the stage's ``warm_start``)."""
        return JoseConfig(**self.model_dump(exclude={"warm_start"}))
