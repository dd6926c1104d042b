"""Scoring every image under an S3 prefix with one published model, in shards: the batch DAG's job.

Three steps, each a task that may run on any worker and shares nothing but S3:

1. `list_shards` lists the prefix once, in key order (so a capped run always takes the same
   images), pins the model `latest.json` points at, and cuts the first `max_images` into
   shards of `shard_size` (at least one shard, so an empty prefix still gets its outputs).
   It writes the listing and the shards to `<output>`, and returns the shards' refs: the
   mapped tasks' input is URIs and checksums.
2. `score_shard` streams one shard: GETs with bounded concurrency, each image decoded and
   preprocessed in the fetching thread with `predict`'s own preprocessing, the model run on
   fixed-size batches, rows appended to the shard's parts as they come. Memory depends on
   the batch size and the concurrency, never on how many images there are. Each image the
   model was unsure of (below `min_confidence`) or found blank is copied, server-side, to
   the review prefix with what the model thought beside it (mnist_tasks/review.py).
3. `combine` checks every part and writes the run's outputs.

Under `output_uri` (one directory per run):

    listing.json                what was listed and skipped, and the pinned model
    shards/shard-00000.json     the keys and sizes of the shard's images
    parts/part-00000.parquet    the shard's rows; DuckDB: SELECT … FROM 's3://…/parts/*.parquet'
    parts/part-00000.csv        the same rows, CSV_COLUMNS
    predictions.csv             every part's CSV rows, in key order
    predictions.json            the summary: counts, images/s, the model's provenance, the parts

Every key depends only on `output_uri` and the shard's number: a retried shard rewrites its
own part, and a re-run of the run replaces them all.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypedDict

from mnist_tasks.params import PARAMS
from mnist_tasks.predict import PredictError
from mnist_tasks.preprocess import MAX_FILE_BYTES, ImageError, check_file_size, digits_in_bytes, is_image_name
from mnist_tasks.registry import (
    ModelReferenceError,
    ModelSource,
    PublishVerificationError,
    VersionNotFoundError,
    fetch_model,
    parse_model_reference,
)
from mnist_tasks.review import Reviewer
from mnist_tasks.storage import (
    ChecksumMismatchError,
    atomic_path,
    check_sha256,
    scratch_dir,
    sha256_file,
    split_s3_dir,
    split_s3_uri,
)

if TYPE_CHECKING:
    import numpy as np

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
CSV_COLUMNS = ("file", "digit", "probability", "status", "error", "model_version")
STATUSES = ("ok", "blank", "low_confidence", "error")
BATCH_SIZE = 256  # images per model call: large enough that the call's own cost vanishes
FETCHES = 16  # S3 GETs (and decodes) in flight per shard
PROGRESS_SECONDS = 30.0  # how often a shard logs its progress
# No published model, a reference that names none, a model, shard list or part that fails its
# checksum, or a model that does not load: a retry finds the same.
MAX_SHARDS = 1024  # Airflow's default [core] max_map_length: the most tasks one mapping may make


class ShardingError(ValueError):
    """The images cannot be cut into shards Airflow can map, or a shard is missing at the end."""


NOT_RETRIED = (
    VersionNotFoundError, ModelReferenceError, PublishVerificationError, ChecksumMismatchError, PredictError,
    ShardingError,
)  # fmt: skip


class Part(TypedDict):
    uri: str
    sha256: str
    bytes: int


class Shard(TypedDict):
    """What list_shards returns one of per shard: a mapped task's input."""

    index: int
    uri: str
    """The JSON list of the shard's objects: {"bucket", "objects": [{"key", "size"}, …]}."""
    sha256: str
    images: int
    listing: Part
    """The run's listing.json."""


class Listing(TypedDict):
    """listing.json: the run's listing, read by every shard and by combine."""

    input_uri: str
    output_uri: str
    images: int
    """How many will be scored (at most max_images)."""
    skipped: int
    """Images beyond `max_images`."""
    ignored: int
    """Objects without an image suffix."""
    shards: int
    model: ModelSource
    """The model `latest.json` pointed at when the run listed its images: every shard scores with it."""


class ScoredShard(TypedDict):
    index: int
    images: int
    counts: dict[str, int]
    seconds: float
    reviewed: int
    parts: dict[str, Part]
    """{"parquet": …, "csv": …}"""


class BatchPrediction(TypedDict):
    """What combine returns (the batch DAG's XCom)."""

    input_uri: str
    images: int
    skipped: int
    ignored: int
    counts: dict[str, int]
    """{status: images}, every status of STATUSES."""
    low_confidence_share: float
    images_per_second: float
    """Images scored per second of the shards' own time, added up over the shards."""
    shards: int
    predictions_csv: str
    predictions_json: str
    parts_uri: str
    review_uri: str
    model_version: int | None
    model_sha256: str
    model_architecture: str | None
    model_augment: str | None
    """As the model was trained."""


