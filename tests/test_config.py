"""A malformed pipeline.yaml or profile fails at load time with an error naming the key;
the stage registry agrees with the runners; parameters arrive typed."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.registry import KINDS, load
from kexue.core.errors import ConfigError

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
    edit(proj / "pipeline.yaml", "batch_docs: 2000", "batch_docs: lots")
    msg = error_of(proj)
    assert "stages.count.params" in msg and "batch_docs" in msg


def test_unknown_stage_in_inputs(proj):
    edit(proj / "pipeline.yaml", "inputs: {tokens: tokenize}", "inputs: {tokens: tokenise}")
    msg = error_of(proj)
    assert "stages.count.inputs" in msg and "'tokenise'" in msg and "did you mean 'tokenize'" in msg


def test_inputs_are_checked_by_role(proj):
    edit(proj / "pipeline.yaml", "inputs: {tokens: tokenize}", "inputs: {tokns: tokenize}")
    msg = error_of(proj)
    assert "stages.count.inputs.tokns: unknown input (did you mean 'tokens'?)" in msg
    shutil.copy(ROOT / "pipeline.yaml", proj / "pipeline.yaml")
    edit(proj / "pipeline.yaml", "inputs: {tokens: tokenize}", "inputs: {tokens: ingest}")
    assert "stages.count.inputs.tokens: 'ingest' is a ingest stage; expected a tokenize stage" in error_of(proj)
    shutil.copy(ROOT / "pipeline.yaml", proj / "pipeline.yaml")
    edit(proj / "pipeline.yaml", "inputs: {tokens: tokenize, vocabulary: count}\n    params:\n      dim",
         "inputs: {tokens: tokenize}\n    params:\n      dim")
    assert "stages.jose.inputs: missing 'vocabulary' (a count stage)" in error_of(proj)
    shutil.copy(ROOT / "pipeline.yaml", proj / "pipeline.yaml")
    edit(proj / "pipeline.yaml", "inputs: {tokens: tokenize}", "inputs: [tokenize]")
    assert "stages.count.inputs" in error_of(proj) and "mapping of input role to stage name" in error_of(proj)


def test_stages_receive_their_inputs_by_name_not_by_kind(proj):
    """Two count stages of the same kind: each consumer gets the one pipeline.yaml names."""
    text = (proj / "pipeline.yaml").read_text()
    text = text.replace("  jose:\n", "  count_small:\n    task: count\n    inputs: {tokens: tokenize}\n"
                                      "    params: {batch_docs: 10}\n\n  jose:\n", 1)
    text = text.replace("    inputs: {tokens: tokenize, vocabulary: count}\n    params:\n      dim",
                        "    inputs: {tokens: tokenize, vocabulary: count_small}\n    params:\n      dim")
    (proj / "pipeline.yaml").write_text(text)
    cfg = load(proj / "pipeline.yaml", "local")
    assert cfg.pipeline.stages["jose"].inputs == {"tokens": "tokenize", "vocabulary": "count_small"}
    assert cfg.params["count_small"].batch_docs == 10 and cfg.params["count"].batch_docs == 2000


def test_cycle_is_reported(proj):
    edit(proj / "pipeline.yaml", "task: ingest\n", "task: ingest\n    inputs: {documents: count}\n")
    assert "cycle" in error_of(proj) or "expected" in error_of(proj)
    shutil.copy(ROOT / "pipeline.yaml", proj / "pipeline.yaml")
    edit(proj / "pipeline.yaml", "    task: tokenize\n    inputs: {documents: ingest}",
         "    task: tokenize\n    inputs: {documents: count}")
    assert "the stages form a cycle: " in error_of(proj)


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


def test_dask_resources_are_keyed_by_stage_name(proj):
    edit(proj / "conf" / "cluster.yaml", "resources: {}", "resources: {gan_train: {GPU: 1}}")
    msg = error_of(proj, profile="cluster")
    assert "cluster.yaml: dask.resources.gan_train: unknown stage" in msg and "did you mean 'gan" in msg
    shutil.copytree(ROOT / "conf", proj / "conf", dirs_exist_ok=True)
    edit(proj / "conf" / "cluster.yaml", "resources: {}", "resources: {gan: {GPU: 1}}")
    assert load(proj / "pipeline.yaml", "cluster").profile.dask.resources == {"gan": {"GPU": 1.0}}


def test_parameters_arrive_as_their_validated_models():
    cfg = load(ROOT / "pipeline.yaml", "local")
    for name, stage in cfg.pipeline.stages.items():
        assert isinstance(cfg.params[name], KINDS[stage.task].params), name
    assert cfg.params["tokenize"].backend == "rjieba"


def test_every_registered_kind_has_a_runner_and_every_runner_is_registered():
    import flows.stages
    from flows import registry

    assert set(flows.stages.RUNNERS) == set(KINDS)
    namespace = dict(vars(flows.stages))
    namespace["run_orphan"] = lambda *a: None
    with pytest.raises(RuntimeError, match="run_orphan.*not in the stage registry"):
        registry.bind_runners(namespace)
    del namespace["run_orphan"], namespace["run_jose"]
    with pytest.raises(RuntimeError, match="no runner function.*run_jose"):
        registry.bind_runners(namespace)
