"""The stage registry: one line per kind of stage — its parameters, its inputs, its runner.

``pipeline.yaml`` names a kind with ``task:``; this table says how such a stage is
validated (its pydantic parameters model and the roles of its inputs, checked as a whole
graph when the config loads) and how it runs (a runner in ``flows.stages``). Adding a stage:
its ``kexue`` module (+ params model), its task in ``tasks/``, a runner, one line here.

Runners are named, not imported, so that ``kexue check`` validates a config without
importing Prefect or TensorFlow; ``flows.stages`` binds the names when it is imported and
fails at once if a name has no runner or a runner is not registered.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from pydantic import BaseModel

from kexue.core.config import Config, ConfigError, Input, load_config
from kexue.embed.params import JoseParams
from kexue.gan.params import GanEvalParams, GanTrainParams, ImagesParams
from kexue.graph.params import CommunityParams, GraphParams
from kexue.text.params import CountParams, IngestParams, TokenizeParams


@dataclass(frozen=True)
class StageKind:
    name: str
    params: type[BaseModel]
    runner: str  # a function of flows.stages: (StageContext, params, {role: Manifest}) -> StageOutcome
    inputs: Mapping[str, Input] = field(default_factory=dict)


def _registry(*kinds: StageKind) -> Mapping[str, StageKind]:
    names = [k.name for k in kinds]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise RuntimeError(f"stage registry: kinds registered twice: {sorted(duplicates)}")
    for k in kinds:
        for role, i in k.inputs.items():
            unknown = [x for x in i.kinds if x not in names]
            if unknown:
                raise RuntimeError(f"stage registry: {k.name}.inputs.{role} accepts unknown kinds {unknown}")
    return MappingProxyType({k.name: k for k in kinds})


TOKENS, VOCABULARY, VECTORS = Input(("tokenize",)), Input(("count",)), Input(("jose",), required=False)

KINDS: Mapping[str, StageKind] = _registry(
    StageKind("ingest", IngestParams, "run_ingest"),
    StageKind("tokenize", TokenizeParams, "run_tokenize", {"documents": Input(("ingest",))}),
    StageKind("count", CountParams, "run_count", {"tokens": TOKENS}),
    StageKind("jose", JoseParams, "run_jose", {"tokens": TOKENS, "vocabulary": VOCABULARY}),
    StageKind("graph", GraphParams, "run_graph", {"tokens": TOKENS, "vocabulary": VOCABULARY, "vectors": VECTORS}),
    StageKind("communities", CommunityParams, "run_communities", {"graph": Input(("graph",)), "vectors": VECTORS}),
    StageKind("images", ImagesParams, "run_images"),
    StageKind("gan_train", GanTrainParams, "run_gan", {"images": Input(("images",))}),
    StageKind("gan_eval", GanEvalParams, "run_gan_eval", {"runs": Input(("gan_train",))}),
)


def bind_runners(namespace: Mapping[str, object]) -> dict[str, Callable]:
    """{kind: runner function} from a module's namespace; every kind has one, every ``run_*`` is registered."""
    missing = [k.runner for k in KINDS.values() if not callable(namespace.get(k.runner))]
    if missing:
        raise RuntimeError(f"stage registry: no runner function(s) {missing} in flows.stages")
    registered = {k.runner for k in KINDS.values()}
    orphans = sorted(n for n, v in namespace.items() if n.startswith("run_") and callable(v) and n not in registered)
    if orphans:
        raise RuntimeError(f"flows.stages: runner(s) {orphans} are not in the stage registry (flows/registry.py)")
    return {k.name: namespace[k.runner] for k in KINDS.values()}


def load(config: str | Path = "pipeline.yaml", profile: str | Path = "local", overrides: list[str] | None = None) -> Config:
    """Load and validate a configuration against the registry, then check the paths it names."""
    cfg = load_config(config, profile, overrides, KINDS)
    base = Path(cfg.pipeline_path).parent
    for name, params in cfg.params.items():
        check = getattr(params, "check_paths", None)
        if check is not None:
            try:
                check(base)
            except ValueError as e:
                raise ConfigError(f"{cfg.pipeline_path}: stages.{name}.params.{e}") from None
    return cfg


def selected_stages(cfg: Config, wanted: list[str] | None) -> list[str]:
    """The stages a run of ``wanted`` (None: every enabled stage) runs: those and their upstream."""
    from kexue.core.dag import with_upstream
    from kexue.core.errors import did_you_mean

    inputs = {n: s.upstream for n, s in cfg.pipeline.stages.items()}
    wanted = wanted or [n for n, s in cfg.pipeline.stages.items() if s.enabled]
    unknown = [s for s in wanted if s not in inputs]
    if unknown:
        raise ConfigError(f"--stages: unknown stage {unknown[0]!r}" + did_you_mean(unknown[0], inputs))
    return sorted(with_upstream(inputs, wanted))
