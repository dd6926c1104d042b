"""Scoring one shard of a batch run (batch.py has the run): the mapped task's job.

The shard's images stream through: GETs with bounded concurrency (FETCHES threads, through
signed_get's lean path), each image decoded and preprocessed in the shard's own thread with
`predict`'s own preprocessing, the model run on BATCH_SIZE images at a time, the rows
appended to the shard's Parquet and CSV parts as they come. Memory depends on FETCHES and
BATCH_SIZE, never on how many images there are. Images the model was unsure of, and blank
ones, go to review (review.py). The parts are uploaded under fixed names at the end: a
retried shard replaces its own.
"""

from __future__ import annotations

import csv
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from mnist_tasks.feedback.review import Reviewer
from mnist_tasks.files import scratch_dir, sha256_file
from mnist_tasks.inference.batch import CSV_COLUMNS, STATUSES, Listing, Part, ScoredShard, Shard, get_json
from mnist_tasks.inference.preprocess import MAX_FILE_BYTES, ImageError, check_file_size, digits_in_bytes
from mnist_tasks.params import PARAMS
from mnist_tasks.registry import ModelSource
from mnist_tasks.s3 import is_condition_failed, is_missing, split_s3_dir, split_s3_uri
from mnist_tasks.signed_get import SignedGetter

if TYPE_CHECKING:
    import keras
    import numpy as np
    from mypy_boto3_s3 import S3Client

BATCH_SIZE = 256  # images per model call: large enough that the call's own cost vanishes
# S3 GETs in flight per shard. The fetch threads only wait on sockets: preprocessing in them
# too made ten threads fight for the GIL, at half the rate of preprocessing in one thread.
FETCHES = 10
PROGRESS_SECONDS = 30.0  # how often a shard logs its progress


def score_shard(
    *,
    s3_client: S3Client,
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
    PARAMS["min_confidence"].check(min_confidence)
    listing: Listing = get_json(s3_client, shard["listing"])
    listed = get_json(s3_client, shard)
    objects, bucket = listed["objects"], listed["bucket"]
    pinned = listing["model"]
    meter = _Meter(len(objects), shard["index"], progress)
    counts: Counter[str] = Counter()
    with (
        scratch_dir(work_dir, f"shard-{shard['index']:05d}") as scratch,
        ThreadPoolExecutor(FETCHES) as pool,
        Reviewer(s3_client, review_uri=review_uri, input_uri=listing["input_uri"]) as reviewer,
        SignedGetter.for_client(s3_client) as getter,
    ):
        model = _pinned_model(s3_client, pinned, scratch)
        with _PartWriter(scratch) as writer:
            fetched = _fetched(getter, bucket, objects, pool)
            fields = ((uri, _field(uri, body)) for uri, body in fetched)
            for chunk in _chunks(fields, BATCH_SIZE):
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
        "parts": parts,
    }


def _pinned_model(s3_client: S3Client, pinned: ModelSource, scratch: Path) -> keras.Model:
    """The model the listing pinned: its file, loaded once it hashes to the sha256 its manifest recorded.

    By its URI, not by version: list_shards checked it against the manifest latest.json
    vouched for (a version published before seals has no other voucher), and latest may
    have moved since.
    """
    from mnist_tasks.model.loading import load_keras_model

    bucket, key = split_s3_uri(pinned["model_uri"])
    path = scratch / "model.keras"
    s3_client.download_file(bucket, key, str(path))
    return load_keras_model(path, sha256=pinned["model_sha256"], name=pinned["model_uri"], source="listing.json")


def _fetched(
    getter: SignedGetter, bucket: str, objects: list[dict[str, Any]], pool: ThreadPoolExecutor
) -> Iterator[tuple[str, bytes | ImageError]]:
    """(URI, its bytes or the ImageError that names it) per object, in order, at most FETCHES in flight."""
    pending: deque[tuple[str, Future[bytes | ImageError]]] = deque()
    remaining = iter(objects)
    for obj in islice(remaining, FETCHES):
        pending.append((f"s3://{bucket}/{obj['key']}", pool.submit(_fetch, getter, bucket, obj)))
    while pending:
        uri, future = pending.popleft()
        for obj in islice(remaining, 1):
            pending.append((f"s3://{bucket}/{obj['key']}", pool.submit(_fetch, getter, bucket, obj)))
        yield uri, future.result()


def _fetch(getter: SignedGetter, bucket: str, obj: dict[str, Any]) -> bytes | ImageError:
    """One object's bytes, or the ImageError that names it; other S3 errors propagate.

    Read only as it was listed (If-Match on its ETag): the size checked is the size read.
    """
    uri = f"s3://{bucket}/{obj['key']}"
    try:
        check_file_size(uri, obj["size"], max_bytes=MAX_FILE_BYTES)  # refused unread
        return getter.get(bucket, obj["key"], if_match=obj["etag"])
    except ImageError as err:
        return err
    except ClientError as err:
        if is_missing(err) or is_condition_failed(err):
            return ImageError(f"{uri}: deleted or replaced after the run listed it")
        raise


def _field(uri: str, body: bytes | ImageError) -> np.ndarray | None | ImageError:
    """The image's field (None when blank), or the ImageError that names it."""
    if isinstance(body, ImageError):
        return body
    try:
        fields = digits_in_bytes(body, name=uri)
    except ImageError as err:
        return err
    return fields[0] if fields else None


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _scored(
    model: keras.Model, chunk: list[tuple[str, Any]], *, min_confidence: float, version: int | None
) -> list[dict[str, Any]]:
    """The rows of a chunk of fetched images, in its order, with the model run once on its fields."""
    import numpy as np

    from mnist_tasks.inference.predict import classify, read_digit

    fields = [field for _, field in chunk if isinstance(field, np.ndarray)]
    probabilities = iter(classify(model, fields))
    rows = []
    for uri, field in chunk:
        row: dict[str, Any] = {
            "file": uri, "digit": None, "probability": None, "top3": [], "error": None, "model_version": version
        }
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
        self._parquet: Any = None  # pyarrow's ParquetWriter once entered

    def __enter__(self) -> _PartWriter:
        import pyarrow.parquet as pq

        self._csv_file = self.paths["csv"].open("w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        self._csv.writeheader()
        self._parquet = pq.ParquetWriter(self.paths["parquet"], _row_schema())
        return self

    def write(self, rows: list[dict[str, Any]]) -> None:
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


def _upload_parts(s3_client: S3Client, output_uri: str, index: int, paths: dict[str, Path]) -> dict[str, Part]:
    """Upload the shard's parts under their fixed names (a retry replaces them); their refs."""
    bucket, prefix = split_s3_dir(output_uri)
    parts: dict[str, Part] = {}
    for kind, path in paths.items():
        key = f"{prefix}parts/part-{index:05d}.{kind}"
        sha256 = sha256_file(path)
        s3_client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}})
        parts[kind] = {"uri": f"s3://{bucket}/{key}", "sha256": sha256, "bytes": path.stat().st_size}
    return parts
