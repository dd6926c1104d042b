"""The "MNIST models" plugin inside Airflow's own api-server app, against moto's S3 server.

The app is the one `airflow api-server` serves (create_app), with the project's
plugins folder mounted by Airflow's plugin manager and its SimpleAuthManager, so
the login checks are Airflow's, not stand-ins. Models are published with
publish_model, as the DAG does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mnist_tasks.publish import build_manifest, publish_model

# Migrates an Airflow database and builds the api-server's app: about ten seconds.
pytestmark = pytest.mark.slow

BUCKET = "models-ui"
MODELS_URI = f"s3://{BUCKET}/mnist/"
OLD, NEW = 20261122020000, 20261123020000
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


def _publish(
    s3_client, tmp_path: Path, version: int, *, run_id: str, report: bytes | None = REPORT, params: dict | None = None
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
        metrics={"accuracy": 0.97314, "passed": True, "threshold": 0.93},
        started_at=None,
    )
    publish_model(s3_client=s3_client, models_uri=MODELS_URI, version=version, files=files, manifest=manifest)


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
