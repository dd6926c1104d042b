"""Deployment settings read from the environment: the alert settings."""

from __future__ import annotations

import re

import pytest

from mnist_tasks.settings import Settings, SettingsError


def test_alert_defaults():
    settings = Settings.from_env({})
    assert settings.alert_smtp_conn_id == "mnist_alerts_smtp"
    assert settings.alert_webhook_conn_id == "mnist_alerts_webhook"
    assert settings.alert_email_to == ()
    assert settings.notify_on_success is False
    assert settings.run_deadline_minutes == 120


def test_alert_settings_from_the_environment():
    settings = Settings.from_env(
        {
            "MNIST_ALERT_SMTP_CONN_ID": "smtp_ops",
            "MNIST_ALERT_WEBHOOK_CONN_ID": "slack_ml",
            "MNIST_ALERT_EMAIL_TO": "a@example.org, b@example.org c@example.org",
            "MNIST_NOTIFY_ON_SUCCESS": "True",
            "MNIST_RUN_DEADLINE_MINUTES": "45",
        }
    )
    assert settings.alert_smtp_conn_id == "smtp_ops"
    assert settings.alert_webhook_conn_id == "slack_ml"
    assert settings.alert_email_to == ("a@example.org", "b@example.org", "c@example.org")
    assert settings.notify_on_success is True
    assert settings.run_deadline_minutes == 45


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("on", True), ("0", False), ("false", False), ("", False)]
)
def test_notify_on_success_reads_the_usual_spellings(value, expected):
    assert Settings.from_env({"MNIST_NOTIFY_ON_SUCCESS": value}).notify_on_success is expected


def test_a_misspelt_switch_is_refused_rather_than_read_as_off():
    with pytest.raises(SettingsError, match=r"MNIST_NOTIFY_ON_SUCCESS must be true or false, got 'ture'"):
        Settings.from_env({"MNIST_NOTIFY_ON_SUCCESS": "ture"})


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "two hours"])
def test_a_deadline_must_be_a_positive_number_of_minutes(value):
    message = rf"MNIST_RUN_DEADLINE_MINUTES must be a whole number greater than 0, got '{re.escape(value)}'"
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"MNIST_RUN_DEADLINE_MINUTES": value})


def test_cluster_settings_defaults_and_environment():
    default = Settings.from_env({})
    assert (default.artifacts_uri, default.training_queue, default.retry_delay_seconds) == (
        "s3://mnist-artifacts/",
        "default",
        300,
    )
    custom = Settings.from_env(
        {"MNIST_ARTIFACTS_URI": "file:///srv/mnist/", "MNIST_TRAINING_QUEUE": "gpu", "MNIST_RETRY_DELAY_SECONDS": "15"}
    )
    assert (custom.artifacts_uri, custom.training_queue, custom.retry_delay_seconds) == (
        "file:///srv/mnist/",
        "gpu",
        15,
    )
    with pytest.raises(SettingsError, match="MNIST_RETRY_DELAY_SECONDS must be a whole number greater than 0"):
        Settings.from_env({"MNIST_RETRY_DELAY_SECONDS": "0"})


def test_tensorflow_tasks_retry_sooner_unless_told_otherwise():
    assert Settings.from_env({}).training_retry_delay_seconds == 15
    assert Settings.from_env({"MNIST_TRAINING_RETRY_DELAY_SECONDS": "120"}).training_retry_delay_seconds == 120
    with pytest.raises(SettingsError, match="MNIST_TRAINING_RETRY_DELAY_SECONDS must be a whole number greater than 0"):
        Settings.from_env({"MNIST_TRAINING_RETRY_DELAY_SECONDS": "-1"})


def test_batch_shards_go_to_the_training_queue_unless_they_have_a_queue_of_their_own():
    assert (Settings.from_env({}).scoring_queue, Settings.from_env({"MNIST_TRAINING_QUEUE": "gpu"}).scoring_queue) == (
        "default",
        "gpu",
    )
    both = Settings.from_env({"MNIST_TRAINING_QUEUE": "gpu", "MNIST_SCORING_QUEUE": " scoring "})
    assert (both.training_queue, both.scoring_queue) == ("gpu", "scoring")
