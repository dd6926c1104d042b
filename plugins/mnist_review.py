"""The "MNIST review" page of the Airflow UI: people label the images batch predictions were unsure of.

A FastAPI app that the api-server mounts under /mnist-review, shown inside the UI
through an entry in the Browse menu. It only wires: mnist_tasks/feedback/labeling.py lists the
queue, labels, discards and keeps the audit record, on three prefixes of the settings
(MNIST_REVIEW_URI, MNIST_LABELED_URI, MNIST_REVIEW_LOG_URI; its docstring shows their
layout), through the Amazon provider's connection (`MNIST_AWS_CONN_ID`). Its errors
become HTTP's here: a bad key or digit 400, an image no longer waiting 404, the store's
failures 502 naming the object.

| route | does | needs |
|---|---|---|
| GET / | the waiting images, newest run first, PAGE_SIZE at a time (`?offset=`) | GET on the runs of mnist_retraining |
| GET /image?key= | one waiting image | the same |
| GET /review.js | the page's keyboard and buttons | the same |
| POST /label {"key", "digit"} | files the image under its digit, then removes it from review | PUT on those runs too |
| POST /discard {"key"} | removes the image from review unlabelled | PUT on those runs too |

Airflow does not protect the endpoints of plugins: every route depends on the
auth manager, as mnist_models.py's do. A label changes what the next runs of
mnist_retraining train on, so the two actions need the right to change its runs
(PUT on DagAccessEntity.RUN: Airflow's User role and above), while reading needs
only the right to see them (Viewer). The page's scripts authenticate with the UI's
session cookie, which the browser sends with their same-origin requests; because a
cookie also rides along on requests other sites make, the actions accept only
`Content-Type: application/json`, which no HTML form can send and cross-origin
scripts cannot send without a CORS preflight that Airflow does not grant.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at run
# time, and the names they use are imported inside create_app.
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from airflow.plugins_manager import AirflowPlugin

# The plugins folder is on sys.path in every Airflow process: the models page's app and templates are shared.
from mnist_models import DAG_ID, page_templates, protected_app

if TYPE_CHECKING:
    from fastapi import FastAPI, Response

    from mnist_tasks.feedback.labeling import ReviewItem
    from mnist_tasks.settings import Settings

URL_PREFIX = "/mnist-review"
# mnist_models.py's PAGE_POLICY, plus this page's own script, its images and its fetch calls.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; img-src 'self'; connect-src 'self'"
# An image opened on its own runs nothing, whatever its bytes are.
IMAGE_POLICY = "default-src 'none'; sandbox"
PAGE_SIZE = 200  # images rendered at once: a person labels them in minutes, a browser shows them at ease

# Beside this file, so they travel with the plugins folder (the Dockerfile copies it whole).
PAGE_TEMPLATE = "mnist_review.html.j2"
SCRIPT = Path(__file__).with_name("static") / "mnist_review.js"


def render_page(*, items: "list[ReviewItem]", waiting: int, offset: int, review_uri: str) -> str:
    """The page for the shown items (in order, each with its run), of `waiting` in all from `offset` on."""
    runs: list[dict[str, Any]] = []
    for item in items:
        if not runs or runs[-1]["run"] != item["run"]:
            runs.append({"run": item["run"], "items": []})
        runs[-1]["items"].append(item)
    return (
        page_templates()
        .get_template(PAGE_TEMPLATE)
        .render(runs=runs, shown=len(items), waiting=waiting, offset=offset, page_size=PAGE_SIZE, review_uri=review_uri)
    )


@cache
def create_app() -> "FastAPI":
    """The plugin's FastAPI app, built once on first use.

    Its imports live here and in the steps below because Airflow imports every
    plugin file in the scheduler and in each task process too, which never serve this app.
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
    from fastapi import Depends, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, Response

    app = protected_app("MNIST review")
    may_change_runs = [Depends(requires_access_dag("PUT", DagAccessEntity.RUN, param_dag_id=DAG_ID))]

    async def action_body(request: Request) -> dict[str, Any]:
        return _action_body(request.headers.get("content-type", ""), await request.body())

    ActionBody = Annotated[dict[str, Any], Depends(action_body)]

    @app.get("/", response_class=HTMLResponse)
    def review_page(offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
        return HTMLResponse(_review_page(offset), headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/image")
    def review_image(key: str) -> Response:
        return _review_image(key)

    @app.get("/review.js")
    def review_script() -> FileResponse:
        return FileResponse(SCRIPT, media_type="text/javascript", headers={"X-Content-Type-Options": "nosniff"})

    @app.post("/label", dependencies=may_change_runs)
    def label(body: ActionBody, user: GetUserDep) -> dict[str, Any]:
        return _label(body, user.get_name())

    @app.post("/discard", dependencies=may_change_runs)
    def discard(body: ActionBody, user: GetUserDep) -> dict[str, Any]:
        return _discard(body, user.get_name())

    return app


def _review_access() -> tuple[Any, "Settings"]:
    """(S3 client from the Airflow connection, settings), read per request so a changed connection applies."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from mnist_tasks.settings import Settings

    settings = Settings.from_env()
    return S3Hook(aws_conn_id=settings.aws_conn_id).get_conn(), settings


@contextmanager
def _as_http_errors() -> Iterator[None]:
    """labeling.py's errors as HTTP's: a bad request 400, an image no longer waiting 404, the store's failures 502."""
    from botocore.exceptions import BotoCoreError, ClientError
    from fastapi import HTTPException

    from mnist_tasks.feedback import labeling

    try:
        yield
    except labeling.ReviewRequestError as err:
        raise HTTPException(400, str(err)) from err
    except labeling.ReviewItemNotFoundError as err:
        raise HTTPException(404, str(err)) from err
    except labeling.ReviewRemovalError as err:
        raise HTTPException(502, str(err)) from err
    except (BotoCoreError, ClientError) as err:
        # labeling.py notes the object, `cannot write s3://…`; botocore's message names only the operation.
        raise HTTPException(502, ": ".join([*getattr(err, "__notes__", []), str(err)])) from err


def _review_page(offset: int) -> str:
    """The page's HTML: the queue from a listing, and the JSON of the shown images only."""
    from mnist_tasks.feedback import labeling

    s3_client, settings = _review_access()
    with _as_http_errors():
        queue = labeling.review_queue(s3_client=s3_client, review_uri=settings.review_uri)
        shown = queue[offset : offset + PAGE_SIZE]
        items = labeling.review_items(s3_client=s3_client, review_uri=settings.review_uri, keys=shown)
    return render_page(items=items, waiting=len(queue), offset=offset, review_uri=settings.review_uri)


def _review_image(key: str) -> "Response":
    """A waiting image's bytes, typed by its suffix; 404 for any key that is not one."""
    from fastapi import HTTPException
    from fastapi.responses import Response

    from mnist_tasks.feedback import labeling
    from mnist_tasks.s3 import split_s3_dir

    s3_client, settings = _review_access()
    with _as_http_errors():
        try:
            image = labeling.read_review_image(s3_client=s3_client, review_uri=settings.review_uri, key=key)
        except labeling.ReviewRequestError as err:
            # To a GET, a key that cannot name a waiting image names nothing: 404, as for one taken out.
            bucket, _ = split_s3_dir(settings.review_uri)
            raise HTTPException(404, f"no image waiting for review at s3://{bucket}/{key}") from err
    return Response(
        image,
        # A suffix labeling.py does not know is served as bytes, which the browser (nosniff) will not render.
        media_type=labeling.content_type(key),
        headers={"Content-Security-Policy": IMAGE_POLICY, "X-Content-Type-Options": "nosniff"},
    )


def _label(body: dict[str, Any], user: str) -> dict[str, Any]:
    """POST /label: the body's "key" and "digit" go to label_image as they are, which checks them."""
    from mnist_tasks.feedback import labeling

    s3_client, settings = _review_access()
    with _as_http_errors():
        labeled = labeling.label_image(
            s3_client=s3_client,
            review_uri=settings.review_uri,
            labeled_uri=settings.labeled_uri,
            review_log_uri=settings.review_log_uri,
            key=body.get("key"),
            digit=body.get("digit"),
            user=user,
        )
    return dict(labeled)


def _discard(body: dict[str, Any], user: str) -> dict[str, Any]:
    """POST /discard: the body's "key" goes to discard_image as it is, which checks it."""
    from mnist_tasks.feedback import labeling

    s3_client, settings = _review_access()
    with _as_http_errors():
        discarded = labeling.discard_image(
            s3_client=s3_client,
            review_uri=settings.review_uri,
            review_log_uri=settings.review_log_uri,
            key=body.get("key"),
            user=user,
        )
    return dict(discarded)


def _action_body(content_type: str, body: bytes) -> dict[str, Any]:
    """An action's JSON object; 415 for any other content type (see the module's docstring), else 400."""
    from fastapi import HTTPException

    if content_type.partition(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, f"send the action as Content-Type: application/json, not {content_type!r}")
    try:
        parsed = json.loads(body)
    except ValueError as err:
        raise HTTPException(400, f"the body is not valid JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return parsed


class MnistReviewPlugin(AirflowPlugin):
    name = "mnist_review"
    external_views = [
        {
            "name": "MNIST review",
            # Relative to the UI's base URL, so it also works behind a proxy under a sub-path.
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "mnist-review",
            "destination": "nav",
            "category": "browse",
        }
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "MNIST review"}]
