"""predict_prefix against moto's S3 server: what is scored, skipped, ignored, and what is written."""

from __future__ import annotations

import csv
import io
import json

import pytest

import mnist_tasks.batch_predict
from mnist_tasks.batch_predict import predict_prefix
from mnist_tasks.params import ParamError
from mnist_tasks.registry import NothingPublishedError
from tests.test_cli import dark_digit, model_file, publish_test_model  # noqa: F401  (model_file: fixture)
from tests.test_predict import model  # noqa: F401  (fixture)

MODELS_URI = "s3://batch-models/mnist/"
VERSION = 20261120020000


@pytest.fixture
def buckets(s3_client):
    for bucket in ("batch-models", "inbox", "out"):
        s3_client.create_bucket(Bucket=bucket)
    return s3_client


def _written(s3_client, prefix: str) -> tuple[list[dict], dict]:
    table = s3_client.get_object(Bucket="out", Key=prefix + "predictions.csv")["Body"].read().decode()
    document = json.loads(s3_client.get_object(Bucket="out", Key=prefix + "predictions.json")["Body"].read())
    return list(csv.DictReader(io.StringIO(table))), document


def test_max_images_must_be_positive(buckets, tmp_path):
    with pytest.raises(ParamError, match="max_images must be at least 1, got 0"):
        predict_prefix(
            s3_client=buckets, input_uri="s3://inbox/", output_uri="s3://out/run/", models_uri=MODELS_URI,
            work_dir=tmp_path, max_images=0,
        )  # fmt: skip


def test_nothing_is_downloaded_or_written_without_a_published_model(buckets, tmp_path):
    buckets.put_object(Bucket="inbox", Key="a.png", Body=b"x")
    with pytest.raises(NothingPublishedError, match=f"nothing published yet in {MODELS_URI}"):
        predict_prefix(
            s3_client=buckets, input_uri="s3://inbox/", output_uri="s3://out/run/", models_uri=MODELS_URI,
            work_dir=tmp_path / "work",
        )  # fmt: skip
    assert "Contents" not in buckets.list_objects_v2(Bucket="out")
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_oversized_objects_are_reported_without_downloading_and_odd_keys_are_ignored(
    buckets, model_file, tmp_path, monkeypatch  # noqa: F811
):
    publish_test_model(buckets, model_file, models_uri=MODELS_URI, version=VERSION)
    seven = dark_digit(tmp_path / "seven.png", 7)
    buckets.upload_file(str(seven), "inbox", "in/a.png")
    buckets.upload_file(str(seven), "inbox", "in/../escape.png")  # a key, never a local path
    big = seven.stat().st_size + 1
    buckets.put_object(Bucket="inbox", Key="in/b-big.png", Body=b"\0" * big)
    buckets.put_object(Bucket="inbox", Key="in/folder/", Body=b"")  # a console's "folder"
    buckets.put_object(Bucket="inbox", Key="in/.hidden.png", Body=b"x")
    buckets.put_object(Bucket="inbox", Key="in/notes.txt", Body=b"x")
    monkeypatch.setattr(mnist_tasks.batch_predict, "MAX_FILE_BYTES", big - 1)

    result = predict_prefix(
        s3_client=buckets, input_uri="s3://inbox/in", output_uri="s3://out/runs/r1", models_uri=MODELS_URI,
        work_dir=tmp_path / "work",
    )  # fmt: skip

    assert result == {
        "input_uri": "s3://inbox/in/",
        "images": 3,
        "skipped": 0,
        "ignored": 2,
        "counts": {"ok": 2, "blank": 0, "low_confidence": 0, "error": 1},
        "predictions_csv": "s3://out/runs/r1/predictions.csv",
        "predictions_json": "s3://out/runs/r1/predictions.json",
        "model_version": VERSION,
        "model_sha256": result["model_sha256"],
        "model_architecture": "dense",
        "model_augment": "off",
    }
    table, document = _written(buckets, "runs/r1/")
    assert [(r["file"], r["digit"], r["status"]) for r in table] == [
        ("s3://inbox/in/../escape.png", "7", "ok"),
        ("s3://inbox/in/a.png", "7", "ok"),
        ("s3://inbox/in/b-big.png", "", "error"),
    ]
    assert table[2]["error"] == f"s3://inbox/in/b-big.png: file too large: {big} bytes, limit {big - 1}"
    assert document["model"]["model_sha256"] == result["model_sha256"]
    assert list((tmp_path / "work").iterdir()) == []  # the scratch copies are gone


@pytest.mark.slow
def test_an_empty_prefix_still_writes_empty_predictions(buckets, model_file, tmp_path):  # noqa: F811
    publish_test_model(buckets, model_file, models_uri=MODELS_URI, version=VERSION)
    result = predict_prefix(
        s3_client=buckets, input_uri="s3://inbox/none/", output_uri="s3://out/r/", models_uri=MODELS_URI,
        work_dir=tmp_path,
    )  # fmt: skip
    assert (result["images"], result["skipped"], result["ignored"]) == (0, 0, 0)
    table, document = _written(buckets, "r/")
    assert table == []
    assert document["predictions"] == []
