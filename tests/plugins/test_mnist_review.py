"""The "MNIST review" plugin inside Airflow's own api-server app, against moto's S3 server.

As in test_mnist_models.py, the app is the one `airflow api-server` serves, with the
project's plugins folder and SimpleAuthManager, so the login and permission checks are
Airflow's. Review items are put in as mnist_tasks/feedback/review.py leaves them: an image and
its JSON beside it, one directory per batch-prediction run.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_labeling import BUCKET, audit_records, next_second, stored_keys

# Migrates an Airflow database and builds the api-server's app: about ten seconds.
pytestmark = pytest.mark.slow

REVIEW_URI = f"s3://{BUCKET}/review/"
LABELED_URI = f"s3://{BUCKET}/labeled/"
REVIEW_LOG_URI = f"s3://{BUCKET}/review-log/"
PAGE = "/mnist-review/"
OLD_RUN, NEW_RUN = "scheduled__2026-11-23T02%3A00%3A00%2B00%3A00", "manual__b"
IMAGE = b"\x89PNG\r\n\x1a\n" + b"pixels" * 20
TOP3 = [[7, 0.61], [1, 0.3], [9, 0.05]]


@pytest.fixture(scope="module")
def client():
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True)
    return TestClient(create_app(apps="core"))


def _serving_module(client) -> dict:
    """The globals of the plugin module whose app the client serves. Not sys.modules["mnist_review"]: once a
    session has loaded the plugins folder again (each dag.test() of another test module may), that holds the
    newest load, and the api-server app keeps the module it was built from."""
    from starlette.routing import Mount

    mount = next(route for route in client.app.routes if isinstance(route, Mount) and route.path == "/mnist-review")
    page = next(route for route in mount.app.routes if getattr(route, "path", None) == "/")
    return page.endpoint.__globals__


def _bearer(username: str, role: str | None) -> dict[str, str]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def admin(client) -> dict[str, str]:
    """The admin's headers, with a token from Airflow's login endpoint and the generated password."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    password = SimpleAuthManager.get_passwords()["admin"]
    response = client.post("/auth/token", json={"username": "admin", "password": password})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def store(monkeypatch, s3_client, aws_connection):
    """An empty bucket for the three prefixes, which the plugin reads through the `aws_default` connection."""
    monkeypatch.setenv("MNIST_REVIEW_URI", REVIEW_URI)
    monkeypatch.setenv("MNIST_LABELED_URI", LABELED_URI)
    monkeypatch.setenv("MNIST_REVIEW_LOG_URI", REVIEW_LOG_URI)
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def _put_item(s3_client, run: str, name: str, *, image: bytes = IMAGE, top3: list | None = None) -> str:
    """A review item as review.py writes it; its key."""
    key = f"review/{run}/{name}"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=image)
    facts = {
        "source": f"s3://inbox/images/{name}",
        "status": "low_confidence",
        "probability": 0.61,
        "top3": TOP3 if top3 is None else top3,
        "model_version": 20261123020000,
        "reviewed_at": "2026-11-23T02:10:00+00:00",
    }
    s3_client.put_object(Bucket=BUCKET, Key=f"{key}.json", Body=json.dumps(facts).encode())
    return key


def _item_html(page: str, key: str) -> str:
    return page[page.index(f'data-review-key="{key}"') :].split("</li>")[0]


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", PAGE, None),
        ("GET", f"{PAGE}image?key=review/{NEW_RUN}/a.png", None),
        ("GET", f"{PAGE}review.js", None),
        ("POST", f"{PAGE}label", {"key": f"review/{NEW_RUN}/a.png", "digit": 3}),
        ("POST", f"{PAGE}discard", {"key": f"review/{NEW_RUN}/a.png"}),
    ],
)
def test_a_request_without_a_login_is_refused(client, store, method, url, body):
    _put_item(store, NEW_RUN, "a.png")

    response = client.request(method, url, json=body)

    assert response.status_code == 401
    assert sorted(stored_keys(store, "")) == [f"review/{NEW_RUN}/a.png", f"review/{NEW_RUN}/a.png.json"]


@pytest.mark.parametrize("page", ["docs", "redoc", "openapi.json"])
def test_fastapis_own_pages_are_off(client, admin, page):
    assert client.get(f"{PAGE}{page}", headers=admin).status_code == 404


