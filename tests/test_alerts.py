"""What the alerts say, for each receiver (tests/e2e/test_alerts.py sends them)."""

from __future__ import annotations

import html

import pytest

from mnist_tasks import alerts

DAG_ID = "mnist_retraining"
RUN_ID = "scheduled__2026-11-23T02:00:00+00:00"
URL = "http://127.0.0.1:8080/dags/mnist_retraining/runs/scheduled__2026-11-23T02%3A00%3A00%2B00%3A00"
GATE_FAILED = {
    "accuracy": 0.90123,
    "threshold": 0.93,
    "passed": False,
    "message": "accuracy gate failed: test accuracy 0.9012 is below the threshold 0.9300",
}
BELOW_CHAMPION = {
    "accuracy": 0.9512,
    "threshold": 0.93,
    "max_regression": 0.005,
    "champion_version": 20261122020000,
    "champion_accuracy": 0.9731,
    "passed": False,
    "message": "accuracy gate failed: test accuracy 0.9512 is more than 0.0050 below the champion's 0.9731",
}


def _gate_alert(evaluation: dict) -> dict:
    return alerts.task_failure_alert(
        dag_id=DAG_ID,
        run_id=RUN_ID,
        task_id="evaluate",
        try_number=1,
        error=f"AirflowFailException: {evaluation['message']}",
        url=URL,
        evaluation=evaluation,
    )


def test_run_url_is_the_airflow_3_run_page_with_the_run_id_quoted():
    url = alerts.run_url(base_url="http://127.0.0.1:8080/", dag_id=DAG_ID, run_id=RUN_ID)
    assert url == URL
    assert alerts.run_url(base_url="https://airflow.example.org/prefix", dag_id="d", run_id="a/b c") == (
        "https://airflow.example.org/prefix/dags/d/runs/a%2Fb%20c"
    )


def test_a_failed_gate_names_the_accuracy_and_the_threshold():
    alert = _gate_alert(GATE_FAILED)

    assert alert["subject"] == f"[{DAG_ID}] accuracy gate failed (accuracy 0.9012, threshold 0.9300) in run {RUN_ID}"
    assert "Task: evaluate (failed on try 1)" in alert["text"]
    assert "Test accuracy: 0.9012" in alert["text"]
    assert "Threshold: 0.9300 (the accuracy below it)" in alert["text"]
    assert f"Gate: {GATE_FAILED['message']}" in alert["text"]
    assert "Champion" not in alert["text"]
    # The gate's numbers say it all; the exception repeats the gate's message.
    assert "Error" not in alert["text"]


def test_a_failed_gate_against_a_champion_names_the_champion():
    alert = _gate_alert(BELOW_CHAMPION)

    assert alert["subject"] == (
        f"[{DAG_ID}] accuracy gate failed (accuracy 0.9512, threshold 0.9300, champion 0.9731) in run {RUN_ID}"
    )
    assert "Threshold: 0.9300 (the accuracy meets it)" in alert["text"]
    assert (
        "Champion: version 20261122020000, accuracy 0.9731 (difference -0.0219, at most 0.0050 below it allowed)"
        in alert["text"]
    )


def test_a_gate_result_with_no_champion_fields_is_a_gate_without_champion():
    # The champion's fields are None before the first publish, and absent from older results.
    with_none = _gate_alert({**GATE_FAILED, "champion_version": None, "champion_accuracy": None})
    assert with_none == _gate_alert(GATE_FAILED)


def test_another_task_failure_carries_the_error_clipped():
    error = "DataIntegrityError: " + "x" * 5000
    alert = alerts.task_failure_alert(
        dag_id=DAG_ID, run_id=RUN_ID, task_id="download", try_number=3, error=error, url=URL
    )

    assert alert["subject"] == f"[{DAG_ID}] task download failed in run {RUN_ID}"
    assert "Task: download (failed on try 3)" in alert["text"]
    error_line = next(line for line in alert["text"].splitlines() if line.startswith("Error: "))
    assert error_line == "Error: " + error[: alerts.ERROR_LIMIT - 1] + "…"


