"""The manifest: what a published version carries, its seal, and the claim that comes before it.

A version's `manifest.json` records where the model came from (data, params, code,
libraries, metrics, run) and the sha256 of each of its files; it is written last and once,
so a version with a manifest is complete. Its seal, `manifest.sha256`, is written once
right after it, and every reader checks the manifest against it, so an edited manifest is
noticed for any version, not only the one latest.json vouches for. A version without a
seal (published before seals existed, or its seal deleted) is read only where latest.json
pins its manifest's checksum; listing flags it, promote refuses it, until a person seals
it (`seal_version`, `models seal`). The seal guards against accidents and a careless edit,
not against someone who may rewrite both objects: that takes the bucket's own protection
(versioning or object lock), which docs/operations.md's Guarantees names.

`claim.json` is the manifest to come without its files, written first and once: whose the
version is.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict, cast

from mnist_tasks.files import check_sha256
from mnist_tasks.model.architecture import MODEL_FILE
from mnist_tasks.registry.errors import (
    DamagedObjectError,
    PublishChecksumError,
    PublishVerificationError,
    VersionConflictError,
    VersionNotFoundError,
)
from mnist_tasks.registry.layout import CLAIM_FILE, MANIFEST_FILE, SEAL_FILE, ModelRegistry
from mnist_tasks.s3 import get_bytes, json_bytes, put_if_absent

if TYPE_CHECKING:
    from mnist_tasks.flow.artifacts import ArtifactRef
    from mnist_tasks.flow.lineage import TrainingIdentity
    from mnist_tasks.flow.results import DownloadedFile, PreparedLabeled
    from mnist_tasks.model.evaluate import LabeledEvaluation
    from mnist_tasks.model.serving import ServingEntry

MANIFEST_SCHEMA = 1


class FileEntry(TypedDict):
    """One file of a version, as publish hashed it before the upload and checked it after."""

    sha256: str
    bytes: int


class ManifestData(TypedDict, total=False):
    """What the model was trained and tested on. Every version records `data_sha256`; one the DAG
    published also the MNIST files as downloaded (pipeline.Downloaded) and the labelled set."""

    data_sha256: str
    """The identity of all the data: MNIST's and the labelled set's (labeled.combined_data_sha256)."""
    mnist_data_sha256: str
    files: dict[str, DownloadedFile]
    downloaded: list[str]
    labeled: PreparedLabeled


class ManifestMetrics(TypedDict, total=False):
    """The evaluation: pipeline.evaluate's result (evaluate_model's, its files as refs in the store).

    Every version records `accuracy` and the gate's `passed` (gate_passed also reads a nested `gate`).
    """

    accuracy: float
    loss: float | None
    threshold: float
    max_regression: float
    champion_version: int | None
    champion_accuracy: float | None
    passed: bool
    message: str
    test_count: int
    labeled: LabeledEvaluation | None
    artifacts: dict[str, ArtifactRef]
    """metrics.json and the report's pictures in the artifact store."""
    champion_latest_etag: str | None
    """The state of latest.json the model was compared in (publish moves it only from there)."""


class ManifestTraining(TypedDict):
    """The training run: its artifacts in the store and its figures (pipeline.Trained's)."""

    model: ArtifactRef
    history: ArtifactRef
    final: dict[str, float]
    train_count: int
    labeled_train_count: int
    seconds: float


class ManifestCode(TypedDict):
    """This package as it ran: its installed version and, from a checkout, its commit."""

    package: str
    version: str | None
    git_commit: str | None
    git_dirty: bool | None


class Claim(TypedDict):
    """A manifest before its files: what build_manifest makes and claim.json holds."""

    schema: int
    version: int
    dag_id: str
    run_id: str
    started_at: str | None
    created_at: str
    params: dict[str, Any]
    """The training Params the model was trained with."""
    data: ManifestData
    metrics: ManifestMetrics
    training: ManifestTraining | None
    serving: ServingEntry | None
    """Where the SavedModel export is and its signature (serving.manifest_entry); None before exports."""
    training_identity: TrainingIdentity | None
    """What the model is a function of (lineage.training_identity); None before identities."""
    code: ManifestCode
    libraries: dict[str, str | None]
    python: str


