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
import html
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from fastapi import FastAPI

DAG_ID = "mnist_retraining"
URL_PREFIX = "/mnist-models"
# Both pages are inline CSS and data: images and nothing else. The report, which
# the UI shows under its own origin, also runs sandboxed: even a report planted
# in the bucket together with a matching manifest cannot act as the logged-in user.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
REPORT_POLICY = f"{PAGE_POLICY}; img-src data:; sandbox"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a202c; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 0.35rem 0.8rem; border-bottom: 1px solid #e2e8f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 0.9em; }
.latest { background: #e6fffa; }
.badge { background: #2c7a7b; color: white; border-radius: 0.6rem; padding: 0.05rem 0.5rem; font-size: 0.8em; }
.failed { color: #c53030; }
"""


def _text(value: Any) -> str:
    return "–" if value is None else html.escape(str(value))


def _gate(passed: bool | None) -> str:
    if passed is None:
        return "not recorded"
    return "passed" if passed else '<span class="failed">failed</span>'


def _trained_with(row: dict[str, Any]) -> str:
    """"cnn, augmented" or "dense": the architecture, and whether the training images were augmented."""
    return f"{row['architecture']}, augmented" if row["augment"] == "on" else row["architecture"]


def render_page(*, rows: list[dict[str, Any]], models_uri: str) -> str:
    """The page for list_versions' rows (oldest first), newest version on top."""
    body = []
    for row in reversed(rows):
        version = _text(row["version"])
        accuracy = None if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        checksum = row["data_sha256"]
        body.append(
            f'<tr class="{"latest" if row["is_latest"] else ""}" data-version="{version}">'
            f"<td><code>{version}</code>{' <span class=badge>latest</span>' if row['is_latest'] else ''}</td>"
            f"<td>{_text(row['created_at'])}</td>"
            f"<td>{_text(_trained_with(row))}</td>"
            f'<td class="num">{_text(accuracy)}</td>'
            f"<td>{_gate(row['passed'])}</td>"
            # The first 12 hex digits tell data sets apart; the whole checksum is in the tooltip.
            f'<td><code title="{_text(checksum)}">{_text(checksum and checksum[:12])}</code></td>'
            f"<td><code>{_text(row['run_id'])}</code></td>"
            f'<td><a href="versions/{version}/report.html">report</a></td>'
            "</tr>"
        )
    if body:
        table = (
            "<table><thead><tr><th>version</th><th>created (UTC)</th><th>model</th><th>test accuracy</th><th>gate</th>"
            "<th>data checksum</th><th>run id</th><th></th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )
    else:
        table = f"<p>No model has been published to {_text(models_uri)} yet.</p>"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>MNIST models</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>MNIST models</h1><p>Published by <code>{DAG_ID}</code> to <code>{_text(models_uri)}</code>.</p>"
        f"{table}</body></html>"
    )


@cache
def create_app() -> "FastAPI":
    """The plugin's FastAPI app, built once on first use.

    Its imports live here because Airflow imports every plugin file in the
    scheduler and in each task process too, which never serve this app.
    """
    import tempfile
    from pathlib import Path

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.exceptions import BotoCoreError, ClientError
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, HTMLResponse
    from starlette.background import BackgroundTask

    from mnist_tasks import registry
    from mnist_tasks.report import REPORT_FILE
    from mnist_tasks.settings import Settings

    app = FastAPI(
        title="MNIST models",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))],
    )

    def registry_access() -> tuple[Any, str]:
        settings = Settings.from_env()
        return S3Hook(aws_conn_id=settings.aws_conn_id).get_conn(), settings.models_uri

    @app.get("/", response_class=HTMLResponse)
    def models_page() -> HTMLResponse:
        s3_client, models_uri = registry_access()
        try:
            rows = registry.list_versions(s3_client=s3_client, models_uri=models_uri)
        except (BotoCoreError, ClientError) as err:
            raise HTTPException(502, f"cannot read the models in {models_uri}: {err}") from err
        return HTMLResponse(
            render_page(rows=rows, models_uri=models_uri), headers={"Content-Security-Policy": PAGE_POLICY}
        )

    @app.get(f"/versions/{{version}}/{REPORT_FILE}", response_class=FileResponse)
    def version_report(version: Annotated[int, PathParam(gt=0)]) -> FileResponse:
        s3_client, models_uri = registry_access()
        scratch = tempfile.TemporaryDirectory(prefix="mnist-report-")
        try:
            got = registry.download_files(
                s3_client=s3_client,
                models_uri=models_uri,
                version=version,
                names=[REPORT_FILE],
                dest_dir=Path(scratch.name),
            )
        except (registry.VersionNotFoundError, registry.FileNotPublishedError) as err:
            scratch.cleanup()
            raise HTTPException(404, str(err)) from err
        except (registry.PublishVerificationError, BotoCoreError, ClientError) as err:
            # A report that differs from its manifest is never served, and storage
            # errors are errors, not a missing report.
            scratch.cleanup()
            raise HTTPException(502, str(err)) from err
        return FileResponse(
            got["files"][REPORT_FILE]["path"],
            media_type="text/html",
            headers={"Content-Security-Policy": REPORT_POLICY},
            background=BackgroundTask(scratch.cleanup),
        )

    return app


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
