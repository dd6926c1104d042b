"""S3: the client, URIs and error codes, and the store's idioms written once.

The idioms: a JSON document as the store holds it (`json_bytes`), a write that happens only
if the key is free (`put_if_absent`) or still holds what was read (`put_if_match`), and a
read that tells a missing key from an error (`get_object_or_none`, `get_bytes`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix/")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in S3 URI: {uri!r}")
    return bucket, key


def directory_uri(uri: str) -> str:
    """A base URI (s3://, file://, http://…) that names a directory: ending in "/", so names can follow."""
    return uri if uri.endswith("/") else uri + "/"


def split_s3_dir(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b/"): a directory's key prefix ends in "/"; an empty one stays ""."""
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_error_code(err: Exception) -> str:
    """The error code of a botocore ClientError ("NoSuchKey", "412", …); "" for anything else."""
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_missing(err: Exception) -> bool:
    """An S3 error that means the key (or, for HEAD, the object) does not exist."""
    return s3_error_code(err) in ("NoSuchKey", "404", "NotFound")


def is_condition_failed(err: Exception) -> bool:
    """What S3, MinIO and moto answer when a conditional write's If-Match / If-None-Match does not hold."""
    return s3_error_code(err) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def json_bytes(value: Any, *, sort_keys: bool = False) -> bytes:
    """A JSON document as this package stores it: indented by 2, NaN and infinity refused, ending in a newline.

    `sort_keys` is each writer's own and stays so: the registry's manifests, claims and
    latest.json, and the artifact store's JSON, are sorted, and the checksums recorded of
    them are of those bytes; metrics.json, history.json and the batch documents keep the
    order they were built in.
    """
    return (json.dumps(value, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n").encode()


def put_if_absent(s3_client: S3Client, *, bucket: str, key: str, body: bytes, content_type: str) -> bool:
    """Write the object only if `key` holds none (If-None-Match: *); whether this call wrote it.

    False means another writer's object is there: the caller reads it and decides.
    """
    return _put_if(s3_client, bucket, key, body, content_type, if_match=None)


def put_if_match(s3_client: S3Client, *, bucket: str, key: str, body: bytes, content_type: str, etag: str) -> bool:
    """Replace the object only if it still has `etag` (If-Match); whether this call wrote it.

    False means someone wrote it (or deleted it) since it was read.
    """
    return _put_if(s3_client, bucket, key, body, content_type, if_match=etag)


def _put_if(
    s3_client: S3Client, bucket: str, key: str, body: bytes, content_type: str, *, if_match: str | None
) -> bool:
    """The conditional PUT: If-Match `if_match`, or If-None-Match: * when None; False when the condition fails."""
    from botocore.exceptions import ClientError  # here: local files' writers import this module too

    try:
        if if_match is None:
            s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*")
        else:
            s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfMatch=if_match)
    except ClientError as err:
        if is_condition_failed(err):
            return False
        raise
    return True


def get_object_or_none(s3_client: S3Client, bucket: str, key: str) -> GetObjectOutputTypeDef | None:
    """GET's response (its "Body" still to read), or None when the key does not exist (other errors propagate)."""
    from botocore.exceptions import ClientError

    try:
        return s3_client.get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if is_missing(err):
            return None
        raise


def get_bytes(s3_client: S3Client, bucket: str, key: str) -> bytes | None:
    """The whole object, or None when the key does not exist (other errors propagate)."""
    stored = get_object_or_none(s3_client, bucket, key)
    return None if stored is None else stored["Body"].read()


def s3_client_from_env() -> S3Client:
    """A boto3 S3 client configured the standard way (AWS_* variables, profiles).

    The CLI uses this; the DAG gets its client from the Airflow connection instead.
    AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) points it at another S3 store than AWS (SeaweedFS, the embedded store).
    """
    import boto3

    return boto3.client("s3")
