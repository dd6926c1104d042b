"""What an alert says: a subject, plain text, HTML for email and a Slack-compatible payload.

Formatting only. The Airflow side (mnist_airflow/alerting.py) gathers the facts
from a callback's context and sends the result through Airflow's notifiers.
Every alert names the DAG and the run and links to the run's page in the UI.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

# Slack rejects a header longer than 150 characters and a section text longer
# than 3000; an exception message can be any length.
SLACK_HEADER_LIMIT = 150
SLACK_SECTION_LIMIT = 3000
ERROR_LIMIT = 1500

# DagRun failure reasons Airflow reports to a DAG's on_failure_callback.
_RUN_FAILURE_REASONS = {
    "timed_out": "the run exceeded its dagrun_timeout",
    "all_tasks_deadlocked": "no task could run (deadlock)",
}


def run_url(*, base_url: str, dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow 3 UI; run ids hold ':' and '+', so both parts are quoted."""
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def task_failure_alert(
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    try_number: int,
    error: str,
    url: str,
    evaluation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A task failed for good (after its retries).

    evaluation is evaluate's result dict when the accuracy gate failed the task:
    "accuracy", "threshold", "message" and, when a champion was compared,
    "champion_accuracy", "champion_version" and "max_regression".
    """
    facts = [("DAG", dag_id), ("Run", run_id), ("Task", f"{task_id} (failed on try {try_number})")]
    if evaluation is None:
        subject = f"[{dag_id}] task {task_id} failed in run {run_id}"
        facts.append(("Error", _clip(error, ERROR_LIMIT)))
    else:
        numbers = [f"accuracy {evaluation['accuracy']:.4f}", f"threshold {evaluation['threshold']:.4f}"]
        if evaluation.get("champion_accuracy") is not None:
            numbers.append(f"champion {evaluation['champion_accuracy']:.4f}")
        subject = f"[{dag_id}] accuracy gate failed ({', '.join(numbers)}) in run {run_id}"
        facts += _gate_facts(evaluation)
    return _alert(subject=subject, facts=facts, url=url)


def run_failure_alert(*, dag_id: str, run_id: str, reason: str, url: str) -> dict[str, Any]:
    """The run failed without a task failing (a timeout, a deadlock)."""
    why = _RUN_FAILURE_REASONS.get(reason, reason)
    return _alert(
        subject=f"[{dag_id}] run {run_id} failed: {why}",
        facts=[("DAG", dag_id), ("Run", run_id), ("Reason", why)],
        url=url,
    )


def overdue_alert(*, dag_id: str, run_id: str, minutes: int, state: str, url: str) -> dict[str, Any]:
    """The run has not finished `minutes` after it was queued."""
    return _alert(
        subject=f"[{dag_id}] run {run_id} has not finished after {minutes} minutes",
        facts=[
            ("DAG", dag_id),
            ("Run", run_id),
            ("State", state),
            ("Deadline", f"{minutes} minutes after the run was queued"),
        ],
        url=url,
    )


def drift_alert(
    *, dag_id: str, run_id: str, share: float, bound: float, images: int, model_version: int | None,
    review_uri: str, url: str,
) -> dict[str, Any]:
    """A batch run's share of low_confidence images is above its bound: the inputs moved away from the model."""
    return _alert(
        subject=f"[{dag_id}] {share:.1%} of the images were low confidence (bound {bound:.1%}) in run {run_id}",
        facts=[
            ("DAG", dag_id),
            ("Run", run_id),
            ("Low-confidence share", f"{share:.4f} of {images} images scored"),
            ("Bound", f"{bound:.4f} (max_low_confidence_share)"),
            ("Model version", str(model_version)),
            ("Review", f"{review_uri} (the unsure images, each with the model's top 3)"),
            ("Meaning", "the inputs moved away from what the model knows; the run itself succeeded"),
        ],
        url=url,
    )


def success_alert(*, dag_id: str, run_id: str, url: str) -> dict[str, Any]:
    """The run succeeded (sent only when success notifications are switched on)."""
    return _alert(subject=f"[{dag_id}] run {run_id} succeeded", facts=[("DAG", dag_id), ("Run", run_id)], url=url)


def _gate_facts(evaluation: dict[str, Any]) -> list[tuple[str, str]]:
    accuracy, threshold = evaluation["accuracy"], evaluation["threshold"]
    relation = "below" if accuracy < threshold else "meets"
    facts = [
        ("Test accuracy", f"{accuracy:.4f}"),
        ("Threshold", f"{threshold:.4f} (the accuracy {relation} it)"),
    ]
    champion_accuracy = evaluation.get("champion_accuracy")
    if champion_accuracy is not None:
        allowed = evaluation.get("max_regression")
        tolerance = "" if allowed is None else f", at most {allowed:.4f} below it allowed"
        facts.append(
            (
                "Champion",
                f"version {evaluation.get('champion_version')}, accuracy {champion_accuracy:.4f} "
                f"(difference {accuracy - champion_accuracy:+.4f}{tolerance})",
            )
        )
    if evaluation.get("message"):
        facts.append(("Gate", evaluation["message"]))
    return facts


def _alert(*, subject: str, facts: list[tuple[str, str]], url: str) -> dict[str, Any]:
    """{"subject", "text", "html", "slack"}: the same facts for each receiver."""
    lines = (f"{label}: {value}" for label, value in facts)
    text = "\n".join([subject, "", *lines, "", f"Run in the Airflow UI: {url}"])
    rows = "".join(
        f'<tr><th align="left" valign="top">{html.escape(label)}</th><td>{html.escape(value)}</td></tr>'
        for label, value in facts
    )
    href = html.escape(url)
    body = (
        f"<h3>{html.escape(subject)}</h3><table>{rows}</table>"
        f'<p><a href="{href}">Open the run in the Airflow UI</a><br>{href}</p>'
    )
    details = "\n".join(f"*{_slack_escape(label)}:* {_slack_escape(value)}" for label, value in facts)
    slack = {
        # The notification and the whole message for receivers that ignore blocks.
        "text": _slack_escape(text),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(subject, SLACK_HEADER_LIMIT)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(details, SLACK_SECTION_LIMIT)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"<{url}|Open the run in the Airflow UI>"}},
        ],
    }
    return {"subject": subject, "text": text, "html": body, "slack": slack}


def _slack_escape(value: str) -> str:
    # The three characters Slack's mrkdwn reserves for links and mentions.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"
