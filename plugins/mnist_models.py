"""The "MNIST models" page of the Airflow UI: the published model versions and their reports.

A FastAPI app that the api-server mounts under /mnist-models, shown inside the UI
through an entry in the Browse menu. It renders what mnist_tasks.registry returns
for `MNIST_MODELS_URI`, read through the Amazon provider's connection
(`MNIST_AWS_CONN_ID`); the registry does all the checking. Above the table, a chart
of each version's accuracy on MNIST and on the users' labelled test set, drawn as
inline SVG on the server: the page runs no scripts.

Airflow does not protect the endpoints of plugins. Every route here depends on
the auth manager's check that the caller may read the runs of mnist_retraining,
so a request without a login (the UI's session cookie or a bearer token) gets
401 and a login without that permission 403, as in the rest of the UI.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at run
# time, and the names they use are imported inside create_app.
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    import jinja2
    from fastapi import FastAPI
    from fastapi.responses import FileResponse

    from mnist_tasks.registry import ModelRegistry

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

# The accuracy chart, in SVG user units (the <svg> shrinks with the page). The margins
# hold the legend (top), the y labels (left) and the version labels with "latest"
# under them (bottom); half a version label (14 digits, bold for the latest) must fit
# right of the last point.
CHART_WIDTH, CHART_HEIGHT = 720, 250
CHART_MARGIN = {"top": 34, "right": 60, "bottom": 46, "left": 56}
# A version label's width per character at the chart's 11-unit font, and the space between two.
LABEL_CHAR_WIDTH, LABEL_GAP = 6.6, 14
CHART_Y_INTERVALS = 5  # the y axis aims at this many gaps between gridlines; round steps make it 2 to 7
# The least span of the y axis, for one value or equal ones: a band around them, not a flat line.
MIN_Y_SPAN = 0.01
# (row key, legend name) of each line, in drawing order; the template styles them by key.
CHART_SERIES = (("accuracy", "MNIST test set"), ("labeled_accuracy", "labelled test set"))


def render_page(*, rows: list[dict[str, Any]], models_uri: str) -> str:
    """The page for list_versions' rows (oldest first): the accuracy chart, then the table, newest version on top."""
    from mnist_tasks.registry import training_label

    return (
        page_templates()
        .get_template(PAGE_TEMPLATE)
        .render(
            dag_id=DAG_ID,
            models_uri=models_uri,
            chart=accuracy_chart(rows),
            rows=[{**row, "model": None if row["error"] else training_label(row)} for row in reversed(rows)],
        )
    )


def accuracy_chart(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the template draws accuracy per version; None when no readable version has an accuracy.

    `rows` are list_versions'; unreadable ones are left out. Each version gets an x
    position, oldest on the left. Each series of CHART_SERIES with a value gets a
    path through its points, broken (a new "M") where a version has none, and its
    points. The y axis spans the values, rounded out to a round step, so 0.97 and
    0.98 stand well apart. Coordinates are SVG units of a CHART_WIDTH × CHART_HEIGHT box.
    """
    drawn = sorted((row for row in rows if not row["error"]), key=lambda row: row["version"])
    values = [row[key] for row in drawn for key, _ in CHART_SERIES if row[key] is not None]
    if not values:
        return None
    left, top = CHART_MARGIN["left"], CHART_MARGIN["top"]
    right, bottom = CHART_WIDTH - CHART_MARGIN["right"], CHART_HEIGHT - CHART_MARGIN["bottom"]
    ticks = _y_ticks(min(values), max(values))
    low, high = ticks[0][0], ticks[-1][0]

    def y_of(value: float) -> float:
        return round(bottom - (value - low) / (high - low) * (bottom - top), 1)

    xs = _x_positions(len(drawn), left, right)
    latest = next((i for i, row in enumerate(drawn) if row["is_latest"]), None)
    series = [_series(drawn, key, name, xs, y_of) for key, name in CHART_SERIES]
    series = [line for line in series if line["points"]]
    label_width = max(len(str(row["version"])) for row in drawn) * LABEL_CHAR_WIDTH + LABEL_GAP
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "plot": {"left": left, "top": top, "right": right, "bottom": bottom},
        "y_ticks": [{"y": y_of(value), "label": label} for value, label in ticks],
        "x_labels": [
            {"x": xs[i], "text": str(drawn[i]["version"]), "latest": i == latest}
            for i in _labelled(len(drawn), xs, label_width, anchor=len(drawn) - 1 if latest is None else latest)
        ],
        "latest": None if latest is None else {"x": xs[latest], "version": drawn[latest]["version"]},
        "series": series,
        "summary": _chart_summary(drawn, series, None if latest is None else drawn[latest]["version"]),
    }


def _y_ticks(low: float, high: float) -> list[tuple[float, str]]:
    """(value, label) of the y axis' gridlines: a step of 1, 2 or 5 × 10^k, from below `low` to above `high`."""
    if high - low < MIN_Y_SPAN:
        # Accuracies lie in 0..1, so the band stays there: no "1.005" on the axis.
        middle = min(max((low + high) / 2, MIN_Y_SPAN / 2), 1 - MIN_Y_SPAN / 2)
        low, high = min(low, middle - MIN_Y_SPAN / 2), max(high, middle + MIN_Y_SPAN / 2)
    rough = (high - low) / CHART_Y_INTERVALS
    magnitude = 10 ** math.floor(math.log10(rough))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= rough * (1 - 1e-9))
    # The tolerances keep a value that is a multiple of the step, but for float error, on its gridline.
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return [(i * step, f"{i * step:.{decimals}f}") for i in range(first, last + 1)]


