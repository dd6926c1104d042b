"""Fetching published files, each checked against its manifest before it appears under its name; model references.

A model reference (`predict --model`, references.parse_model_reference) is fetched by
fetch_model: from a registry through download_model, or a local file checked against the
manifest.json beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from botocore.exceptions import ClientError

from mnist_tasks.files import atomic_path, check_file_sha256, sha256_file
from mnist_tasks.model.architecture import MODEL_FILE
from mnist_tasks.registry.errors import (
    FileNotPublishedError,
    ModelReferenceError,
    NothingPublishedError,
    PublishChecksumError,
)
from mnist_tasks.registry.layout import LATEST_FILE, MANIFEST_FILE, ModelRegistry, check_file_name
from mnist_tasks.registry.manifest import Manifest, read_manifest_and_sha256, trained_with
from mnist_tasks.registry.pointer import read_latest_state, refuse_missing_pointer
from mnist_tasks.registry.references import ModelReference
from mnist_tasks.registry.verify import missing_object
from mnist_tasks.s3 import is_missing, json_bytes

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class LocalFile(TypedDict):
    path: str
    sha256: str


class DownloadedFiles(TypedDict):
    """What download_files returns."""

    version: int
    manifest: Manifest
    files: dict[str, LocalFile]
    latest_etag: str | None
    """The ETag of the `latest.json` followed (None when a version was asked for)."""


class DownloadedVersion(TypedDict):
    """What download_version returns."""

    version: int
    dir: str
    files: dict[str, str]
    """{name: local path}, the manifest included."""


class DownloadedModel(TypedDict):
    """What download_model returns."""

    model_path: str
    model_sha256: str
    version: int
    manifest: Manifest
    latest_etag: str | None


class ModelSource(TypedDict):
    """Where a model to load comes from, and what vouches for it (predict's "model" in its output)."""

    model: str
    model_uri: str
    version: int | None
    """None for a local file that no manifest describes."""
    model_sha256: str
    """What the file must hash to before it is loaded."""
    verified_against: str | None
    """The manifest that records `model_sha256`; None for a file loaded unverified."""
    architecture: str | None
    """As the manifest records it; None when there is no manifest (the model itself tells)."""
    augment: str | None


def download_files(
    *, registry: ModelRegistry, version: int | None, names: Sequence[str] | None, dest_dir: Path
) -> DownloadedFiles:
    """Fetch the named files of a version (the latest when version is None; all its files when names is None).

    Every file is checked against the sha256 its manifest records, and the
    files appear under their final names only once all of them match: a
    failure leaves dest_dir as it was. When following `latest`, the manifest
    must also be the one `latest.json` vouches for.

    Raises NothingPublishedError, VersionNotFoundError, FileNotPublishedError
    (a name the manifest does not list) or PublishVerificationError.
    """
    manifest, latest_etag = _manifest_to_follow(registry, version)
    if names is None:
        names = sorted(manifest["files"])
    for name in names:
        check_file_name(name)  # names become paths under dest_dir
    missing = [name for name in names if name not in manifest["files"]]
    if missing:
        raise FileNotPublishedError(
            f"version {manifest['version']} in {registry.models_uri} has no {', '.join(missing)}: "
            f"its manifest lists {', '.join(sorted(manifest['files']))}"
        )
    files = _fetch_checked(registry, manifest, names, Path(dest_dir))
    return {"version": manifest["version"], "manifest": manifest, "files": files, "latest_etag": latest_etag}


def _manifest_to_follow(registry: ModelRegistry, version: int | None) -> tuple[Manifest, str | None]:
    """(the version's manifest, None); for version None, (the manifest latest.json vouches for, its ETag)."""
    pinned_sha = latest_etag = None
    if version is None:
        latest, latest_etag = read_latest_state(registry=registry)
        if latest is None:
            refuse_missing_pointer(registry=registry)
            raise NothingPublishedError(f"nothing published yet in {registry.models_uri}: no {LATEST_FILE}")
        version, pinned_sha = latest["version"], latest["manifest_sha256"]
    manifest, _ = read_manifest_and_sha256(registry=registry, version=version, manifest_sha256=pinned_sha)
    return manifest, latest_etag


def _fetch_checked(
    registry: ModelRegistry, manifest: Manifest, names: Sequence[str], dest_dir: Path
) -> dict[str, LocalFile]:
    """The named files in dest_dir, each renamed into place only once all of them match the manifest."""
    files: dict[str, LocalFile] = {}
    # Each file is renamed into place when its atomic_path block exits; the
    # stack exits all of them together, after the last file has been checked.
    with ExitStack() as stack:
        for name in names:
            key, expected = registry.key(manifest["version"], name), manifest["files"][name]["sha256"]
            final = dest_dir / name
            tmp = stack.enter_context(atomic_path(final))
            try:
                registry.client.download_file(registry.bucket, key, str(tmp))
            except ClientError as err:
                if is_missing(err):
                    raise missing_object(registry, key, expected) from err
                raise
            got = check_file_sha256(tmp, expected=expected, name=registry.uri(key), error=PublishChecksumError)
            files[name] = {"path": str(final), "sha256": got}
    return files


def download_version(*, registry: ModelRegistry, version: int | None, dest_dir: Path) -> DownloadedVersion:
    """Fetch every file of a version (the latest when version is None) into dest_dir, then its manifest.json.

    download_files for all the files the manifest lists: model.keras, the
    SavedModel export (saved_model/…), the report and its pictures. The manifest
    comes last, so a directory that has one is complete, and
    `predict --model DIR/model.keras` checks the model against it.
    """
    got = download_files(registry=registry, version=version, names=None, dest_dir=dest_dir)
    manifest_path = Path(dest_dir) / MANIFEST_FILE
    with atomic_path(manifest_path) as tmp:
        tmp.write_bytes(json_bytes(got["manifest"], sort_keys=True))  # in the format publish writes it in
    files = {name: f["path"] for name, f in got["files"].items()}
    return {"version": got["version"], "dir": str(dest_dir), "files": {**files, MANIFEST_FILE: str(manifest_path)}}


def download_model(*, registry: ModelRegistry, version: int | None, dest_dir: Path) -> DownloadedModel:
    """Fetch a version's model.keras (the latest when version is None) into dest_dir.

    The file appears under its final name only if its sha256 matches the
    manifest, so a caller may load it (safe_mode=True) without checking again.
    """
    got = download_files(registry=registry, version=version, names=[MODEL_FILE], dest_dir=dest_dir)
    model = got["files"][MODEL_FILE]
    return {
        "model_path": model["path"],
        "model_sha256": model["sha256"],
        "version": got["version"],
        "manifest": got["manifest"],
        "latest_etag": got["latest_etag"],
    }


def fetch_model(reference: ModelReference, *, s3_client: S3Client | None, dest_dir: Path) -> tuple[Path, ModelSource]:
    """(the .keras file to load, where it came from) for a parsed model reference.

    A model in a registry is downloaded into dest_dir by download_model, checked against
    its manifest (and that against `latest.json` when following the pointer); that needs
    `s3_client`. A local file is checked against a manifest.json beside it (a downloaded
    version directory); without one there is nothing to check against, and it is to be
    loaded unverified ("verified_against": None says so). Either way the caller loads the
    file only once it hashes to the source's "model_sha256" (model/loading.py's load_keras_model).
    """
    if reference.path is not None:
        return reference.path, _local_model_source(reference.path)
    if s3_client is None:
        raise ModelReferenceError(
            f"model {reference.text!r} is in {reference.models_uri}: reading it needs an S3 client"
        )
    assert reference.models_uri is not None  # a reference without a path is in a registry
    registry = ModelRegistry(s3_client, reference.models_uri)
    fetched = download_model(registry=registry, version=reference.version, dest_dir=dest_dir)
    return Path(fetched["model_path"]), {
        "model": reference.text,
        "model_uri": registry.uri(registry.key(fetched["version"], MODEL_FILE)),
        "version": fetched["version"],
        "model_sha256": fetched["model_sha256"],
        "verified_against": registry.uri(registry.key(fetched["version"], MANIFEST_FILE)),
        **trained_with(fetched["manifest"]),
    }


def _local_model_source(path: Path) -> ModelSource:
    """A local model file's source: the sha256 the manifest beside it records, or without one its own."""
    if not path.is_file():
        raise ModelReferenceError(f"{path}: no such model file")
    source: ModelSource = {
        "model": str(path),
        "model_uri": str(path),
        "version": None,
        "model_sha256": "",
        "verified_against": None,
        "architecture": None,
        "augment": None,
    }
    manifest_path = path.parent / MANIFEST_FILE
    if not manifest_path.exists():
        # Hashed only here: with a manifest, its sha256 is what the file is checked against when loaded.
        return {**source, "model_sha256": sha256_file(path)}
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"][path.name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # A manifest that cannot vouch for the file must not be mistaken for one that does.
        raise ModelReferenceError(
            f"{manifest_path} beside {path} records no sha256 for {path.name} ({type(exc).__name__}: {exc}); "
            "move the model away from it to load it unverified"
        ) from exc
    return {
        **source,
        "version": manifest.get("version"),
        "model_sha256": expected,
        "verified_against": str(manifest_path),
        **trained_with(manifest),
    }
