"""Airflow glue that both MNIST DAGs share: S3 client, artifact store, errors not retried, defaults, Params.

In plugins/ for the reason mnist_alerting.py gives: Airflow puts this folder on
sys.path in all its processes, the Celery workers' included. It defines no
AirflowPlugin and imports nothing heavy at module level (DAG files import it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, Param

from mnist_alerting import alert_task_failure
from mnist_tasks.params import ParamSpec
from mnist_tasks.settings import Settings

if TYPE_CHECKING:
    from mnist_tasks.artifacts import ArtifactStore


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


def s3_client(settings: Settings) -> Any:
    """boto3 S3 client from the Airflow connection (endpoint, region, credentials)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=settings.aws_conn_id).get_conn()


def artifact_store(settings: Settings, client: Any = None) -> ArtifactStore:
    """The artifact store, with this worker's cache under MNIST_DATA_DIR/artifacts."""
    from mnist_tasks.artifacts import ArtifactStore

    needs_s3 = settings.artifacts_uri.startswith("s3://")
    if needs_s3 and client is None:
        client = s3_client(settings)
    return ArtifactStore(settings.artifacts_uri, cache_dir=settings.data_dir / "artifacts", s3_client=client)


@contextmanager
def not_retried(*errors: type[Exception]) -> Iterator[None]:
    """Fail the task at once on these errors: bad bytes, a failed gate or an
    immutable version stay what they are, so retrying would only delay the alert."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except errors as err:
        raise AirflowFailException(str(err)) from err


def airflow_param(spec: ParamSpec) -> Param:
    """The trigger form's field for a Param of mnist_tasks.params: it shows and enforces the bounds by refusing
    a value outside them.

    The form's number fields take a top-level `minimum`/`maximum` as limits to
    clamp to: 500 epochs typed and submitted would silently run 100. Nested in
    `allOf` the bounds are out of the form's sight, and Airflow's validation of
    the Params refuses the trigger with an error that names the Param and the
    bound. The description spells the bounds out, as the form shows no limits.
    """
    return Param(
        spec.default,
        type={int: "integer", float: "number", str: "string"}[spec.type],
        description=f"{spec.description} Allowed: {spec.allowed}.",
        **spec.json_schema(),
    )
