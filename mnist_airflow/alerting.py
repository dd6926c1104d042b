"""Alerts for mnist_retraining: the DAG's callbacks, sending through Airflow's notifiers.

The messages come from mnist_tasks.alerts; this module gathers the facts from a
callback's context and hands the message to the SMTP provider's SmtpNotifier
(connection MNIST_ALERT_SMTP_CONN_ID, default `mnist_alerts_smtp`, recipients
MNIST_ALERT_EMAIL_TO) and the HTTP provider's HttpNotifier, which posts a
Slack-compatible JSON payload (connection MNIST_ALERT_WEBHOOK_CONN_ID, default
`mnist_alerts_webhook`). Each receiver is on when its connection exists,
looked up when an alert is sent; with neither, the alert is logged instead.

| callback | when | fires in |
|---|---|---|
| alert_task_failure | a task failed after its retries (the gate's failure included) | the task's own process |
| alert_run_failure | the run failed without a failed task: timeout, deadlock | the dag-processor |
| alert_run_success | the run succeeded, if MNIST_NOTIFY_ON_SUCCESS is true | the dag-processor |
| alert_run_overdue | the run's deadline passed (an AsyncCallback) | the triggerer |

Why this file is in an installed package and not beside the DAG: every Airflow
process imports it, while the DAG folder is on sys.path only where DAG files are
parsed; the deadline callback is imported by its dotted path
(`mnist_airflow.alerting.alert_run_overdue`) in the triggerer. It imports no provider
at module level, so parsing the DAG that imports it stays light.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from mnist_tasks import alerts
from mnist_tasks.settings import Settings

if TYPE_CHECKING:
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

# Seconds the webhook may take unless its connection's extra sets "timeout":
# a callback that hangs would hold up the task's process or the dag-processor.
WEBHOOK_TIMEOUT = 30


class AlertDeliveryError(RuntimeError):
    """A configured receiver could not be reached or is configured wrongly."""


def alert_task_failure(context: dict[str, Any]) -> None:
    """on_failure_callback of every task: Airflow calls it once the last try has failed.

    A failed gate is a failed `evaluate` task; evaluate pushes its result as the
    XCom "evaluation" before failing, and that turns this into the gate's alert.
    """
    ti = context["ti"]
    exception = context.get("exception")
    alert = alerts.task_failure_alert(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        task_id=ti.task_id,
        try_number=ti.try_number,
        error="unknown error" if exception is None else f"{type(exception).__name__}: {exception}",
        url=_run_url(ti.dag_id, ti.run_id),
        evaluation=ti.xcom_pull(task_ids=ti.task_id, key="evaluation"),
    )
    send_alert(alert, context)


def alert_run_failure(context: dict[str, Any]) -> None:
    """The DAG's on_failure_callback: alerts only for failures no task has reported."""
    dag_id, run_id, reason = context["dag"].dag_id, context["run_id"], context.get("reason", "unknown")
    if reason == "task_failure":
        # alert_task_failure has sent this run's alert, with the task's details.
        log.info("Run %s of %s failed because a task failed; that task's alert covers it", run_id, dag_id)
        return
    send_alert(
        alerts.run_failure_alert(dag_id=dag_id, run_id=run_id, reason=reason, url=_run_url(dag_id, run_id)),
        context,
    )


def alert_run_success(context: dict[str, Any]) -> None:
    """The DAG's on_success_callback: silent unless MNIST_NOTIFY_ON_SUCCESS is true."""
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    if not Settings.from_env().notify_on_success:
        log.debug("Run %s of %s succeeded; success notifications are off", run_id, dag_id)
        return
    send_alert(alerts.success_alert(dag_id=dag_id, run_id=run_id, url=_run_url(dag_id, run_id)), context)


async def alert_run_overdue(context: dict[str, Any], minutes: int) -> None:
    """The deadline's callback, awaited in the triggerer. context["dag_run"] is the run as the REST API shows it.

    An AsyncCallback rather than a SyncCallback: Airflow 3.3 runs a SyncCallback in
    an executor's callback process, whose token may not read connections (the
    Execution API answers 403), while the triggerer may.
    The sending is the same blocking code as for the other alerts, so it runs in
    a thread, off the triggerer's event loop that every deferred task shares.
    """
    await asyncio.to_thread(_alert_run_overdue, context, minutes)


