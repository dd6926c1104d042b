"""The "MNIST models" page of the Airflow UI: the published model versions and their reports.

A FastAPI app that the api-server mounts under /mnist-models, shown inside the UI
through an entry in the Browse menu. It renders what mnist_tasks.registry returns
for `MNIST_MODELS_URI`, read through the Amazon provider's connection
(`MNIST_AWS_CONN_ID`); the registry does all the checking.

Airflow does not protect the endpoints of plugins. Every route here depends on
the auth manager's check that the caller may read the runs of mnist_retraining,
so a request without a login (the UI's session cookie or a bearer token) gets
401 and a login without that permission 403, as in the rest of the UI.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at run
# time, and the names they use are imported inside create_app.
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    import jinja2
    from fastapi import FastAPI
    from fastapi.responses import FileResponse

DAG_ID = "mnist_retraining"
URL_PREFIX = "/mnist-models"
# Both pages are inline CSS and data: images and nothing else. The report, which
# the UI shows under its own origin, also runs sandboxed: even a report planted
# in the bucket together with a matching manifest cannot act as the logged-in user.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
REPORT_POLICY = f"{PAGE_POLICY}; img-src data:; sandbox"

# Beside this file, so it travels with the plugins folder (the Dockerfile copies it whole).
TEMPLATES_DIR = Path(__file__).with_name("templates")
PAGE_TEMPLATE = "mnist_models.html.j2"


def render_page(*, rows: list[dict[str, Any]], models_uri: str) -> str:
    """The page for list_versions' rows (oldest first), newest version on top."""
    from mnist_tasks.registry import training_label

    return (
        _templates()
        .get_template(PAGE_TEMPLATE)
        .render(
            dag_id=DAG_ID,
            models_uri=models_uri,
            rows=[{**row, "model": None if row["error"] else training_label(row)} for row in reversed(rows)],
        )
    )


@cache
def _templates() -> "jinja2.Environment":
    """This folder's templates, autoescaped: a run id from the bucket is text, never markup."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def create_app() -> "FastAPI":
    """The plugin's FastAPI app, built once on first use: the models page and each version's report.

    Its imports live here and in the steps below because Airflow imports every
    plugin file in the scheduler and in each task process too, which never serve this app.
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, HTMLResponse

    from mnist_tasks.report import REPORT_FILE

    app = FastAPI(
        title="MNIST models",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))],
        # FastAPI serves these without the app's dependencies, so without a login; the
        # page is for people, and nothing calls it as an API.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/", response_class=HTMLResponse)
    def models_page() -> HTMLResponse:
        return HTMLResponse(_models_page(), headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get(f"/versions/{{version}}/{REPORT_FILE}", response_class=FileResponse)
    def version_report(version: Annotated[int, PathParam(gt=0)]) -> FileResponse:
        return _version_report(version)

    return app


def _registry_access() -> tuple[Any, str]:
    """(S3 client from the Airflow connection, models URI), read per request so a changed connection applies."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from mnist_tasks.settings import Settings

    settings = Settings.from_env()
    return S3Hook(aws_conn_id=settings.aws_conn_id).get_conn(), settings.models_uri


def _models_page() -> str:
    """The page's HTML; 502, naming the object, when the registry or its latest.json cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError
    from fastapi import HTTPException

    from mnist_tasks import registry

    s3_client, models_uri = _registry_access()
    try:
        rows = registry.list_versions(s3_client=s3_client, models_uri=models_uri)
    except (BotoCoreError, ClientError, registry.DamagedObjectError) as err:
        raise HTTPException(502, f"cannot read the models in {models_uri}: {err}") from err
    return render_page(rows=rows, models_uri=models_uri)


def _version_report(version: int) -> "FileResponse":
    """The version's report.html, served from a scratch directory deleted once it is sent."""
    import tempfile

    from fastapi.responses import FileResponse
    from starlette.background import BackgroundTask

    scratch = tempfile.TemporaryDirectory(prefix="mnist-report-")
    try:
        report = _download_report(version, Path(scratch.name))
    except BaseException:
        scratch.cleanup()
        raise
    return FileResponse(
        report,
        media_type="text/html",
        headers={"Content-Security-Policy": REPORT_POLICY},
        background=BackgroundTask(scratch.cleanup),
    )


def _download_report(version: int, dest_dir: Path) -> str:
    """Path of the version's report.html, sha256-checked against its manifest; 404 or 502 otherwise."""
    from botocore.exceptions import BotoCoreError, ClientError
    from fastapi import HTTPException

    from mnist_tasks import registry
    from mnist_tasks.report import REPORT_FILE

    s3_client, models_uri = _registry_access()
    try:
        got = registry.download_files(
            s3_client=s3_client, models_uri=models_uri, version=version, names=[REPORT_FILE], dest_dir=dest_dir
        )
    except (registry.VersionNotFoundError, registry.FileNotPublishedError) as err:
        raise HTTPException(404, str(err)) from err
    except (registry.PublishVerificationError, BotoCoreError, ClientError) as err:
        # A report that differs from its manifest is never served, and storage
        # errors are errors, not a missing report.
        raise HTTPException(502, str(err)) from err
    return got["files"][REPORT_FILE]["path"]


class MnistModelsPlugin(AirflowPlugin):
    name = "mnist_models"
    external_views = [
        {
            "name": "MNIST models",
            # Relative to the UI's base URL, so it also works behind a proxy under a sub-path.
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "mnist-models",
            "destination": "nav",
            "category": "browse",
        }
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "MNIST models"}]