def test_a_viewer_may_look_but_not_label_or_discard(client, store):
    key = _put_item(store, NEW_RUN, "a.png")
    viewer = _bearer("viewer", "viewer")

    assert client.get(PAGE, headers=viewer).status_code == 200
    assert client.post(f"{PAGE}label", headers=viewer, json={"key": key, "digit": 3}).status_code == 403
    assert client.post(f"{PAGE}discard", headers=viewer, json={"key": key}).status_code == 403
    assert client.get(PAGE, headers=_bearer("nobody", None)).status_code == 403
    assert sorted(stored_keys(store, "")) == [key, f"{key}.json"]


def test_the_page_lists_the_waiting_images_newest_run_first_with_the_models_top3(client, admin, store):
    # Named so that the runs' names alone would put the old one first.
    old = [_put_item(store, "a-old", name) for name in ("2.png", "1.png")]
    next_second()
    new = _put_item(store, "b-new", "x<script>.png", top3=[[3, 0.4], [8, 0.35], [5, 0.1]])
    store.put_object(Bucket=BUCKET, Key="review/b-new/notes.txt", Body=b"not an image")

    response = client.get(PAGE, headers=admin)

    assert response.status_code == 200, response.text
    page = response.text
    assert re.findall(r'data-review-key="([^"]+)"', page) == [html.escape(new), *sorted(old)]
    assert '<strong id="waiting" data-count="3">3</strong>' in page
    newest = _item_html(page, html.escape(new))
    assert 'src="image?key=review/b-new/x%3Cscript%3E.png"' in newest
    assert "3 (40.0%), 8 (35.0%), 5 (10.0%)" in newest
    assert 'data-digit="3">3 <small>40.0%</small>' in newest
    assert "low_confidence" in newest
    assert "20261123020000" in newest
    assert "s3://inbox/images/x&lt;script&gt;.png" in newest
    assert "7 (61.0%), 1 (30.0%), 9 (5.0%)" in _item_html(page, old[0])
    assert "notes.txt" not in page
    # The one script is the served one, by a relative URL; the policy lets nothing else run.
    assert page.count("<script") == 1 and '<script src="review.js" defer></script>' in page
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy


def test_the_page_names_the_run_and_flags_missing_or_damaged_details(client, admin, store):
    run = "manual__2026-11-23T22%3A41%3A07%2B00%3A00"
    store.put_object(Bucket=BUCKET, Key=f"review/{run}/lone.png", Body=IMAGE)
    damaged = _put_item(store, run, "damaged.png", top3=[["seven", 0.5]])

    page = client.get(PAGE, headers=admin).text

    assert "manual__2026-11-23T22:41:07+00:00" in page
    assert f"no review/{run}/lone.png.json" in _item_html(page, f"review/{run}/lone.png")
    assert "not a list of [digit, probability] pairs" in _item_html(page, damaged)


def test_a_long_queue_is_shown_a_page_at_a_time(client, admin, store, monkeypatch):
    monkeypatch.setitem(_serving_module(client), "PAGE_SIZE", 2)
    keys = [_put_item(store, NEW_RUN, f"{i}.png") for i in range(5)]

    first = client.get(PAGE, headers=admin).text
    second = client.get(f"{PAGE}?offset=2", headers=admin).text

    assert re.findall(r'data-review-key="([^"]+)"', first) == keys[:2]
    assert re.findall(r'data-review-key="([^"]+)"', second) == keys[2:4]
    assert "Showing 1–2" in first and '<a href="?offset=2">the next 2</a> (3 more)' in first
    assert "Showing 3–4" in second and '<a href="?offset=0">the previous 2</a>' in second
    beyond = client.get(f"{PAGE}?offset=9", headers=admin).text
    assert "data-review-key" not in beyond and 'None from image 10 on: <a href=".">the first ones</a>' in beyond


def test_the_ui_session_cookie_is_a_login(client, admin, store):
    key = _put_item(store, NEW_RUN, "a.png")
    client.cookies.set("_token", admin["Authorization"].removeprefix("Bearer "))
    try:
        page = client.get(PAGE)
        labelled = client.post(f"{PAGE}label", json={"key": key, "digit": 7})
    finally:
        client.cookies.clear()

    assert page.status_code == 200
    assert labelled.status_code == 200, labelled.text


