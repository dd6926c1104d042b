"""The one definition of each Param's bounds, as the CLI, train_model and the trigger form apply it."""

from __future__ import annotations

import math

import pytest

from mnist_tasks.params import PARAMS, TRAINING_PARAMS, ParamError, check_params


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("epochs", 0, "epochs must be at least 1, got 0"),
        ("epochs", 101, "epochs must be at most 100, got 101"),
        ("epochs", 2.5, "epochs must be a whole number, got 2.5"),
        ("batch_size", True, "batch_size must be a number, got True"),
        ("learning_rate", 0, "learning_rate must be above 0, got 0"),
        ("learning_rate", math.nan, "learning_rate must be a finite number, got nan"),
        ("learning_rate", math.inf, "learning_rate must be a finite number, got inf"),
        ("learning_rate", "0.1", "learning_rate must be a number, got '0.1'"),
        ("seed", -1, "seed must be at least 0, got -1"),
        ("accuracy_threshold", 1.5, "accuracy_threshold must be at most 1, got 1.5"),
        ("min_confidence", -0.1, "min_confidence must be at least 0, got -0.1"),
    ],
)
def test_out_of_bounds_values_are_refused_by_name(name, value, message):
    with pytest.raises(ParamError) as err:
        PARAMS[name].check(value)
    assert str(err.value) == message


def test_values_are_cast_to_the_params_type():
    checked = check_params({"learning_rate": 1, "epochs": 3.0, "accuracy_threshold": 0})
    assert checked == {"learning_rate": 1.0, "epochs": 3, "accuracy_threshold": 0.0}
    assert [type(v) for v in checked.values()] == [float, int, float]


def test_every_default_is_allowed_and_every_bound_is_in_words():
    for spec in PARAMS.values():
        assert spec.check(spec.default) == spec.default
        assert spec.allowed
    assert PARAMS["learning_rate"].allowed == "above 0, at most 1"


def test_the_command_line_form():
    assert PARAMS["epochs"].parse("7") == 7
    with pytest.raises(ParamError, match="epochs must be a whole number, got '7.5'"):
        PARAMS["epochs"].parse("7.5")
    with pytest.raises(ParamError, match="must be a finite number"):
        PARAMS["learning_rate"].parse("nan")


def test_the_training_params_are_train_models_keywords():
    import inspect

    from mnist_tasks.model.train import train_model

    keywords = inspect.signature(train_model).parameters
    for spec in TRAINING_PARAMS:
        assert keywords[spec.name].default == spec.default, spec.name