def list_shards(
    *,
    s3_client: Any,
    input_uri: str,
    output_uri: str,
    review_uri: str,
    models_uri: str,
    work_dir: Path,
    max_images: int,
    shard_size: int,
) -> list[Shard]:
    """List `input_uri` once and cut the first `max_images` images into shards written under `output_uri`.

    Fails before anything is written when there is no intact model to score with
    (the model `latest.json` points at is fetched and checked, not loaded), and when
    the shards would be more than MAX_SHARDS. What an earlier attempt of the run
    left under `output_uri` and `review_uri` (the run's own directories) is removed
    first: a re-run with fewer shards leaves no stale part behind.
    """
    PARAMS["max_images"].check(max_images)
    PARAMS["shard_size"].check(shard_size)
    in_bucket, in_prefix = split_s3_dir(input_uri)
    out_bucket, out_prefix = split_s3_dir(output_uri)
    with scratch_dir(work_dir, "batch-model") as scratch:
        _, source = fetch_model(
            parse_model_reference("latest", models_uri=models_uri), s3_client=s3_client, dest_dir=scratch
        )
    images, ignored = _list_images(s3_client, in_bucket, in_prefix)
    scored = [{"key": obj["Key"], "size": obj["Size"]} for obj in images[:max_images]]
    cuts = range(0, max(len(scored), 1), shard_size)
    if len(cuts) > MAX_SHARDS:
        raise ShardingError(
            f"{len(scored)} images in shards of {shard_size} make {len(cuts)} shards, more than Airflow maps "
            f"({MAX_SHARDS}, [core] max_map_length): make shard_size at least {-(-len(scored) // MAX_SHARDS)}"
        )
    for directory in (output_uri, review_uri):
        _remove_directory(s3_client, directory)
    listing: Listing = {
        "input_uri": f"s3://{in_bucket}/{in_prefix}",
        "output_uri": f"s3://{out_bucket}/{out_prefix}",
        "images": len(scored),
        "skipped": len(images) - len(scored),
        "ignored": ignored,
        "shards": len(cuts),
        "model": source,
    }
    listing_ref = _put_json(s3_client, out_bucket, out_prefix + "listing.json", listing)
    shards = []
    for index, start in enumerate(cuts):
        objects = scored[start : start + shard_size]
        ref = _put_json(s3_client, out_bucket, f"{out_prefix}shards/shard-{index:05d}.json",
                        {"bucket": in_bucket, "objects": objects})  # fmt: skip
        shards.append({"index": index, "uri": ref["uri"], "sha256": ref["sha256"], "images": len(objects),
                       "listing": listing_ref})  # fmt: skip
    return shards


