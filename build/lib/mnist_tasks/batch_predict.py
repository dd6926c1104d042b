"""Scoring every image under an S3 prefix with the published model: the batch-prediction DAG's job.

The model is the one `latest.json` points at, loaded only once its sha256 matches its manifest.
Images are listed in key order (so a capped run always takes the same ones), downloaded into a
scratch directory under numbered local names (S3 keys may hold "..", so they never become paths),
predicted in one batch by `predict.predict_files`, and the results written as
`<output_uri>predictions.csv` and `predictions.json`. The output keys depend only on `output_uri`:
running the same run again replaces its two files instead of adding more.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypedDict

from mnist_tasks.params import PARAMS
from mnist_tasks.predict import load_model_for_prediction, predict_files
from mnist_tasks.preprocess import MAX_FILE_BYTES, ImageError, check_file_size, is_image_name
from mnist_tasks.storage import scratch_dir, split_s3_dir

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
CSV_COLUMNS = ("file", "digit", "probability", "status", "error", "model_version")
STATUSES = ("ok", "blank", "low_confidence", "error")


class BatchPrediction(TypedDict):
    """What predict_prefix returns (the batch DAG's XCom)."""

    input_uri: str
    images: int
    """How many were scored."""
    skipped: int
    """Images beyond `max_images`."""
    ignored: int
    """Objects without an image suffix."""
    counts: dict[str, int]
    """{status: images}, every status of STATUSES."""
    predictions_csv: str
    predictions_json: str
    model_version: int | None
    model_sha256: str
    model_architecture: str
    model_augment: str | None
    """As the model was trained."""


def _list_images(s3_client: Any, bucket: str, prefix: str) -> tuple[list[dict], int]:
    """(objects whose names have an image suffix, in key order; how many other objects there are)."""
    images, ignored = [], 0
    # S3 lists keys in ascending UTF-8 byte order, page after page.
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):
                continue  # a "folder" placeholder made by consoles, not a file
            if is_image_name(PurePosixPath(obj["Key"]).name):
                images.append(obj)
            else:
                ignored += 1
    return images, ignored


def predict_prefix(
    *,
    s3_client: Any,
    input_uri: str,
    output_uri: str,
    models_uri: str,
    work_dir: Path,
    max_images: int = 10_000,
    min_confidence: float = 0.5,
) -> BatchPrediction:
    """Predict the digit in each image under `input_uri` (s3://bucket/prefix/) with the latest model.

    Only the first `max_images` images (by key) are scored; the rest are counted as skipped.
    Objects without an image suffix are counted as ignored. An image that cannot be read, or
    is larger than preprocess.MAX_FILE_BYTES (not downloaded), gets status "error" and a message
    naming its URI; the others are still predicted. Scratch files go under `work_dir` and are
    removed afterwards.

    Writes `<output_uri>predictions.csv` (columns CSV_COLUMNS) and `predictions.json` (the same
    rows with top-3 guesses, plus the model's provenance and the counts).
    """
    PARAMS["max_images"].check(max_images)
    in_bucket, in_prefix = split_s3_dir(input_uri)
    out_bucket, out_prefix = split_s3_dir(output_uri)
    # Fails before anything is downloaded when there is no (intact) model to score with.
    model, source = load_model_for_prediction(model="latest", models_uri=models_uri, s3_client=s3_client)

    images, ignored = _list_images(s3_client, in_bucket, in_prefix)
    scored = images[:max_images]
    with scratch_dir(work_dir, "batch-predict") as scratch:
        local, too_large = _download(s3_client, in_bucket, scored, scratch)
        predicted = predict_files(model=model, paths=list(local), min_confidence=min_confidence)
    by_uri = {**_rows_by_uri(predicted, local), **too_large}
    rows = [{**by_uri[f"s3://{in_bucket}/{obj['Key']}"], "model_version": source["version"]} for obj in scored]

    counts = Counter(row["status"] for row in rows)
    summary = {
        "input_uri": f"s3://{in_bucket}/{in_prefix}",
        "images": len(rows),
        "skipped": len(images) - len(scored),
        "ignored": ignored,
        "counts": {status: counts.get(status, 0) for status in STATUSES},
    }
    document = {**summary, "model": source, "min_confidence": min_confidence, "max_images": max_images}
    _write_predictions(s3_client, out_bucket, out_prefix, rows=rows, document=document)
    return {
        **summary,
        "predictions_csv": f"s3://{out_bucket}/{out_prefix}{PREDICTIONS_CSV}",
        "predictions_json": f"s3://{out_bucket}/{out_prefix}{PREDICTIONS_JSON}",
        "model_version": source["version"],
        "model_sha256": source["model_sha256"],
        "model_architecture": source["architecture"],
        "model_augment": source["augment"],
    }


def _download(
    s3_client: Any, bucket: str, objects: list[dict], scratch: Path
) -> tuple[dict[Path, str], dict[str, dict]]:
    """({downloaded file: its URI}, {URI: error row} for objects too large to download).

    Local names are numbered (S3 keys may hold "..", so they never become paths).
    """
    local: dict[Path, str] = {}
    too_large: dict[str, dict] = {}
    for i, obj in enumerate(objects):
        uri = f"s3://{bucket}/{obj['Key']}"
        try:
            check_file_size(uri, obj["Size"], max_bytes=MAX_FILE_BYTES)
        except ImageError as exc:
            error = {"status": "error", "error": str(exc)}
            too_large[uri] = {"file": uri, "digit": None, "probability": None, "top3": [], **error}
            continue
        path = scratch / f"{i:06d}{PurePosixPath(obj['Key']).suffix.lower()}"
        s3_client.download_file(bucket, obj["Key"], str(path))
        local[path] = uri
    return local, too_large


def _rows_by_uri(predicted: list[dict], local: dict[Path, str]) -> dict[str, dict]:
    """predict_files' rows keyed and named by the objects' URIs, not their scratch copies."""
    by_uri = {}
    for row in predicted:
        uri = local[Path(row["file"])]
        error = row["error"]
        if error is not None and error.startswith(row["file"]):
            error = uri + error[len(row["file"]) :]
        by_uri[uri] = {
            "file": uri,
            "digit": row["digit"],
            "probability": row["probability"],
            "top3": row["top3"],
            "status": row["status"],
            "error": error,
        }
    return by_uri


def _write_predictions(s3_client: Any, bucket: str, prefix: str, *, rows: list[dict], document: dict) -> None:
    """predictions.csv (the rows' CSV_COLUMNS) and predictions.json (`document`, the time, the rows) under `prefix`."""
    document = {**document, "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "predictions": rows}
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    # One PUT per file: each appears whole or not at all, and a re-run replaces it.
    for name, body, content_type in [
        (PREDICTIONS_CSV, table.getvalue().encode(), "text/csv"),
        (PREDICTIONS_JSON, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode(), "application/json"),
    ]:
        s3_client.put_object(Bucket=bucket, Key=prefix + name, Body=body, ContentType=content_type)
