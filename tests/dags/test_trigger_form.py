"""What the trigger form needs from mnist_retraining's Params; tests/e2e/test_airflow_ui.py drives the form itself."""

from __future__ import annotations

import pytest

from tests.conftest import REPO

BOUND_KEYWORDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}


@pytest.fixture(scope="module")
def params():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags["mnist_retraining"].params


def test_the_form_cannot_clamp_a_param_to_its_bounds(params):
    # The form's number fields clamp to a top-level minimum/maximum: 500 epochs would
    # silently run 100. Kept in allOf, the bounds make Airflow refuse the value instead.
    for name, param in params.items():
        assert not BOUND_KEYWORDS & param.schema.keys(), name
        if "enum" not in param.schema:  # a choice has no bounds to clamp to
            assert param.schema["allOf"][0].keys() <= BOUND_KEYWORDS, name


def test_every_param_description_states_its_bounds(params):
    for name, param in params.items():
        allowed = param.description.split("Allowed: ")[1]
        for bound in param.schema["allOf"][0].values() if "allOf" in param.schema else param.schema["enum"]:
            assert str(bound) in allowed, name

