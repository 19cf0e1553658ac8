"""A malformed pipeline.yaml or profile fails at load time with an error naming the key."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kexue.core.config import ConfigError
from kexue.core.registry import load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def proj(tmp_path):
    shutil.copy(ROOT / "pipeline.yaml", tmp_path / "pipeline.yaml")
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def error_of(proj, profile="local", overrides=()):
    with pytest.raises(ConfigError) as e:
        load(proj / "pipeline.yaml", profile, list(overrides))
    return str(e.value)


def test_the_shipped_configs_load():
    for profile in ("local", "ci", "cluster"):
        cfg = load(ROOT / "pipeline.yaml", profile)
        assert {"ingest", "tokenize", "count"} <= set(cfg.params)


def test_unknown_parameter_key_is_named_with_suggestion(proj):
    edit(proj / "pipeline.yaml", "hmm: true", "hmn: true")
    msg = error_of(proj)
    assert "stages.tokenize.params" in msg and "hmn" in msg and "did you mean 'hmm'" in msg


def test_wrong_type_is_named(proj):
    edit(proj / "pipeline.yaml", "merge_fanin: 8", "merge_fanin: lots")
    msg = error_of(proj)
    assert "stages.count.params" in msg and "merge_fanin" in msg


def test_unknown_stage_in_inputs(proj):
    edit(proj / "pipeline.yaml", "inputs: [tokenize]", "inputs: [tokenise]")
    msg = error_of(proj)
    assert "stages.count.inputs" in msg and "'tokenise'" in msg and "did you mean 'tokenize'" in msg


def test_cycle_is_reported(proj):
    edit(proj / "pipeline.yaml", "task: ingest\n", "task: ingest\n    inputs: [count]\n")
    assert "cycle" in error_of(proj)


def test_unknown_task_and_stage_key(proj):
    edit(proj / "pipeline.yaml", "task: count", "task: cuont")
    assert "stages.count.task" in error_of(proj) and "did you mean 'count'" in error_of(proj)


def test_missing_source_path_is_named(proj):
    msg = error_of(proj, overrides=["ingest.sources=[corpus/missing]"])
    assert "stages.ingest.params.sources.0.source" in msg and "does not exist" in msg


def test_invalid_yaml_and_bad_profile(proj):
    (proj / "pipeline.yaml").write_text("stages: [unclosed\n")
    assert "not valid YAML" in error_of(proj)
    shutil.copy(ROOT / "pipeline.yaml", proj / "pipeline.yaml")
    edit(proj / "conf" / "local.yaml", "n_workers: 2", "n_workerz: 2")
    msg = error_of(proj)
    assert "local.yaml" in msg and "dask.n_workerz" in msg and "did you mean 'n_workers'" in msg


def test_override_of_unknown_stage(proj):
    assert "did you mean 'tokenize'" in error_of(proj, overrides=["tokenise.hmm=false"])