def _remove_directory(s3_client: Any, uri: str) -> None:
    """Delete every object under s3://bucket/prefix/ (a run's own directory; never a whole bucket)."""
    bucket, prefix = split_s3_dir(uri)
    if not prefix:
        raise ShardingError(f"{uri} is a whole bucket, not a run's directory: nothing is removed from it")
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3_client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def _put_json(s3_client: Any, bucket: str, key: str, value: Any) -> Part:
    body = (json.dumps(value, indent=2, allow_nan=False) + "\n").encode()
    s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return {"uri": f"s3://{bucket}/{key}", "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}


def _get_json(s3_client: Any, ref: Part) -> Any:
    """The JSON object `ref` names, once its bytes match the sha256 they were handed over with."""
    bucket, key = split_s3_uri(ref["uri"])
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    check_sha256(ref["uri"], expected=ref["sha256"], actual=hashlib.sha256(body).hexdigest())
    return json.loads(body)


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


def score_shard(
    *,
    s3_client: Any,
    models_uri: str,
    shard: Shard,
    min_confidence: float,
    review_uri: str,
    work_dir: Path,
    progress: Callable[[str], None] = lambda line: None,
) -> ScoredShard:
    """Score one shard with the model its listing pinned; write its parts; return its counts.

    `review_uri` is this run's review directory (s3://…/<run>/). `progress` gets a line
    (images done, rate, ETA) every PROGRESS_SECONDS.
    """
    from mnist_tasks.predict import load_model_for_prediction

    PARAMS["min_confidence"].check(min_confidence)
    listing: Listing = _get_json(s3_client, shard["listing"])
    listed = _get_json(s3_client, shard)
    objects, bucket = listed["objects"], listed["bucket"]
    pinned = listing["model"]
    # The version latest pointed at when the run listed its images, whatever latest is now.
    model, loaded = load_model_for_prediction(model=str(pinned["version"]), models_uri=models_uri, s3_client=s3_client)
    check_sha256(loaded["model_uri"], expected=pinned["model_sha256"], actual=loaded["model_sha256"])
    meter = _Meter(len(objects), shard["index"], progress)
    counts: Counter[str] = Counter()
    with scratch_dir(work_dir, f"shard-{shard['index']:05d}") as scratch, ThreadPoolExecutor(FETCHES) as pool:
        reviewer = Reviewer(s3_client, review_uri=review_uri, input_uri=listing["input_uri"], pool=pool)
        with _PartWriter(scratch) as writer:
            for chunk in _chunks(_fetched(s3_client, bucket, objects, pool), BATCH_SIZE):
                rows = _scored(model, chunk, min_confidence=min_confidence, version=pinned["version"])
                writer.write(rows)
                for row in rows:
                    counts[row["status"]] += 1
                    if row["status"] in ("low_confidence", "blank"):
                        reviewer.submit(row)
                meter.advance(len(rows))
        reviewer.wait()
        parts = _upload_parts(s3_client, listing["output_uri"], shard["index"], writer.paths)
    return {
        "index": shard["index"],
        "images": len(objects),
        "counts": {status: counts.get(status, 0) for status in STATUSES},
        "seconds": round(meter.elapsed(), 3),
        "reviewed": reviewer.count,
        "parts": parts,
    }


def _fetched(
    s3_client: Any, bucket: str, objects: list[dict], pool: ThreadPoolExecutor
) -> Iterator[tuple[str, np.ndarray | None | ImageError]]:
    """(URI, its field, None when blank, or its ImageError) per object, in order, at most FETCHES in flight."""
    pending: deque[tuple[str, Future]] = deque()
    remaining = iter(objects)
    for obj in islice(remaining, FETCHES):
        pending.append((f"s3://{bucket}/{obj['key']}", pool.submit(_read_field, s3_client, bucket, obj)))
    while pending:
        uri, future = pending.popleft()
        for obj in islice(remaining, 1):
            pending.append((f"s3://{bucket}/{obj['key']}", pool.submit(_read_field, s3_client, bucket, obj)))
        yield uri, future.result()


def _read_field(s3_client: Any, bucket: str, obj: dict) -> np.ndarray | None | ImageError:
    """One object's field (None when blank), or the ImageError that names it; S3 errors propagate."""
    uri = f"s3://{bucket}/{obj['key']}"
    try:
        check_file_size(uri, obj["size"], max_bytes=MAX_FILE_BYTES)  # refused unread
        fields = digits_in_bytes(s3_client.get_object(Bucket=bucket, Key=obj["key"])["Body"].read(), name=uri)
    except ImageError as err:
        return err
    return fields[0] if fields else None


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _scored(model: Any, chunk: list[tuple[str, Any]], *, min_confidence: float, version: int | None) -> list[dict]:
    """The rows of a chunk of fetched images, in its order, with the model run once on its fields."""
    import numpy as np

    from mnist_tasks.predict import classify, read_digit

    fields = [field for _, field in chunk if isinstance(field, np.ndarray)]
    probabilities = iter(classify(model, fields))
    rows = []
    for uri, field in chunk:
        row = {"file": uri, "digit": None, "probability": None, "top3": [], "error": None, "model_version": version}
        if isinstance(field, ImageError):
            row.update(status="error", error=str(field))
        elif field is None:
            row.update(status="blank")
        else:
            row.update(read_digit(next(probabilities), min_confidence=min_confidence))
        rows.append(row)
    return rows


class _Meter:
    """Counts a shard's images and reports done, rate and ETA every PROGRESS_SECONDS."""

    def __init__(self, total: int, index: int, report: Callable[[str], None]) -> None:
        self.total, self.index, self.report = total, index, report
        self.done = 0
        self.start = self.last = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            self.report(
                f"shard {self.index}: {self.done:,} of {self.total:,} images, {rate:,.0f} images/s, ETA {eta:,.0f} s"
            )


class _PartWriter:
    """The shard's rows appended to a local Parquet file and a CSV file as they come."""

    def __init__(self, directory: Path) -> None:
        self.paths = {"parquet": directory / "part.parquet", "csv": directory / "part.csv"}
        self._parquet = None

    def __enter__(self) -> _PartWriter:
        import pyarrow.parquet as pq

        self._csv_file = self.paths["csv"].open("w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        self._csv.writeheader()
        self._parquet = pq.ParquetWriter(self.paths["parquet"], _row_schema())
        return self

    def write(self, rows: list[dict]) -> None:
        import pyarrow as pa

        self._csv.writerows(rows)
        columns = {
            **{name: [row[name] for row in rows] for name in CSV_COLUMNS},
            "top3_digits": [[digit for digit, _ in row["top3"]] for row in rows],
            "top3_probabilities": [[p for _, p in row["top3"]] for row in rows],
        }
        self._parquet.write_table(pa.table(columns, schema=_row_schema()))

    def __exit__(self, *exc: object) -> None:
        self._csv_file.close()
        self._parquet.close()


def _row_schema() -> Any:
    """The Parquet parts' columns: CSV_COLUMNS, then the top 3 guesses as two lists.

    Built when rows are written: pyarrow is imported only there.
    """
    import pyarrow as pa

    return pa.schema(
        [
            ("file", pa.string()),
            ("digit", pa.int8()),
            ("probability", pa.float32()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("model_version", pa.int64()),
            ("top3_digits", pa.list_(pa.int8())),
            ("top3_probabilities", pa.list_(pa.float32())),
        ]
    )


def _upload_parts(s3_client: Any, output_uri: str, index: int, paths: dict[str, Path]) -> dict[str, Part]:
    """Upload the shard's parts under their fixed names (a retry replaces them); their refs."""
    bucket, prefix = split_s3_dir(output_uri)
    parts = {}
    for kind, path in paths.items():
        key = f"{prefix}parts/part-{index:05d}.{kind}"
        sha256 = sha256_file(path)
        s3_client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}})
        parts[kind] = {"uri": f"s3://{bucket}/{key}", "sha256": sha256, "bytes": path.stat().st_size}
    return parts


