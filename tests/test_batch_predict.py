"""Batch predictions in shards against moto's S3 server: listing, scoring each shard, combining, review."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

import mnist_tasks.inference.shard
from mnist_tasks.files import ChecksumMismatchError
from mnist_tasks.inference.batch import ShardingError, combine_shards, list_shards
from mnist_tasks.inference.shard import score_shard
from mnist_tasks.params import ParamError
from mnist_tasks.registry import NothingPublishedError
from tests.test_cli import dark_digit, model_file, publish_test_model  # noqa: F401  (model_file: fixture)
from tests.test_predict import model  # noqa: F401  (fixture)

MODELS_URI = "s3://batch-models/mnist/"
VERSION = 20261120020000
REVIEW = "s3://inbox/review/r1/"


@pytest.fixture
def buckets(s3_client):
    for bucket in ("batch-models", "inbox", "out"):
        s3_client.create_bucket(Bucket=bucket)
    return s3_client


def _list(s3_client, tmp_path, *, input_uri="s3://inbox/in/", output="s3://out/runs/r1/", **limits):
    return list_shards(
        s3_client=s3_client, input_uri=input_uri, output_uri=output, review_uri=REVIEW, models_uri=MODELS_URI,
        work_dir=tmp_path / "work", **{"max_images": 10_000, "shard_size": 10_000, **limits},
    )  # fmt: skip


def _run(s3_client, tmp_path, *, min_confidence=0.5, **limits) -> tuple[dict, list[dict]]:
    """list_shards, score_shard per shard, combine_shards, as the DAG runs them: (the result, the CSV rows)."""
    shards = _list(s3_client, tmp_path, **limits)
    return _combine(s3_client, tmp_path, shards, [_score(s3_client, tmp_path, s, min_confidence) for s in shards],
                    min_confidence=min_confidence), _csv(s3_client, "runs/r1/predictions.csv")  # fmt: skip


def _combine(s3_client, tmp_path, shards, scored, *, min_confidence=0.5, max_low_confidence_share=0.2):
    return combine_shards(
        s3_client=s3_client, shards=shards, scored=scored, min_confidence=min_confidence,
        max_low_confidence_share=max_low_confidence_share, review_uri=REVIEW, work_dir=tmp_path / "work",
    )  # fmt: skip


def _score(s3_client, tmp_path, shard, min_confidence=0.5, progress=lambda line: None):
    return score_shard(
        s3_client=s3_client, shard=shard, min_confidence=min_confidence, review_uri=REVIEW,
        work_dir=tmp_path / "work", progress=progress,
    )  # fmt: skip


def _csv(s3_client, key: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(s3_client.get_object(Bucket="out", Key=key)["Body"].read().decode())))


def _keys(s3_client, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_bounds_are_checked_before_anything_is_read(buckets, tmp_path):
    with pytest.raises(ParamError, match="max_images must be at least 1, got 0"):
        _list(buckets, tmp_path, max_images=0)
    with pytest.raises(ParamError, match="shard_size must be at most 100000, got 100001"):
        _list(buckets, tmp_path, shard_size=100_001)


def test_nothing_is_written_without_a_published_model(buckets, tmp_path):
    buckets.put_object(Bucket="inbox", Key="in/a.png", Body=b"x")
    with pytest.raises(NothingPublishedError, match=f"nothing published yet in {MODELS_URI}"):
        _list(buckets, tmp_path)
    assert _keys(buckets, "out") == []


@pytest.mark.slow
def test_more_shards_than_airflow_maps_are_refused_with_the_shard_size_that_fits(
    buckets, model_file, tmp_path, monkeypatch  # noqa: F811
):
    publish_test_model(buckets, model_file, models_uri=MODELS_URI, version=VERSION)
    for i in range(5):
        buckets.put_object(Bucket="inbox", Key=f"in/{i}.png", Body=b"x")
    with pytest.raises(ShardingError, match="5 images in shards of 2 make 3 shards, .* shard_size at least 3"):
        _list(buckets, tmp_path, shard_size=2, max_shards=2)
    assert _keys(buckets, "out") == []


@pytest.mark.parametrize(
    ("input_uri", "overlapping"),
    [("s3://inbox/", "review"), ("s3://inbox/review/r1/scans/", "review"), ("s3://out/runs/", "output")],
)
def test_an_input_that_overlaps_the_runs_own_directories_is_refused(buckets, tmp_path, input_uri, overlapping):
    with pytest.raises(ShardingError, match=f"the input {input_uri} and the run's {overlapping} directory"):
        _list(buckets, tmp_path, input_uri=input_uri)


@pytest.fixture
def inbox(buckets, model_file, tmp_path, monkeypatch):  # noqa: F811
    """Seven objects under s3://inbox/in/: five images (one corrupt, one too large, one blank) and two others."""
    publish_test_model(buckets, model_file, models_uri=MODELS_URI, version=VERSION)
    seven = dark_digit(tmp_path / "seven.png", 7)
    buckets.upload_file(str(seven), "inbox", "in/a.png")
    buckets.put_object(Bucket="inbox", Key="in/b-corrupt.png", Body=b"\x89PNG not really")
    buckets.upload_file(str(seven), "inbox", "in/c/../escape.png")  # a key, never a local path
    big = seven.stat().st_size + 1
    buckets.put_object(Bucket="inbox", Key="in/d-big.png", Body=b"\0" * big)
    Image.new("L", (60, 60), 255).save(tmp_path / "blank.png")
    buckets.upload_file(str(tmp_path / "blank.png"), "inbox", "in/e-blank.png")
    buckets.put_object(Bucket="inbox", Key="in/folder/", Body=b"")  # a console's "folder"
    buckets.put_object(Bucket="inbox", Key="in/notes.txt", Body=b"x")
    monkeypatch.setattr(mnist_tasks.inference.shard, "MAX_FILE_BYTES", big - 1)
    return big


