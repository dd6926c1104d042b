"""The "MNIST models" plugin inside Airflow's own api-server app, against moto's S3 server.

The app is the one `airflow api-server` serves (create_app), with the project's
plugins folder mounted by Airflow's plugin manager and its SimpleAuthManager, so
the login checks are Airflow's, not stand-ins. Models are published with
publish_model, as the DAG does.
"""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from mnist_tasks.registry import ModelRegistry, build_manifest, publish_model

# Migrates an Airflow database and builds the api-server's app: about ten seconds.
pytestmark = pytest.mark.slow

BUCKET = "models-ui"
MODELS_URI = f"s3://{BUCKET}/mnist/"
OLD, NEW = 20261122020000, 20261123020000
MID = 20261122140000  # between the two
PAGE = "/mnist-models/"
REPORT = b"<!doctype html><title>report</title><h1>MNIST model</h1>"


def _report_url(version: int) -> str:
    return f"/mnist-models/versions/{version}/report.html"


@pytest.fixture(scope="module")
def client():
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True)
    return TestClient(create_app(apps="core"))


@pytest.fixture(scope="module")
def token(client) -> str:
    """A token from Airflow's login endpoint, for the admin user and its generated password."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    password = SimpleAuthManager.get_passwords()["admin"]
    response = client.post("/auth/token", json={"username": "admin", "password": password})
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


@pytest.fixture
def registry(monkeypatch, s3_client, aws_connection):
    """An empty model bucket that the plugin reads through the `aws_default` connection."""
    monkeypatch.setenv("MNIST_MODELS_URI", MODELS_URI)
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


@pytest.fixture(scope="module")
def plugin():
    """plugins/mnist_models.py, imported as Airflow's plugin manager finds it: from the plugins folder,
    which importing airflow puts on sys.path (conftest points AIRFLOW__CORE__PLUGINS_FOLDER at it)."""
    import importlib

    import airflow  # noqa: F401

    return importlib.import_module("mnist_models")


def _publish(
    s3_client,
    tmp_path: Path,
    version: int,
    *,
    run_id: str,
    report: bytes | None = REPORT,
    params: dict | None = None,
    metrics: dict | None = None,
) -> None:
    run_dir = tmp_path / str(version)
    run_dir.mkdir()
    files = {"model.keras": run_dir / "model.keras"}
    files["model.keras"].write_bytes(b"weights" * 40)
    if report is not None:
        files["report.html"] = run_dir / "report.html"
        files["report.html"].write_bytes(report)
    manifest = build_manifest(
        version=version,
        run_id=run_id,
        dag_id="mnist_retraining",
        params=params or {"epochs": 1},
        data={"data_sha256": "c390bcee1236" + "0" * 52},
        metrics=metrics or {"accuracy": 0.97314, "passed": True, "threshold": 0.93},
        started_at=None,
    )
    publish_model(registry=ModelRegistry(s3_client, MODELS_URI), version=version, files=files, manifest=manifest)


def _publish_scored(s3_client, tmp_path: Path, scores: dict[int, tuple[float, tuple | None]]) -> list[dict]:
    """Publish each version with its (MNIST accuracy, (labelled accuracy, test images) or None); list_versions' rows."""
    from mnist_tasks.registry import list_versions

    for version, (accuracy, labeled) in scores.items():
        metrics = {"accuracy": accuracy, "passed": True, "threshold": 0.93}
        if labeled is not None:
            metrics["labeled"] = dict(zip(("accuracy", "test_count"), labeled, strict=True))
        _publish(s3_client, tmp_path, version, run_id=f"scheduled__{version}", metrics=metrics)
    return list_versions(registry=ModelRegistry(s3_client, MODELS_URI))


@pytest.mark.parametrize("url", [PAGE, _report_url(NEW)])
def test_a_request_without_a_login_is_refused(client, registry, tmp_path, url):
    _publish(registry, tmp_path, NEW, run_id="manual__secret-run")

    response = client.get(url)

    assert response.status_code == 401
    assert "secret-run" not in response.text
    assert "MNIST model" not in response.text


