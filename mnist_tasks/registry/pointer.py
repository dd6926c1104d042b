"""`latest.json`, the pointer: read it, move it (only to a verified version), promote, repair, refuse it missing.

`latest` only ever points at a version whose every file matches its manifest. It moves with
conditional writes (If-Match on the ETag it had when it was read, If-None-Match: * when
there was none), so two writers never overwrite each other unseen: the loser gets
LatestMovedError. A latest.json gone while versions are published is refused
(PointerMissingError), never read as "nothing published": that would waive the champion.
"""

from __future__ import annotations

import getpass
import socket
from datetime import UTC, datetime
from typing import TypedDict, cast

from mnist_tasks.model.architecture import MODEL_FILE
from mnist_tasks.registry.errors import (
    GateNotPassedError,
    LatestMovedError,
    NothingPublishedError,
    PointerMissingError,
    PublishVerificationError,
    VersionNotFoundError,
)
from mnist_tasks.registry.layout import LATEST_FILE, MANIFEST_FILE, ModelRegistry, version_dirs
from mnist_tasks.registry.manifest import Manifest, gate_passed, parse_object, read_manifest_and_sha256
from mnist_tasks.registry.serving_copy import serving_uri, write_serving_copy
from mnist_tasks.registry.verify import verified_manifest
from mnist_tasks.s3 import get_bytes, get_object_or_none, json_bytes, put_if_absent, put_if_match

JSON_TYPE = "application/json"


class Pointer(TypedDict):
    """What latest.json holds."""

    version: int
    manifest_key: str
    manifest_sha256: str
    """The checksum of the manifest bytes verified when it moved: readers tell if the version changed since."""
    model_uri: str
    updated_at: str
    moved_by: str
    reason: str
    serving_uri: str | None
    """The version's export in TensorFlow Serving's layout; None for a version published before exports."""


def read_latest(*, registry: ModelRegistry) -> Pointer | None:
    """The `latest.json` pointer, or None when nothing has been published yet."""
    return read_latest_state(registry=registry)[0]


def read_latest_state(*, registry: ModelRegistry) -> tuple[Pointer | None, str | None]:
    """(the `latest.json` pointer, its ETag), or (None, None) when nothing has been published yet.

    The ETag is what a later `move_latest` makes its write conditional on.
    """
    stored = get_object_or_none(registry.client, registry.bucket, registry.latest_key)
    if stored is None:
        return None, None
    pointer = parse_object(stored["Body"].read(), registry.uri(registry.latest_key))
    return cast("Pointer", pointer), stored["ETag"]


def read_latest_manifest(*, registry: ModelRegistry) -> tuple[Manifest, str] | None:
    """(the manifest `latest.json` vouches for, its sha256), checked against the pointer and the seal; None
    when nothing is published; PointerMissingError when versions exist but `latest.json` does not."""
    latest = read_latest(registry=registry)
    if latest is None:
        refuse_missing_pointer(registry=registry)
        return None
    return read_manifest_and_sha256(
        registry=registry, version=latest["version"], manifest_sha256=latest["manifest_sha256"]
    )


def refuse_missing_pointer(*, registry: ModelRegistry, besides: int | None = None) -> None:
    """PointerMissingError when versions (other than `besides`) are published though latest.json is absent.

    Called where "no latest.json" would otherwise mean "nothing published yet", so
    that a deleted pointer never waives the champion: evaluate would compare with
    nobody, and publish would make any passing model latest.
    """
    for version in reversed(version_dirs(registry)):
        key = registry.key(version, MANIFEST_FILE)
        if version != besides and get_bytes(registry.client, registry.bucket, key) is not None:
            raise PointerMissingError(
                f"{registry.models_uri}{LATEST_FILE} is missing, yet version {version} (and maybe others) is "
                "published: the champion is unknown, so nothing is compared or published. "
                "`python -m mnist_tasks models repair` points latest at the newest version that passed its gate"
            )


