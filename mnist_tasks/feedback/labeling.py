"""Labelling: people take the images batch predictions were unsure of out of review, labelled or discarded.

mnist_tasks/feedback/review.py is the batch side, which copies images *into* review; this module is
the people's side, which takes them *out*, one decision at a time. The "MNIST review" page
(plugins/mnist_review.py) only wires these functions to HTTP. Three prefixes, each a URI:

    <review_uri><run dir>/<key>                            an image waiting (review.py's copy)
    <review_uri><run dir>/<key>.json                       what the model thought of it
    <labeled_uri><digit>/<sha256 of the image><suffix>     a labelled image, which labeled.py trains on
    <review_log_uri><YYYY-MM-DD>/<UTC time>-<uuid4>.json   one audit record per label or discard

The run dir is a batch-prediction run's id, one segment by files.safe_name. An audit
record is {"action": "label" | "discard", "user", "at" (ISO 8601, UTC), "review_key",
"labeled_key" and "digit" (labels only), "model_top3", "model_version", "source"}.

Errors: a key that names no waiting image, or a digit that is not 0-9, is a
ReviewRequestError before the store is asked; an image no longer there is a
ReviewItemNotFoundError. The store's own errors propagate as botocore's, with a note
(PEP 678) naming the object, `cannot write s3://bucket/key`, which their messages do not.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import unquote

from botocore.exceptions import BotoCoreError, ClientError

from mnist_tasks.errors import MnistError, PermanentError
from mnist_tasks.inference.preprocess import is_image_name
from mnist_tasks.s3 import get_bytes, is_missing, json_bytes, split_s3_dir

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

FACTS_SUFFIX = ".json"  # review.py's JSON beside each image: <key>.json
DETAIL_READERS = 16  # the JSON files read at once for review_items
# Chosen by the key's suffix, never by what the object says of itself: a planted text/html
# object must not become a page under the UI's origin, nor be filed as an image.
IMAGE_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp", ".gif": "image/gif",
    ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff",
}  # fmt: skip


class ReviewRequestError(PermanentError, ValueError):
    """The key names no image waiting for review, or the digit is not 0-9; nothing was read or changed."""


class ReviewItemNotFoundError(PermanentError, LookupError):
    """The image is not waiting for review (any more): usually this action, or another reviewer's, took it out."""


class ReviewRemovalError(MnistError, RuntimeError):
    """The store answered the delete of an image and its JSON, but kept one of them."""


class Guess(TypedDict):
    digit: int
    probability: float


class ReviewItem(TypedDict):
    """One waiting image as the page shows it. The last five are review.py's JSON values, unchecked; None if absent."""

    key: str
    name: str
    run: str
    """The batch-prediction run's id (its directory's name, decoded)."""
    top3: list[Guess]
    problem: str | None
    """Why the model's guesses are unknown (no JSON, bad JSON, a bad top3); None when they are known."""
    status: Any
    probability: Any
    model_version: Any
    source: Any
    reviewed_at: Any


class Labeled(TypedDict):
    review_key: str
    labeled_key: str
    digit: int


class Discarded(TypedDict):
    review_key: str


def review_queue(*, s3_client: S3Client, review_uri: str) -> list[str]:
    """The keys of the images waiting under `review_uri`, newest run first (ties by the run's name), then by key.

    A run's age is the newest LastModified of its objects, from the listing. That is when
    review.py wrote them, the moment its `reviewed_at` records, by the store's clock; reading
    every JSON file for its `reviewed_at` would take 100,000 requests for 100,000 images.
    """
    bucket, prefix = split_s3_dir(review_uri)
    newest_in_run: dict[str, datetime] = {}
    images: list[tuple[str, str]] = []  # (run, key)
    with _naming("list", bucket, prefix):
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key, run = item["Key"], _run_dir(item["Key"], prefix)
                newest_in_run[run] = max(item["LastModified"], newest_in_run.get(run, item["LastModified"]))
                # Half the keys are the JSON files: passed over before the slower check of the name.
                if not key.endswith(FACTS_SUFFIX) and is_image_name(key.rpartition("/")[2]):
                    images.append((run, key))
    images.sort()
    # Stable: the runs that are equally new stay in the order of their names.
    images.sort(key=lambda image: newest_in_run[image[0]], reverse=True)
    return [key for _, key in images]


