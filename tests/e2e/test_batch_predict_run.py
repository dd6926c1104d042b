"""Whole `mnist_batch_predict` runs through Airflow's `dag.test()` against the embedded store.

A small real classifier is published the way mnist_retraining publishes (manifest, read-back,
latest.json); images are put under the input prefix; what is asserted is what lands in the
predictions bucket. `dag.test()` does not raise when a task fails, so every test asserts the
run's state.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from PIL import Image

from mnist_tasks.files import safe_name
from tests.e2e.conftest import ensure_buckets, load_dag_for_test
from tests.test_cli import dark_digit, model_file, publish_test_model  # noqa: F401  (model_file: fixture)
from tests.test_predict import glyph, model  # noqa: F401  (model: fixture)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MODELS_URI = "s3://mnist-models/mnist/"
INBOX = "mnist-inbox"
INPUT_URI = f"s3://{INBOX}/scans/"
PREDICTIONS = "mnist-predictions"
VERSION = 20261120020000
LOGICAL_DATE = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


@pytest.fixture
def batch_env(monkeypatch, tmp_path, s3_client, aws_connection, airflow_db):
    """Points the DAG at the embedded store: empty model, inbox and predictions buckets."""
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MNIST_MODELS_URI", MODELS_URI)
    monkeypatch.setenv("MNIST_PREDICTIONS_URI", f"s3://{PREDICTIONS}/predictions/")
    monkeypatch.setenv("MNIST_REVIEW_URI", f"s3://{INBOX}/review/")
    ensure_buckets(s3_client, "mnist-models", INBOX, PREDICTIONS)


@pytest.fixture
def dag():
    # Parsed for each test: dag.test(run_conf=…) leaves the conf in the DAG's params for the next call.
    return load_dag_for_test("mnist_batch_predict")


@pytest.fixture
def inbox(batch_env, s3_client, tmp_path) -> dict[str, str]:
    """Object key -> what the images under INPUT_URI hold; plus a file that is not an image."""
    local = tmp_path / "inbox"
    local.mkdir()
    dark_digit(local / "seven.png", 7)
    Image.eval(glyph(3, size=80), lambda v: 255 - v).convert("RGB").save(local / "three.jpg", quality=85)
    dark_digit(local / "four.png", 4)
    Image.new("L", (100, 80), 255).save(local / "blank.png")
    (local / "broken.png").write_text("this is not an image")
    (local / "readme.txt").write_text("scans from the front desk")
    contents = {
        "scans/0-seven.png": "seven.png",
        "scans/1-three.jpg": "three.jpg",
        "scans/2/four.png": "four.png",
        "scans/3-blank.png": "blank.png",
        "scans/4-broken.png": "broken.png",
        "scans/readme.txt": "readme.txt",
        "elsewhere/9-seven.png": "seven.png",  # outside the input prefix
    }
    for key, name in contents.items():
        s3_client.upload_file(str(local / name), INBOX, key)
    return contents


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _predictions(s3_client) -> dict[str, bytes]:
    listing = s3_client.list_objects_v2(Bucket=PREDICTIONS).get("Contents", [])
    return {o["Key"]: s3_client.get_object(Bucket=PREDICTIONS, Key=o["Key"])["Body"].read() for o in listing}


def test_a_run_scores_the_inbox_in_shards_and_a_rerun_replaces_its_output(
    dag, inbox, model_file, s3_client  # noqa: F811
):
    publish_test_model(s3_client, model_file, models_uri=MODELS_URI, version=VERSION)

    conf = {"input_uri": INPUT_URI, "shard_size": 2}
    dag_run = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=conf)

    assert str(dag_run.state) == "success", _states(dag_run)
    base = f"predictions/{safe_name(dag_run.run_id)}/"
    objects = _predictions(s3_client)
    parts = {f"{base}parts/part-{i:05d}.{kind}" for i in range(3) for kind in ("csv", "parquet")}
    shards = {f"{base}shards/shard-{i:05d}.json" for i in range(3)}
    outputs = {base + "predictions.csv", base + "predictions.json", base + "listing.json"}
    assert set(objects) == outputs | parts | shards

    table = list(csv.DictReader(io.StringIO(objects[base + "predictions.csv"].decode())))
    assert list(table[0]) == ["file", "digit", "probability", "status", "error", "model_version"]
    expected = [
        (f"s3://{INBOX}/scans/0-seven.png", 7, "ok"),
        (f"s3://{INBOX}/scans/1-three.jpg", 3, "ok"),
        (f"s3://{INBOX}/scans/2/four.png", 4, "ok"),
        (f"s3://{INBOX}/scans/3-blank.png", None, "blank"),
        (f"s3://{INBOX}/scans/4-broken.png", None, "error"),
    ]
    assert [(r["file"], r["digit"], r["status"], r["model_version"]) for r in table] == [
        (file, "" if digit is None else str(digit), status, str(VERSION)) for file, digit, status in expected
    ]
    assert all(0.5 <= float(r["probability"]) <= 1 for r in table[:3])
    assert table[4]["error"].startswith(f"s3://{INBOX}/scans/4-broken.png: not an image")

    document = json.loads(objects[base + "predictions.json"])
    assert document["model"]["version"] == VERSION
    assert document["model"]["verified_against"] == f"{MODELS_URI}{VERSION}/manifest.json"
    assert (document["images"], document["skipped"], document["ignored"], document["shards"]) == (5, 0, 1, 3)
    assert document["counts"] == {"ok": 3, "blank": 1, "low_confidence": 0, "error": 1}
    assert document["images_per_second"] > 0
    # The blank image went to review, with what the model made of it.
    review = f"review/{safe_name(dag_run.run_id)}/3-blank.png"
    assert json.loads(s3_client.get_object(Bucket=INBOX, Key=review + ".json")["Body"].read())["status"] == "blank"

    # The same run again, now capped at two images: its files are replaced, nothing stale is left.
    again = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf={**conf, "max_images": 2})
    assert str(again.state) == "success", _states(again)
    assert again.run_id == dag_run.run_id
    objects = _predictions(s3_client)
    assert set(objects) == outputs | {f"{base}parts/part-00000.{kind}" for kind in ("csv", "parquet")} | {
        f"{base}shards/shard-00000.json"
    }
    table = list(csv.DictReader(io.StringIO(objects[base + "predictions.csv"].decode())))
    assert [(r["file"], r["digit"]) for r in table] == [
        (f"s3://{INBOX}/scans/0-seven.png", "7"),
        (f"s3://{INBOX}/scans/1-three.jpg", "3"),
    ]
    document = json.loads(objects[base + "predictions.json"])
    assert (document["images"], document["skipped"], document["ignored"]) == (2, 3, 1)
    assert s3_client.list_objects_v2(Bucket=INBOX, Prefix=review).get("KeyCount", 0) == 0  # not scored this time


def test_a_share_of_unsure_images_above_the_bound_alerts_and_the_run_still_succeeds(
    dag, inbox, model_file, s3_client, alert_receivers  # noqa: F811
):
    smtp, webhook = alert_receivers
    publish_test_model(s3_client, model_file, models_uri=MODELS_URI, version=VERSION)
    conf = {"input_uri": INPUT_URI, "min_confidence": 1.0, "max_low_confidence_share": 0.25}

    dag_run = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=conf)

    assert str(dag_run.state) == "success", _states(dag_run)
    (message,) = smtp.messages
    assert message["Subject"] == (
        f"[mnist_batch_predict] 60.0% of the images were low confidence (bound 25.0%) in run {dag_run.run_id}"
    )
    body = message.get_body(("html",)).get_content()
    assert "0.6000 of 5 images scored" in body and f"s3://{INBOX}/review/{safe_name(dag_run.run_id)}/" in body
    assert str(VERSION) in body
    (payload,) = webhook.payloads()
    assert payload["blocks"][0]["text"]["text"].startswith("[mnist_batch_predict] 60.0% of the images")


def test_without_a_published_model_the_run_fails_and_writes_nothing(dag, inbox, s3_client):
    dag_run = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf={"input_uri": INPUT_URI})

    assert str(dag_run.state) == "failed"
    assert _states(dag_run) == {"list_images": "failed", "score": "upstream_failed", "combine": "upstream_failed"}
    assert _predictions(s3_client) == {}
