"""
### Nightly MNIST retraining

Retrains the dense MNIST classifier every night at 02:00 UTC, gates it on test
accuracy and publishes the passing model to S3-compatible storage.

`download` → `prepare` → `train` → `evaluate` → `publish`

| task | what it does | output |
|---|---|---|
| download | fetches the four MNIST files from the first mirror that has them and verifies the sha256 of their decompressed content; a verified local copy is reused | raw files under `$MNIST_DATA_DIR/raw` |
| prepare | decodes and validates the IDX files, scales pixels to float32 in [0, 1], caches `.npy` arrays keyed by the data's checksum | `$MNIST_DATA_DIR/prepared/<checksum>` |
| train | Flatten → Dense(hidden_units, relu) → Dense(10, softmax), Adam, 10% validation split; the same seed gives the same model | `model.keras`, `history.json` under `$MNIST_DATA_DIR/runs/<run id>` |
| evaluate | test accuracy and loss, per-class precision and recall, confusion matrix, report pictures; the champion (the current `latest` model) is evaluated on the same test set; **fails the run** when accuracy is below `accuracy_threshold` or more than `max_regression` below the champion's | `metrics.json`, `*.png` |
| publish | renders `report.html` (metrics, gate, lineage, pictures), uploads an immutable, numbered version (model, metrics, history, pictures, report, manifest), reads it back, then moves `latest.json` | `s3://…/<version>/`, `s3://…/latest.json` |

**Needs**
- An Airflow connection of type *Amazon Web Services* (id `aws_default`, or the
  one named by `MNIST_AWS_CONN_ID`) for the model bucket and any `s3://` mirror.
  For MinIO or another S3-compatible store, put `endpoint_url` in its extra.
- Environment: `MNIST_MODELS_URI` (default `s3://mnist-models/mnist/`),
  `MNIST_MIRRORS` (default: the public MNIST mirrors), `MNIST_DATA_DIR`
  (a directory the workers share).
- Alerts (optional): an SMTP connection `mnist_alerts_smtp` with
  `MNIST_ALERT_EMAIL_TO`, and/or an HTTP connection `mnist_alerts_webhook`
  (Slack-compatible JSON); `MNIST_RUN_DEADLINE_MINUTES` (default 120),
  `MNIST_NOTIFY_ON_SUCCESS`. See the README's *Alerts*.

**Trigger by hand** with *Trigger DAG* and change any of the Params below;
the form refuses values outside their bounds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, AsyncCallback, DeadlineAlert, DeadlineReference, Param, dag, task

# plugins/mnist_alerting.py: Airflow puts the plugins folder on sys.path in all its processes.
from mnist_alerting import alert_run_failure, alert_run_overdue, alert_run_success, alert_task_failure
from mnist_tasks.settings import PUBLISHED_MODEL_ASSET, Settings

_SETTINGS = Settings.from_env()

# Downstream DAGs (batch predictions) run when a new model is published.
PUBLISHED_MODEL = Asset(name=PUBLISHED_MODEL_ASSET, uri=_SETTINGS.published_model_uri)


def _run_dir(context: dict[str, Any]) -> Path:
    """Per-run working directory: a re-run of the same run overwrites its own files."""
    from mnist_tasks.storage import safe_name

    return Settings.from_env().data_dir / "runs" / safe_name(context["run_id"])


@contextmanager
def _not_retried(*errors: type[Exception]) -> Iterator[None]:
    """Fail the task at once on these errors: bad bytes, a failed gate or an
    immutable version stay what they are, so retrying would only delay the alert."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except errors as err:
        raise AirflowFailException(str(err)) from err


