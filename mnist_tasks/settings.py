"""Deployment settings, read once from the environment.

Everything that differs between a laptop, CI and production lives here; the
training hyperparameters do not (they are DAG Params, chosen per run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mnist_tasks.errors import PermanentError

# Tried in order; both serve the canonical gzip files.
PUBLIC_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    """This worker's own cache: raw downloads, prepared arrays and run outputs fetched from the
    artifact store (each checked against its sha256 before use). Never shared between workers."""
    artifacts_uri: str
    """The artifact store (s3://bucket/prefix/, or file:///dir/ on one machine): the only thing tasks
    share. Each task leaves its outputs there and hands the next one their URIs and checksums."""
    mirrors: tuple[str, ...]
    """MNIST mirrors (https://, s3://bucket/prefix/ or file://), tried in order."""
    models_uri: str
    """Where models are published: s3://bucket/prefix/."""
    aws_conn_id: str
    """Airflow connection that carries the S3 endpoint, region and credentials."""
    predict_input_uri: str
    """Where the batch-prediction DAG finds images to score: s3://bucket/prefix/."""
    predictions_uri: str
    """Where it writes predictions, one s3://…/<run>/ directory per run."""
    review_uri: str
    """Where it copies the images it was unsure of, for people to label, one s3://…/<run>/ directory per run."""
    labeled_uri: str
    """The users' labelled digits, s3://bucket/prefix/ with one folder per digit (`<digit>/<image>`): the
    review page files labelled images here, and each retraining run trains and gates on them too."""
    review_log_uri: str
    """Where the review page records each action (who, when, which image, which label), one JSON object each."""
    alert_smtp_conn_id: str
    """SMTP connection for alert emails; without such a connection no email is sent."""
    alert_webhook_conn_id: str
    """HTTP connection of the alert webhook (Slack-compatible JSON); without it no webhook call."""
    alert_email_to: tuple[str, ...]
    """Who receives alert emails."""
    notify_on_success: bool
    """Also send a message when a run succeeds (failures always alert)."""
    run_deadline_minutes: int
    """A run that has not finished this many minutes after it was queued raises an alert."""
    training_queue: str
    """Celery queue of the TensorFlow tasks (train, evaluate, and by default batch predictions'
    shards); the light tasks stay on `default`. The default is `default` too, so a cluster with
    one queue runs everything."""
    scoring_queue: str
    """Celery queue of batch predictions' shards (`score`, one task per shard). They need
    TensorFlow like training but scale out: a deployment gives this queue to every worker with
    cores to spare, and keeps `training` on its training machines. Default: the training queue."""
    retry_delay_seconds: int
    """Wait before a failed task's first retry (it doubles for each later one)."""
    training_retry_delay_seconds: int
    """The same for the TensorFlow tasks (the training and scoring queues'). What fails them
    and a retry can mend is nearly always their worker lost, whose task the scheduler has
    already waited out (its heartbeat timeout): waiting minutes more only delays the run."""

    @property
    def published_model_uri(self) -> str:
        """URI (and name) of the Airflow Asset a publish updates: the registry's `latest.json` pointer.

        Spelled out here (registry.LATEST_FILE) so DAG files can declare the Asset
        without importing the registry and its S3 client library at parse time.
        """
        return self.models_uri.rstrip("/") + "/latest.json"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        mirrors = tuple(env.get("MNIST_MIRRORS", "").replace(",", " ").split()) or PUBLIC_MIRRORS
        return cls(
            data_dir=Path(env.get("MNIST_DATA_DIR") or Path.home() / ".cache" / "mnist-retraining"),
            artifacts_uri=env.get("MNIST_ARTIFACTS_URI", "s3://mnist-artifacts/"),
            mirrors=mirrors,
            models_uri=env.get("MNIST_MODELS_URI", "s3://mnist-models/mnist/"),
            aws_conn_id=env.get("MNIST_AWS_CONN_ID", "aws_default"),
            predict_input_uri=env.get("MNIST_PREDICT_INPUT_URI", "s3://mnist-inbox/images/"),
            predictions_uri=env.get("MNIST_PREDICTIONS_URI", "s3://mnist-predictions/predictions/"),
            review_uri=env.get("MNIST_REVIEW_URI", "s3://mnist-inbox/review/"),
            labeled_uri=env.get("MNIST_LABELED_URI", "s3://mnist-inbox/labeled/"),
            review_log_uri=env.get("MNIST_REVIEW_LOG_URI", "s3://mnist-inbox/review-log/"),
            alert_smtp_conn_id=env.get("MNIST_ALERT_SMTP_CONN_ID", "mnist_alerts_smtp"),
            alert_webhook_conn_id=env.get("MNIST_ALERT_WEBHOOK_CONN_ID", "mnist_alerts_webhook"),
            alert_email_to=tuple(env.get("MNIST_ALERT_EMAIL_TO", "").replace(",", " ").split()),
            notify_on_success=_flag(env, "MNIST_NOTIFY_ON_SUCCESS"),
            # Below the DAG's 3-hour dagrun_timeout: the alert warns while the run can still finish.
            run_deadline_minutes=_positive_int(env, "MNIST_RUN_DEADLINE_MINUTES", 120),
            training_queue=(training_queue := env.get("MNIST_TRAINING_QUEUE", "").strip() or "default"),
            scoring_queue=env.get("MNIST_SCORING_QUEUE", "").strip() or training_queue,
            retry_delay_seconds=_positive_int(env, "MNIST_RETRY_DELAY_SECONDS", 300),
            training_retry_delay_seconds=_positive_int(env, "MNIST_TRAINING_RETRY_DELAY_SECONDS", 15),
        )


class SettingsError(PermanentError, ValueError):
    """An environment variable holds a value the setting cannot take."""


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in {"", "0", "false", "no", "off"}:
        return False
    if value in {"1", "true", "yes", "on"}:
        return True
    raise SettingsError(f"{name} must be true or false, got {env[name]!r}")


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) == 0:
        raise SettingsError(f"{name} must be a whole number greater than 0, got {raw!r}")
    return int(raw)