@pytest.mark.parametrize("page", ["docs", "redoc", "openapi.json", "docs/oauth2-redirect"])
def test_fastapis_own_pages_are_off(client, token, page):
    # They would answer without a login: FastAPI serves them outside the app's dependencies.
    assert client.get(f"{PAGE}{page}").status_code == 404
    assert client.get(f"{PAGE}{page}", headers={"Authorization": f"Bearer {token}"}).status_code == 404


@pytest.mark.parametrize(
    ("user", "status"),
    [
        (None, 403),  # a token Airflow did not sign
        ({"username": "nobody", "role": None}, 403),  # a signed login without the right to read the DAG
    ],
)
def test_a_login_that_may_not_read_the_dag_is_refused(client, registry, tmp_path, user, status):
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    _publish(registry, tmp_path, NEW, run_id="manual__secret-run")
    bearer = "not-a-jwt" if user is None else get_auth_manager().generate_jwt(SimpleAuthManagerUser(**user))

    response = client.get(PAGE, headers={"Authorization": f"Bearer {bearer}"})

    assert response.status_code == status
    assert "secret-run" not in response.text


def test_the_page_lists_the_versions_and_marks_latest(client, token, registry, tmp_path):
    _publish(registry, tmp_path, OLD, run_id="scheduled__2026-11-22T02:00:00+00:00")
    cnn = {"architecture": "cnn", "augment": "on", "epochs": 6}
    _publish(registry, tmp_path, NEW, run_id="manual__<script>alert(1)</script>", params=cnn)

    response = client.get(PAGE, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    page = response.text
    assert page.index(f'data-version="{NEW}"') < page.index(f'data-version="{OLD}"')  # newest first
    assert page.count("badge>latest<") == 1
    latest_row = page[page.index(f'data-version="{NEW}"') :].split("</tr>")[0]
    assert "latest" in latest_row
    assert "0.9731" in latest_row
    assert "passed" in latest_row
    assert "c390bcee1236" in latest_row
    assert "<td>cnn, augmented</td>" in latest_row
    old_row = page[page.index(f'data-version="{OLD}"') :].split("</tr>")[0]
    assert "<td>dense</td>" in old_row  # a manifest from before the architecture Param
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in latest_row
    assert "<script>" not in page
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert f'href="versions/{NEW}/report.html"' in latest_row
    assert "scheduled__2026-11-22T02:00:00+00:00" in page


def test_the_ui_session_cookie_is_a_login(client, token, registry, tmp_path):
    _publish(registry, tmp_path, NEW, run_id="manual__cookie")
    client.cookies.set("_token", token)
    try:
        response = client.get(PAGE)
    finally:
        client.cookies.clear()

    assert response.status_code == 200
    assert "manual__cookie" in response.text


def test_an_empty_registry_says_so(client, token, registry):
    response = client.get(PAGE, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert f"No model has been published to {MODELS_URI} yet" in response.text
    assert "<svg" not in response.text


def test_an_unreadable_registry_is_an_error_naming_it(client, token, registry, monkeypatch):
    monkeypatch.setenv("MNIST_MODELS_URI", "s3://no-such-bucket/mnist/")

    response = client.get(PAGE, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 502
    assert "s3://no-such-bucket/mnist/" in response.json()["detail"]


def test_a_damaged_manifest_is_flagged_by_name_and_the_other_versions_still_listed(client, token, registry, tmp_path):
    _publish(registry, tmp_path, OLD, run_id="scheduled__old")
    _publish(registry, tmp_path, NEW, run_id="scheduled__new")
    registry.put_object(Bucket=BUCKET, Key=f"mnist/{OLD}/manifest.json", Body=b"{not json")

    response = client.get(PAGE, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert f"unreadable: checksum mismatch for s3://{BUCKET}/mnist/{OLD}/manifest.json" in response.text
    assert "scheduled__new" in response.text


def test_a_damaged_latest_json_is_an_error_naming_it(client, token, registry, tmp_path):
    _publish(registry, tmp_path, NEW, run_id="scheduled__new")
    registry.put_object(Bucket=BUCKET, Key="mnist/latest.json", Body=b"{not json")

    response = client.get(PAGE, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 502
    assert f"s3://{BUCKET}/mnist/latest.json is not valid JSON" in response.json()["detail"]


def test_a_report_is_served_when_it_matches_its_manifest(client, token, registry, tmp_path):
    _publish(registry, tmp_path, NEW, run_id="manual__a")

    response = client.get(_report_url(NEW), headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.content == REPORT
    # Shown under the UI's origin, so it runs sandboxed, without scripts.
    policy = response.headers["content-security-policy"]
    assert "sandbox" in policy and "default-src 'none'" in policy


def test_a_report_that_differs_from_its_manifest_is_never_served(client, token, registry, tmp_path):
    _publish(registry, tmp_path, NEW, run_id="manual__a")
    registry.put_object(Bucket=BUCKET, Key=f"mnist/{NEW}/report.html", Body=b"<h1>tampered</h1>")

    response = client.get(_report_url(NEW), headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 502
    assert "tampered" not in response.text
    assert f"mnist/{NEW}/report.html" in response.json()["detail"]


@pytest.mark.parametrize("version", [NEW, OLD])
def test_a_missing_report_is_404(client, token, registry, tmp_path, version):
    # NEW was published without a report; OLD was never published.
    _publish(registry, tmp_path, NEW, run_id="manual__a", report=None)

    response = client.get(_report_url(version), headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 404
    assert str(version) in response.json()["detail"]


def test_the_chart_runs_oldest_to_newest_with_gaps_where_a_version_has_no_labelled_accuracy(plugin, registry, tmp_path):
    # Handed newest first, as the table lists them: the chart still runs oldest to newest.
    rows = _publish_scored(
        registry, tmp_path, {NEW: (0.9805, (0.9375, 512)), OLD: (0.9712, (0.912, 480)), MID: (0.9768, None)}
    )

    chart = plugin.accuracy_chart(rows[::-1])

    mnist, labeled = chart["series"]
    assert [p["version"] for p in mnist["points"]] == [OLD, MID, NEW]
    assert [p["version"] for p in labeled["points"]] == [OLD, NEW]
    xs = [p["x"] for p in mnist["points"]]
    assert chart["plot"]["left"] == xs[0] < xs[1] < xs[2] == chart["plot"]["right"]
    assert [p["x"] for p in labeled["points"]] == [xs[0], xs[2]]
    # The pen lifts over MID: two moves, no line drawn through the missing value.
    assert labeled["path"].count("M") == 2 and "L" not in labeled["path"]
    assert mnist["path"].count("M") == 1 and mnist["path"].count("L") == 2
    assert [p["test_count"] for p in labeled["points"]] == [480, 512]
    assert [p["latest"] for p in mnist["points"]] == [False, False, True]
    assert chart["latest"] == {"x": xs[2], "version": NEW}


def test_the_charts_y_axis_spans_the_values_so_a_point_of_accuracy_shows(plugin, registry, tmp_path):
    chart = plugin.accuracy_chart(_publish_scored(registry, tmp_path, {OLD: (0.97, None), NEW: (0.98, None)}))

    ticks = [float(tick["label"]) for tick in chart["y_ticks"]]
    assert ticks == sorted(ticks) and 3 <= len(ticks) <= 8
    assert ticks[0] <= 0.97 and ticks[-1] >= 0.98 and ticks[-1] - ticks[0] <= 0.02  # not 0-1
    old, new = chart["series"][0]["points"]
    plot = chart["plot"]
    assert chart["y_ticks"][0]["y"] == plot["bottom"] and chart["y_ticks"][-1]["y"] == plot["top"]
    assert old["y"] - new["y"] >= (plot["bottom"] - plot["top"]) / 3  # up is better: SVG's y grows downward
    assert chart["series"][1:] == []  # no labelled accuracy yet: no line, no legend entry


@pytest.mark.parametrize("accuracy", [0.97314, 1.0])
def test_one_version_is_charted_within_a_band_around_its_accuracy(plugin, registry, tmp_path, accuracy):
    chart = plugin.accuracy_chart(_publish_scored(registry, tmp_path, {NEW: (accuracy, None)}))

    ticks = [float(tick["label"]) for tick in chart["y_ticks"]]
    assert ticks[0] < accuracy <= ticks[-1] <= 1.0  # never above what an accuracy can be
    assert ticks[-1] - ticks[0] <= 0.02
    (point,) = chart["series"][0]["points"]
    assert point["x"] == (chart["plot"]["left"] + chart["plot"]["right"]) / 2
    assert chart["plot"]["top"] <= point["y"] < chart["plot"]["bottom"]
    assert "1 model version," in chart["summary"]


def test_the_chart_leaves_out_unreadable_versions_and_is_none_without_an_accuracy(plugin, registry, tmp_path):
    from mnist_tasks.registry import list_versions

    _publish_scored(registry, tmp_path, {OLD: (0.9712, (0.91, 480)), NEW: (0.9805, None)})
    registry.put_object(Bucket=BUCKET, Key=f"mnist/{OLD}/manifest.json", Body=b"{not json")
    rows = list_versions(registry=ModelRegistry(registry, MODELS_URI))

    chart = plugin.accuracy_chart(rows)

    assert rows[0]["error"] and [line["key"] for line in chart["series"]] == ["accuracy"]
    assert [p["version"] for p in chart["series"][0]["points"]] == [NEW]
    assert plugin.accuracy_chart(rows[:1]) is None  # only the unreadable one
    assert plugin.accuracy_chart([]) is None
    assert plugin.accuracy_chart([{**rows[1], "accuracy": None}]) is None  # a manifest recording no accuracy


def test_many_versions_labels_are_thinned_around_the_latest(plugin, registry, tmp_path):
    (row,) = _publish_scored(registry, tmp_path, {OLD: (0.97, (0.9, 480))})
    versions = [OLD + day * 1_000_000 for day in range(40)]  # one a day, as the schedule makes them
    rows = [{**row, "version": v, "is_latest": v == versions[25]} for v in versions]

    chart = plugin.accuracy_chart(rows)

    labels = chart["x_labels"]
    assert 3 <= len(labels) < 40
    assert [label["text"] for label in labels if label["latest"]] == [str(versions[25])]
    gaps = [b["x"] - a["x"] for a, b in pairwise(labels)]
    assert min(gaps) > len(str(OLD)) * plugin.LABEL_CHAR_WIDTH  # no two labels overlap
    assert len(chart["series"][0]["points"]) == 40  # every version is still a point


def test_the_page_charts_both_accuracies_and_lists_the_labelled_one(client, token, registry, tmp_path):
    _publish_scored(
        registry, tmp_path, {OLD: (0.9712, None), MID: (0.9768, (0.912, 480)), NEW: (0.9805, (0.9375, 512))}
    )

    response = client.get(PAGE, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    page = response.text
    chart = page[page.index("<svg") : page.index("</svg>")]
    assert 'id="accuracy-chart"' in chart and 'role="img"' in chart
    assert page.index("</svg>") < page.index("<table")  # above the table
    assert "On the labelled test set, 2 of 3 versions: first 0.9120, last 0.9375" in chart  # its aria-label
    assert chart.count('<path class="series"') == 2
    assert chart.count('data-series="accuracy"') == chart.count('data-series="labeled_accuracy"') == 1
    assert chart.count("<title>") == 5  # a tooltip on each point
    assert ">latest</text>" in chart
    assert f"<title>version {NEW} (latest): labelled test set accuracy 0.9375 on 512 images</title>" in chart
    assert f"<title>version {OLD}: MNIST test set accuracy 0.9712</title>" in chart
    assert "<script" not in page
    new_row = page[page.index(f'data-version="{NEW}"') :].split("</tr>")[0]
    assert '<td class="num" title="on 512 labelled test images">0.9375</td>' in new_row
    old_row = page[page.index(f'data-version="{OLD}"') :].split("</tr>")[0]
    assert '<td class="num">0.9712</td>\n<td class="num">–</td>' in old_row  # from before the labelled set