def _x_positions(count: int, left: float, right: float) -> list[float]:
    """Evenly spaced x of `count` versions, oldest at `left`; a single one in the middle."""
    if count == 1:
        return [round((left + right) / 2, 1)]
    return [round(left + i * (right - left) / (count - 1), 1) for i in range(count)]


def _labelled(count: int, xs: list[float], label_width: float, *, anchor: int) -> list[int]:
    """The indices of the versions whose label fits: every n-th, counted from `anchor`, so that one is always shown."""
    spacing = xs[1] - xs[0] if count > 1 else label_width
    every = max(1, math.ceil(label_width / spacing))
    return [i for i in range(count) if (i - anchor) % every == 0]


def _series(
    drawn: list[dict[str, Any]], key: str, name: str, xs: list[float], y_of: Callable[[float], float]
) -> dict[str, Any]:
    """One line of the chart: its SVG path, lifting the pen over versions without a value, and its points."""
    points, path, pen_down = [], [], False
    for x, row in zip(xs, drawn, strict=True):
        if row[key] is None:
            pen_down = False
            continue
        point = {"x": x, "y": y_of(row[key]), "version": row["version"], "value": row[key], "latest": row["is_latest"]}
        # Only the labelled set's size varies; MNIST's test set is always the same 10,000 digits.
        point["test_count"] = row["labeled_test_count"] if key == "labeled_accuracy" else None
        points.append(point)
        path.append(f"{'L' if pen_down else 'M'}{x},{point['y']}")
        pen_down = True
    return {"key": key, "name": name, "path": " ".join(path), "points": points}


def _chart_summary(drawn: list[dict[str, Any]], series: list[dict[str, Any]], latest: int | None) -> str:
    """The chart in words, for its aria-label: what a screen reader says instead of drawing it."""
    count = f"{len(drawn)} model version" + ("" if len(drawn) == 1 else "s")
    parts = [f"Accuracy of {count}, oldest {drawn[0]['version']} to newest {drawn[-1]['version']}."]
    for line in series:
        got = [point["value"] for point in line["points"]]
        parts.append(
            f"On the {line['name']}, {len(got)} of {len(drawn)} versions: first {got[0]:.4f}, last {got[-1]:.4f}, "
            f"lowest {min(got):.4f}, highest {max(got):.4f}."
        )
    if latest is not None:
        parts.append(f"The latest version is {latest}.")
    return " ".join(parts)


@cache
def page_templates() -> "jinja2.Environment":
    """The templates beside this file (this page's and mnist_review.py's), autoescaped: a run id or a key from
    the bucket is text, never markup."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def protected_app(title: str) -> "FastAPI":
    """A FastAPI app whose every route needs the right to read mnist_retraining's runs (see the module's docstring).

    FastAPI serves its docs and OpenAPI schema without the app's dependencies, so without
    a login: they are off. These pages are for people; nothing calls them as an API.
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI

    return FastAPI(
        title=title,
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )


@cache
def create_app() -> "FastAPI":
    """The plugin's FastAPI app, built once on first use: the models page and each version's report.

    Its imports live here and in the steps below because Airflow imports every
    plugin file in the scheduler and in each task process too, which never serve this app.
    """
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, HTMLResponse

    from mnist_tasks.model.report import REPORT_FILE

    app = protected_app("MNIST models")

    @app.get("/", response_class=HTMLResponse)
    def models_page() -> HTMLResponse:
        return HTMLResponse(_models_page(), headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get(f"/versions/{{version}}/{REPORT_FILE}", response_class=FileResponse)
    def version_report(version: Annotated[int, PathParam(gt=0)]) -> FileResponse:
        return _version_report(version)

    return app


def _model_registry() -> "ModelRegistry":
    """The registry at MNIST_MODELS_URI through the Airflow connection's client, made per request so a
    changed connection applies."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from mnist_tasks.registry import ModelRegistry
    from mnist_tasks.settings import Settings

    settings = Settings.from_env()
    return ModelRegistry(S3Hook(aws_conn_id=settings.aws_conn_id).get_conn(), settings.models_uri)


def _models_page() -> str:
    """The page's HTML; 502, naming the object, when the registry or its latest.json cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError
    from fastapi import HTTPException

    from mnist_tasks import registry

    model_registry = _model_registry()
    try:
        rows = registry.list_versions(registry=model_registry)
    except (BotoCoreError, ClientError, registry.DamagedObjectError) as err:
        raise HTTPException(502, f"cannot read the models in {model_registry.models_uri}: {err}") from err
    return render_page(rows=rows, models_uri=model_registry.models_uri)


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
    from mnist_tasks.model.report import REPORT_FILE

    model_registry = _model_registry()
    try:
        got = registry.download_files(registry=model_registry, version=version, names=[REPORT_FILE], dest_dir=dest_dir)
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
