"""
### Nightly MNIST retraining

Retrains the MNIST classifier every night at 02:00 UTC, gates it on test
accuracy and publishes the passing model to S3-compatible storage.

`download` → `prepare` → `anything_new` → `train` → `evaluate` → `publish`

- **download** fetches the four MNIST files from the first mirror that has
  them and verifies the sha256 of their decompressed content; a verified copy
  on the worker is reused. Output: `datasets/<data sha256>/raw/`.
- **prepare** decodes and validates the IDX files and scales pixels to float32
  in [0, 1]; skipped when the store already holds this data's arrays. Then it
  reads the users' labelled digits (`MNIST_LABELED_URI`, `<digit>/<image>`,
  filed there by the *MNIST review* page) with `predict`'s preprocessing and
  splits them about 80/20 by content hash; a file it cannot use is counted by
  reason in the log, never failing the run. The data's checksum covers both.
  Output: `datasets/<data sha256>/prepared/`, `datasets/labeled/<arrays sha256>/`.
- **anything_new** compares what the model would be a function of (the data's
  checksum, the training Params, the code and the libraries) with what the
  version `latest` points at was trained from. When they are equal, training
  would give that model again: the run ends here, successful, with the later
  tasks skipped and the log saying `unchanged since version N` (a version
  whose files no longer verify counts as changed). The `force` Param trains
  and publishes anyway. Runs on the training queue.
- **train** fits the `architecture` Param's network: `dense` (the original
  write-up's Flatten → Dense(hidden_units, relu) → Dense(10, softmax)) or `cnn`
  (two convolutions before that head), with Adam and a 10% validation split,
  on augmented images if `augment` says so, with the labelled training digits
  beside MNIST's, each `labeled_weight` times an epoch. The same seed gives the same model.
  Output: `runs/<dag>/<run>/model.keras`, its SavedModel export `saved_model/`,
  `history.json`.
- **evaluate** measures test accuracy and loss, per-class precision and recall,
  the confusion matrix and the report pictures, and evaluates the champion
  (the current `latest` model, of either architecture) on the same test set.
  It **fails the run** when accuracy is below `accuracy_threshold` or more than
  `max_regression` below the champion's. On the labelled test split it does the
  same with `labeled_accuracy_threshold` and `labeled_max_regression`, once that split holds
  `labeled_min_test_images` (below, its accuracy is reported, not judged).
  Output: `runs/<dag>/<run>/metrics.json`, `*.png`.
- **publish** renders `report.html` (metrics, gate, lineage, pictures), uploads
  an immutable, numbered version (model, its SavedModel export, metrics,
  history, pictures, report, manifest) and reads it back. Then, when it is
  newer than `latest`, it moves `latest.json` and copies the SavedModel to
  TensorFlow Serving's `serving/<version>/`.
  Output: `s3://…/<version>/`, `s3://…/serving/<version>/`, `s3://…/latest.json`.

Tasks share nothing but the artifact store (`MNIST_ARTIFACTS_URI`): each hands
the next the URIs and sha256s of what it stored, and the next checks them
before use, so any task may run on any worker. `anything_new`, `train` and
`evaluate` run on the queue `MNIST_TRAINING_QUEUE` (default `default`).

**Needs**
- An Airflow connection of type *Amazon Web Services* (id `aws_default`, or the
  one named by `MNIST_AWS_CONN_ID`) for the model bucket and any `s3://` mirror.
  For SeaweedFS or another S3-compatible store, put `endpoint_url` in its extra.
- Environment: `MNIST_MODELS_URI` (default `s3://mnist-models/mnist/`),
  `MNIST_ARTIFACTS_URI` (default `s3://mnist-artifacts/`), `MNIST_LABELED_URI`
  (default `s3://mnist-inbox/labeled/`), `MNIST_MIRRORS`
  (default: the public MNIST mirrors), `MNIST_DATA_DIR` (each worker's own
  cache), `MNIST_TRAINING_QUEUE`, `MNIST_RETRY_DELAY_SECONDS` (default 300; for
  `anything_new`, `train` and `evaluate` `MNIST_TRAINING_RETRY_DELAY_SECONDS`, default 15).
- Alerts (optional): an SMTP connection `mnist_alerts_smtp` with
  `MNIST_ALERT_EMAIL_TO`, and/or an HTTP connection `mnist_alerts_webhook`
  (Slack-compatible JSON); `MNIST_RUN_DEADLINE_MINUTES` (default 120),
  `MNIST_NOTIFY_ON_SUCCESS`. See the docs' *Operations*, *Alerts*.

**Trigger by hand** with *Trigger DAG* and change any of the Params below;
the form refuses values outside their bounds.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference, dag, task

# plugins/: Airflow puts the plugins folder on sys.path in all its processes.
from mnist_airflow.alerting import alert_run_failure, alert_run_overdue, alert_run_success
from mnist_airflow.schedules import PastCronTimetable
from mnist_airflow.wiring import (
    airflow_param,
    artifact_store,
    default_args,
    force_param,
    model_registry,
    not_retried,
    on_tensorflow_queue,
    published_model_asset,
    s3_client,
)
from mnist_tasks.params import GATE_PARAMS, TRAINING_PARAMS
from mnist_tasks.settings import Settings

_SETTINGS = Settings.from_env()
_ON_TRAINING_QUEUE = on_tensorflow_queue(_SETTINGS, _SETTINGS.training_queue)

# Downstream DAGs (batch predictions) run when a new model is published.
PUBLISHED_MODEL = published_model_asset(_SETTINGS)


# Each task's result travels as one XCom (multiple_outputs=False): a `-> dict` would
# otherwise also push every key as an XCom of its own, which nothing reads.
@task(multiple_outputs=False, execution_timeout=timedelta(minutes=20))
def download() -> dict:
    from mnist_tasks.flow import pipeline

    settings = Settings.from_env()
    client = s3_client(settings)
    # DataIntegrityError means every mirror served bad bytes; network errors are retried.
    with not_retried():
        return pipeline.download(
            store=artifact_store(settings, client),
            mirrors=settings.mirrors,
            raw_dir=settings.data_dir / "raw",
            s3_client=client,
        )

# Long enough to decode a labelled set of 100,000 images, one at a time, every night.
@task(multiple_outputs=False, execution_timeout=timedelta(minutes=30))
def prepare(downloaded: dict) -> dict:
    import logging

    from mnist_tasks.flow import pipeline

    settings = Settings.from_env()
    client = s3_client(settings)
    with not_retried():
        prepared = pipeline.prepare(
            store=artifact_store(settings, client),
            downloaded=downloaded,
            cache_root=settings.data_dir / "prepared",
            s3_client=client,
            labeled_uri=settings.labeled_uri,
        )
    labeled = prepared["labeled"]
    logging.getLogger("mnist_retraining").info(
        "labelled set %s: %d training and %d test images, left out: %s",
        labeled["uri"],
        labeled["train_count"],
        labeled["test_count"],
        ", ".join(f"{count} {reason}" for reason, count in labeled["excluded"].items()) or "none",
    )
    return prepared

# On the training queue: the identity sums up the code and libraries of the workers that train.
@task.short_circuit(execution_timeout=timedelta(minutes=5), **_ON_TRAINING_QUEUE)
def anything_new(prepared: dict, **context) -> dict | bool:
    """The run's training identity (for publish's manifest) when there is something to train; False ends
    the run here, with the later tasks skipped."""
    import logging

    from mnist_tasks.flow import pipeline

    settings = Settings.from_env()
    p = context["params"]
    # latest.json or its manifest damaged: stays so until someone mends it (`models repair`).
    with not_retried():
        found = pipeline.novelty(
            registry=model_registry(settings),
            prepared=prepared,
            params={spec.name: p[spec.name] for spec in TRAINING_PARAMS},
            force=p["force"],
        )
    logging.getLogger("mnist_retraining").info(found["reason"])
    if not found["train"]:
        context["ti"].xcom_push(key="unchanged_since", value=found["unchanged_since"])
        return False
    return found["identity"]

@task(multiple_outputs=False, execution_timeout=timedelta(minutes=60), **_ON_TRAINING_QUEUE)
def train(prepared: dict, **context) -> dict:
    from mnist_tasks.flow import pipeline

    p = context["params"]
    with not_retried():
        return pipeline.train(
            store=artifact_store(Settings.from_env()),
            prepared=prepared,
            dag_id=context["dag_run"].dag_id,
            run_id=context["run_id"],
            params={spec.name: p[spec.name] for spec in TRAINING_PARAMS},
        )

@task(multiple_outputs=False, execution_timeout=timedelta(minutes=15), **_ON_TRAINING_QUEUE)
def evaluate(prepared: dict, trained: dict, **context) -> dict:
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks.flow import pipeline

    settings = Settings.from_env()
    client = s3_client(settings)
    p = context["params"]
    # A model or a published version that differs from its checksum stays that way.
    with not_retried():
        result = pipeline.evaluate(
            store=artifact_store(settings, client),
            registry=model_registry(settings, client),
            prepared=prepared,
            trained=trained,
            dag_id=context["dag_run"].dag_id,
            run_id=context["run_id"],
            threshold=p["accuracy_threshold"],
            max_regression=p["max_regression"],
            labeled_threshold=p["labeled_accuracy_threshold"],
            labeled_max_regression=p["labeled_max_regression"],
            labeled_min_test_images=p["labeled_min_test_images"],
        )
    if not result["passed"]:
        # Kept for the alert and the run summary: a failed task returns nothing.
        context["ti"].xcom_push(key="evaluation", value=result)
        raise AirflowFailException(result["message"])
    return result

@task(multiple_outputs=False, execution_timeout=timedelta(minutes=15), outlets=[PUBLISHED_MODEL])
def publish(downloaded: dict, prepared: dict, trained: dict, evaluated: dict, identity: dict, **context) -> dict:
    from mnist_tasks.flow import pipeline
    from mnist_tasks.registry import version_for

    settings = Settings.from_env()
    client = s3_client(settings)
    dag_run = context["dag_run"]
    # LatestMovedError: another run moved `latest` after evaluate compared with it; a retry
    # would meet the same, only re-running evaluate compares with the new champion.
    # DamagedObjectError: a latest.json or manifest that cannot be parsed, or a latest.json gone while
    # versions exist (PointerMissingError), stays so until someone mends it (`models repair`).
    with not_retried():
        return pipeline.publish(
            store=artifact_store(settings, client),
            registry=model_registry(settings, client),
            # Manual runs may have no logical date; run_after is always set and fixed for the run.
            version=version_for(dag_run.logical_date or dag_run.run_after),
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            started_at=dag_run.start_date.isoformat() if dag_run.start_date else None,
            downloaded=downloaded,
            prepared=prepared,
            trained=trained,
            evaluated=evaluated,
            identity=identity,
        )


@dag(
    dag_id="mnist_retraining",
    description="Nightly MNIST retraining with an accuracy gate; publishes passing models to S3.",
    doc_md=__doc__,
    schedule=PastCronTimetable("0 2 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=3),
    # Alerts: a task failing after its retries (the gate included) alerts from the
    # task's own callback; the DAG's callbacks add failures no task reports (a
    # timeout) and, if switched on, successes; the deadline flags a slow run.
    on_failure_callback=alert_run_failure,
    on_success_callback=alert_run_success,
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=_SETTINGS.run_deadline_minutes),
        callback=AsyncCallback(alert_run_overdue, kwargs={"minutes": _SETTINGS.run_deadline_minutes}),
    ),
    tags=["mnist", "ml", "retraining"],
    default_args=default_args(_SETTINGS, execution_timeout=timedelta(minutes=30)),
    params={spec.name: airflow_param(spec) for spec in (*TRAINING_PARAMS, *GATE_PARAMS)} | {"force": force_param()},
)
def mnist_retraining() -> None:
    downloaded = download()
    prepared = prepare(downloaded)
    identity = anything_new(prepared)
    trained = train(prepared)
    identity >> trained
    evaluated = evaluate(prepared, trained)
    publish(downloaded, prepared, trained, evaluated, identity)


mnist_retraining()
