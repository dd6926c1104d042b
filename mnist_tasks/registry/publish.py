"""Publishing a trained model: its version number, its manifest, and the upload-verify-point sequence.

The bucket layout and the `latest` pointer belong to registry.py; this module
adds a new version to it. Order matters: files, then the manifest, then a full
read-back, then `latest.json` (its SavedModel copied for TensorFlow Serving just
before), so a reader following the pointer never meets a half-uploaded or
damaged version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import mimetypes
import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from mnist_tasks.errors import PermanentError
from mnist_tasks.files import sha256_stream
from mnist_tasks.registry import (
    LATEST_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    LatestMovedError,
    PublishVerificationError,  # noqa: F401  re-exported: publish_model raises it (through verify_version)
    VersionConflictError,
    VersionNotFoundError,
    check_file_name,
    claim_version,
    gate_passed,
    move_latest,
    read_latest_state,
    read_manifest_and_sha256,
    refuse_missing_pointer,
    seal_manifest,
    verify_version,
    version_prefix,
    write_serving_copy,
)
from mnist_tasks.s3 import is_condition_failed, split_s3_dir

MANIFEST_SCHEMA = 1
PACKAGE = "mnist-retraining"

# Manifest key -> distributions that provide it. TensorFlow ships under more
# than one name and we install the CPU-only wheel.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "pillow": ("pillow",),
    "boto3": ("boto3",),
    "apache-airflow": ("apache-airflow",),
    "apache-airflow-providers-amazon": ("apache-airflow-providers-amazon",),
}

# The directory holding mnist_tasks/: the root of the source tree when this is a checkout.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class GateFailedError(PermanentError, ValueError):
    """The manifest's metrics do not record a passed accuracy gate."""


def version_for(logical_date: datetime) -> int:
    """The version number of a run: its logical date in UTC as YYYYMMDDHHMMSS.

    2026-11-23T02:00:00Z -> 20261123020000. Later runs get larger numbers, and
    a retry of the same run gets the same one.
    """
    if logical_date.tzinfo is None or logical_date.utcoffset() is None:
        raise ValueError(f"logical_date must be timezone-aware, got naive {logical_date.isoformat()}")
    return int(logical_date.astimezone(UTC).strftime("%Y%m%d%H%M%S"))


def _distribution_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str | None]:
    """The installed version of each of LIBRARIES (None when not installed)."""
    return {key: _distribution_version(names) for key, names in LIBRARIES.items()}


def git_state(source_root: Path) -> dict[str, Any]:
    """{"git_commit", "git_dirty"} of the checkout rooted at source_root; both None if it is not one.

    An installed copy can sit inside some unrelated repository (a venv in a
    project checkout), so the checkout's top level must be source_root itself.
    """
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(source_root), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        toplevel, commit = git("rev-parse", "--show-toplevel", "HEAD").splitlines()
        if Path(toplevel).resolve() != source_root.resolve():
            return {"git_commit": None, "git_dirty": None}
        return {"git_commit": commit, "git_dirty": bool(git("status", "--porcelain").strip())}
    except (OSError, subprocess.SubprocessError, ValueError):
        # No git, not a checkout, no commit yet, or a repository git refuses to read.
        return {"git_commit": None, "git_dirty": None}


