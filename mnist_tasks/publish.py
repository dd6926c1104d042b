"""Publishing a trained model: its version number, its manifest, and the upload-verify-point sequence.

The bucket layout and the `latest` pointer belong to registry.py; this module
adds a new version to it. Order matters: files, then the manifest, then a full
read-back, then `latest.json`, so a reader following the pointer never meets a
half-uploaded or damaged version.
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
from typing import Any

from mnist_tasks.registry import (
    LATEST_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PublishVerificationError,  # noqa: F401  re-exported: publish_model raises it (through promote)
    VersionNotFoundError,
    gate_passed,
    models_location,
    promote,
    read_manifest,
    version_prefix,
)
from mnist_tasks.storage import sha256_stream

MANIFEST_SCHEMA = 1
PACKAGE = "mnist-retraining"

# Manifest key -> distributions that provide it. TensorFlow ships under more
# than one name and we install the CPU-only wheel.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "boto3": ("boto3",),
    "apache-airflow": ("apache-airflow",),
    "apache-airflow-providers-amazon": ("apache-airflow-providers-amazon",),
}

# The directory holding mnist_tasks/: the root of the source tree when this is a checkout.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class VersionConflictError(RuntimeError):
    """The version already exists and was published by a different run."""


class GateFailedError(ValueError):
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
) -> dict[str, Any]:
    """Everything a stranger needs to tell where a model came from; publish_model adds `files`.

    `data` carries the data checksums (data_sha256 and per-file sha256s),
    `metrics` the evaluation result including the gate decision, `training`
    the training run's artifacts (URIs and sha256s) and final figures.
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
        "code": {"package": PACKAGE, "version": _distribution_version((PACKAGE,)), **git_state(SOURCE_ROOT)},
        "libraries": {key: _distribution_version(names) for key, names in LIBRARIES.items()},
        "python": platform.python_version(),
    }


def _check_file_name(name: str) -> None:
    parts = name.split("/")
    if name == MANIFEST_FILE or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad file name for a model version: {name!r}")


def publish_model(
    *,
    s3_client: Any,
    models_uri: str,
    version: int,
    files: Mapping[str, Path | str],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Upload `files` (name -> local path) as `version`, verify them, then move `latest.json`.

    A retry of the same run re-publishes the same version; a different run
    claiming an existing version gets VersionConflictError. If the read-back
    does not match (PublishVerificationError), `latest.json` is not touched.
    """
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
        _check_file_name(name)

    # Hashed before upload, checked after: a file that changes in between fails verification.
    entries = {}
    for name, path in sorted(files.items()):
        with open(path, "rb") as f:
            sha, size = sha256_stream(f)
        entries[name] = {"sha256": sha, "bytes": size}
    manifest = {**manifest, "files": entries}
    manifest_body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()

    bucket, prefix = models_location(models_uri)
    base = version_prefix(models_uri, version)
    try:
        existing = read_manifest(s3_client=s3_client, models_uri=models_uri, version=version)
    except VersionNotFoundError:
        existing = None
    if existing is not None and existing["run_id"] != manifest["run_id"]:
        raise VersionConflictError(
            f"version {version} already exists at s3://{bucket}/{base} from run {existing['run_id']!r}; "
            f"run {manifest['run_id']!r} may not overwrite it (versions are immutable)"
        )

    for name, path in files.items():
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        s3_client.upload_file(str(path), bucket, base + name, ExtraArgs={"ContentType": content_type})
    s3_client.put_object(
        Bucket=bucket, Key=base + MANIFEST_FILE, Body=manifest_body, ContentType="application/json"
    )
    manifest_sha256 = hashlib.sha256(manifest_body).hexdigest()
    pointer = promote(s3_client=s3_client, models_uri=models_uri, version=version, manifest_sha256=manifest_sha256)

    return {
        "version": version,
        "version_uri": f"s3://{bucket}/{base}",
        "model_uri": pointer["model_uri"],
        "manifest_uri": f"s3://{bucket}/{base}{MANIFEST_FILE}",
        "latest_uri": f"s3://{bucket}/{prefix}{LATEST_FILE}",
        "manifest_sha256": manifest_sha256,
    }
