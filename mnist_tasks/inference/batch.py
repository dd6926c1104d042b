"""Scoring every image under an S3 prefix with one published model, in shards: the batch DAG's job.

Three steps, each a task that may run on any worker and shares nothing but S3:

1. `list_shards` lists the prefix once, in key order (so a capped run always takes the same
   images), pins the model `latest.json` points at, and cuts the first `max_images` into
   shards of `shard_size` (at least one shard, so an empty prefix still gets its outputs).
   It writes the listing and the shards to `<output>`, and returns the shards' refs: the
   mapped tasks' input is URIs and checksums.
2. `shard.score_shard` streams one shard's images through the model into its parts,
   in memory that does not grow with the shard, and sends the images the model was unsure
   of (below `min_confidence`) or found blank to review (mnist_tasks/feedback/review.py).
3. `combine_shards` checks the parts it reads and writes the run's outputs.

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

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypedDict

from mnist_tasks.errors import PermanentError
from mnist_tasks.files import atomic_path, check_sha256, scratch_dir, sha256_file
from mnist_tasks.inference.preprocess import is_image_name
from mnist_tasks.params import PARAMS
from mnist_tasks.registry import (
    ModelSource,
    fetch_model,
    parse_model_reference,
)
from mnist_tasks.s3 import directory_uri, json_bytes, split_s3_dir, split_s3_uri

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
CSV_COLUMNS = ("file", "digit", "probability", "status", "error", "model_version")
STATUSES = ("ok", "blank", "low_confidence", "error")
MAX_SHARDS = 1024  # Airflow's default [core] max_map_length: the most tasks one mapping may make


class ShardingError(PermanentError, ValueError):
    """The images cannot be cut into shards Airflow can map, or a shard is missing at the end."""


class Ref(TypedDict):
    """An object handed over by URI with the sha256 of its bytes (get_json checks them)."""

    uri: str
    sha256: str


class Part(Ref):
    bytes: int


class Shard(Ref):
    """What list_shards returns one of per shard: a mapped task's input.

    `uri` is the JSON list of the shard's objects: {"bucket", "objects": [{"key", "size"}, …]}.
    """

    index: int
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
    parts: dict[str, Part]
    """{"parquet": …, "csv": …}"""


class RunSummary(TypedDict):
    """The run's figures: predictions.json's, and the start of what combine returns."""

    input_uri: str
    images: int
    skipped: int
    ignored: int
    counts: dict[str, int]
    """{status: images}, every status of STATUSES."""
    low_confidence_share: float
    max_low_confidence_share: float
    drift: bool
    """The share is above its bound: the inputs moved away from what the model knows."""
    images_per_second: float
    """Images scored per second of the shards' own time, added up over the shards."""
    shards: int


class BatchPrediction(RunSummary):
    """What combine returns (the batch DAG's XCom)."""

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
    s3_client: S3Client,
    input_uri: str,
    output_uri: str,
    review_uri: str,
    models_uri: str,
    work_dir: Path,
    max_images: int,
    shard_size: int,
    max_shards: int = MAX_SHARDS,
) -> list[Shard]:
    """List `input_uri` once and cut the first `max_images` images into shards written under `output_uri`.

    Fails before anything is written when there is no intact model to score with
    (the model `latest.json` points at is fetched and checked, not loaded), when
    the input and the run's directories overlap, and when the shards would be more
    than `max_shards` (Airflow's [core] max_map_length). What an earlier attempt of
    the run left under `output_uri` and `review_uri` (the run's own directories) is
    removed first: a re-run with fewer shards leaves no stale part behind.
    """
    PARAMS["max_images"].check(max_images)
    PARAMS["shard_size"].check(shard_size)
    input_uri, output_uri, review_uri = (directory_uri(uri) for uri in (input_uri, output_uri, review_uri))
    _refuse_overlap(input_uri, output_uri, review_uri)
    with scratch_dir(work_dir, "batch-model") as scratch:
        _, source = fetch_model(
            parse_model_reference("latest", models_uri=models_uri), s3_client=s3_client, dest_dir=scratch
        )
    scored, skipped, ignored = _list_images(s3_client, input_uri, max_images)
    cuts = range(0, max(len(scored), 1), shard_size)
    if len(cuts) > max_shards:
        raise ShardingError(
            f"{len(scored)} images in shards of {shard_size} make {len(cuts)} shards, more than Airflow maps "
            f"({max_shards}, [core] max_map_length): make shard_size at least {-(-len(scored) // max_shards)}"
        )
    for directory in (output_uri, review_uri):
        _remove_directory(s3_client, directory)
    listing: Listing = {
        "input_uri": input_uri, "output_uri": output_uri, "images": len(scored), "skipped": skipped,
        "ignored": ignored, "shards": len(cuts), "model": source,
    }  # fmt: skip
    out_bucket, out_prefix = split_s3_dir(output_uri)
    listing_ref = _put_json(s3_client, out_bucket, out_prefix + "listing.json", listing)
    in_bucket, _ = split_s3_dir(input_uri)
    shards: list[Shard] = []
    for index, start in enumerate(cuts):
        objects = scored[start : start + shard_size]
        ref = _put_json(s3_client, out_bucket, f"{out_prefix}shards/shard-{index:05d}.json",
                        {"bucket": in_bucket, "objects": objects})  # fmt: skip
        shards.append({"index": index, "uri": ref["uri"], "sha256": ref["sha256"], "images": len(objects),
                       "listing": listing_ref})  # fmt: skip
    return shards