def build_manifest(
    *,
    version: int,
    run_id: str,
    dag_id: str,
    params: dict[str, Any],
    data: dict[str, Any],
    metrics: dict[str, Any],
    started_at: str | None,
    training: dict[str, Any] | None = None,
    serving: dict[str, Any] | None = None,
    training_identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a stranger needs to tell where a model came from; publish_model adds `files`.

    `data` carries the data checksums (data_sha256 and per-file sha256s),
    `metrics` the evaluation result including the gate decision, `training`
    the training run's artifacts (URIs and sha256s) and final figures, `serving`
    where the SavedModel export is and its signature (serving.manifest_entry),
    `training_identity` what the model is a function of (lineage.training_identity):
    the next run that has the same one publishes nothing.
    """
    return {
        "schema": MANIFEST_SCHEMA,
        "version": version,
        "dag_id": dag_id,
        "run_id": run_id,
        "started_at": started_at,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": params,
        "data": data,
        "metrics": metrics,
        "training": training,
        "serving": serving,
        "training_identity": training_identity,
        "code": {"package": PACKAGE, "version": _distribution_version((PACKAGE,)), **git_state(SOURCE_ROOT)},
        "libraries": library_versions(),
        "python": platform.python_version(),
    }


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
    s3_client: Any,
    models_uri: str,
    version: int,
    files: Mapping[str, Path | str],
    manifest: dict[str, Any],
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
    TensorFlow Serving's `serving/<version>/` (registry.move_latest).

    `latest` moves forward only: never to an older version than it points at,
    and, with `compared_latest_etag` (the ETag latest.json had when evaluate
    compared this model with the champion; None when nothing was published),
    only from that state. If it moved before publishing starts, LatestMovedError
    and nothing is written; if it moves while publishing, LatestMovedError and
    the version stays published but not latest.
    """
    _check_publishable(version=version, files=files, manifest=manifest)
    _check_latest_unmoved(s3_client, models_uri, version, compared_latest_etag)
    claim_version(s3_client=s3_client, models_uri=models_uri, version=version, manifest=manifest)
    # Hashed before upload, checked after: a file that changes in between fails verification.
    manifest = {**manifest, "files": _file_entries(files)}
    manifest_sha256 = _complete_manifest_sha256(s3_client, models_uri, version, manifest)
    if manifest_sha256 is None:
        manifest_sha256 = _upload(s3_client, models_uri, version, files, manifest)
    seal_manifest(s3_client=s3_client, models_uri=models_uri, version=version, manifest_sha256=manifest_sha256)
    verified = verify_version(
        s3_client=s3_client, models_uri=models_uri, version=version, manifest_sha256=manifest_sha256
    )
    latest = _advance_latest(s3_client, models_uri, verified, manifest_sha256, compared_latest_etag)
    return _published(models_uri, version, manifest_sha256, latest)


def _file_entries(files: Mapping[str, Path | str]) -> dict[str, dict[str, Any]]:
    """The manifest's `files`: {name: {"sha256", "bytes"}}, in name order."""
    entries = {}
    for name, path in sorted(files.items()):
        with open(path, "rb") as f:
            sha, size = sha256_stream(f)
        entries[name] = {"sha256": sha, "bytes": size}
    return entries


def _upload(
    s3_client: Any, models_uri: str, version: int, files: Mapping[str, Path | str], manifest: dict[str, Any]
) -> str:
    """Upload the files, then the manifest (last: a version with a manifest is complete); return its sha256."""
    bucket, _ = split_s3_dir(models_uri)
    base = version_prefix(models_uri, version)
    for name, path in files.items():
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        s3_client.upload_file(str(path), bucket, base + name, ExtraArgs={"ContentType": content_type})
    return _write_manifest(s3_client, models_uri, version, manifest)


def _published(models_uri: str, version: int, manifest_sha256: str, latest: dict[str, Any]) -> Published:
    bucket, prefix = split_s3_dir(models_uri)
    base = version_prefix(models_uri, version)
    return {
        "version": version,
        "version_uri": f"s3://{bucket}/{base}",
        "model_uri": f"s3://{bucket}/{base}{MODEL_FILE}",
        "manifest_uri": f"s3://{bucket}/{base}{MANIFEST_FILE}",
        "latest_uri": f"s3://{bucket}/{prefix}{LATEST_FILE}",
        "manifest_sha256": manifest_sha256,
        "latest_version": latest["version"],
        "latest_moved": latest["version"] == version,
        "serving_uri": latest.get("serving_uri") if latest["version"] == version else None,
    }


def _check_publishable(*, version: int, files: Mapping[str, Path | str], manifest: dict[str, Any]) -> None:
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


def _check_latest_unmoved(s3_client: Any, models_uri: str, version: int, compared_latest_etag: str | None) -> None:
    """LatestMovedError, before anything is written, if `latest` is no longer what evaluate compared with."""
    if compared_latest_etag == FROM_CURRENT_LATEST:
        return
    current, etag = read_latest_state(s3_client=s3_client, models_uri=models_uri)
    if etag == compared_latest_etag or (current is not None and current["version"] == version):
        return  # unchanged, or an earlier attempt of this run already moved it here
    now = "nothing" if current is None else f"version {current['version']}"
    raise LatestMovedError(
        f"latest changed after evaluate compared version {version} with the champion: it now points at {now}. "
        "Nothing was published; re-run evaluate and publish to compare it with the new champion"
    )


def _complete_manifest_sha256(s3_client: Any, models_uri: str, version: int, manifest: dict[str, Any]) -> str | None:
    """The sha256 of the version's manifest if it is already complete with these very files, else None.

    A manifest that records other files raises VersionConflictError: the version is immutable.
    """
    try:
        existing, existing_sha256 = read_manifest_and_sha256(
            s3_client=s3_client, models_uri=models_uri, version=version, sealed=False
        )
    except VersionNotFoundError:
        return None
    if existing["run_id"] != manifest["run_id"]:
        raise VersionConflictError(
            f"version {version} already exists in {models_uri} from run {existing['run_id']!r}; "
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


def _write_manifest(s3_client: Any, models_uri: str, version: int, manifest: dict[str, Any]) -> str:
    """Write the manifest once (If-None-Match: *); return its sha256, or that of the one a racing attempt wrote."""
    from botocore.exceptions import ClientError

    body = (json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    bucket, _ = split_s3_dir(models_uri)
    key = version_prefix(models_uri, version) + MANIFEST_FILE
    try:
        s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
    except ClientError as err:
        if not is_condition_failed(err):
            raise
        # Another attempt of this run finished first; it stands if it published these files.
        return _complete_manifest_sha256(s3_client, models_uri, version, manifest)
    return hashlib.sha256(body).hexdigest()


def _advance_latest(
    s3_client: Any, models_uri: str, manifest: dict[str, Any], manifest_sha256: str, compared_latest_etag: str | None
) -> dict[str, Any]:
    """Move `latest` to the verified version if that moves it forward from the state evaluate compared with.

    Returns the pointer as it stands afterwards.
    """
    version = manifest["version"]
    current, etag = read_latest_state(s3_client=s3_client, models_uri=models_uri)
    if current is None:
        refuse_missing_pointer(s3_client=s3_client, models_uri=models_uri, besides=version)
    if current is not None and (current["version"], current["manifest_sha256"]) == (version, manifest_sha256):
        # An earlier attempt of this run moved it; its serving copy may not have been finished.
        write_serving_copy(s3_client=s3_client, models_uri=models_uri, manifest=manifest)
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
        s3_client=s3_client,
        models_uri=models_uri,
        manifest=manifest,
        manifest_sha256=manifest_sha256,
        expected_etag=etag,
        moved_by=f"run {manifest['run_id']}",
        reason="passed the accuracy gate",
    )
