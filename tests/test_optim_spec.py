"""The optimizer spec model: TF-free validation that matches what Keras' optimizers accept."""
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from kexue.core.config import _format_validation_error
from kexue.optim.spec import KERAS_ARGUMENTS, OptimizerSpec


def _message(spec: dict) -> str:
    with pytest.raises(ValidationError) as e:
        OptimizerSpec.model_validate(spec)
    return _format_validation_error(e.value, "spec", OptimizerSpec)


def test_argument_table_matches_keras():
    import keras

    from kexue.optim.factory import BASE_OPTIMIZERS

    assert sorted(KERAS_ARGUMENTS) == sorted(BASE_OPTIMIZERS)
    for name, cls in BASE_OPTIMIZERS.items():
        keras_args = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs", "name", "gradient_accumulation_steps"}
        assert set(KERAS_ARGUMENTS[name]) == keras_args, name
        assert set(KERAS_ARGUMENTS[name]) <= set(OptimizerSpec.model_fields), name
    assert issubclass(BASE_OPTIMIZERS["adam"], keras.optimizers.Optimizer)


def test_bad_names_keys_and_values_are_named_with_suggestions():
    assert "name: Value error, unknown optimizer 'adan' (did you mean 'adam'?)" in _message({"name": "adan"})
    assert "lerning_rate: unknown key (did you mean 'learning_rate'?)" in _message({"lerning_rate": 1e-3})
    assert "lookahead.alfa: unknown key (did you mean 'alpha'?)" in _message({"lookahead": {"alfa": 0.5}})
    assert "'beta_1' is not an argument of sgd" in _message({"name": "sgd", "beta_1": 0.5})
    assert "learning_rate: Input should be greater than 0" in _message({"learning_rate": 0})
    assert "weight_decay: Input should be greater than or equal to 0" in _message({"weight_decay": -1})
    assert "lookahead.k: Input should be greater than or equal to 1" in _message({"lookahead": {"k": 0}})
    assert "lookahead.alpha: Input should be less than or equal to 1" in _message({"lookahead": {"alpha": 1.5}})
    assert "accumulation_steps: Input should be greater than or equal to 1" in _message({"accumulation_steps": 0})


def test_spec_keeps_only_the_given_keras_arguments():
    spec = OptimizerSpec.model_validate({"name": "Adam", "learning_rate": "2e-4", "beta_1": 0.5, "lookahead": True})
    assert spec.name == "adam" and spec.keras_arguments() == {"learning_rate": 2e-4, "beta_1": 0.5}
    assert (spec.lookahead.k, spec.lookahead.alpha) == (5, 0.5)
    assert OptimizerSpec.model_validate(spec.model_dump(mode="json")) == spec  # survives a JSON round trip


def test_spec_module_does_not_import_tensorflow():
    code = "import sys, kexue.optim.spec, kexue.gan.params; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False False", out.stderr