def _alert_run_overdue(context: dict[str, Any], minutes: int) -> None:
    # Airflow 3.3 drops a run's deadline when the run succeeds but not when it fails
    # (apache/airflow#60927), so a failed run would still get a late "not finished"
    # alert on top of its failure alert; only runs still queued or running alert.
    dag_run = context["dag_run"]
    dag_id, run_id, state = dag_run["dag_id"], dag_run["dag_run_id"], dag_run["state"]
    if state not in {"queued", "running"}:
        log.info("Deadline of run %s of %s passed, but the run has already ended (%s): no alert", run_id, dag_id, state)
        return
    send_alert(
        alerts.overdue_alert(
            dag_id=dag_id, run_id=run_id, minutes=minutes, state=state, url=_run_url(dag_id, run_id)
        ),
        context,
    )


def alert_drift(context: dict[str, Any], result: dict[str, Any]) -> None:
    """Alert with a batch run's figures when its low_confidence share is above the bound (result["drift"]).

    An alert that cannot be delivered is logged, not raised: the predictions are written,
    and the drift is a signal about the inputs, not the run's failure.
    """
    if not result["drift"]:
        return
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    alert = alerts.drift_alert(
        dag_id=dag_id,
        run_id=run_id,
        share=result["low_confidence_share"],
        bound=result["max_low_confidence_share"],
        images=result["images"],
        model_version=result["model_version"],
        review_uri=result["review_uri"],
        url=_run_url(dag_id, run_id),
    )
    try:
        send_alert(alert, context)
    except AlertDeliveryError as err:
        log.error("%s", err)


def send_alert(alert: dict[str, Any], context: dict[str, Any]) -> None:
    """Send the alert to every configured receiver; raise AlertDeliveryError naming each one that failed.

    One broken receiver does not keep the alert from the others.
    """
    settings = Settings.from_env()
    smtp = _connection(settings.alert_smtp_conn_id)
    webhook = _connection(settings.alert_webhook_conn_id)
    if smtp is None and webhook is None:
        log.warning(
            "Alert not sent, no receiver configured (connections %r and %r do not exist): %s",
            settings.alert_smtp_conn_id,
            settings.alert_webhook_conn_id,
            alert["subject"],
        )
        return
    notifiers, problems = [], []
    if smtp is not None:
        if settings.alert_email_to:
            notifiers.append(_email_notifier(alert, smtp, to=list(settings.alert_email_to)))
        else:
            problems.append(f"email via {smtp.conn_id}: MNIST_ALERT_EMAIL_TO names no recipient")
    if webhook is not None:
        notifiers.append(_webhook_notifier(alert, webhook))
    problems += _notify_each(notifiers, alert=alert, context=context)
    if problems:
        raise AlertDeliveryError(f"alert {alert['subject']!r} not delivered: " + "; ".join(problems))


def _email_notifier(alert: dict[str, Any], smtp: Connection, *, to: list[str]) -> tuple[str, Any]:
    """("email via <conn id>", SmtpNotifier) for the alert's subject and HTML."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(
        smtp_conn_id=smtp.conn_id,
        # Given rather than left to the notifier, which would render it as a
        # template with the context's DAG; dag.test() passes one that cannot.
        from_email=smtp.extra_dejson.get("from_email"),
        to=to,
        subject=alert["subject"],
        html_content=alert["html"],
    )
    return f"email via {smtp.conn_id}", notifier


def _webhook_notifier(alert: dict[str, Any], webhook: Connection) -> tuple[str, Any]:
    """("webhook via <conn id>", HttpNotifier) posting the alert's Slack-compatible payload."""
    from airflow.providers.http.notifications.http import HttpNotifier

    notifier = HttpNotifier(
        http_conn_id=webhook.conn_id,
        json=alert["slack"],
        extra_options={"timeout": webhook.extra_dejson.get("timeout", WEBHOOK_TIMEOUT)},
    )
    return f"webhook via {webhook.conn_id}", notifier


def _notify_each(notifiers: list[tuple[str, Any]], *, alert: dict[str, Any], context: dict[str, Any]) -> list[str]:
    """Give every notifier its turn; return what went wrong with each that failed."""
    problems = []
    for name, notifier in notifiers:
        try:
            # notify() rather than notifier(context): calling a notifier renders its
            # fields as Jinja templates, and the message carries exception text.
            notifier.notify(context)
        except Exception as err:  # reported by send_alert, after the other receivers had their turn
            problems.append(f"{name}: {type(err).__name__}: {err}")
        else:
            log.info("Alert sent by %s: %s", name, alert["subject"])
    return problems


def _connection(conn_id: str) -> Connection | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def _run_url(dag_id: str, run_id: str) -> str:
    from airflow.sdk.configuration import conf

    # The same base the task runner uses for its log links.
    base_url = conf.get("api", "base_url", fallback="http://localhost:8080/")
    return alerts.run_url(base_url=base_url, dag_id=dag_id, run_id=run_id)
