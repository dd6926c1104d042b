"""
### MNIST batch predictions

Reads the digit in every image under an S3 prefix with the current `latest`
model and writes the predictions as CSV and JSON.

Runs whenever `mnist_retraining` publishes a model (the Asset named by the
registry's `latest.json` URI) **and** every day at 06:00 UTC, whichever comes first.

`predict`, the one task:
- loads the model `latest.json` points at (either architecture) once its
  sha256 matches the manifest;
- downloads the images under `input_uri` (the first `max_images` by key);
- preprocesses them like MNIST's own digits (mnist_tasks/preprocess.py's
  docstring has the steps) and predicts them in one batch;
- writes `predictions.csv` and `predictions.json` under
  `$MNIST_PREDICTIONS_URI/<run id>/`.

Each row has the file's `s3://` URI, the digit, its probability, a status
(`ok`, `blank`: no ink, `low_confidence`: below `min_confidence`, `error`: not
a readable image, with the reason) and the model version. A file that cannot be
read does not stop the others. A re-run of the same run overwrites its own two
files. The task's return value counts the images scored, skipped (over
`max_images`) and ignored (no image suffix).

**Needs**
- The Airflow connection `aws_default` (or `MNIST_AWS_CONN_ID`), reaching the
  model bucket, the input prefix and the predictions bucket.
- Environment: `MNIST_MODELS_URI` (default `s3://mnist-models/mnist/`),
  `MNIST_PREDICT_INPUT_URI` (default `s3://mnist-inbox/images/`),
  `MNIST_PREDICTIONS_URI` (default `s3://mnist-predictions/predictions/`),
  `MNIST_DATA_DIR` (scratch space for the downloaded images).

**Trigger by hand** with *Trigger DAG*, optionally pointing `input_uri` at
another prefix.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import AssetOrTimeSchedule, Param, dag, task

# plugins/: Airflow puts the plugins folder on sys.path in all its processes.
from mnist_dags import PastCronTimetable, airflow_param, default_args, not_retried, published_model_asset, s3_client

from mnist_tasks.params import BATCH_PREDICT_PARAMS
from mnist_tasks.settings import Settings

_SETTINGS = Settings.from_env()

PUBLISHED_MODEL = published_model_asset(_SETTINGS)


@dag(
    dag_id="mnist_batch_predict",
    description="Predicts the digits in the images under an S3 prefix with the latest published MNIST model.",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=PastCronTimetable("0 6 * * *", timezone="UTC"), assets=PUBLISHED_MODEL
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    tags=["mnist", "ml", "predictions"],
    default_args=default_args(_SETTINGS, execution_timeout=timedelta(minutes=60)),
    params={
        "input_uri": Param(
            _SETTINGS.predict_input_uri,
            type="string",
            pattern=r"^s3://[^/]+/",
            description="The images to score: every image file under this s3://bucket/prefix/.",
        ),
        **{spec.name: airflow_param(spec) for spec in BATCH_PREDICT_PARAMS},
    },
)
def mnist_batch_predict() -> None:
    # Its result travels as one XCom (multiple_outputs=False), not also key by key.
    @task(multiple_outputs=False, execution_timeout=timedelta(minutes=60), queue=_SETTINGS.training_queue)
    def predict(**context) -> dict:
        from mnist_tasks.batch_predict import predict_prefix
        from mnist_tasks.predict import PredictError
        from mnist_tasks.registry import ModelReferenceError, PublishVerificationError, VersionNotFoundError
        from mnist_tasks.storage import ModelChecksumError, safe_name

        settings = Settings.from_env()
        p = context["params"]
        # No published model, a reference that names none, or a model that fails its checksums or
        # does not load: a retry finds the same.
        with not_retried(
            VersionNotFoundError, ModelReferenceError, PublishVerificationError, ModelChecksumError, PredictError
        ):
            return predict_prefix(
                s3_client=s3_client(settings),
                input_uri=p["input_uri"],
                output_uri=f"{settings.predictions_uri.rstrip('/')}/{safe_name(context['run_id'])}/",
                models_uri=settings.models_uri,
                work_dir=settings.data_dir / "batch-predict",
                max_images=p["max_images"],
                min_confidence=p["min_confidence"],
            )

    predict()


mnist_batch_predict()
