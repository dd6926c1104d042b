"""What the trigger form needs from both DAGs' Params; tests/e2e/test_airflow_ui.py drives the form itself."""

from __future__ import annotations

import pytest

from tests.conftest import REPO

BOUND_KEYWORDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
NUMBER_TYPES = {"integer", "number"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture(params=["mnist_retraining", "mnist_batch_predict"])
def params(request, dagbag):
    return dagbag.dags[request.param].params


def test_the_form_cannot_clamp_a_param_to_its_bounds(params):
    # The form's number fields clamp to a top-level minimum/maximum: 500 epochs would
    # silently run 100 (mnist_airflow/wiring.py airflow_param says where in the UI's code).
    # Kept in allOf, the bounds make Airflow refuse the value instead.
    for name, param in params.items():
        assert not BOUND_KEYWORDS & param.schema.keys(), name
        if param.schema.get("type") in NUMBER_TYPES:
            assert param.schema["allOf"][0].keys() <= BOUND_KEYWORDS, name


def test_every_param_description_states_its_bounds(params):
    for name, param in params.items():
        if "allOf" not in param.schema and "enum" not in param.schema:
            continue  # bounded otherwise, as input_uri by its pattern
        allowed = param.description.split("Allowed: ")[1]
        for bound in param.schema["allOf"][0].values() if "allOf" in param.schema else param.schema["enum"]:
            assert str(bound) in allowed, name


def test_every_number_param_refuses_values_outside_its_bounds_and_nan(params):
    from airflow.sdk.definitions.param import ParamValidationError

    from mnist_tasks.params import PARAMS

    numbers = [name for name, param in params.items() if param.schema.get("type") in NUMBER_TYPES]
    assert numbers
    for name in numbers:
        spec = PARAMS[name]
        below = spec.minimum - 1 if spec.minimum is not None else spec.exclusive_minimum
        for value in (below, spec.maximum + 1, float("nan"), float("inf"), float("-inf")):
            with pytest.raises(ParamValidationError):
                params.get_param(name).resolve(value)
        assert params.get_param(name).resolve(spec.maximum) == spec.maximum