def test_an_image_is_served_with_its_type(client, admin, store):
    key = _put_item(store, NEW_RUN, "Scan.JPG")

    response = client.get(f"{PAGE}image", params={"key": key}, headers=admin)

    assert response.status_code == 200
    assert response.content == IMAGE
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "key",
    [
        "labeled/7/secret.png",  # outside the review prefix
        f"review/{NEW_RUN}/a.png.json",  # the facts, not the image
        f"review/{NEW_RUN}/gone.png",  # not (or no longer) there
        "review/",
    ],
)
def test_the_image_route_serves_only_images_waiting_for_review(client, admin, store, key):
    _put_item(store, NEW_RUN, "a.png")
    store.put_object(Bucket=BUCKET, Key="labeled/7/secret.png", Body=b"labelled bytes")

    response = client.get(f"{PAGE}image", params={"key": key}, headers=admin)

    assert response.status_code == 404
    assert "labelled bytes" not in response.text


def test_label_files_the_image_by_its_content_and_records_who_did_it(client, admin, store):
    key = _put_item(store, NEW_RUN, "sub/Digit.PNG")

    response = client.post(f"{PAGE}label", headers=admin, json={"key": key, "digit": 4})

    assert response.status_code == 200, response.text
    labeled_key = f"labeled/4/{hashlib.sha256(IMAGE).hexdigest()}.png"
    assert response.json() == {"review_key": key, "labeled_key": labeled_key, "digit": 4}
    assert store.get_object(Bucket=BUCKET, Key=labeled_key)["Body"].read() == IMAGE
    assert stored_keys(store, "review/") == []
    [(record_key, record)] = audit_records(store)
    assert re.fullmatch(r"review-log/\d{4}-\d\d-\d\d/\d{8}T\d{6}\.\d{6}Z-[0-9a-f-]{36}\.json", record_key)
    assert record_key.startswith(f"review-log/{record['at'][:10]}/")
    assert record == {
        "action": "label",
        "user": "admin",
        "at": record["at"],
        "review_key": key,
        "labeled_key": labeled_key,
        "digit": 4,
        "model_top3": TOP3,
        "model_version": 20261123020000,
        "source": "s3://inbox/images/sub/Digit.PNG",
    }


def test_the_same_image_labelled_twice_is_one_object_and_under_two_digits_a_visible_conflict(client, admin, store):
    first, second, third = (_put_item(store, run, "a.png") for run in ("r1", "r2", "r3"))

    for key, digit in ((first, 1), (second, 1), (third, 7)):
        assert client.post(f"{PAGE}label", headers=admin, json={"key": key, "digit": digit}).status_code == 200

    name = hashlib.sha256(IMAGE).hexdigest() + ".png"
    assert sorted(stored_keys(store, "labeled/")) == [f"labeled/1/{name}", f"labeled/7/{name}"]


def test_discard_removes_the_image_unlabelled_and_records_it(client, admin, store):
    key = _put_item(store, NEW_RUN, "a.png")

    response = client.post(f"{PAGE}discard", headers=admin, json={"key": key})

    assert response.status_code == 200, response.text
    assert stored_keys(store, "review/") == []
    assert stored_keys(store, "labeled/") == []
    [(_, record)] = audit_records(store)
    assert record["action"] == "discard"
    assert (record["user"], record["review_key"], record["model_top3"]) == ("admin", key, TOP3)
    assert "labeled_key" not in record and "digit" not in record


