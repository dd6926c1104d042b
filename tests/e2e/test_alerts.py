"""Alerts reach real receivers on 127.0.0.1: an SMTP server and a webhook.

Whole runs through `dag.test()` prove that the callbacks fire and that a failed
gate produces exactly one email and one webhook call carrying the numbers. The
callbacks that `dag.test()` cannot reach (a run timeout, a missed deadline) are
called with the context Airflow gives them.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from tests.e2e.conftest import ALERT_RECIPIENT, UI_BASE_URL

DAG_ID = "mnist_retraining"
# 1 epoch on the tiny data reaches about 0.8: this gate cannot be met.
GATE_FAILS = {"epochs": 1, "accuracy_threshold": 0.99}
GATE_PASSES = {"epochs": 3, "batch_size": 16, "accuracy_threshold": 0.5}


def _run_link(run_id: str) -> str:
    return f"{UI_BASE_URL}dags/{DAG_ID}/runs/{quote(run_id, safe='')}"


def _email_body(message) -> str:
    return message.get_body(preferencelist=("html",)).get_content()


def _evaluation(dag_run) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=DAG_ID, task_ids="evaluate", key="evaluation")
        ).all()
        return XComModel.deserialize_value(rows[0])


@pytest.mark.slow
@pytest.mark.e2e
def test_a_failed_gate_sends_one_email_and_one_webhook_call_with_the_numbers(pipeline_env, dag, alert_receivers):
    smtp, webhook = alert_receivers

    dag_run = dag.test(logical_date=datetime(2026, 11, 23, 2, 0, tzinfo=UTC), run_conf=GATE_FAILS)

    assert str(dag_run.state) == "failed"
    evaluation = _evaluation(dag_run)
    accuracy, threshold = f"{evaluation['accuracy']:.4f}", f"{GATE_FAILS['accuracy_threshold']:.4f}"
    link = _run_link(dag_run.run_id)
    # One alert for the run: the DAG's own failure callback stays quiet about a failed task.
    assert len(smtp.messages) == 1 and len(webhook.requests) == 1

    message = smtp.messages[0]
    assert smtp.recipients == [[ALERT_RECIPIENT]]
    assert message["Subject"] == (
        f"[{DAG_ID}] accuracy gate failed (accuracy {accuracy}, threshold {threshold}) in run {dag_run.run_id}"
    )
    body = _email_body(message)
    for expected in (DAG_ID, dag_run.run_id, "evaluate", accuracy, threshold, f'href="{link}"'):
        assert expected in body, expected

    request = webhook.requests[0]
    assert request["path"] == "/hooks/mnist"
    assert request["headers"]["Content-Type"] == "application/json"
    payload = webhook.payloads()[0]
    for expected in (DAG_ID, dag_run.run_id, "evaluate", accuracy, threshold, link):
        assert expected in payload["text"], expected
    assert payload["blocks"][0]["text"]["text"] == message["Subject"]
    assert payload["blocks"][-1]["text"]["text"] == f"<{link}|Open the run in the Airflow UI>"


@pytest.mark.slow
@pytest.mark.e2e
def test_a_passing_run_sends_nothing_unless_success_notifications_are_on(
    pipeline_env, dag, alert_receivers, monkeypatch
):
    smtp, webhook = alert_receivers
    logical_date = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)

    dag_run = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=GATE_PASSES)

    assert str(dag_run.state) == "success"
    assert smtp.messages == [] and webhook.requests == []

    # The next night's run with the switch on, forced to train (with nothing new it would end after
    # prepare): the same seed and data, so the same model, which ties the champion and is published.
    monkeypatch.setenv("MNIST_NOTIFY_ON_SUCCESS", "true")
    next_night = logical_date + timedelta(days=1)
    again = dag.test(logical_date=next_night, run_after=next_night, run_conf={**GATE_PASSES, "force": True})

    assert str(again.state) == "success"
    subject = f"[{DAG_ID}] run {again.run_id} succeeded"
    assert [m["Subject"] for m in smtp.messages] == [subject]
    assert [p["blocks"][0]["text"]["text"] for p in webhook.payloads()] == [subject]
    assert _run_link(again.run_id) in webhook.payloads()[0]["text"]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_failing_run_without_receivers_logs_a_clear_line(pipeline_env, dag, caplog):
    # A corrupted mirror file fails the run at its first task, before any training.
    labels = pipeline_env / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw), mtime=0))

    with caplog.at_level(logging.INFO, logger="mnist_airflow.alerting"):
        dag_run = dag.test(logical_date=datetime(2026, 11, 25, 2, 0, tzinfo=UTC), run_conf=GATE_PASSES)

    assert str(dag_run.state) == "failed"
    lines = [r.getMessage() for r in caplog.records if r.name == "mnist_airflow.alerting"]
    assert any(
        re.fullmatch(
            r"Alert not sent, no receiver configured \(connections 'mnist_alerts_smtp' and "
            rf"'mnist_alerts_webhook' do not exist\): \[{DAG_ID}\] task download failed in run .+",
            line,
        )
        for line in lines
    ), lines
    # The callback ran to its end rather than failing: nothing else was logged as an error.
    assert not [r for r in caplog.records if r.name == "mnist_airflow.alerting" and r.levelno >= logging.ERROR]


# --- callbacks dag.test() cannot trigger, called with the context Airflow passes ---


def test_a_run_that_times_out_alerts_with_the_reason(dag, alert_receivers):
    from mnist_airflow.alerting import alert_run_failure

    smtp, webhook = alert_receivers
    run_id = "scheduled__2026-11-26T02:00:00+00:00"

    # What the dag-processor passes when the scheduler fails a run past its dagrun_timeout.
    alert_run_failure({"dag": dag, "run_id": run_id, "reason": "timed_out"})

    subject = f"[{DAG_ID}] run {run_id} failed: the run exceeded its dagrun_timeout"
    assert [m["Subject"] for m in smtp.messages] == [subject]
    assert f'href="{_run_link(run_id)}"' in _email_body(smtp.messages[0])
    assert [p["blocks"][0]["text"]["text"] for p in webhook.payloads()] == [subject]


def test_the_run_failure_callback_leaves_task_failures_to_the_task_callback(dag, alert_receivers):
    from mnist_airflow.alerting import alert_run_failure

    smtp, webhook = alert_receivers

    alert_run_failure({"dag": dag, "run_id": "scheduled__2026-11-26T02:00:00+00:00", "reason": "task_failure"})

    assert smtp.messages == [] and webhook.requests == []


def _deadline_context(state: str) -> dict:
    """The context Deadline.handle_miss gives a deadline callback (Airflow 3.3)."""
    from airflow.api_fastapi.core_api.datamodels.dag_run import DAGRunResponse

    dag_run = {
        "dag_run_id": "scheduled__2026-11-27T02:00:00+00:00",
        "dag_id": DAG_ID,
        "state": state,
        "run_type": "scheduled",
        "queued_at": "2026-11-27T02:00:03Z",
        "start_date": "2026-11-27T02:00:05Z",
        "end_date": None,
    }
    # The callback reads the REST API's field names; a rename in Airflow fails here.
    assert dag_run.keys() <= DAGRunResponse.model_fields.keys()
    return {"dag_run": dag_run, "deadline": {"id": "0199", "deadline_time": "2026-11-27T04:00:03Z"}}


def test_a_run_past_its_deadline_alerts(alert_receivers):
    from mnist_airflow.alerting import alert_run_overdue

    smtp, webhook = alert_receivers
    run_id = "scheduled__2026-11-27T02:00:00+00:00"

    asyncio.run(alert_run_overdue(_deadline_context("running"), minutes=120))

    subject = f"[{DAG_ID}] run {run_id} has not finished after 120 minutes"
    assert [m["Subject"] for m in smtp.messages] == [subject]
    assert "120 minutes after the run was queued" in _email_body(smtp.messages[0])
    assert _run_link(run_id) in webhook.payloads()[0]["text"]


def test_a_deadline_passing_after_the_run_failed_sends_nothing(alert_receivers):
    from mnist_airflow.alerting import alert_run_overdue

    smtp, webhook = alert_receivers

    asyncio.run(alert_run_overdue(_deadline_context("failed"), minutes=120))

    assert smtp.messages == [] and webhook.requests == []


def test_a_broken_webhook_does_not_keep_the_email_back(dag, alert_receivers):
    from mnist_airflow.alerting import AlertDeliveryError, alert_run_failure

    smtp, webhook = alert_receivers
    webhook.status = 500

    with pytest.raises(AlertDeliveryError, match=r"webhook via mnist_alerts_webhook: .*500"):
        alert_run_failure({"dag": dag, "run_id": "scheduled__2026-11-28T02:00:00+00:00", "reason": "timed_out"})

    assert len(smtp.messages) == 1
    assert len(webhook.requests) == 1


def test_an_smtp_connection_without_recipients_is_reported_after_the_webhook(dag, alert_receivers, monkeypatch):
    from mnist_airflow.alerting import AlertDeliveryError, alert_run_failure

    smtp, webhook = alert_receivers
    monkeypatch.delenv("MNIST_ALERT_EMAIL_TO")

    with pytest.raises(AlertDeliveryError, match="MNIST_ALERT_EMAIL_TO names no recipient"):
        alert_run_failure({"dag": dag, "run_id": "scheduled__2026-11-28T02:00:00+00:00", "reason": "timed_out"})

    assert smtp.messages == []
    assert len(webhook.requests) == 1