class Manifest(Claim):
    """What manifest.json holds: the claim, and every file of the version by its name in it."""

    files: dict[str, FileEntry]


class TrainedWith(TypedDict):
    architecture: str
    augment: str


def gate_passed(metrics: Mapping[str, Any]) -> bool | None:
    """The gate decision recorded in a manifest's metrics; None when it records none.

    evaluate_model returns the decision as `passed` at the top level; a nested
    `gate` dict ({"passed": ..., "threshold": ...}) is read the same way.
    """
    gate = metrics.get("gate", metrics)
    return gate.get("passed") if isinstance(gate, dict) else None


def trained_with(manifest: Mapping[str, Any]) -> TrainedWith:
    """{"architecture", "augment"} a version was trained with, from its manifest's params.

    Versions published before these Params existed were the dense model, trained without augmentation.
    """
    params = manifest.get("params") or {}
    return {"architecture": params.get("architecture", "dense"), "augment": params.get("augment", "off")}


def training_label(trained: Mapping[str, Any]) -> str:
    """"cnn, augmented" or "dense": trained_with's result (or a row or source carrying its keys) in a few words."""
    return f"{trained['architecture']}, augmented" if trained["augment"] == "on" else trained["architecture"]


def read_manifest(*, registry: ModelRegistry, version: int) -> Manifest:
    """The manifest of one version (not verified against the objects; see verify_version)."""
    return read_manifest_and_sha256(registry=registry, version=version)[0]


def read_manifest_and_sha256(
    *, registry: ModelRegistry, version: int, manifest_sha256: str | None = None, sealed: bool = True
) -> tuple[Manifest, str]:
    """(the manifest of one version, the sha256 of its stored bytes).

    VersionNotFoundError when it has none. The stored bytes must match the
    version's seal, and `manifest_sha256` when given (publish knows what it
    uploaded, `latest.json` names what it vouches for). Without a seal the
    manifest is refused, unless `manifest_sha256` pins it or not `sealed` (publish
    finishing its own version). The manifest must describe this version and list
    a model.
    """
    key = registry.key(version, MANIFEST_FILE)
    uri = registry.uri(key)
    raw = get_bytes(registry.client, registry.bucket, key)
    if raw is None:
        raise VersionNotFoundError(f"no version {version} in {registry.models_uri}: {uri} does not exist")
    sha = hashlib.sha256(raw).hexdigest()
    if manifest_sha256 is not None:
        check_sha256(uri, expected=manifest_sha256, actual=sha, error=PublishChecksumError)
    _check_seal(registry, version, sha, required=sealed and manifest_sha256 is None)
    manifest = parse_object(raw, uri)
    if manifest.get("version") != version:
        raise PublishVerificationError(f"{uri}: expected version {version}, got {manifest.get('version')!r}")
    if MODEL_FILE not in manifest.get("files", {}):
        raise PublishVerificationError(f"{uri}: lists no {MODEL_FILE}")
    return cast("Manifest", manifest), sha


def _check_seal(registry: ModelRegistry, version: int, manifest_sha256: str, *, required: bool) -> None:
    """PublishChecksumError unless the version's seal records `manifest_sha256`; a missing seal is an
    error only when `required`."""
    seal = read_seal(registry=registry, version=version)
    manifest_uri = registry.uri(registry.key(version, MANIFEST_FILE))
    seal_uri = registry.uri(registry.key(version, SEAL_FILE))
    if seal is not None:
        check_sha256(manifest_uri, expected=seal, actual=manifest_sha256, source=seal_uri, error=PublishChecksumError)
    elif required:
        raise PublishVerificationError(
            f"{manifest_uri} is not sealed: {seal_uri} does not exist, so nothing vouches for it "
            "(published before seals existed, or its seal was deleted; `python -m mnist_tasks models seal "
            f"{version}` seals it once its files verify)"
        )


