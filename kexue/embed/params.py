"""JoSE's hyper-parameters, without TensorFlow: validated wherever pipeline.yaml loads.

Kept apart from ``kexue.embed.jose`` so checking a config (and every Dask worker that unpickles
the flow) does not import TensorFlow — seconds and hundreds of MB per process.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kexue.core.artifacts import sha256_text, stable_json

DEFAULT_PROBE_WORDS = ("中国", "经济", "北京", "足球", "银行", "教育")
StrategyName = Literal["default", "one_device_cpu"]  # kexue.embed.jose.STRATEGIES builds them

# What a checkpoint must agree on to be resumed: everything that changes the trained vectors
# (threads only change the interleaving of the same work; evaluation settings change nothing).
TRAINING_KEYS = ("dim", "window", "negative", "margin", "alpha", "min_count", "sample", "epochs", "seed",
                 "batch_size", "steps_per_block", "correction", "negatives", "line_end_negatives")


class JoseParams(BaseModel):
    """The ``jose`` stage's parameters; the model's defaults are the reference's (``jose.c``).

    ``correction`` is the update-quantity correction of the negative word's step:
    ``reference`` is jose.c's 2h (h = cos(u′, anchor)), which reverses the step when h < 0;
    ``paper`` is the rule of the paper (1 + h, always a push away from the anchor).
    ``negatives``: ``together`` computes a tuple's K negatives from one read of its rows and
    sums their updates (the default: faster, and the better documents on the benchmark);
    ``sequential`` applies them one after another, each seeing the rows the previous one
    moved, as jose.c's loop does. With ``sequential`` and a small ``batch_size`` (16) the
    vectors match single-threaded jose.c's statistics (``docs/architecture.md``).
    A training step updates ``batch_size`` tuples from one read of the rows, and
    ``steps_per_block`` steps run in one compiled call; each step's tuples come from
    ``batch_size`` different stretches of the corpus (``kexue.embed.jose.TupleSampler``).
    ``line_end_negatives``: jose.c's unigram table also holds its line-end token ``</s>``
    (one count per document, i.e. per line), and a draw of it becomes a uniform random word;
    true keeps that share of uniform negatives (0.7 % of draws on the benchmark corpus, more
    on a corpus of short documents), false draws from the vocabulary's unigram^0.75 only.
    ``threads``: 1 samples tuples and trains in one thread, 2 or more give the sampler its
    own; the vectors are the same either way. ``warm_start`` is read by the stage: start
    from the last finished run's vectors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(100, ge=2)  # a direction needs at least two coordinates
    window: int = Field(5, ge=1)
    negative: int = Field(2, ge=1)
    margin: float = Field(0.15, ge=0.0, lt=2.0)  # cosines differ by at most 2: a larger margin never stops
    alpha: float = Field(0.04, gt=0.0, le=1.0)
    min_count: int = Field(5, ge=1)
    sample: float = Field(1e-3, ge=0.0, lt=1.0)  # 0 = no frequent-word subsampling
    epochs: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)
    threads: int = Field(2, ge=1)
    batch_size: int = Field(256, ge=1)
    steps_per_block: int = Field(512, ge=1)
    correction: Literal["reference", "paper"] = "reference"
    negatives: Literal["together", "sequential"] = "together"
    line_end_negatives: bool = Field(True, strict=True)
    probe_words: tuple[str, ...] = DEFAULT_PROBE_WORDS
    label_source: str | None = "reviews"
    strategy: StrategyName = "default"
    warm_start: bool = Field(False, strict=True)

    @classmethod
    def of(cls, params: "JoseParams | dict[str, Any] | None") -> "JoseParams":
        """The validated model from a model, a ``pipeline.yaml`` mapping or None (defaults)."""
        return params if isinstance(params, cls) else cls.model_validate(params or {})

    def training_fingerprint(self) -> str:
        """What a checkpoint must agree on to be resumed (evaluation settings excluded)."""
        return sha256_text(stable_json({k: getattr(self, k) for k in TRAINING_KEYS}))
