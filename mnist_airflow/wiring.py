"""Airflow glue both MNIST DAGs share: S3 client, artifact store, model registry, errors not retried, defaults, Params.

It imports nothing heavy at module level (DAG files import it). The schedule is in
mnist_airflow/schedules.py, registered by plugins/mnist_schedules.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, Param

from mnist_airflow.alerting import alert_task_failure
from mnist_tasks.errors import PermanentError
from mnist_tasks.params import ParamSpec
from mnist_tasks.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from mnist_tasks.flow.artifacts import ArtifactStore
    from mnist_tasks.registry import ModelRegistry


def published_model_asset(settings: Settings) -> Asset:
    """The Asset mnist_retraining updates when it publishes and mnist_batch_predict is scheduled on.

    Named by its URI: Airflow activates an asset only while no other active one has
    its name, so a fixed name would leave the asset inactive, and every publish
    failing, after MNIST_MODELS_URI changes, until the scheduler's clean-up runs.
    """
    return Asset(name=settings.published_model_uri, uri=settings.published_model_uri)


def default_args(settings: Settings, *, execution_timeout: timedelta) -> dict[str, Any]:
    """Every task: owned by ml-platform, retried twice with back-off, timed out, alerting when it gives up."""
    return {
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "execution_timeout": execution_timeout,
        "on_failure_callback": alert_task_failure,
    }


def on_tensorflow_queue(settings: Settings, queue: str) -> dict[str, Any]:
    """A TensorFlow task's queue, and its first retry's shorter wait (Settings.training_retry_delay_seconds)."""
    return {"queue": queue, "retry_delay": timedelta(seconds=settings.training_retry_delay_seconds)}


def s3_client(settings: Settings) -> S3Client:
    """boto3 S3 client from the Airflow connection (endpoint, region, credentials)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=settings.aws_conn_id).get_conn()


def artifact_store(settings: Settings, client: S3Client | None = None) -> ArtifactStore:
    """The artifact store, with this worker's cache under MNIST_DATA_DIR/artifacts."""
    from mnist_tasks.flow.artifacts import ArtifactStore

    needs_s3 = settings.artifacts_uri.startswith("s3://")
    if needs_s3 and client is None:
        client = s3_client(settings)
    return ArtifactStore(settings.artifacts_uri, cache_dir=settings.data_dir / "artifacts", s3_client=client)


def model_registry(settings: Settings, client: S3Client | None = None) -> ModelRegistry:
    """The model registry at MNIST_MODELS_URI, through `client` (one made from the connection when None)."""
    from mnist_tasks.registry import ModelRegistry

    return ModelRegistry(s3_client(settings) if client is None else client, settings.models_uri)


@contextmanager
def not_retried() -> Iterator[None]:
    """Fail the task at once on a PermanentError (bad bytes, a failed gate, an immutable version, a
    registry object a person must mend): retrying would only delay the alert. Other errors keep
    the task's retries."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except PermanentError as err:
        raise AirflowFailException(str(err)) from err


def force_param() -> Param:
    """mnist_retraining's `force`: a new Param per DAG, as a run's conf may change a DAG's Params in place."""
    return Param(
        False,
        type="boolean",
        description="Train and publish even when nothing changed since the version latest points at "
        "(the same data, training Params, code and libraries would give the same model again).",
    )


def airflow_param(spec: ParamSpec) -> Param:
    """The trigger form's field for a Param of mnist_tasks.params: it shows and enforces the bounds by refusing
    a value outside them. Both DAGs build every bounded Param with it.

    Why the bounds are nested in `allOf` (ParamSpec.json_schema) rather than set as
    the Param's top-level `minimum`/`maximum`, read in Airflow 3.3.2's UI bundle
    (airflow/ui/dist/assets/index-*.js):

    - the form's number field (FieldNumber, Chakra's NumberInput) is given
      `min: schema.minimum` and `max: schema.maximum` and nothing else;
    - NumberInput is Zag.js' number-input, whose defaults are
      `clampValueOnBlur: !allowOverflow` and `allowOverflow: false`, and on blur
      an out-of-range value takes the action `setClampedValue`.

    So with top-level bounds, 500 epochs typed into the form become 100 as the
    field loses focus, and the run starts with 100, silently. Nested in `allOf` the
    bounds are out of the form's sight; the value stays as typed and Airflow's
    validation of the Params refuses the trigger with an error that names the
    Param and the bound (tests/e2e/test_airflow_ui.py types 500 and checks both).
    The description spells the bounds out, as the form then shows no limits.
    """
    return Param(
        spec.default,
        type={int: "integer", float: "number", str: "string"}[spec.type],
        description=f"{spec.description} Allowed: {spec.allowed}.",
        **spec.json_schema(),
    )
