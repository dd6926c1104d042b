"""S3: the client, URIs and error codes, and the store's idioms written once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


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



def s3_client_from_env() -> Any:
    """A boto3 S3 client configured the standard way (AWS_* variables, profiles).

    The CLI uses this; the DAG gets its client from the Airflow connection instead.
    AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) points it at another S3 store than AWS (SeaweedFS, the embedded store).
    """
    import boto3

    return boto3.client("s3")
