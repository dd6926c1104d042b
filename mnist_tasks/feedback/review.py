"""The review prefix: the images batch predictions were unsure of, for people to label.

Each image below `min_confidence`, and each blank one, is copied server-side (no bytes
through the worker) from the input prefix to the run's review directory, under the same
key below the prefix, with a JSON file beside it of what the model thought and where the
image came from:

    <review_uri><key below the input prefix>        the image
    <review_uri><key below the input prefix>.json   {"source", "status", "top3", "probability",
                                                     "model_version", "reviewed_at"}

`review_uri` is one directory per run (MNIST_REVIEW_URI/<run>/), so a re-run replaces
its own copies. The labelling loop reads from here.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mnist_tasks.s3 import json_bytes, split_s3_dir, split_s3_uri

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

COPIERS = 4  # copies in flight: threads of their own, so they never hold back the shard's GETs
IN_FLIGHT = 32  # copies queued at most before submit waits for the oldest


class Reviewer:
    """Copies rows' images to the review directory in the background, boundedly (a context manager)."""

    def __init__(self, s3_client: S3Client, *, review_uri: str, input_uri: str) -> None:
        self._s3 = s3_client
        self._review_bucket, self._review_prefix = split_s3_dir(review_uri)
        self._input_uri = input_uri
        self._pool = ThreadPoolExecutor(COPIERS)
        self._pending: deque[Future[None]] = deque()

    def __enter__(self) -> Reviewer:
        return self

    def __exit__(self, *exc: object) -> None:
        # On an error, queued copies are dropped: the retry of the shard makes them all again.
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, row: dict[str, Any]) -> None:
        """Queue the copy of one scored row's image (and its JSON) to the review directory."""
        if len(self._pending) >= IN_FLIGHT:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._copy, row))

    def wait(self) -> None:
        """Until every queued copy is made; the first that failed raises."""
        while self._pending:
            self._pending.popleft().result()

    def _copy(self, row: dict[str, Any]) -> None:
        bucket, key = split_s3_uri(row["file"])
        # Below the input prefix, as list_shards found it (so never empty, never outside it).
        key_in_review = self._review_prefix + row["file"].removeprefix(self._input_uri)
        self._s3.copy_object(
            Bucket=self._review_bucket, Key=key_in_review, CopySource={"Bucket": bucket, "Key": key}
        )
        facts = {
            "source": row["file"],
            "status": row["status"],
            "probability": row["probability"],
            "top3": row["top3"],
            "model_version": row["model_version"],
            "reviewed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._s3.put_object(
            Bucket=self._review_bucket,
            Key=key_in_review + ".json",
            Body=json_bytes(facts),
            ContentType="application/json",
        )
