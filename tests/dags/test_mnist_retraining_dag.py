"""The DAG folder parses cleanly and `mnist_retraining` is wired exactly as intended."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.conftest import REPO

DAG_ID = "mnist_retraining"


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_dag_folder_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dag_ids


def test_task_graph_is_exactly_the_pipeline(dag):
    edges = {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}
    assert edges == {
        ("download", "prepare"),
        ("prepare", "anything_new"),
        ("anything_new", "train"),
        ("prepare", "train"),
        ("prepare", "evaluate"),
        ("train", "evaluate"),
        ("download", "publish"),
        ("prepare", "publish"),  # the data's identity and the labelled set's summary, for the manifest
        ("train", "publish"),
        ("evaluate", "publish"),
        ("anything_new", "publish"),  # the run's training identity, for the manifest
    }
    assert {t.task_id for t in dag.tasks} == {"download", "prepare", "anything_new", "train", "evaluate", "publish"}


def test_schedule_and_run_limits(dag):
    assert dag.timetable.serialize()["expression"] == "0 2 * * *"
    assert str(dag.timezone) == "UTC"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.dagrun_timeout == timedelta(hours=3)
    assert "Nightly MNIST retraining" in dag.doc_md
    assert {"mnist", "retraining"} <= set(dag.tags)


@pytest.mark.parametrize("dag_id", [DAG_ID, "mnist_batch_predict"])
def test_a_manual_run_with_a_future_logical_date_is_refused_by_the_serialized_dag(dagbag, dag_id):
    """As the scheduler and the API server load it: a run dated ahead would hold every later run (issue 19, case 8)."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization

    from mnist_airflow.schedules import CLOCK_SKEW

    served = DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dagbag.dags[dag_id]))))
    now = pendulum.now("UTC")
    for allowed in (now - timedelta(days=365), now, now + CLOCK_SKEW - timedelta(seconds=30)):
        assert served.timetable.infer_manual_data_interval(run_after=allowed).end == allowed
    with pytest.raises(ValueError, match=r"^logical date 2099-01-01T00:00:00\+00:00 is in the future"):
        served.timetable.infer_manual_data_interval(run_after=pendulum.datetime(2099, 1, 1, tz="UTC"))


def test_every_task_has_retries_timeout_and_owner(dag):
    for t in dag.tasks:
        assert t.retries >= 1, t.task_id
        assert t.retry_delay > timedelta(0), t.task_id
        assert t.execution_timeout is not None and t.execution_timeout > timedelta(0), t.task_id
        assert t.owner == "ml-platform", t.task_id


def test_publish_declares_the_model_asset(dag):
    outlets = dag.get_task("publish").outlets
    assert [o.name for o in outlets] == [outlets[0].uri]  # named by its URI: see wiring.published_model_asset
    assert outlets[0].uri.endswith("/latest.json")


def test_params_have_descriptions_and_defaults(dag):
    defaults = {name: dag.params[name] for name in dag.params}
    assert defaults == {
        "architecture": "dense",
        "augment": "auto",
        "epochs": 4,
        "batch_size": 256,
        "learning_rate": 0.01,
        "lr_schedule": "cosine",
        "adam_beta_2": 0.95,
        "hidden_units": 128,
        "labeled_weight": 10,
        "seed": 42,
        "accuracy_threshold": 0.93,
        "max_regression": 0.005,
        "labeled_accuracy_threshold": 0.8,
        "labeled_max_regression": 0.02,
        "labeled_min_test_images": 50,
        "force": False,
    }
    for name, param in dag.params.items():
        assert param.description, name
        assert param.schema.get("type") in {"integer", "number", "string", "boolean"}, name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", 0),
        ("epochs", 101),
        ("epochs", 2.5),
        ("batch_size", 0),
        ("learning_rate", 0),
        ("learning_rate", 1.5),
        ("hidden_units", 0),
        ("seed", -1),
        ("accuracy_threshold", 1.01),
        ("accuracy_threshold", -0.1),
        ("accuracy_threshold", "high"),
        ("max_regression", -0.001),
        ("max_regression", 1.5),
        ("lr_schedule", "linear"),
        ("adam_beta_2", 1.0),
        ("adam_beta_2", -0.1),
        ("architecture", "resnet"),
        ("architecture", "CNN"),
        ("augment", True),
        ("augment", "yes"),
    ],
)
def test_params_reject_out_of_range_values(dag, name, value):
    from airflow.sdk.definitions.param import ParamValidationError

    param = dag.params.get_param(name)
    with pytest.raises(ParamValidationError):
        param.resolve(value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", 1),
        ("epochs", 100),
        ("accuracy_threshold", 0.0),
        ("max_regression", 0.0),
        ("architecture", "cnn"),
        ("augment", "off"),
        ("augment", "on"),
    ],
)
def test_params_accept_in_range_values(dag, name, value):
    assert dag.params.get_param(name).resolve(value) == value


def test_parsing_the_dag_folder_imports_no_heavy_library():
    # A fresh interpreter, as the dag-processor has: what the DAG file imports at
    # parse time shows up in sys.modules. (boto3 is not on the list: the Amazon
    # provider loads it to normalise the s3:// URI of the published-model Asset.)
    code = (
        "import json, sys, time\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "t = time.perf_counter()\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'numpy', 'matplotlib', 'PIL') if m in sys.modules)\n"
        "print(json.dumps({'errors': list(bag.import_errors), 'heavy': heavy, 'dags': bag.dag_ids}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == []
    # Every DAG in the folder, the batch-prediction DAG included.
    assert {DAG_ID, "mnist_batch_predict"} <= set(result["dags"])
    assert result["heavy"] == []