@pytest.mark.slow
def test_shards_of_two_give_the_rows_of_one_shard_in_key_order(buckets, inbox, tmp_path):
    sharded, rows = _run(buckets, tmp_path, shard_size=2)
    single, single_rows = _run(buckets, tmp_path)

    assert rows == single_rows
    assert [(r["file"], r["digit"], r["status"]) for r in rows] == [
        ("s3://inbox/in/a.png", "7", "ok"),
        ("s3://inbox/in/b-corrupt.png", "", "error"),
        ("s3://inbox/in/c/../escape.png", "7", "ok"),
        ("s3://inbox/in/d-big.png", "", "error"),
        ("s3://inbox/in/e-blank.png", "", "blank"),
    ]
    assert rows[1]["error"].startswith("s3://inbox/in/b-corrupt.png: ")
    assert rows[3]["error"] == f"s3://inbox/in/d-big.png: file too large: {inbox} bytes, limit {inbox - 1}"
    assert (sharded["shards"], single["shards"]) == (3, 1)
    assert {k: sharded[k] for k in ("images", "skipped", "ignored", "counts", "model_version")} == {
        "images": 5, "skipped": 0, "ignored": 1, "counts": {"ok": 2, "blank": 1, "low_confidence": 0, "error": 2},
        "model_version": VERSION,
    }  # fmt: skip
    assert sharded["images_per_second"] > 0
    assert (sharded["low_confidence_share"], sharded["drift"]) == (0.0, False)
    # The re-run in one shard replaced the three shards' outputs: no stale part is left.
    parts = [f"runs/r1/parts/part-00000.{kind}" for kind in ("csv", "parquet")]
    assert _keys(buckets, "out", "runs/r1/parts/") == parts
    assert _keys(buckets, "out", "runs/r1/shards/") == ["runs/r1/shards/shard-00000.json"]
    document = json.loads(buckets.get_object(Bucket="out", Key="runs/r1/predictions.json")["Body"].read())
    assert document["model"]["version"] == VERSION and document["counts"] == single["counts"]


@pytest.mark.slow
def test_the_parquet_parts_hold_the_rows_with_their_top3(buckets, inbox, tmp_path):
    import pyarrow.parquet as pq

    _, rows = _run(buckets, tmp_path, shard_size=2)
    tables = []
    for key in _keys(buckets, "out", "runs/r1/parts/"):
        if key.endswith(".parquet"):
            body = buckets.get_object(Bucket="out", Key=key)["Body"].read()
            tables.append(pq.read_table(io.BytesIO(body)).to_pylist())
    parquet_rows = [row for table in tables for row in table]
    assert [r["file"] for r in parquet_rows] == [r["file"] for r in rows]
    first = parquet_rows[0]
    assert first["digit"] == 7 and first["top3_digits"][0] == 7 and len(first["top3_probabilities"]) == 3
    assert parquet_rows[1]["top3_digits"] == [] and parquet_rows[1]["status"] == "error"