def _s3_client():
    """boto3 S3 client from the Airflow connection (endpoint, region, credentials)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=Settings.from_env().aws_conn_id).get_conn()


_BOUND_WORDS = {"minimum": "at least", "exclusiveMinimum": "above", "maximum": "at most"}


def _bounded(default: float, *, type: str, description: str, **bounds: float) -> Param:
    """A number Param whose bounds the trigger form shows and enforces by refusing a value outside them.

    The form's number fields take a top-level `minimum`/`maximum` as limits to
    clamp to: 500 epochs typed and submitted would silently run 100. Nested in
    `allOf` the bounds are out of the form's sight, and Airflow's validation of
    the Params refuses the trigger with an error that names the Param and the
    bound. The description spells the bounds out, as the form shows no limits.
    """
    allowed = ", ".join(f"{_BOUND_WORDS[name]} {value}" for name, value in bounds.items())
    return Param(default, type=type, allOf=[bounds], description=f"{description} Allowed: {allowed}.")


@dag(
    dag_id="mnist_retraining",
    description="Nightly MNIST retraining with an accuracy gate; publishes passing models to S3.",
    doc_md=__doc__,
    schedule="0 2 * * *",
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
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=30),
        "on_failure_callback": alert_task_failure,
    },
    params={
        "epochs": _bounded(5, type="integer", minimum=1, maximum=100, description="Passes over the training set."),
        "batch_size": _bounded(
            32, type="integer", minimum=1, maximum=8192, description="Examples per gradient step."
        ),
        "learning_rate": _bounded(
            0.001,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            description="Adam's learning rate.",
        ),
        "hidden_units": _bounded(
            128, type="integer", minimum=1, maximum=4096, description="Width of the hidden Dense(relu) layer."
        ),
        "seed": _bounded(
            42,
            type="integer",
            minimum=0,
            maximum=2**31 - 1,
            description="Random seed for weights and shuffling; the same seed and data give the same model.",
        ),
        "accuracy_threshold": _bounded(
            0.93,
            type="number",
            minimum=0,
            maximum=1,
            description="The gate: the model is published only if its test accuracy is at least this.",
        ),
        "max_regression": _bounded(
            0.005,
            type="number",
            minimum=0,
            maximum=1,
            description="The gate against the champion (the model `latest` points at, evaluated on the same "
            "test set): the model is published only if its test accuracy is at most this much below the "
            "champion's. The first run, with no champion, is judged by accuracy_threshold alone.",
        ),
    },
)
def mnist_retraining() -> None:
    @task(execution_timeout=timedelta(minutes=20))
    def download() -> dict:
        from mnist_tasks.dataset import DataIntegrityError, download_mnist

        settings = Settings.from_env()
        needs_s3 = any(m.startswith("s3://") for m in settings.mirrors)
        # DataIntegrityError means every mirror served bad bytes; network errors are retried.
        with _not_retried(DataIntegrityError):
            return download_mnist(
                mirrors=settings.mirrors,
                raw_dir=settings.data_dir / "raw",
                s3_client=_s3_client() if needs_s3 else None,
            )

    @task(execution_timeout=timedelta(minutes=10))
    def prepare(downloaded: dict) -> dict:
        from mnist_tasks.dataset import DataIntegrityError, prepare_dataset

        with _not_retried(DataIntegrityError):
            return prepare_dataset(
                raw_dir=Path(downloaded["raw_dir"]), cache_root=Settings.from_env().data_dir / "prepared"
            )

    @task(execution_timeout=timedelta(minutes=60))
    def train(prepared: dict, **context) -> dict:
        from mnist_tasks.train import train_model

        p = context["params"]
        return train_model(
            cache_dir=Path(prepared["cache_dir"]),
            out_dir=_run_dir(context),
            epochs=p["epochs"],
            batch_size=p["batch_size"],
            learning_rate=p["learning_rate"],
            hidden_units=p["hidden_units"],
            seed=p["seed"],
        )

    @task(execution_timeout=timedelta(minutes=15))
    def evaluate(prepared: dict, trained: dict, **context) -> dict:
        import tempfile

        from airflow.sdk.exceptions import AirflowFailException

        from mnist_tasks.evaluate import ModelChecksumError, evaluate_model, fetch_champion
        from mnist_tasks.registry import PublishVerificationError

        p = context["params"]
        # A model or a published version that differs from its checksum stays that way.
        with (
            tempfile.TemporaryDirectory(prefix="mnist-champion-") as champion_dir,
            _not_retried(ModelChecksumError, PublishVerificationError),
        ):
            # None before the first publish; an unreachable bucket raises (and retries)
            # rather than letting the candidate skip the comparison.
            champion = fetch_champion(
                s3_client=_s3_client(), models_uri=Settings.from_env().models_uri, dest_dir=Path(champion_dir)
            )
            result = evaluate_model(
                model_path=Path(trained["model_path"]),
                model_sha256=trained["model_sha256"],
                cache_dir=Path(prepared["cache_dir"]),
                out_dir=_run_dir(context),
                threshold=p["accuracy_threshold"],
                max_regression=p["max_regression"],
                champion=champion,
                history_path=Path(trained["history_path"]),
            )
        if not result["passed"]:
            # Kept for the alert and the run summary: a failed task returns nothing.
            context["ti"].xcom_push(key="evaluation", value=result)
            raise AirflowFailException(result["message"])
        return result

    @task(execution_timeout=timedelta(minutes=15), outlets=[PUBLISHED_MODEL])
    def publish(downloaded: dict, trained: dict, evaluated: dict, **context) -> dict:
        from mnist_tasks.publish import GateFailedError, VersionConflictError, build_manifest, publish_model, version_for
        from mnist_tasks.report import REPORT_FILE, write_report

        dag_run = context["dag_run"]
        # Manual runs may have no logical date; run_after is always set and fixed for the run.
        version = version_for(dag_run.logical_date or dag_run.run_after)
        run_dir = _run_dir(context)
        manifest = build_manifest(
            version=version,
            run_id=dag_run.run_id,
            dag_id=dag_run.dag_id,
            params=trained["params"],
            data=downloaded,
            metrics=evaluated,
            started_at=dag_run.start_date.isoformat() if dag_run.start_date else None,
        )
        # Rendered here, not in evaluate: the report shows the manifest's lineage.
        pictures = {name: Path(path) for name, path in evaluated["pictures"].items()}
        report = write_report(
            metrics_path=Path(evaluated["metrics_path"]),
            manifest=manifest,
            pictures=pictures,
            path=run_dir / REPORT_FILE,
        )
        with _not_retried(GateFailedError, VersionConflictError):
            return publish_model(
                s3_client=_s3_client(),
                models_uri=Settings.from_env().models_uri,
                version=version,
                files={
                    "model.keras": Path(trained["model_path"]),
                    "history.json": Path(trained["history_path"]),
                    "metrics.json": Path(evaluated["metrics_path"]),
                    **pictures,
                    REPORT_FILE: Path(report["report_path"]),
                },
                manifest=manifest,
            )

    downloaded = download()
    prepared = prepare(downloaded)
    trained = train(prepared)
    evaluated = evaluate(prepared, trained)
    publish(downloaded, trained, evaluated)


mnist_retraining()
