"""The DAG folder, parsed once for every DAG test as the dag-processor parses it."""

from __future__ import annotations

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))