def read_seal(*, registry: ModelRegistry, version: int) -> str | None:
    """The sha256 a version's seal records for its manifest, or None when it has no seal."""
    key = registry.key(version, SEAL_FILE)
    raw = get_bytes(registry.client, registry.bucket, key)
    if raw is None:
        return None
    seal = re.fullmatch(rf"([0-9a-f]{{64}})  {re.escape(MANIFEST_FILE)}\n", raw.decode(errors="replace"))
    if seal is None:
        raise DamagedObjectError(f"{registry.uri(key)} is not a seal: expected '<sha256>  {MANIFEST_FILE}'")
    return seal[1]


def seal_manifest(*, registry: ModelRegistry, version: int, manifest_sha256: str) -> None:
    """Write the version's seal once (If-None-Match: *), in `sha256sum` format.

    A seal that is already there must record this very manifest (a retry of the
    publish that wrote it); one that records another raises PublishChecksumError.
    """
    key = registry.key(version, SEAL_FILE)
    body = f"{manifest_sha256}  {MANIFEST_FILE}\n".encode()
    if put_if_absent(registry.client, bucket=registry.bucket, key=key, body=body, content_type="text/plain"):
        return
    sealed = read_seal(registry=registry, version=version)
    check_sha256(
        registry.uri(registry.key(version, MANIFEST_FILE)),
        expected=sealed or "no seal",
        actual=manifest_sha256,
        source=registry.uri(key),
        error=PublishChecksumError,
    )


def write_manifest_once(*, registry: ModelRegistry, version: int, manifest: Manifest) -> str | None:
    """Write the manifest once (If-None-Match: *); its sha256, or None when a manifest is already there."""
    body = json_bytes(manifest, sort_keys=True)
    key = registry.key(version, MANIFEST_FILE)
    if not put_if_absent(registry.client, bucket=registry.bucket, key=key, body=body, content_type="application/json"):
        return None
    return hashlib.sha256(body).hexdigest()


def claim_version(*, registry: ModelRegistry, version: int, manifest: Claim) -> Claim:
    """Make `version` this run's, before anything of it is written; return the standing claim.

    The claim is the manifest to come, without its files: a retry of the same run
    renders its report from it, so it publishes the same bytes. A version
    another run claimed first raises VersionConflictError.
    """
    key = registry.key(version, CLAIM_FILE)
    body = json_bytes(manifest, sort_keys=True)
    if put_if_absent(registry.client, bucket=registry.bucket, key=key, body=body, content_type="application/json"):
        return cast("Claim", json.loads(body))
    claim = read_claim(registry=registry, version=version)
    if claim is None or claim["run_id"] != manifest["run_id"]:
        owner = "an unreadable claim" if claim is None else f"run {claim['run_id']!r}"
        raise VersionConflictError(
            f"version {version} in {registry.models_uri} belongs to {owner}; run {manifest['run_id']!r} "
            "may not publish it (versions are immutable)"
        )
    return claim


def read_claim(*, registry: ModelRegistry, version: int) -> Claim | None:
    """The claim of a version (the manifest it was claimed with, without files), or None."""
    raw = get_bytes(registry.client, registry.bucket, registry.key(version, CLAIM_FILE))
    return None if raw is None else cast("Claim", json.loads(raw))


def parse_object(raw: bytes, uri: str) -> dict[str, Any]:
    """A registry object's JSON object; DamagedObjectError naming `uri` when it is anything else."""
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedObjectError(f"{uri} is not valid JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise DamagedObjectError(f"{uri} is not a JSON object: it holds a {type(parsed).__name__}")
    return parsed
