"""Loading and validating ``pipeline.yaml`` and the profiles in ``conf/``.

Why a whole-graph check at load time (as Kedro does): a typo in a stage name or parameter
should fail in the first second, naming the key, not an hour later inside a Dask worker.
YAML is read with ``yaml.safe_load`` only; config values are data, never evaluated.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kexue.core.dag import check_dag
from kexue.core.errors import ConfigError, did_you_mean


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- pipeline
class StageSpec(StrictModel):
    """One node of the DAG: which kind of task runs it, which stage feeds each of its
    inputs (``{role: stage name}``, as Kedro wires nodes by dataset name), its parameters."""

    task: str
    inputs: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs_mapping(cls, v: Any) -> Any:
        if isinstance(v, list):
            raise ValueError("expected a mapping of input role to stage name, e.g. {tokens: tokenize, vocabulary: count}")
        return v

    @property
    def upstream(self) -> list[str]:
        return list(self.inputs.values())


class PipelineSpec(StrictModel):
    stages: dict[str, StageSpec]


# ----------------------------------------------------------------------------- profiles
class DaskSpec(StrictModel):
    """Where tasks run: a LocalCluster we start, or an existing scheduler by address."""

    address: str | None = None  # e.g. tcp://127.0.0.1:8786; None = start a LocalCluster
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = True
    memory_limit: str | None = "auto"
    dashboard_address: str = "127.0.0.1:8787"
    dashboard_link: str | None = None  # template for distributed.dashboard.link
    security: dict[str, Any] = Field(default_factory=dict)  # passed to distributed.Security
    resources: dict[str, dict[str, float]] = Field(default_factory=dict)  # stage name -> {GPU: 1}


class PrefectSpec(StrictModel):
    """Which Prefect API records the run: an embedded one we start, or a server by URL."""

    api: Literal["embedded", "url", "environment"] = "embedded"
    api_url: str | None = None
    logging_level: str = "WARNING"
    startup_timeout: int = Field(120, ge=10)

    @model_validator(mode="after")
    def _url_needs_address(self):
        if self.api == "url" and not self.api_url:
            raise ValueError("api: url needs api_url (e.g. http://127.0.0.1:4200/api)")
        return self


class ProfileSpec(StrictModel):
    data_dir: str = "./data"
    dask: DaskSpec = Field(default_factory=DaskSpec)
    prefect: PrefectSpec = Field(default_factory=PrefectSpec)
    # dotted overrides applied to pipeline.yaml, e.g. {"jose.epochs": 1}
    set: dict[str, Any] = Field(default_factory=dict)
    description: str = ""


def _format_validation_error(err: ValidationError, where: str, model: type[BaseModel] | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + did_you_mean(e["loc"][-1], _fields_at(model, e["loc"]))
        lines.append(f"{where}: {loc}: {msg}")
    return "\n".join(lines)


def _fields_at(model: type[BaseModel] | None, loc) -> list[str]:
    """Field names of the model that owns the last element of ``loc`` (for did-you-mean)."""
    for part in loc[:-1]:
        if model is None:
            return []
        field = model.model_fields.get(str(part))
        if field is None:  # an element of a dict/list of models: keep the value model
            continue
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (inner[-1] if inner else None)
        if model is None and str(part) == "stages":
            model = StageSpec
    return list(model.model_fields) if model else []


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``'tokenize.backend=jieba'`` → ``('tokenize.backend', 'jieba')``; the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected stage.param=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def apply_override(stages: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set ``stage.param[.sub...]`` inside the raw stages mapping."""
    parts = key.split(".")
    if len(parts) < 2:
        raise ConfigError(f"{where}: {key!r}: expected stage.param=value")
    stage = parts[0]
    if stage not in stages:
        raise ConfigError(f"{where}: {key!r}: unknown stage {stage!r}" + did_you_mean(stage, stages))
    node = stages[stage]
    if parts[1] in ("enabled", "inputs", "task"):
        node[parts[1]] = value
        return
    node = node.setdefault("params", {})
    for p in parts[1:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {key!r}: {p!r} is not a mapping")
    node[parts[-1]] = value


# ----------------------------------------------------------------------------- stage kinds
@dataclass(frozen=True)
class Input:
    """An input role of a kind of stage: which kinds of stage may feed it."""

    kinds: tuple[str, ...]
    required: bool = True

    def describe(self) -> str:
        return " or ".join(f"a {k} stage" for k in self.kinds) + ("" if self.required else ", optional")


class StageKindSpec(Protocol):
    """What the loader needs to know about a kind of stage (the registry provides it)."""

    params: type[BaseModel]
    inputs: Mapping[str, Input]


class Config(BaseModel):
    """The validated whole: pipeline stages (with overrides applied) and the profile."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    pipeline_path: str
    profile_name: str
    profile: ProfileSpec
    pipeline: PipelineSpec
    params: dict[str, BaseModel]  # stage -> its validated parameters model
    raw: dict[str, Any]  # what was loaded, after overrides (recorded in the run summary)

    @property
    def data_dir(self) -> Path:
        base = Path(self.profile.data_dir)
        if not base.is_absolute():
            base = Path(self.pipeline_path).resolve().parent / base
        return base


def load_config(
    pipeline_path: str | Path,
    profile: str | Path,
    overrides: list[str] | None,
    kinds: Mapping[str, StageKindSpec],
) -> Config:
    """Read, override and validate the pipeline and profile as a whole graph; raise
    ConfigError naming the file and the key (with a did-you-mean for names)."""
    pipeline_path = Path(pipeline_path)
    raw = read_yaml(pipeline_path)
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict):
        raise ConfigError(f"{pipeline_path}: expected a mapping with a 'stages' mapping at the top")
    raw = copy.deepcopy(raw)

    profile_path = Path(profile)
    if profile_path.suffix not in (".yaml", ".yml"):
        profile_path = pipeline_path.resolve().parent / "conf" / f"{profile}.yaml"
    try:
        prof = ProfileSpec.model_validate(read_yaml(profile_path))
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, str(profile_path), ProfileSpec)) from None

    for key, value in prof.set.items():
        apply_override(raw["stages"], key, value, f"{profile_path}: set")
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(raw["stages"], key, value, "--set")

    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, str(pipeline_path), PipelineSpec)) from None

    check_dag({n: s.upstream for n, s in spec.stages.items()}, where=str(pipeline_path))
    params = {}
    for name, stage in spec.stages.items():
        where = f"{pipeline_path}: stages.{name}"
        if stage.task not in kinds:
            raise ConfigError(f"{where}.task: unknown task {stage.task!r}" + did_you_mean(stage.task, kinds))
        kind = kinds[stage.task]
        _check_inputs(where, stage, kind, spec)
        try:
            params[name] = kind.params.model_validate(stage.params)
        except ValidationError as e:
            raise ConfigError(_format_validation_error(e, f"{where}.params", kind.params)) from None
    for name in prof.dask.resources:
        if name not in spec.stages:
            by_task = [s for s, st in spec.stages.items() if st.task == name]
            hint = (f" (did you mean {by_task[0]!r}? resources are keyed by stage name; {name!r} is its task)"
                    if by_task else did_you_mean(name, spec.stages))
            raise ConfigError(f"{profile_path}: dask.resources.{name}: unknown stage{hint}")
    return Config(
        pipeline_path=str(pipeline_path.resolve()),
        profile_name=profile_path.stem,
        profile=prof,
        pipeline=spec,
        params=params,
        raw=raw,
    )


def _check_inputs(where: str, stage: StageSpec, kind: StageKindSpec, spec: PipelineSpec) -> None:
    """Every input role is one the kind takes, fed by a stage of a kind it accepts."""
    for role, upstream in stage.inputs.items():
        if role not in kind.inputs:
            takes = ", ".join(f"{r} ({i.describe()})" for r, i in kind.inputs.items()) or "no inputs"
            raise ConfigError(f"{where}.inputs.{role}: unknown input" + did_you_mean(role, kind.inputs)
                              + f"; a {stage.task} stage takes {takes}")
        accepted = kind.inputs[role].kinds
        if spec.stages[upstream].task not in accepted:
            raise ConfigError(f"{where}.inputs.{role}: {upstream!r} is a {spec.stages[upstream].task} stage; "
                              f"expected {kind.inputs[role].describe()}")
    for role, needed in kind.inputs.items():
        if needed.required and role not in stage.inputs:
            raise ConfigError(f"{where}.inputs: missing {role!r} ({needed.describe()})")