@pytest.mark.parametrize(("action", "body"), [("label", {"digit": 2}), ("discard", {})])
def test_a_repeated_action_is_404_and_changes_nothing(client, admin, store, action, body):
    key = _put_item(store, NEW_RUN, "a.png")
    assert client.post(f"{PAGE}{action}", headers=admin, json={"key": key, **body}).status_code == 200

    again = client.post(f"{PAGE}{action}", headers=admin, json={"key": key, **body})

    assert again.status_code == 404
    assert again.json()["detail"] == f"s3://{BUCKET}/{key} is not waiting for review (labelled or discarded)"
    assert len(audit_records(store)) == 1


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"key": f"review/{NEW_RUN}/a.png", "digit": 10}, '"digit" must be a whole number from 0 to 9, got 10'),
        ({"key": f"review/{NEW_RUN}/a.png", "digit": -1}, "got -1"),
        ({"key": f"review/{NEW_RUN}/a.png", "digit": "3"}, "got '3'"),
        ({"key": f"review/{NEW_RUN}/a.png", "digit": 3.0}, "got 3.0"),
        ({"key": f"review/{NEW_RUN}/a.png", "digit": True}, "got True"),
        ({"key": f"review/{NEW_RUN}/a.png"}, "got None"),
        ({"key": "labeled/3/a.png", "digit": 3}, f"s3://{BUCKET}/labeled/3/a.png is not under the review prefix"),
        ({"key": f"review/{NEW_RUN}/a.png.json", "digit": 3}, "is the facts beside an image, not the image"),
        ({"key": f"review/{NEW_RUN}/notes.txt", "digit": 3}, "is not an image's name"),
        ({"digit": 3}, '"key" must be the key of an image under'),
        ([f"review/{NEW_RUN}/a.png", 3], "the body must be a JSON object"),
    ],
)
def test_a_bad_label_request_is_400_and_changes_nothing(client, admin, store, body, detail):
    _put_item(store, NEW_RUN, "a.png")

    response = client.post(f"{PAGE}label", headers=admin, json=body)

    assert response.status_code == 400
    assert detail in response.json()["detail"]
    assert len(stored_keys(store, "")) == 2


def test_a_form_post_is_refused(client, admin, store):
    # What a cross-site HTML form can send, with the UI's cookie riding along.
    key = _put_item(store, NEW_RUN, "a.png")
    client.cookies.set("_token", admin["Authorization"].removeprefix("Bearer "))
    try:
        form = client.post(f"{PAGE}label", data={"key": key, "digit": "3"})
        text = client.post(f"{PAGE}discard", content=json.dumps({"key": key}), headers={"Content-Type": "text/plain"})
    finally:
        client.cookies.clear()

    assert form.status_code == 415
    assert text.status_code == 415
    assert "application/json" in form.json()["detail"]
    assert sorted(stored_keys(store, "")) == [key, f"{key}.json"]


def test_a_store_that_refuses_the_label_is_502_naming_it_and_the_image_still_waits(client, admin, store, monkeypatch):
    monkeypatch.setenv("MNIST_LABELED_URI", "s3://no-such-bucket/labeled/")
    key = _put_item(store, NEW_RUN, "a.png")

    response = client.post(f"{PAGE}label", headers=admin, json={"key": key, "digit": 3})

    assert response.status_code == 502
    assert f"s3://no-such-bucket/labeled/3/{hashlib.sha256(IMAGE).hexdigest()}.png" in response.json()["detail"]
    assert sorted(stored_keys(store, "review/")) == [key, f"{key}.json"]


def test_a_store_that_keeps_what_it_was_told_to_delete_is_502_naming_it(client, admin, store, monkeypatch):
    plugin = _serving_module(client)
    access = plugin["_review_access"]

    def delete_objects(*, Bucket, Delete):  # boto3's argument names
        # As a store with a deny policy answers: 200, with every key listed as kept.
        kept = {"Code": "AccessDenied", "Message": "Access Denied"}
        return {"Errors": [{"Key": item["Key"], **kept} for item in Delete["Objects"]]}

    def keeping_access():
        s3_client, settings = access()
        monkeypatch.setattr(s3_client, "delete_objects", delete_objects)
        return s3_client, settings

    monkeypatch.setitem(plugin, "_review_access", keeping_access)
    key = _put_item(store, NEW_RUN, "a.png")

    response = client.post(f"{PAGE}discard", headers=admin, json={"key": key})

    assert response.status_code == 502
    assert response.json()["detail"] == f"cannot delete s3://{BUCKET}/{key}: AccessDenied Access Denied"
    assert sorted(stored_keys(store, "review/")) == [key, f"{key}.json"]


def test_an_unreadable_review_prefix_is_502_naming_it(client, admin, store, monkeypatch):
    monkeypatch.setenv("MNIST_REVIEW_URI", "s3://no-such-bucket/review/")

    response = client.get(PAGE, headers=admin)

    assert response.status_code == 502
    assert "s3://no-such-bucket/review/" in response.json()["detail"]


def test_an_empty_review_prefix_says_so(client, admin, store):
    page = client.get(PAGE, headers=admin).text

    assert '<strong id="waiting" data-count="0">0</strong>' in page
    assert f"No images are waiting for review in {REVIEW_URI}" in page


def test_the_script_is_served(client, admin):
    response = client.get(f"{PAGE}review.js", headers=admin)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert 'credentials: "same-origin"' in response.text
