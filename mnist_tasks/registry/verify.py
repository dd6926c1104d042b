"""A version read back whole: every object against the sha256 and size its manifest records; sealing one."""

from __future__ import annotations

from typing import TypedDict

from mnist_tasks.files import check_sha256, sha256_stream
from mnist_tasks.registry.errors import PublishChecksumError, PublishVerificationError
from mnist_tasks.registry.layout import SEAL_FILE, ModelRegistry
from mnist_tasks.registry.manifest import FileEntry, Manifest, read_manifest_and_sha256, seal_manifest
from mnist_tasks.s3 import get_object_or_none


class Sealed(TypedDict):
    """What seal_version returns."""

    version: int
    manifest_sha256: str
    seal_uri: str


def verify_version(*, registry: ModelRegistry, version: int, manifest_sha256: str | None = None) -> Manifest:
    """Read every object of a version back and check it against the manifest; return the manifest.

    `manifest_sha256` pins the manifest itself. Raises PublishVerificationError
    naming the key, what was expected and what the bucket holds.
    """
    return verified_manifest(registry, version, manifest_sha256)[0]


def verified_manifest(
    registry: ModelRegistry, version: int, manifest_sha256: str | None, *, sealed: bool = True
) -> tuple[Manifest, str]:
    """verify_version, also returning the sha256 of the manifest bytes it checked against."""
    manifest, sha = read_manifest_and_sha256(
        registry=registry, version=version, manifest_sha256=manifest_sha256, sealed=sealed
    )
    for name, expected in manifest["files"].items():
        check_object(registry, registry.key(version, name), expected)
    return manifest, sha


def seal_version(*, registry: ModelRegistry, version: int) -> Sealed:
    """Seal a version published before seals existed, once every file verifies against its manifest.

    A person vouches for the manifest as it stands, as with promote. A version
    already sealed is left as it is (its seal must match). Returns
    {"version", "manifest_sha256", "seal_uri"}.
    """
    _, manifest_sha256 = verified_manifest(registry, version, None, sealed=False)
    seal_manifest(registry=registry, version=version, manifest_sha256=manifest_sha256)
    seal_uri = registry.uri(registry.key(version, SEAL_FILE))
    return {"version": version, "manifest_sha256": manifest_sha256, "seal_uri": seal_uri}


def check_object(registry: ModelRegistry, key: str, expected: FileEntry) -> None:
    """PublishVerificationError unless the object holds what a manifest's `files` entry records."""
    got = object_checksum(registry, key)
    if got is None:
        raise missing_object(registry, key, expected["sha256"])
    sha, size = got
    check_sha256(
        registry.uri(key),
        expected=expected["sha256"],
        actual=sha,
        detail=f" ({size} bytes, expected {expected['bytes']})",
        error=PublishChecksumError,
    )
    if size != expected["bytes"]:
        raise PublishVerificationError(f"{registry.uri(key)}: {size} bytes, its manifest records {expected['bytes']}")


def missing_object(registry: ModelRegistry, key: str, sha256: str) -> PublishVerificationError:
    return PublishVerificationError(f"{registry.uri(key)}: expected sha256 {sha256}, got a missing object")


def object_checksum(registry: ModelRegistry, key: str) -> tuple[str, int] | None:
    """(sha256, byte count) of an object's content, read whole; None when it does not exist."""
    stored = get_object_or_none(registry.client, registry.bucket, key)
    return None if stored is None else sha256_stream(stored["Body"])
