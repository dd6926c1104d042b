"""`mnist_batch_predict` parses, runs on the published-model Asset or daily, and is bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest

DAG_ID = "mnist_batch_predict"


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_dag_parses_without_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dag_ids


def test_runs_when_a_model_is_published_or_daily_at_six(dag, dagbag):
    from airflow.sdk import Asset, AssetOrTimeSchedule

    from mnist_airflow.schedules import PastCronTimetable

    schedule = dag.timetable
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert isinstance(schedule.timetable, PastCronTimetable)
    assert schedule.timetable.serialize()["expression"] == "0 6 * * *"
    assert schedule.timetable.serialize()["timezone"] == "UTC"
    # The very Asset that mnist_retraining's publish task updates.
    [published] = dagbag.dags["mnist_retraining"].get_task("publish").outlets
    assert isinstance(schedule.asset_condition, Asset)
    assert schedule.asset_condition == published
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.dagrun_timeout == timedelta(hours=2)
    assert "MNIST batch predictions" in dag.doc_md
    assert {"mnist", "predictions"} <= set(dag.tags)


@pytest.mark.parametrize("models_uri", ["s3://models/mnist/", "s3://models/a/b", "s3://models", "s3://models/"])
def test_the_asset_uri_is_where_publish_writes_the_latest_pointer(models_uri):
    from mnist_tasks.registry import LATEST_FILE
    from mnist_tasks.s3 import split_s3_dir
    from mnist_tasks.settings import Settings

    settings = Settings.from_env({"MNIST_MODELS_URI": models_uri})
    bucket, prefix = split_s3_dir(models_uri)
    assert settings.published_model_uri == f"s3://{bucket}/{prefix}{LATEST_FILE}"


def test_list_then_score_each_shard_then_combine_each_task_with_retries_timeout_and_owner(dag):
    edges = {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}
    assert edges == {("list_images", "score"), ("list_images", "combine"), ("score", "combine")}
    assert type(dag.get_task("score")).__name__ == "DecoratedMappedOperator"  # one task per shard
    for t in dag.tasks:
        assert t.retries >= 1
        assert t.retry_delay > timedelta(0)
        assert t.execution_timeout is not None and t.execution_timeout > timedelta(0)
        assert t.owner == "ml-platform"


def test_params_have_descriptions_and_defaults(dag):
    assert {name: dag.params[name] for name in dag.params} == {
        "input_uri": "s3://mnist-inbox/images/",
        "max_images": 10_000,
        "min_confidence": 0.5,
        "shard_size": 10_000,
        "max_low_confidence_share": 0.2,
    }
    for name, param in dag.params.items():
        assert param.description, name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("input_uri", "/local/dir"),
        ("input_uri", "s3://"),
        ("max_images", 0),
        ("max_images", 1.5),
        ("min_confidence", -0.1),
        ("min_confidence", 1.1),
        ("shard_size", 0),
        ("shard_size", 100_001),
        ("max_low_confidence_share", 1.5),
    ],
)
def test_params_reject_out_of_range_values(dag, name, value):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.params.get_param(name).resolve(value)


@pytest.mark.parametrize(
    ("name", "value"), [("input_uri", "s3://bucket/"), ("input_uri", "s3://bucket/a/b/"), ("max_images", 1)]
)
def test_params_accept_valid_values(dag, name, value):
    assert dag.params.get_param(name).resolve(value) == value