def _parse_in_a_fresh_interpreter(env: dict[str, str]) -> dict:
    """Each task's queue and retry delay, as a dag-processor with this environment parses them."""
    import os

    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "print(json.dumps({d.dag_id: {t.task_id: [t.queue, t.retry_delay.total_seconds()] for t in d.tasks}"
        " for d in bag.dags.values()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tensorflow_tasks_run_on_the_training_queue_and_light_tasks_on_default():
    delays = {"MNIST_RETRY_DELAY_SECONDS": "7", "MNIST_TRAINING_RETRY_DELAY_SECONDS": "3"}
    tasks = _parse_in_a_fresh_interpreter({"MNIST_TRAINING_QUEUE": "training", **delays})
    queues = {task: queue for task, (queue, _) in tasks[DAG_ID].items()}
    assert queues == {
        "download": "default",
        "prepare": "default",
        "anything_new": "training",
        "train": "training",
        "evaluate": "training",
        "publish": "default",
    }
    assert {task: queue for task, (queue, _) in tasks["mnist_batch_predict"].items()} == {
        "list_images": "default",
        "score": "training",
        "combine": "default",
    }
    # A TensorFlow task's retry waits the training delay: its worker was lost, and the heartbeat timeout waited already.
    delays = {task: delay for dag in tasks.values() for task, (_, delay) in dag.items()}
    assert delays == {
        **{task: 7.0 for task in ("download", "prepare", "publish", "list_images", "combine")},
        **{task: 3.0 for task in ("anything_new", "train", "evaluate", "score")},
    }


def test_batch_shards_may_have_a_queue_of_their_own():
    tasks = _parse_in_a_fresh_interpreter({"MNIST_TRAINING_QUEUE": "training", "MNIST_SCORING_QUEUE": "scoring"})
    assert {task: queue for task, (queue, _) in tasks["mnist_batch_predict"].items()} == {
        "list_images": "default",
        "score": "scoring",
        "combine": "default",
    }
    assert {queue for queue, _ in tasks[DAG_ID].values()} == {"default", "training"}


def test_without_a_training_queue_everything_runs_on_default(dag):
    assert {t.queue for t in dag.tasks} == {"default"}
    assert {t.task_id: t.retry_delay for t in dag.tasks} == {
        **{task: timedelta(minutes=5) for task in ("download", "prepare", "publish")},
        **{task: timedelta(seconds=15) for task in ("anything_new", "train", "evaluate")},
    }


@pytest.mark.parametrize("name", ["learning_rate", "accuracy_threshold", "max_regression"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_params_refuse_values_that_are_not_finite(dag, name, value):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.params.get_param(name).resolve(value)


def test_the_documented_maximum_learning_rate_is_accepted(dag):
    assert dag.params.get_param("learning_rate").resolve(1) == 1


def test_the_write_up_recipe_is_a_valid_trigger(dag):
    from mnist_tasks.params import WRITE_UP_RECIPE

    for name, value in WRITE_UP_RECIPE.items():
        assert dag.params.get_param(name).resolve(value) == value


def test_an_artifact_handed_over_damaged_or_gone_fails_the_task_without_retries():
    # A retry reads the same store: only the task that made the artifact can make it again.
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_airflow.wiring import not_retried
    from mnist_tasks.flow.artifacts import ArtifactIntegrityError, ArtifactMissingError

    for error in (
        ArtifactMissingError("s3://b/runs/model.keras is not in the artifact store"),
        ArtifactIntegrityError("s3://b/runs/model.keras", expected="a" * 64, actual="b" * 64),
    ):
        with pytest.raises(AirflowFailException, match="s3://b/runs/model.keras"), not_retried():
            raise error


def test_a_registry_object_a_person_must_mend_fails_publish_without_retries():
    # latest.json deleted between evaluate and publish: waiting 300-600 s cannot bring it back.
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_airflow.wiring import not_retried
    from mnist_tasks.registry import DamagedObjectError, PointerMissingError

    for error in (DamagedObjectError("s3://b/mnist/latest.json is not valid JSON"), PointerMissingError("gone")):
        with pytest.raises(AirflowFailException), not_retried():
            raise error


def test_a_damaged_published_version_fails_a_reader_at_once_and_publish_retries_its_own_unfinished_writes():
    # anything_new, evaluate and batch predictions read published versions: a damaged one stays so.
    # The publish step turns the failure of its own writes into UnfinishedPublishError (flow/pipeline.py):
    # a dropped upload or a serving copy that differs is written again by the retry.
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_airflow.wiring import not_retried
    from mnist_tasks.registry import PublishVerificationError, UnfinishedPublishError

    missing = "s3://b/mnist/1/model.keras: expected sha256 " + "a" * 64 + ", got a missing object"
    with pytest.raises(AirflowFailException, match="got a missing object"), not_retried():
        raise PublishVerificationError(missing)
    with pytest.raises(UnfinishedPublishError), not_retried():
        raise UnfinishedPublishError(missing)
