"""Which parameter model validates which task's ``params`` in ``pipeline.yaml``.

Kept in ``kexue`` (no orchestrator) so that a config can be checked — whole graph, every
parameter — before anything starts, by the CLI, the flow and the tests alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kexue.core.config import Config, ConfigError, ParamValidator, load_config, validator_for
from kexue.graph.communities import CommunityParams
from kexue.graph.cooccurrence import GraphParams
from kexue.text.count import CountParams
from kexue.gan.params import GanEvalParams, GanTrainParams, ImagesParams
from kexue.text.ingest import IngestParams
from kexue.embed.params import JoseParams
from kexue.text.sources import SourceSpec
from kexue.text.tokenize import TokenizeParams

VALIDATORS: dict[str, ParamValidator] = {
    "ingest": validator_for(IngestParams),
    "tokenize": validator_for(TokenizeParams),
    "count": validator_for(CountParams),
    "jose": validator_for(JoseParams),
    "graph": validator_for(GraphParams),
    "images": validator_for(ImagesParams),
    "gan_train": validator_for(GanTrainParams),
    "gan_eval": validator_for(GanEvalParams),
    "communities": validator_for(CommunityParams),
}


def preflight(cfg: Config) -> None:
    """Checks that need the file system: every configured source path exists."""
    base = Path(cfg.pipeline_path).parent
    for name, stage in cfg.pipeline.stages.items():
        if stage.task != "ingest":
            continue
        for i, spec in enumerate(cfg.params[name]["sources"]):
            src = SourceSpec.model_validate(spec)
            if not src.is_builtin and not (src.resolve(base).exists() or src.resolve(base).is_symlink()):
                raise ConfigError(
                    f"{cfg.pipeline_path}: stages.{name}.params.sources.{i}.source: "
                    f"{src.source!r} does not exist (resolved to {src.resolve(base)})"
                )


def load(config: str | Path = "pipeline.yaml", profile: str | Path = "local", overrides: list[str] | None = None) -> Config:
    """Load, validate (whole graph, every parameter) and preflight-check a configuration."""
    cfg = load_config(config, profile, overrides, VALIDATORS)
    preflight(cfg)
    return cfg