def repair_latest(*, registry: ModelRegistry) -> Pointer:
    """Recreate a missing latest.json for the newest version that verifies and passed its gate; return the pointer.

    A latest.json that exists is returned as it is (promote moves it on purpose).
    NothingPublishedError when no version qualifies.
    """
    current, _ = read_latest_state(registry=registry)
    if current is not None:
        return current
    reason = f"repaired: {LATEST_FILE} was missing; the newest verified version that passed its gate"
    for version in reversed(version_dirs(registry)):
        try:
            return promote(registry=registry, version=version, reason=reason)
        except (VersionNotFoundError, PublishVerificationError, GateNotPassedError):
            continue  # no manifest, damaged, or its gate failed
    raise NothingPublishedError(
        f"no version in {registry.models_uri} verifies and passed its gate: nothing to point latest at"
    )


def promote(*, registry: ModelRegistry, version: int, force: bool = False, reason: str | None = None) -> Pointer:
    """Point `latest` at a verified version on purpose, a rollback for instance; return the new pointer.

    An unknown or damaged version is refused (raises) and the pointer stays.
    So is a version whose gate failed, unless `force` with a `reason`. The
    pointer records who moved it, when and why, and its `serving_uri`: the
    version's export in TensorFlow Serving's layout, copied now if missing, or
    None for a version published before exports existed (it still becomes latest).
    """
    if force and not (reason or "").strip():
        raise GateNotPassedError("--force needs a --reason: it is recorded in latest.json")
    manifest, manifest_sha256 = verified_manifest(registry, version, None)
    if gate_passed(manifest.get("metrics", {})) is not True and not force:
        raise GateNotPassedError(
            f"version {version} did not pass its accuracy gate ({manifest['metrics'].get('message', 'no verdict')}); "
            "promote it anyway only with --force and a --reason"
        )
    _, etag = read_latest_state(registry=registry)
    return move_latest(
        registry=registry,
        manifest=manifest,
        manifest_sha256=manifest_sha256,
        expected_etag=etag,
        moved_by=f"{getpass.getuser()}@{socket.gethostname()}",
        reason=reason or "promoted by hand",
    )


def move_latest(
    *,
    registry: ModelRegistry,
    manifest: Manifest,
    manifest_sha256: str,
    expected_etag: str | None,
    moved_by: str,
    reason: str,
) -> Pointer:
    """Write `latest.json` for a verified version (its manifest) if it still has `expected_etag` (None: absent).

    Then the version's export is copied to TensorFlow Serving's `serving/<version>/`
    (write_serving_copy). In that order, TensorFlow Serving, which serves the highest
    version there, can lag the pointer but never lead it: a copy made first would
    stay behind for a version that never became latest if the pointer's write
    failed or the task was killed in between. A copy that fails after the pointer
    moved is made by the retry (publish's, or `models promote` again).
    Raises LatestMovedError when someone else wrote `latest.json` since it was
    read; the pointer then stays what they made it, and nothing is copied.
    """
    version = manifest["version"]
    pointer: Pointer = {
        "version": version,
        "manifest_key": registry.key(version, MANIFEST_FILE),
        "manifest_sha256": manifest_sha256,
        "model_uri": registry.uri(registry.key(version, MODEL_FILE)),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "moved_by": moved_by,
        "reason": reason,
        "serving_uri": serving_uri(registry, manifest),
    }
    if not _write_pointer(registry, pointer, expected_etag):
        current, _ = read_latest_state(registry=registry)
        now = "nothing" if current is None else f"version {current['version']}"
        raise LatestMovedError(
            f"{registry.uri(registry.latest_key)} changed while version {version} was being made latest: "
            f"it now points at {now}; latest was left as it is"
        )
    write_serving_copy(registry=registry, manifest=manifest)
    return pointer


def _write_pointer(registry: ModelRegistry, pointer: Pointer, expected_etag: str | None) -> bool:
    """Write latest.json if it still has `expected_etag` (None: if there is none); whether it was written."""
    body, key = json_bytes(pointer, sort_keys=True), registry.latest_key
    if expected_etag:
        return put_if_match(
            registry.client, bucket=registry.bucket, key=key, body=body, content_type=JSON_TYPE, etag=expected_etag
        )
    return put_if_absent(registry.client, bucket=registry.bucket, key=key, body=body, content_type=JSON_TYPE)
