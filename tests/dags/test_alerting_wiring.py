"""`mnist_retraining` alerts: which callback fires when, and the run deadline.

What the alerts say and that they arrive is tested in tests/test_alerts.py and
tests/e2e/test_alerts.py; this checks the DAG is wired to send them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from tests.conftest import REPO

DAG_ID = "mnist_retraining"


def _parse():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


@pytest.fixture(scope="module")
def dag():
    return _parse()


def test_every_task_alerts_when_it_has_failed_for_good(dag):
    from mnist_airflow.alerting import alert_task_failure

    for task in dag.tasks:
        assert task.on_failure_callback == [alert_task_failure], task.task_id
        assert not task.on_retry_callback, task.task_id  # a try that will be retried is no news


def test_the_dag_alerts_on_failures_no_task_reports_and_on_success(dag):
    from mnist_airflow.alerting import alert_run_failure, alert_run_success

    assert dag.on_failure_callback is alert_run_failure
    assert dag.on_success_callback is alert_run_success


def test_the_deadline_counts_from_queueing_and_warns_before_the_run_timeout(dag):
    from airflow.sdk import AsyncCallback, DeadlineReference
    from airflow.serialization.serialized_objects import DagSerialization

    (deadline,) = dag.deadline
    assert deadline.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert deadline.interval == timedelta(minutes=120)
    # Past the timeout the run is failed (and alerted) before the deadline could fire.
    assert deadline.interval < dag.dagrun_timeout
    assert deadline.callback == AsyncCallback("mnist_airflow.alerting.alert_run_overdue", kwargs={"minutes": 120})
    # The dag-processor stores the callback by its path.
    serialized = json.dumps(DagSerialization.to_dict(dag), default=str)
    assert '"path": "mnist_airflow.alerting.alert_run_overdue", "kwargs": {"minutes": 120}' in serialized


def test_the_deadline_follows_the_environment(monkeypatch):
    monkeypatch.setenv("MNIST_RUN_DEADLINE_MINUTES", "45")

    (deadline,) = _parse().deadline

    assert deadline.interval == timedelta(minutes=45)
    assert deadline.callback.kwargs == {"minutes": 45}


def test_the_deadline_callback_runs_as_the_triggerer_runs_it(dag, tmp_path):
    # A fresh interpreter outside the repository, as the triggerer: the path resolves
    # through the plugins folder Airflow puts on sys.path, and Airflow's own callback
    # trigger awaits it with the context the scheduler builds for a missed deadline.
    (deadline,) = dag.deadline
    callback = deadline.callback.serialize()
    context = {"dag_run": {"dag_id": DAG_ID, "dag_run_id": "scheduled__2026-11-27T02:00:00+00:00", "state": "running"}}
    code = textwrap.dedent(
        f"""
        import asyncio, json
        from airflow.triggers.callback import CallbackTrigger

        async def events():
            trigger = CallbackTrigger({callback["path"]!r}, {{**{callback["kwargs"]!r}, "context": {context!r}}})
            return [event.payload async for event in trigger.run()]

        print(json.dumps(asyncio.run(events())))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)

    assert json.loads(out.stdout.strip().splitlines()[-1]) == [{"state": "running"}, {"state": "success", "body": None}]
    # No alert connection exists here, so the callback said so instead of sending.
    assert (
        "Alert not sent, no receiver configured (connections 'mnist_alerts_smtp' and 'mnist_alerts_webhook' "
        f"do not exist): [{DAG_ID}] run scheduled__2026-11-27T02:00:00+00:00 has not finished after 120 minutes"
    ) in out.stdout + out.stderr