@pytest.mark.slow
def test_unsure_and_blank_images_are_copied_to_review_with_what_the_model_thought(buckets, inbox, tmp_path):
    result, rows = _run(buckets, tmp_path, min_confidence=1.0)  # nothing is sure enough

    assert result["counts"] == {"ok": 0, "blank": 1, "low_confidence": 2, "error": 2}
    assert (result["low_confidence_share"], result["max_low_confidence_share"], result["drift"]) == (0.4, 0.2, True)
    reviewed = _keys(buckets, "inbox", "review/r1/")
    assert reviewed == sorted(
        f"review/r1/{name}{suffix}" for name in ("a.png", "c/../escape.png", "e-blank.png") for suffix in ("", ".json")
    )
    copy = buckets.get_object(Bucket="inbox", Key="review/r1/a.png")["Body"].read()
    assert copy == buckets.get_object(Bucket="inbox", Key="in/a.png")["Body"].read()
    facts = json.loads(buckets.get_object(Bucket="inbox", Key="review/r1/a.png.json")["Body"].read())
    assert facts["source"] == "s3://inbox/in/a.png" and facts["status"] == "low_confidence"
    assert facts["top3"][0][0] == 7 and facts["model_version"] == VERSION
    assert rows[0]["digit"] == ""  # below min_confidence: no digit given


@pytest.mark.slow
def test_a_shard_that_dies_mid_way_writes_no_part_and_its_retry_completes_the_run_once(
    buckets, inbox, tmp_path, monkeypatch
):
    shards = _list(buckets, tmp_path, shard_size=3)
    first = _score(buckets, tmp_path, shards[0])
    monkeypatch.setattr(mnist_tasks.inference.shard, "BATCH_SIZE", 1)  # rows are written image by image
    real_fetch = mnist_tasks.inference.shard._fetch

    def dying(getter, bucket, obj):
        if obj["key"] == "in/e-blank.png":
            raise ConnectionResetError("the worker lost its connection")  # after d-big.png was scored
        return real_fetch(getter, bucket, obj)

    monkeypatch.setattr(mnist_tasks.inference.shard, "_fetch", dying)
    with pytest.raises(ConnectionResetError):
        _score(buckets, tmp_path, shards[1])
    assert _keys(buckets, "out", "runs/r1/parts/part-00001") == []  # the parts are uploaded only whole
    monkeypatch.setattr(mnist_tasks.inference.shard, "_fetch", real_fetch)

    result = _combine(buckets, tmp_path, shards, [first, _score(buckets, tmp_path, shards[1])])

    rows = _csv(buckets, "runs/r1/predictions.csv")
    assert [r["file"] for r in rows] == [f"s3://inbox/in/{name}" for name in (
        "a.png", "b-corrupt.png", "c/../escape.png", "d-big.png", "e-blank.png")]  # fmt: skip
    assert result["images"] == 5


@pytest.mark.slow
def test_a_part_changed_after_its_shard_finished_is_refused_by_name(buckets, inbox, tmp_path):
    shards = _list(buckets, tmp_path, shard_size=2)
    scored = [_score(buckets, tmp_path, shard) for shard in shards]
    buckets.put_object(Bucket="out", Key="runs/r1/parts/part-00001.csv", Body=b"file,digit\nforged,1\n")
    with pytest.raises(ChecksumMismatchError, match="checksum mismatch for s3://out/runs/r1/parts/part-00001.csv"):
        _combine(buckets, tmp_path, shards, scored)


@pytest.mark.slow
def test_a_shard_logs_images_done_rate_and_eta(buckets, inbox, tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_tasks.inference.shard, "PROGRESS_SECONDS", 0.0)  # every batch
    monkeypatch.setattr(mnist_tasks.inference.shard, "BATCH_SIZE", 2)
    lines: list[str] = []
    (shard,) = _list(buckets, tmp_path)
    _score(buckets, tmp_path, shard, progress=lines.append)
    assert [line.split(",")[0] for line in lines] == [
        "shard 0: 2 of 5 images", "shard 0: 4 of 5 images", "shard 0: 5 of 5 images"
    ]  # fmt: skip
    assert all(" images/s, ETA " in line for line in lines)


@pytest.mark.slow
def test_an_empty_prefix_gets_one_empty_shard_and_empty_outputs(buckets, model_file, tmp_path):  # noqa: F811
    publish_test_model(buckets, model_file, models_uri=MODELS_URI, version=VERSION)
    result, rows = _run(buckets, tmp_path)
    assert (result["images"], result["skipped"], result["ignored"], result["shards"]) == (0, 0, 0, 1)
    assert rows == []
