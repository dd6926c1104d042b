"""Publishing a trained model as a new version: claim, upload, seal, verify, move `latest`.

Order matters: files, then the manifest, then a full read-back, then `latest.json` (its
SavedModel copied for TensorFlow Serving right after), so a reader following the pointer
never meets a half-uploaded or damaged version.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict

from mnist_tasks.files import sha256_stream
from mnist_tasks.model.architecture import MODEL_FILE
from mnist_tasks.registry.errors import GateFailedError, LatestMovedError, VersionConflictError, VersionNotFoundError
from mnist_tasks.registry.layout import MANIFEST_FILE, ModelRegistry, check_file_name
from mnist_tasks.registry.manifest import (
    Claim,
    FileEntry,
    Manifest,
    claim_version,
    gate_passed,
    read_manifest_and_sha256,
    seal_manifest,
    write_manifest_once,
)
from mnist_tasks.registry.pointer import Pointer, move_latest, read_latest_state, refuse_missing_pointer
from mnist_tasks.registry.serving_copy import write_serving_copy
from mnist_tasks.registry.verify import verify_version

# publish_model's default: move `latest` from whatever state it is in when publish reads it.
FROM_CURRENT_LATEST = "current"


class Published(TypedDict):
    """What publish_model returns."""

    version: int
    version_uri: str
    model_uri: str
    manifest_uri: str
    latest_uri: str
    manifest_sha256: str
    latest_version: int
    latest_moved: bool
    serving_uri: str | None
    """Where TensorFlow Serving finds this version: only a version that became latest is copied there."""


def publish_model(
    *,
    registry: ModelRegistry,
    version: int,
    files: Mapping[str, Path | str],
    manifest: Claim,
    compared_latest_etag: str | None = FROM_CURRENT_LATEST,
) -> Published:
    """Publish `files` (name -> local path) as `version`: claim, upload, seal the manifest, verify, move `latest`.

    A version belongs to the run that claims it first (`claim.json`, written
    with If-None-Match: *): another run gets VersionConflictError and writes
    nothing. Its `manifest.json` is written last and once, so a version with a
    manifest is complete; a retry of the same run with the same bytes finishes
    what an earlier attempt started, one with other bytes (a re-trained model)
    gets VersionConflictError once the manifest exists (versions are immutable).
    If the read-back does not match (PublishVerificationError), `latest.json`
    is not touched. Files named `saved_model/…` are the SavedModel export;
    when `latest` moves to this version they are also copied, and checked, to
    TensorFlow Serving's `serving/<version>/` (pointer.move_latest).

    `latest` moves forward only: never to an older version than it points at,
    and, with `compared_latest_etag` (the ETag latest.json had when evaluate
    compared this model with the champion; None when nothing was published),
    only from that state. If it moved before publishing starts, LatestMovedError
    and nothing is written; if it moves while publishing, LatestMovedError and
    the version stays published but not latest.
    """
    _check_publishable(version=version, files=files, manifest=manifest)
    _check_latest_unmoved(registry, version, compared_latest_etag)
    claim_version(registry=registry, version=version, manifest=manifest)
    # Hashed before upload, checked after: a file that changes in between fails verification.
    complete: Manifest = {**manifest, "files": _file_entries(files)}
    try:
        manifest_sha256 = _published_manifest_sha256(registry, version, complete)
    except VersionNotFoundError:
        manifest_sha256 = _upload(registry, version, files, complete)
    seal_manifest(registry=registry, version=version, manifest_sha256=manifest_sha256)
    verified = verify_version(registry=registry, version=version, manifest_sha256=manifest_sha256)
    latest = _advance_latest(registry, verified, manifest_sha256, compared_latest_etag)
    return _published(registry, version, manifest_sha256, latest)


def _file_entries(files: Mapping[str, Path | str]) -> dict[str, FileEntry]:
    """The manifest's `files`: {name: {"sha256", "bytes"}}, in name order."""
    entries: dict[str, FileEntry] = {}
    for name, path in sorted(files.items()):
        with open(path, "rb") as f:
            sha, size = sha256_stream(f)
        entries[name] = {"sha256": sha, "bytes": size}
    return entries


def _upload(registry: ModelRegistry, version: int, files: Mapping[str, Path | str], manifest: Manifest) -> str:
    """Upload the files, then the manifest (last: a version with a manifest is complete); return its sha256.

    If another attempt of this run wrote the manifest first, it stands if it published these files.
    """
    for name, path in files.items():
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        registry.client.upload_file(
            str(path), registry.bucket, registry.key(version, name), ExtraArgs={"ContentType": content_type}
        )
    written = write_manifest_once(registry=registry, version=version, manifest=manifest)
    return written if written is not None else _published_manifest_sha256(registry, version, manifest)