def review_items(*, s3_client: S3Client, review_uri: str, keys: list[str]) -> list[ReviewItem]:
    """The waiting images at `keys` (from review_queue), in order, each with the facts review.py wrote beside it.

    A missing or damaged JSON file is the item's `problem`, not an error: the image can still be labelled.
    """
    bucket, prefix = split_s3_dir(review_uri)
    with ThreadPoolExecutor(DETAIL_READERS) as pool:
        return list(pool.map(lambda key: _review_item(s3_client, bucket, prefix, key), keys))


def read_review_image(*, s3_client: S3Client, review_uri: str, key: str) -> bytes:
    """The bytes of the image waiting at `key`."""
    bucket = _checked_key(key, review_uri)
    with _waiting(bucket, key):
        return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def label_image(
    *, s3_client: S3Client, review_uri: str, labeled_uri: str, review_log_uri: str, key: str, digit: int, user: str
) -> Labeled:
    """File the waiting image at `key` as `<labeled_uri><digit>/<sha256><suffix>` and take it out of review.

    `key` and `digit` are checked here, since they come from a person's request. Named by
    its bytes, the same image labelled twice is one object, and the same image under two
    digits is two, which the trainer sees as a conflict.
    """
    bucket = _checked_key(key, review_uri)
    if not _is_digit(digit):
        raise ReviewRequestError(f'"digit" must be a whole number from 0 to 9, got {digit!r}')
    with _waiting(bucket, key):
        image = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    facts, _ = _read_facts(s3_client, bucket, key)
    labeled_bucket, labeled_prefix = split_s3_dir(labeled_uri)
    labeled_key = f"{labeled_prefix}{digit}/{hashlib.sha256(image).hexdigest()}{PurePosixPath(key).suffix.lower()}"
    # The record goes first: nothing changes unrecorded. If a step after it fails, the image
    # is still waiting, and its next action is recorded again; a key's last record is the truth.
    _write_record(s3_client, review_log_uri, "label", user, key, facts, labeled_key=labeled_key, digit=digit)
    with _naming("write", labeled_bucket, labeled_key):
        s3_client.put_object(Bucket=labeled_bucket, Key=labeled_key, Body=image, ContentType=content_type(key))
    _remove_from_review(s3_client, bucket, key)
    return {"review_key": key, "labeled_key": labeled_key, "digit": digit}


def discard_image(*, s3_client: S3Client, review_uri: str, review_log_uri: str, key: str, user: str) -> Discarded:
    """Take the waiting image at `key` out of review unlabelled (recorded first, as label_image does)."""
    bucket = _checked_key(key, review_uri)
    with _waiting(bucket, key):
        s3_client.head_object(Bucket=bucket, Key=key)
    facts, _ = _read_facts(s3_client, bucket, key)
    _write_record(s3_client, review_log_uri, "discard", user, key, facts)
    _remove_from_review(s3_client, bucket, key)
    return {"review_key": key}


def content_type(key: str) -> str:
    """An image's Content-Type by its key's suffix; bytes (application/octet-stream) for a suffix not known."""
    return IMAGE_TYPES.get(PurePosixPath(key).suffix.lower(), "application/octet-stream")


@contextmanager
def _naming(verb: str, bucket: str, key: str) -> Iterator[None]:
    """botocore's errors as they are, with a note `cannot <verb> s3://<bucket>/<key>`: theirs name no object."""
    try:
        yield
    except (BotoCoreError, ClientError) as err:
        err.add_note(f"cannot {verb} s3://{bucket}/{key}")
        raise


@contextmanager
def _waiting(bucket: str, key: str) -> Iterator[None]:
    """Reading the image waiting at `key`: ReviewItemNotFoundError if it is not there, else as _naming."""
    with _naming("read", bucket, key):
        try:
            yield
        except ClientError as err:
            if not is_missing(err):
                raise
            # The usual reason: this action, or another reviewer's, already took it out.
            gone = f"s3://{bucket}/{key} is not waiting for review (labelled or discarded)"
            raise ReviewItemNotFoundError(gone) from err


def _checked_key(key: str, review_uri: str) -> str:
    """The review bucket, once `key` names an image waiting below the review prefix; else ReviewRequestError."""
    bucket, prefix = split_s3_dir(review_uri)
    if not isinstance(key, str):  # a request's JSON may hold anything
        raise ReviewRequestError(f'"key" must be the key of an image under {review_uri}, got {key!r}')
    if (problem := _key_problem(key, prefix)) is not None:
        raise ReviewRequestError(f"s3://{bucket}/{key} {problem} ({review_uri})")
    return bucket


