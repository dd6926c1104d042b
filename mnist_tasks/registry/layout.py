"""The registry object, and where each of its objects lives in the bucket.

Under `models_uri` (s3://bucket/prefix/):

    prefix/<version>/claim.json                        written first and once (If-None-Match: *): whose it is
    prefix/<version>/model.keras, metrics.json, ...   uploaded by that run only
    prefix/<version>/saved_model/saved_model.pb, ...  the SavedModel export (versions published before it had none)
    prefix/<version>/manifest.json                     written last and once: the version is complete
    prefix/<version>/manifest.sha256                   its seal, written once right after it (`sha256sum -c` reads it)
    prefix/serving/<version>/saved_model.pb, ...       TensorFlow Serving's copy of the export, for versions made latest
    prefix/latest.json                                 the pointer, moved only to a verified version

`<version>` is a plain integer. A directory without a manifest is an unfinished
publish and is not a version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnist_tasks.model.serving import SERVING_DIR
from mnist_tasks.s3 import split_s3_dir

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MANIFEST_FILE = "manifest.json"
SEAL_FILE = "manifest.sha256"
LATEST_FILE = "latest.json"
CLAIM_FILE = "claim.json"

# Only canonical integers name versions: "0042" would read as 42 and then
# point at a directory that does not exist.
VERSION_DIR = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class ModelRegistry:
    """A registry of published models: the S3 client that reads and writes it, and where it is.

    Every operation of the registry (mnist_tasks.registry) takes one; this object only
    knows the keys: `registry.key(version, MANIFEST_FILE)`, `registry.uri(key)`.
    """

    client: S3Client
    models_uri: str
    """s3://bucket/prefix/ as given (messages quote it so); a trailing "/" is optional."""

    @property
    def bucket(self) -> str:
        return split_s3_dir(self.models_uri)[0]

    @property
    def prefix(self) -> str:
        """The key prefix of the registry's directory: "" or ending in "/"."""
        return split_s3_dir(self.models_uri)[1]

    @property
    def latest_key(self) -> str:
        return self.prefix + LATEST_FILE

    def version_prefix(self, version: int) -> str:
        """Key prefix of one version's directory, ending in '/'."""
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise ValueError(f"version must be a positive integer, got {version!r}")
        return f"{self.prefix}{version}/"

    def key(self, version: int, name: str) -> str:
        """Key of a file in a version's directory ("saved_model/saved_model.pb", MANIFEST_FILE, …)."""
        return self.version_prefix(version) + name

    def serving_prefix(self, version: int) -> str:
        """Key prefix of a version's directory under TensorFlow Serving's base path, ending in '/'."""
        return f"{self.prefix}{SERVING_DIR}/" + self.version_prefix(version)[len(self.prefix) :]

    def uri(self, key: str) -> str:
        """s3://bucket/key of one of the registry's keys."""
        return f"s3://{self.bucket}/{key}"


def version_dirs(registry: ModelRegistry) -> list[int]:
    """The version numbers that have a directory in the registry, oldest first (a manifest or not)."""
    prefix = registry.prefix
    versions = []
    paginator = registry.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=registry.bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            name = common["Prefix"][len(prefix) :].rstrip("/")
            if VERSION_DIR.fullmatch(name):
                versions.append(int(name))
    return sorted(versions)


def check_file_name(name: str) -> None:
    """ValueError unless `name` is a path inside a version directory: relative, no '.', '..' or empty parts."""
    parts = name.split("/")
    if name == MANIFEST_FILE or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad file name for a model version: {name!r}")