def _published(registry: ModelRegistry, version: int, manifest_sha256: str, latest: Pointer) -> Published:
    return {
        "version": version,
        "version_uri": registry.uri(registry.version_prefix(version)),
        "model_uri": registry.uri(registry.key(version, MODEL_FILE)),
        "manifest_uri": registry.uri(registry.key(version, MANIFEST_FILE)),
        "latest_uri": registry.uri(registry.latest_key),
        "manifest_sha256": manifest_sha256,
        "latest_version": latest["version"],
        "latest_moved": latest["version"] == version,
        "serving_uri": latest.get("serving_uri") if latest["version"] == version else None,
    }


def _check_publishable(*, version: int, files: Mapping[str, Path | str], manifest: Claim) -> None:
    passed = gate_passed(manifest.get("metrics", {}))
    if passed is not True:
        raise GateFailedError(
            f"refusing to publish version {version}: its metrics do not record a passed gate (passed={passed!r})"
        )
    if manifest.get("version") != version:
        raise ValueError(f"manifest is for version {manifest.get('version')!r}, publishing version {version}")
    if MODEL_FILE not in files:
        raise ValueError(f"no {MODEL_FILE} among the files to publish: {sorted(files)}")
    for name in files:
        check_file_name(name)


def _check_latest_unmoved(registry: ModelRegistry, version: int, compared_latest_etag: str | None) -> None:
    """LatestMovedError, before anything is written, if `latest` is no longer what evaluate compared with."""
    if compared_latest_etag == FROM_CURRENT_LATEST:
        return
    current, etag = read_latest_state(registry=registry)
    if etag == compared_latest_etag or (current is not None and current["version"] == version):
        return  # unchanged, or an earlier attempt of this run already moved it here
    now = "nothing" if current is None else f"version {current['version']}"
    raise LatestMovedError(
        f"latest changed after evaluate compared version {version} with the champion: it now points at {now}. "
        "Nothing was published; re-run evaluate and publish to compare it with the new champion"
    )


def _published_manifest_sha256(registry: ModelRegistry, version: int, manifest: Manifest) -> str:
    """The sha256 of the version's manifest, already complete with these very files.

    VersionNotFoundError when it has no manifest yet. One that records other files
    raises VersionConflictError: the version is immutable.
    """
    existing, existing_sha256 = read_manifest_and_sha256(registry=registry, version=version, sealed=False)
    if existing["run_id"] != manifest["run_id"]:
        raise VersionConflictError(
            f"version {version} already exists in {registry.models_uri} from run {existing['run_id']!r}; "
            f"run {manifest['run_id']!r} may not overwrite it (versions are immutable)"
        )
    files, published = manifest["files"], existing["files"]
    differing = sorted(name for name in {*files, *published} if files.get(name) != published.get(name))
    if differing:
        raise VersionConflictError(
            f"version {version} was already published by this run ({manifest['run_id']!r}) with other bytes for "
            f"{', '.join(differing)}; versions are immutable, so publish this model from a new run"
        )
    return existing_sha256


def _advance_latest(
    registry: ModelRegistry, manifest: Manifest, manifest_sha256: str, compared_latest_etag: str | None
) -> Pointer:
    """Move `latest` to the verified version if that moves it forward from the state evaluate compared with.

    Returns the pointer as it stands afterwards.
    """
    version = manifest["version"]
    current, etag = read_latest_state(registry=registry)
    if current is None:
        refuse_missing_pointer(registry=registry, besides=version)
    if current is not None and (current["version"], current["manifest_sha256"]) == (version, manifest_sha256):
        # An earlier attempt of this run moved it; its serving copy may not have been finished.
        write_serving_copy(registry=registry, manifest=manifest)
        return current
    if compared_latest_etag not in (FROM_CURRENT_LATEST, etag):
        now = "nothing" if current is None else f"version {current['version']}"
        raise LatestMovedError(
            f"latest changed while version {version} was being published: it now points at {now}. Version "
            f"{version} is published and verified but is not latest; compare the two and, to make it latest, "
            f"`python -m mnist_tasks models promote {version} --reason …`"
        )
    if current is not None and current["version"] > version:
        return current  # latest only moves forward; an older run re-run publishes its version beside it
    return move_latest(
        registry=registry,
        manifest=manifest,
        manifest_sha256=manifest_sha256,
        expected_etag=etag,
        moved_by=f"run {manifest['run_id']}",
        reason="passed the accuracy gate",
    )