def _key_problem(key: str, prefix: str) -> str | None:
    """Why `key` cannot name an image waiting below `prefix`; None when it can."""
    if not key.startswith(prefix) or key == prefix:
        return "is not under the review prefix"
    if key.endswith(FACTS_SUFFIX):
        return "is the facts beside an image, not the image"
    if not is_image_name(PurePosixPath(key).name):
        return "is not an image's name"
    return None


def _is_digit(value: Any) -> bool:
    # bool is an int to Python, and true is not a digit.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9


def _run_dir(key: str, prefix: str) -> str:
    """The run directory of a key below the review prefix (its first segment there)."""
    return key.removeprefix(prefix).partition("/")[0]


def _review_item(s3_client: S3Client, bucket: str, prefix: str, key: str) -> ReviewItem:
    """One waiting image: its JSON's facts, and what is wrong with them, if anything."""
    facts, problem = _read_facts(s3_client, bucket, key)
    top3 = _top3(facts.get("top3", []))
    if top3 is None:
        top3, problem = [], f"the top3 in {key}{FACTS_SUFFIX} is not a list of [digit, probability] pairs"
    return {
        "key": key,
        "name": PurePosixPath(key).name,
        # The DAG encodes a run id into its directory name (files.safe_name); people know the run id.
        "run": unquote(_run_dir(key, prefix)),
        "top3": top3,
        "problem": problem,
        "status": facts.get("status"),
        "probability": facts.get("probability"),
        "model_version": facts.get("model_version"),
        "source": facts.get("source"),
        "reviewed_at": facts.get("reviewed_at"),
    }


def _read_facts(s3_client: S3Client, bucket: str, key: str) -> tuple[dict[str, Any], str | None]:
    """(the JSON review.py wrote beside the image at `key`, None), or ({}, why there is none to read)."""
    facts_key = key + FACTS_SUFFIX
    with _naming("read", bucket, facts_key):
        body = get_bytes(s3_client, bucket, facts_key)
    if body is None:
        return {}, f"no {facts_key}: the model's guesses are unknown"
    try:
        facts = json.loads(body)
    except ValueError as err:
        return {}, f"{facts_key} is not valid JSON: {err}"
    if not isinstance(facts, dict):
        return {}, f"{facts_key} is not a JSON object"
    return facts, None


def _top3(pairs: Any) -> list[Guess] | None:
    """review.py's top3 ([[digit, probability], ...]) as Guesses; None if it is not that."""
    if not isinstance(pairs, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and _is_digit(pair[0]) and type(pair[1]) in (int, float)
        for pair in pairs
    ):
        return None
    return [{"digit": digit, "probability": probability} for digit, probability in pairs]


def _write_record(
    s3_client: S3Client, review_log_uri: str, action: str, user: str, key: str, facts: dict[str, Any], **labeled: Any
) -> None:
    """Write the action's audit record, `<review_log_uri><YYYY-MM-DD>/<UTC time>-<uuid4>.json`."""
    bucket, prefix = split_s3_dir(review_log_uri)
    at = datetime.now(UTC)
    record_key = f"{prefix}{at:%Y-%m-%d}/{at:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4()}.json"
    record = {
        "action": action,
        "user": user,
        "at": at.isoformat(),
        "review_key": key,
        **labeled,
        "model_top3": facts.get("top3"),
        "model_version": facts.get("model_version"),
        "source": facts.get("source"),
    }
    with _naming("write", bucket, record_key):
        s3_client.put_object(
            Bucket=bucket,
            Key=record_key,
            Body=json_bytes(record),
            ContentType="application/json",
        )


def _remove_from_review(s3_client: S3Client, bucket: str, key: str) -> None:
    """Delete the image and its JSON in one request; ReviewRemovalError naming the first that was not deleted."""
    objects: list[ObjectIdentifierTypeDef] = [{"Key": key}, {"Key": key + FACTS_SUFFIX}]
    with _naming("delete", bucket, key):
        response = s3_client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
    # DeleteObjects answers 200 and lists the keys it could not delete (a missing key is deleted).
    if errors := response.get("Errors"):
        failed = errors[0]
        raise ReviewRemovalError(f"cannot delete s3://{bucket}/{failed['Key']}: {failed['Code']} {failed['Message']}")