@pytest.mark.parametrize(
    ("reason", "why"),
    [
        ("timed_out", "the run exceeded its dagrun_timeout"),
        ("all_tasks_deadlocked", "no task could run (deadlock)"),
        ("something_new", "something_new"),
    ],
)
def test_a_run_failure_names_its_reason(reason, why):
    alert = alerts.run_failure_alert(dag_id=DAG_ID, run_id=RUN_ID, reason=reason, url=URL)
    assert alert["subject"] == f"[{DAG_ID}] run {RUN_ID} failed: {why}"
    assert f"Reason: {why}" in alert["text"]


def test_an_overdue_run_names_the_deadline_and_its_state():
    alert = alerts.overdue_alert(dag_id=DAG_ID, run_id=RUN_ID, minutes=120, state="running", url=URL)
    assert alert["subject"] == f"[{DAG_ID}] run {RUN_ID} has not finished after 120 minutes"
    assert "State: running" in alert["text"]
    assert "Deadline: 120 minutes after the run was queued" in alert["text"]


def test_a_success_names_the_run():
    alert = alerts.success_alert(dag_id=DAG_ID, run_id=RUN_ID, url=URL)
    assert alert["subject"] == f"[{DAG_ID}] run {RUN_ID} succeeded"


@pytest.mark.parametrize(
    "alert",
    [
        _gate_alert(BELOW_CHAMPION),
        alerts.overdue_alert(dag_id=DAG_ID, run_id=RUN_ID, minutes=120, state="queued", url=URL),
        alerts.success_alert(dag_id=DAG_ID, run_id=RUN_ID, url=URL),
    ],
)
def test_email_and_webhook_carry_the_same_facts_and_the_link(alert):
    facts = [line for line in alert["text"].splitlines()[2:] if ": " in line and not line.startswith("Run in")]
    assert facts, alert["text"]
    assert alert["text"].splitlines()[0] == alert["subject"]
    assert alert["text"].endswith(f"Run in the Airflow UI: {URL}")
    slack = alert["slack"]
    assert slack["text"] == alert["text"]  # nothing in these needs escaping for Slack
    assert slack["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "text": alert["subject"]}}
    assert slack["blocks"][-1]["text"]["text"] == f"<{URL}|Open the run in the Airflow UI>"
    for line in facts:
        label, value = line.split(": ", 1)
        assert f"<th align=\"left\" valign=\"top\">{label}</th><td>{html.escape(value)}</td>" in alert["html"]
        assert f"*{label}:* {value}" in slack["blocks"][1]["text"]["text"]
    assert f'<a href="{URL}">' in alert["html"]


def test_markup_in_an_error_is_escaped_for_html_and_slack():
    error = "ValueError: <b>bad</b> & <!channel>"
    alert = alerts.task_failure_alert(
        dag_id=DAG_ID, run_id=RUN_ID, task_id="train", try_number=1, error=error, url=URL
    )

    assert "&lt;b&gt;bad&lt;/b&gt; &amp; &lt;!channel&gt;" in alert["html"]
    assert "<b>" not in alert["html"]
    assert "&lt;!channel&gt;" in alert["slack"]["text"]
    assert "<!channel>" not in alert["slack"]["text"]
    assert "&lt;!channel&gt;" in alert["slack"]["blocks"][1]["text"]["text"]
    assert error in alert["text"]  # the plain text stays as it was


def test_slack_limits_are_respected():
    long_run_id = "manual__" + "r" * 400
    alert = alerts.task_failure_alert(
        dag_id=DAG_ID, run_id=long_run_id, task_id="train", try_number=1, error="E" * 10_000, url=URL
    )

    header = alert["slack"]["blocks"][0]["text"]["text"]
    assert len(header) == alerts.SLACK_HEADER_LIMIT and header.endswith("…")
    assert len(alert["slack"]["blocks"][1]["text"]["text"]) <= alerts.SLACK_SECTION_LIMIT
    assert alert["subject"].endswith(long_run_id)  # the email keeps the whole subject