def combine(
    *,
    s3_client: Any,
    shards: list[Shard],
    scored: list[ScoredShard],
    min_confidence: float,
    review_uri: str,
    work_dir: Path,
) -> BatchPrediction:
    """Check every shard's parts, write predictions.csv (the parts' rows in key order) and predictions.json."""
    listing: Listing = _get_json(s3_client, shards[0]["listing"])
    by_index = {shard["index"]: shard for shard in scored}
    missing = sorted(set(range(listing["shards"])) - set(by_index))
    if missing:
        raise ShardingError(f"shards {missing} of {listing['output_uri']} were not scored")
    ordered = [by_index[index] for index in range(listing["shards"])]
    out_bucket, out_prefix = split_s3_dir(listing["output_uri"])
    with scratch_dir(work_dir, "batch-combine") as scratch:
        table = scratch / PREDICTIONS_CSV
        _concatenate_csv(s3_client, [shard["parts"]["csv"] for shard in ordered], table, scratch)
        csv_type = {"ContentType": "text/csv"}
        s3_client.upload_file(str(table), out_bucket, out_prefix + PREDICTIONS_CSV, ExtraArgs=csv_type)
    counts = {status: sum(shard["counts"][status] for shard in ordered) for status in STATUSES}
    seconds = sum(shard["seconds"] for shard in ordered)
    source = listing["model"]
    summary = {
        "input_uri": listing["input_uri"],
        "images": listing["images"],
        "skipped": listing["skipped"],
        "ignored": listing["ignored"],
        "counts": counts,
        "low_confidence_share": round(counts["low_confidence"] / listing["images"], 4) if listing["images"] else 0.0,
        "images_per_second": round(listing["images"] / seconds, 1) if seconds else 0.0,
        "shards": len(ordered),
    }
    document = {
        **summary,
        "model": source,
        "min_confidence": min_confidence,
        "review_uri": review_uri,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parts": [shard["parts"] for shard in ordered],
    }
    s3_client.put_object(
        Bucket=out_bucket,
        Key=out_prefix + PREDICTIONS_JSON,
        Body=(json.dumps(document, indent=2, allow_nan=False) + "\n").encode(),
        ContentType="application/json",
    )
    return {
        **summary,
        "predictions_csv": f"s3://{out_bucket}/{out_prefix}{PREDICTIONS_CSV}",
        "predictions_json": f"s3://{out_bucket}/{out_prefix}{PREDICTIONS_JSON}",
        "parts_uri": f"s3://{out_bucket}/{out_prefix}parts/",
        "review_uri": review_uri,
        "model_version": source["version"],
        "model_sha256": source["model_sha256"],
        "model_architecture": source["architecture"],
        "model_augment": source["augment"],
    }


def _concatenate_csv(s3_client: Any, parts: list[Part], table: Path, scratch: Path) -> None:
    """`table`: the header once, then each part's rows, each part checked against its sha256."""
    with atomic_path(table) as tmp, tmp.open("wb") as out:
        for i, part in enumerate(parts):
            bucket, key = split_s3_uri(part["uri"])
            local = scratch / f"part-{i}.csv"
            s3_client.download_file(bucket, key, str(local))
            check_sha256(part["uri"], expected=part["sha256"], actual=sha256_file(local))
            with local.open("rb") as rows:
                header = rows.readline()
                if i == 0:
                    out.write(header)
                while block := rows.read(1 << 20):
                    out.write(block)
            local.unlink()