def _refuse_overlap(input_uri: str, output_uri: str, review_uri: str) -> None:
    """ShardingError when the input holds the run's directories or lies in them: a run would score its own copies."""
    for name, directory in (("output", output_uri), ("review", review_uri)):
        if directory.startswith(input_uri) or input_uri.startswith(directory):
            raise ShardingError(
                f"the input {input_uri} and the run's {name} directory {directory} overlap: the run would "
                "score its own files; choose an input prefix outside both"
            )


def _remove_directory(s3_client: S3Client, uri: str) -> None:
    """Delete every object under s3://bucket/prefix/ (a run's own directory; never a whole bucket)."""
    bucket, prefix = split_s3_dir(uri)
    if not prefix:
        raise ShardingError(f"{uri} is a whole bucket, not a run's directory: nothing is removed from it")
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys: list[ObjectIdentifierTypeDef] = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if not keys:
            continue
        failed = s3_client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True}).get("Errors", [])
        if failed:
            problems = ", ".join(f"s3://{bucket}/{e['Key']}: {e.get('Code')} {e.get('Message', '')}" for e in failed)
            raise RuntimeError(f"could not remove the run's earlier outputs: {problems}")


def _put_json(s3_client: S3Client, bucket: str, key: str, value: Any) -> Part:
    body = json_bytes(value)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return {"uri": f"s3://{bucket}/{key}", "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}


def get_json(s3_client: S3Client, ref: Ref) -> Any:
    """The JSON object `ref` names, once its bytes match the sha256 they were handed over with."""
    bucket, key = split_s3_uri(ref["uri"])
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    check_sha256(ref["uri"], expected=ref["sha256"], actual=hashlib.sha256(body).hexdigest())
    return json.loads(body)


class ListedImage(TypedDict):
    key: str
    size: int
    etag: str


def _list_images(s3_client: S3Client, input_uri: str, max_images: int) -> tuple[list[ListedImage], int, int]:
    """(the first max_images images by key, as {"key", "size", "etag"}; how many images beyond; other objects).

    Only the images to score are kept: the listing's memory does not grow with the prefix.
    """
    bucket, prefix = split_s3_dir(input_uri)
    images: list[ListedImage] = []
    skipped = ignored = 0
    # S3 lists keys in ascending UTF-8 byte order, page after page.
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):
                continue  # a "folder" placeholder made by consoles, not a file
            if not is_image_name(PurePosixPath(obj["Key"]).name):
                ignored += 1
            elif len(images) < max_images:
                images.append({"key": obj["Key"], "size": obj["Size"], "etag": obj["ETag"]})
            else:
                skipped += 1
    return images, skipped, ignored


def combine_shards(
    *,
    s3_client: S3Client,
    shards: list[Shard],
    scored: list[ScoredShard],
    min_confidence: float,
    max_low_confidence_share: float,
    review_uri: str,
    work_dir: Path,
) -> BatchPrediction:
    """Write predictions.csv (the shards' CSV parts, each checked against its sha256, in key order) and
    predictions.json; `drift` says whether the share of low_confidence images is above its bound."""
    listing: Listing = get_json(s3_client, shards[0]["listing"])
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
    summary = _summary(listing, ordered, max_low_confidence_share=max_low_confidence_share)
    source = listing["model"]
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
        Body=json_bytes(document),
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


def _summary(listing: Listing, ordered: list[ScoredShard], *, max_low_confidence_share: float) -> RunSummary:
    """The run's figures, from the listing and its shards (in order): predictions.json's and the task's result's."""
    counts = {status: sum(shard["counts"][status] for shard in ordered) for status in STATUSES}
    seconds = sum(shard["seconds"] for shard in ordered)
    share = round(counts["low_confidence"] / listing["images"], 4) if listing["images"] else 0.0
    return {
        "input_uri": listing["input_uri"],
        "images": listing["images"],
        "skipped": listing["skipped"],
        "ignored": listing["ignored"],
        "counts": counts,
        "low_confidence_share": share,
        "max_low_confidence_share": max_low_confidence_share,
        "drift": share > max_low_confidence_share,
        # Per second of the shards' own scoring time, added up: what one worker does.
        "images_per_second": round(listing["images"] / seconds, 1) if seconds else 0.0,
        "shards": len(ordered),
    }


def _concatenate_csv(s3_client: S3Client, parts: list[Part], table: Path, scratch: Path) -> None:
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
