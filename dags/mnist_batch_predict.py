"""
### MNIST batch predictions

Reads the digit in every image under an S3 prefix with the current `latest`
model, in shards that any worker may score, and writes the predictions as
Parquet, CSV and JSON.

Runs whenever `mnist_retraining` publishes a model (the Asset named by the
registry's `latest.json` URI) **and** every day at 06:00 UTC, whichever comes first.

1. `list_images` lists `input_uri` once (the first `max_images` by key), pins the
   model `latest.json` points at (checked against its manifest) and cuts the
   images into shards of `shard_size`.
2. `score` runs once per shard (dynamic task mapping, on `MNIST_SCORING_QUEUE`,
   by default the training queue, so on any worker that serves it):
   it streams the shard's images (bounded concurrent GETs), preprocesses them
   like MNIST's own digits (mnist_tasks/inference/preprocess.py's docstring has the steps),
   predicts them in batches and writes its part of the rows. Its log shows the
   images done, the rate and the ETA. Images below `min_confidence`, and blank
   ones, are copied to `$MNIST_REVIEW_URI/<run id>/` with the model's top 3.
3. `combine` writes `predictions.csv` and `predictions.json` (counts, images/s,
   the model's provenance) beside the parts (`parts/*.parquet`, `parts/*.csv`)
   under `$MNIST_PREDICTIONS_URI/<run id>/`, and alerts (email, webhook) when the
   share of `low_confidence` images is above `max_low_confidence_share`.

Each row has the file's `s3://` URI, the digit, its probability, a status
(`ok`, `blank`: no ink, `low_confidence`: below `min_confidence`, `error`: not
a readable image, with the reason), the model version and (Parquet) the top 3.
A file that cannot be read does not stop the others. A retried shard rewrites
its own part; a re-run of the run replaces all its files. A failed shard (most
often: its worker died) is retried after `MNIST_TRAINING_RETRY_DELAY_SECONDS`
(default 15), the other tasks after `MNIST_RETRY_DELAY_SECONDS` (default 300).

**Needs**
- The Airflow connection `aws_default` (or `MNIST_AWS_CONN_ID`), reaching the
  model bucket, the input prefix, the predictions bucket and the review prefix.
- Environment: `MNIST_MODELS_URI` (default `s3://mnist-models/mnist/`),
  `MNIST_PREDICT_INPUT_URI` (default `s3://mnist-inbox/images/`),
  `MNIST_PREDICTIONS_URI` (default `s3://mnist-predictions/predictions/`),
  `MNIST_REVIEW_URI` (default `s3://mnist-inbox/review/`),
  `MNIST_DATA_DIR` (scratch space).

**Trigger by hand** with *Trigger DAG*, optionally pointing `input_uri` at
another prefix.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import AssetOrTimeSchedule, Param, dag, task

# plugins/: Airflow puts the plugins folder on sys.path in all its processes.
from mnist_airflow.schedules import PastCronTimetable
from mnist_airflow.wiring import (
    airflow_param,
    default_args,
    not_retried,
    on_tensorflow_queue,
    published_model_asset,
    s3_client,
)
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
    @task(multiple_outputs=False)
    def list_images(**context) -> list[dict]:
        from airflow.sdk.configuration import conf

        from mnist_tasks.inference.batch import list_shards

        settings = Settings.from_env()
        p = context["params"]
        with not_retried():
            return list_shards(
                s3_client=s3_client(settings),
                input_uri=p["input_uri"],
                output_uri=_run_dir(settings.predictions_uri, context["run_id"]),
                review_uri=_run_dir(settings.review_uri, context["run_id"]),
                models_uri=settings.models_uri,
                work_dir=settings.data_dir / "batch-predict",
                max_images=p["max_images"],
                shard_size=p["shard_size"],
                max_shards=conf.getint("core", "max_map_length"),
            )

    @task(
        multiple_outputs=False,
        execution_timeout=timedelta(minutes=60),
        **on_tensorflow_queue(_SETTINGS, _SETTINGS.scoring_queue),
    )
    def score(shard: dict, **context) -> dict:
        import logging

        from mnist_tasks.inference.shard import score_shard

        settings = Settings.from_env()
        with not_retried():
            return score_shard(
                s3_client=s3_client(settings),
                shard=shard,
                min_confidence=context["params"]["min_confidence"],
                review_uri=_run_dir(settings.review_uri, context["run_id"]),
                work_dir=settings.data_dir / "batch-predict",
                progress=logging.getLogger("mnist_batch_predict").info,
            )

    @task(multiple_outputs=False)
    def combine(shards: list[dict], scored: list[dict], **context) -> dict:
        from mnist_airflow.alerting import alert_drift
        from mnist_tasks.inference.batch import combine_shards

        settings = Settings.from_env()
        p = context["params"]
        result = combine_shards(
            s3_client=s3_client(settings),
            shards=shards,
            scored=list(scored),
            min_confidence=p["min_confidence"],
            max_low_confidence_share=p["max_low_confidence_share"],
            review_uri=_run_dir(settings.review_uri, context["run_id"]),
            work_dir=settings.data_dir / "batch-predict",
        )
        alert_drift(context, result)
        return result

    shards = list_images()
    combine(shards, score.expand(shard=shards))


def _run_dir(base_uri: str, run_id: str) -> str:
    """The run's own directory under a base URI (run ids hold ':' and '+': files.safe_name keeps them apart)."""
    from mnist_tasks.files import safe_name

    return f"{base_uri.rstrip('/')}/{safe_name(run_id)}/"


mnist_batch_predict()
