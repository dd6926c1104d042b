"""The published-model registry in S3: numbered versions, their manifests, the `latest` pointer.

Layout under `models_uri` (s3://bucket/prefix/):

    prefix/<version>/claim.json                        written first and once (If-None-Match: *): whose it is
    prefix/<version>/model.keras, metrics.json, ...   uploaded by that run only
    prefix/<version>/saved_model/saved_model.pb, ...  the SavedModel export (versions published before it had none)
    prefix/<version>/manifest.json                     written last and once: the version is complete
    prefix/<version>/manifest.sha256                   its seal, written once right after it (`sha256sum -c` reads it)
    prefix/serving/<version>/saved_model.pb, ...       TensorFlow Serving's copy of the export, for versions made latest
    prefix/latest.json                                 the pointer, moved only to a verified version

`<version>` is a plain integer. A directory without a manifest is an unfinished
publish and is not a version; `latest` only ever points at a version whose
every file matches its manifest (`verify_version`).

Every reader checks a manifest against its seal, so an edited manifest is noticed
for any version, not only the one latest.json vouches for. A version without a
seal (published before seals existed, or its seal deleted) is read only where
latest.json pins its manifest's checksum; listing flags it, promote refuses it,
until a person seals it (`seal_version`, `models seal`).
The seal guards against accidents and a careless edit, not against someone who
may rewrite both objects: that takes the bucket's own protection (versioning or
object lock), which the README's Guarantees names.

`serving/` is TensorFlow Serving's base path: it serves the highest numbered
directory there. So a version's export is copied there only as `latest` moves
to it, and since publishing only moves `latest` forward, the highest one is
the latest, until someone promotes an older version by hand (the README says
how to make TensorFlow Serving follow such a rollback).

`latest.json` moves with conditional writes (If-Match on the ETag it had when it
was read, If-None-Match: * when there was none), so two writers never overwrite
each other unseen: the loser gets LatestMovedError.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import socket
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from botocore.exceptions import ClientError

from mnist_tasks.errors import MnistError, PermanentError
from mnist_tasks.files import (
    ChecksumMismatchError,
    atomic_path,
    check_file_sha256,
    check_sha256,
    sha256_file,
    sha256_stream,
)
from mnist_tasks.model.architecture import MODEL_FILE
from mnist_tasks.model.serving import GRAPH_FILE, SAVED_MODEL_DIR, SERVING_DIR
from mnist_tasks.s3 import is_condition_failed, is_missing, split_s3_dir, split_s3_uri

MANIFEST_FILE = "manifest.json"
SEAL_FILE = "manifest.sha256"
LATEST_FILE = "latest.json"
CLAIM_FILE = "claim.json"

# Only canonical integers name versions: "0042" would read as 42 and then
# point at a directory that does not exist.
_VERSION_DIR = re.compile(r"[1-9][0-9]*")


class VersionNotFoundError(PermanentError, LookupError):
    """The version has no manifest, or nothing has been published yet."""


class NothingPublishedError(VersionNotFoundError):
    """There is no `latest.json`: no model has been published yet."""


class FileNotPublishedError(PermanentError, LookupError):
    """The version exists, but its manifest lists no file of that name."""


class PublishVerificationError(MnistError, RuntimeError):
    """An object in the bucket is missing or differs from what its manifest records."""


class PublishChecksumError(ChecksumMismatchError, PublishVerificationError):
    """An object's bytes are not the ones its manifest (or `latest.json`, for a manifest) records."""


class DamagedObjectError(PermanentError, PublishVerificationError):
    """A registry object (a manifest, latest.json) a person must mend: a retry meets it the same.

    Raised as such for one that cannot be parsed; PointerMissingError for latest.json gone.
    """


class PointerMissingError(DamagedObjectError):
    """latest.json is gone while versions are published: who the champion is, is unknown until it is repaired."""


class VersionConflictError(PermanentError, RuntimeError):
    """The version belongs to another run, or was published with other bytes: versions are immutable."""


class LatestMovedError(PermanentError, RuntimeError):
    """`latest.json` is not what the caller last saw: someone else moved it in between."""


class GateNotPassedError(PermanentError, ValueError):
    """A version whose manifest does not record a passed gate may become `latest` only by force."""


class ModelReferenceError(PermanentError, ValueError):
    """A model reference (`predict --model`) that names no model that can be loaded."""


class ModelReference(NamedTuple):
    """A model as a user names it: a version of a registry, or a local .keras file."""

    text: str
    """The reference as given."""
    models_uri: str | None
    """The registry (s3://bucket/prefix/); None for a local file."""
    version: int | None
    """None: whatever the registry's `latest` points at (or a local file)."""
    path: Path | None
    """A local .keras file; None for a model in a registry."""


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


def parse_version(text: str) -> int:
    """A version number as users and directory names write it: a canonical positive integer."""
    if not _VERSION_DIR.fullmatch(text):
        raise ValueError(
            f"a version is a positive whole number without leading zeros, like 20261123020000; got {text!r}"
        )
    return int(text)


def parse_version_or_latest(text: str) -> int | None:
    """A version number (parse_version's rule), or None for `latest`."""
    if text == "latest":
        return None
    try:
        return parse_version(text)
    except ValueError:
        raise ValueError(f"expected a version number or latest, got {text!r}") from None


def parse_model_reference(text: str, *, models_uri: str) -> ModelReference:
    """What a model reference names; ModelReferenceError for anything else.

      "latest"                 the version `latest.json` in `models_uri` points at;
      "<version>"              that version in `models_uri` (parse_version's rule);
      "s3://…/<version>/", "s3://…/<version>/model.keras", "s3://…/latest.json"
                               the same, in the registry that URI is in (locate_model);
      "PATH.keras"             a local file.
    """
    if text.endswith(".keras") and not text.startswith("s3://"):
        return ModelReference(text, None, None, Path(text))
    try:
        if text.startswith("s3://"):
            return ModelReference(text, *locate_model(text), None)
        return ModelReference(text, models_uri, parse_version_or_latest(text), None)
    except ValueError as exc:
        if text.startswith("s3://"):
            raise ModelReferenceError(str(exc)) from exc
        raise ModelReferenceError(
            f"model {text!r}: expected latest, a version number, an s3:// URI or a local .keras file"
        ) from exc


def check_file_name(name: str) -> None:
    """ValueError unless `name` is a path inside a version directory: relative, no '.', '..' or empty parts."""
    parts = name.split("/")
    if name == MANIFEST_FILE or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad file name for a model version: {name!r}")


def serving_prefix(models_uri: str, version: int) -> str:
    """Key prefix of a version's directory under TensorFlow Serving's base path, ending in '/'."""
    root = split_s3_dir(models_uri)[1]
    return f"{root}{SERVING_DIR}/" + version_prefix(models_uri, version)[len(root) :]


def version_prefix(models_uri: str, version: int) -> str:
    """Key prefix of one version's directory, ending in '/'."""
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    return f"{split_s3_dir(models_uri)[1]}{version}/"


def locate_model(uri: str) -> tuple[str, int | None]:
    """(models_uri, version) of an s3:// URI naming a model inside a registry.

    s3://b/p/<version>/ and s3://b/p/<version>/model.keras give ("s3://b/p/", version);
    s3://b/p/latest.json gives ("s3://b/p/", None): whatever `latest` points at.
    Any other URI raises ValueError naming the accepted forms.
    """
    bucket, key = split_s3_uri(uri)
    *parents, last = key.split("/")
    version = None
    if last != LATEST_FILE:
        if last in ("", MODEL_FILE) and parents:
            last = parents.pop()
        if not _VERSION_DIR.fullmatch(last):
            raise ValueError(
                f"{uri} names no model: expected s3://bucket/prefix/<version>/, "
                f".../<version>/{MODEL_FILE} or .../{LATEST_FILE}"
            )
        version = int(last)
    return f"s3://{bucket}/" + "".join(f"{p}/" for p in parents), version


def gate_passed(metrics: dict[str, Any]) -> bool | None:
    """The gate decision recorded in a manifest's metrics; None when it records none.

    evaluate_model returns the decision as `passed` at the top level; a nested
    `gate` dict ({"passed": ..., "threshold": ...}) is read the same way.
    """
    gate = metrics.get("gate", metrics)
    return gate.get("passed") if isinstance(gate, dict) else None


def trained_with(manifest: dict[str, Any]) -> dict[str, str]:
    """{"architecture", "augment"} a version was trained with, from its manifest's params.

    Versions published before these Params existed were the dense model, trained without augmentation.
    """
    params = manifest.get("params") or {}
    return {"architecture": params.get("architecture", "dense"), "augment": params.get("augment", "off")}


def training_label(trained: dict[str, Any]) -> str:
    """"cnn, augmented" or "dense": trained_with's result (or a row or source carrying its keys) in a few words."""
    return f"{trained['architecture']}, augmented" if trained["augment"] == "on" else trained["architecture"]


def get_bytes(s3_client: Any, bucket: str, key: str) -> bytes | None:
    """Whole object, or None when the key does not exist (other errors propagate)."""
    try:
        return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if is_missing(err):
            return None
        raise


def _load_manifest(
    s3_client: Any, models_uri: str, version: int, manifest_sha256: str | None = None, *, sealed: bool = True
) -> tuple[dict[str, Any], str]:
    """(manifest, sha256 of its stored bytes) for a version.

    VersionNotFoundError when it has none. The stored bytes must match the
    version's seal, and `manifest_sha256` when given (publish knows what it
    uploaded, `latest.json` names what it vouches for). Without a seal the
    manifest is refused, unless `manifest_sha256` pins it or not `sealed` (publish
    finishing its own version). The manifest must describe this version and list
    a model.
    """
    bucket, _ = split_s3_dir(models_uri)
    key = version_prefix(models_uri, version) + MANIFEST_FILE
    raw = get_bytes(s3_client, bucket, key)
    if raw is None:
        raise VersionNotFoundError(f"no version {version} in {models_uri}: s3://{bucket}/{key} does not exist")
    sha = hashlib.sha256(raw).hexdigest()
    if manifest_sha256 is not None:
        check_sha256(f"s3://{bucket}/{key}", expected=manifest_sha256, actual=sha, error=PublishChecksumError)
    seal = read_seal(s3_client=s3_client, models_uri=models_uri, version=version)
    seal_uri = f"s3://{bucket}/{version_prefix(models_uri, version)}{SEAL_FILE}"
    if seal is not None:
        check_sha256(f"s3://{bucket}/{key}", expected=seal, actual=sha, source=seal_uri, error=PublishChecksumError)
    elif sealed and manifest_sha256 is None:
        raise PublishVerificationError(
            f"s3://{bucket}/{key} is not sealed: {seal_uri} does not exist, so nothing vouches for it "
            "(published before seals existed, or its seal was deleted; `python -m mnist_tasks models seal "
            f"{version}` seals it once its files verify)"
        )
    manifest = _parse_json(raw, f"s3://{bucket}/{key}")
    if manifest.get("version") != version:
        raise PublishVerificationError(
            f"s3://{bucket}/{key}: expected version {version}, got {manifest.get('version')!r}"
        )
    if MODEL_FILE not in manifest.get("files", {}):
        raise PublishVerificationError(f"s3://{bucket}/{key}: lists no {MODEL_FILE}")
    return manifest, sha


def read_seal(*, s3_client: Any, models_uri: str, version: int) -> str | None:
    """The sha256 a version's seal records for its manifest, or None when it has no seal."""
    bucket, _ = split_s3_dir(models_uri)
    key = version_prefix(models_uri, version) + SEAL_FILE
    raw = get_bytes(s3_client, bucket, key)
    if raw is None:
        return None
    seal = re.fullmatch(rf"([0-9a-f]{{64}})  {re.escape(MANIFEST_FILE)}\n", raw.decode(errors="replace"))
    if seal is None:
        raise DamagedObjectError(f"s3://{bucket}/{key} is not a seal: expected '<sha256>  {MANIFEST_FILE}'")
    return seal[1]


def seal_manifest(*, s3_client: Any, models_uri: str, version: int, manifest_sha256: str) -> None:
    """Write the version's seal once (If-None-Match: *), in `sha256sum` format.

    A seal that is already there must record this very manifest (a retry of the
    publish that wrote it); one that records another raises PublishChecksumError.
    """
    bucket, _ = split_s3_dir(models_uri)
    key = version_prefix(models_uri, version) + SEAL_FILE
    body = f"{manifest_sha256}  {MANIFEST_FILE}\n".encode()
    try:
        s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/plain", IfNoneMatch="*")
        return
    except ClientError as err:
        if not is_condition_failed(err):
            raise
    sealed = read_seal(s3_client=s3_client, models_uri=models_uri, version=version)
    check_sha256(
        f"s3://{bucket}/{version_prefix(models_uri, version)}{MANIFEST_FILE}",
        expected=sealed or "no seal",
        actual=manifest_sha256,
        source=f"s3://{bucket}/{key}",
        error=PublishChecksumError,
    )


def claim_version(*, s3_client: Any, models_uri: str, version: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """Make `version` this run's, before anything of it is written; return the standing claim.

    The claim is the manifest to come, without its files: a retry of the same run
    renders its report from it, so it publishes the same bytes. A version
    another run claimed first raises VersionConflictError.
    """
    from botocore.exceptions import ClientError

    bucket, _ = split_s3_dir(models_uri)
    key = version_prefix(models_uri, version) + CLAIM_FILE
    body = (json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    try:
        s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
        return json.loads(body)
    except ClientError as err:
        if not is_condition_failed(err):
            raise
    claim = read_claim(s3_client=s3_client, models_uri=models_uri, version=version)
    if claim is None or claim["run_id"] != manifest["run_id"]:
        owner = "an unreadable claim" if claim is None else f"run {claim['run_id']!r}"
        raise VersionConflictError(
            f"version {version} in {models_uri} belongs to {owner}; run {manifest['run_id']!r} "
            "may not publish it (versions are immutable)"
        )
    return claim


def read_claim(*, s3_client: Any, models_uri: str, version: int) -> dict[str, Any] | None:
    """The claim of a version (the manifest it was claimed with, without files), or None."""
    bucket, _ = split_s3_dir(models_uri)
    raw = get_bytes(s3_client, bucket, version_prefix(models_uri, version) + CLAIM_FILE)
    return None if raw is None else json.loads(raw)


def read_latest(*, s3_client: Any, models_uri: str) -> dict[str, Any] | None:
    """The `latest.json` pointer, or None when nothing has been published yet."""
    return read_latest_state(s3_client=s3_client, models_uri=models_uri)[0]


def read_latest_state(*, s3_client: Any, models_uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the `latest.json` pointer, its ETag), or (None, None) when nothing has been published yet.

    The ETag is what a later `move_latest` makes its write conditional on.
    """
    bucket, prefix = split_s3_dir(models_uri)
    try:
        stored = s3_client.get_object(Bucket=bucket, Key=prefix + LATEST_FILE)
    except ClientError as err:
        if is_missing(err):
            return None, None
        raise
    return _parse_json(stored["Body"].read(), f"s3://{bucket}/{prefix}{LATEST_FILE}"), stored["ETag"]


def _parse_json(raw: bytes, uri: str) -> dict[str, Any]:
    """A registry object's JSON object; DamagedObjectError naming `uri` when it is anything else."""
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedObjectError(f"{uri} is not valid JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise DamagedObjectError(f"{uri} is not a JSON object: it holds a {type(parsed).__name__}")
    return parsed


def read_latest_manifest(*, s3_client: Any, models_uri: str) -> tuple[dict[str, Any], str] | None:
    """(the manifest `latest.json` vouches for, its sha256), checked against the pointer and the seal; None
    when nothing is published; PointerMissingError when versions exist but `latest.json` does not."""
    latest = read_latest(s3_client=s3_client, models_uri=models_uri)
    if latest is None:
        refuse_missing_pointer(s3_client=s3_client, models_uri=models_uri)
        return None
    return _load_manifest(s3_client, models_uri, latest["version"], latest["manifest_sha256"])


def read_manifest(*, s3_client: Any, models_uri: str, version: int) -> dict[str, Any]:
    """The manifest of one version (not verified against the objects; see verify_version)."""
    return _load_manifest(s3_client, models_uri, version)[0]


def read_manifest_and_sha256(
    *, s3_client: Any, models_uri: str, version: int, sealed: bool = True
) -> tuple[dict[str, Any], str]:
    """(the manifest of one version, the sha256 of its stored bytes); see _load_manifest for `sealed`."""
    return _load_manifest(s3_client, models_uri, version, sealed=sealed)


def list_versions(*, s3_client: Any, models_uri: str) -> list[dict[str, Any]]:
    """One row per published version (a directory with a manifest), oldest first.

    A version whose manifest cannot be read is listed too, flagged: its row's
    `error` says which object and why, its other fields are None. One damaged
    manifest never hides the others. (A damaged latest.json raises
    DamagedObjectError naming it: which version is latest is then unknown.)
    """
    bucket, _ = split_s3_dir(models_uri)
    latest = read_latest(s3_client=s3_client, models_uri=models_uri)
    rows = []
    for version in _version_dirs(s3_client, models_uri):
        is_latest = latest is not None and latest["version"] == version
        try:
            manifest = read_manifest(s3_client=s3_client, models_uri=models_uri, version=version)
            row = _version_row(manifest)
        except VersionNotFoundError:
            continue
        except (PublishVerificationError, KeyError, TypeError, AttributeError) as err:
            key = version_prefix(models_uri, version) + MANIFEST_FILE
            error = str(err) if isinstance(err, PublishVerificationError) else f"s3://{bucket}/{key} lacks {err}"
            row = {**dict.fromkeys(_ROW_FIELDS), "version": version, "error": error}
        rows.append({**row, "is_latest": is_latest})
    return rows


def _version_dirs(s3_client: Any, models_uri: str) -> list[int]:
    """The version numbers that have a directory under models_uri, oldest first (a manifest or not)."""
    bucket, prefix = split_s3_dir(models_uri)
    versions = []
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            name = common["Prefix"][len(prefix) :].rstrip("/")
            if _VERSION_DIR.fullmatch(name):
                versions.append(int(name))
    return sorted(versions)


def refuse_missing_pointer(*, s3_client: Any, models_uri: str, besides: int | None = None) -> None:
    """PointerMissingError when versions (other than `besides`) are published though latest.json is absent.

    Called where "no latest.json" would otherwise mean "nothing published yet", so
    that a deleted pointer never waives the champion: evaluate would compare with
    nobody, and publish would make any passing model latest.
    """
    bucket, _ = split_s3_dir(models_uri)
    for version in reversed(_version_dirs(s3_client, models_uri)):
        key = version_prefix(models_uri, version) + MANIFEST_FILE
        if version != besides and get_bytes(s3_client, bucket, key) is not None:
            raise PointerMissingError(
                f"{models_uri}{LATEST_FILE} is missing, yet version {version} (and maybe others) is published: "
                "the champion is unknown, so nothing is compared or published. "
                "`python -m mnist_tasks models repair` points latest at the newest version that passed its gate"
            )


def repair_latest(*, s3_client: Any, models_uri: str) -> dict[str, Any]:
    """Recreate a missing latest.json for the newest version that verifies and passed its gate; return the pointer.

    A latest.json that exists is returned as it is (promote moves it on purpose).
    NothingPublishedError when no version qualifies.
    """
    current, _ = read_latest_state(s3_client=s3_client, models_uri=models_uri)
    if current is not None:
        return current
    reason = f"repaired: {LATEST_FILE} was missing; the newest verified version that passed its gate"
    for version in reversed(_version_dirs(s3_client, models_uri)):
        try:
            return promote(s3_client=s3_client, models_uri=models_uri, version=version, reason=reason)
        except (VersionNotFoundError, PublishVerificationError, GateNotPassedError):
            continue  # no manifest, damaged, or its gate failed
    raise NothingPublishedError(f"no version in {models_uri} verifies and passed its gate: nothing to point latest at")


def _version_row(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "error": None,
        "version": manifest["version"],
        "created_at": manifest["created_at"],
        **trained_with(manifest),
        "accuracy": manifest["metrics"].get("accuracy"),
        # On the users' labelled test split; None before there was one (or for versions from before it existed).
        "labeled_accuracy": (manifest["metrics"].get("labeled") or {}).get("accuracy"),
        "labeled_test_count": (manifest["metrics"].get("labeled") or {}).get("test_count"),
        "passed": gate_passed(manifest["metrics"]),
        "data_sha256": manifest["data"].get("data_sha256"),
        "run_id": manifest["run_id"],
    }


# The keys of list_versions' rows, but is_latest.
_ROW_FIELDS = (
    "error", "version", "created_at", "architecture", "augment", "accuracy", "labeled_accuracy", "labeled_test_count",
    "passed", "data_sha256", "run_id",
)


def _verify(
    s3_client: Any, models_uri: str, version: int, manifest_sha256: str | None, *, sealed: bool = True
) -> tuple[dict[str, Any], str]:
    """verify_version, also returning the sha256 of the manifest bytes it checked against."""
    bucket, _ = split_s3_dir(models_uri)
    base = version_prefix(models_uri, version)
    manifest, sha = _load_manifest(s3_client, models_uri, version, manifest_sha256, sealed=sealed)
    for name, expected in manifest["files"].items():
        _check_object(s3_client, bucket, base + name, expected)
    return manifest, sha


def _check_object(s3_client: Any, bucket: str, key: str, expected: dict[str, Any]) -> None:
    """PublishVerificationError unless the object holds what a manifest's `files` entry records."""
    got = _object_checksum(s3_client, bucket, key)
    if got is None:
        raise _missing(bucket, key, expected["sha256"])
    sha, size = got
    check_sha256(
        f"s3://{bucket}/{key}",
        expected=expected["sha256"],
        actual=sha,
        detail=f" ({size} bytes, expected {expected['bytes']})",
        error=PublishChecksumError,
    )
    if size != expected["bytes"]:
        raise PublishVerificationError(f"s3://{bucket}/{key}: {size} bytes, its manifest records {expected['bytes']}")


def _missing(bucket: str, key: str, sha256: str) -> PublishVerificationError:
    return PublishVerificationError(f"s3://{bucket}/{key}: expected sha256 {sha256}, got a missing object")


def _object_checksum(s3_client: Any, bucket: str, key: str) -> tuple[str, int] | None:
    """(sha256, byte count) of an object's content, read whole; None when it does not exist."""
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as err:
        if is_missing(err):
            return None
        raise
    return sha256_stream(body)


def verify_version(
    *, s3_client: Any, models_uri: str, version: int, manifest_sha256: str | None = None
) -> dict[str, Any]:
    """Read every object of a version back and check it against the manifest; return the manifest.

    `manifest_sha256` pins the manifest itself. Raises PublishVerificationError
    naming the key, what was expected and what the bucket holds.
    """
    return _verify(s3_client, models_uri, version, manifest_sha256)[0]


def seal_version(*, s3_client: Any, models_uri: str, version: int) -> dict[str, Any]:
    """Seal a version published before seals existed, once every file verifies against its manifest.

    A person vouches for the manifest as it stands, as with promote. A version
    already sealed is left as it is (its seal must match). Returns
    {"version", "manifest_sha256", "seal_uri"}.
    """
    _, manifest_sha256 = _verify(s3_client, models_uri, version, None, sealed=False)
    seal_manifest(s3_client=s3_client, models_uri=models_uri, version=version, manifest_sha256=manifest_sha256)
    bucket, _ = split_s3_dir(models_uri)
    seal_uri = f"s3://{bucket}/{version_prefix(models_uri, version)}{SEAL_FILE}"
    return {"version": version, "manifest_sha256": manifest_sha256, "seal_uri": seal_uri}


def promote(
    *, s3_client: Any, models_uri: str, version: int, force: bool = False, reason: str | None = None
) -> dict[str, Any]:
    """Point `latest` at a verified version on purpose, a rollback for instance; return the new pointer.

    An unknown or damaged version is refused (raises) and the pointer stays.
    So is a version whose gate failed, unless `force` with a `reason`. The
    pointer records who moved it, when and why, and its `serving_uri`: the
    version's export in TensorFlow Serving's layout, copied now if missing, or
    None for a version published before exports existed (it still becomes latest).
    """
    if force and not (reason or "").strip():
        raise GateNotPassedError("--force needs a --reason: it is recorded in latest.json")
    manifest, manifest_sha256 = _verify(s3_client, models_uri, version, None)
    if gate_passed(manifest.get("metrics", {})) is not True and not force:
        raise GateNotPassedError(
            f"version {version} did not pass its accuracy gate ({manifest['metrics'].get('message', 'no verdict')}); "
            "promote it anyway only with --force and a --reason"
        )
    _, etag = read_latest_state(s3_client=s3_client, models_uri=models_uri)
    return move_latest(
        s3_client=s3_client,
        models_uri=models_uri,
        manifest=manifest,
        manifest_sha256=manifest_sha256,
        expected_etag=etag,
        moved_by=f"{getpass.getuser()}@{socket.gethostname()}",
        reason=reason or "promoted by hand",
    )


def move_latest(
    *,
    s3_client: Any,
    models_uri: str,
    manifest: dict[str, Any],
    manifest_sha256: str,
    expected_etag: str | None,
    moved_by: str,
    reason: str,
) -> dict[str, Any]:
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
    bucket, prefix = split_s3_dir(models_uri)
    base = version_prefix(models_uri, version)
    pointer = {
        "version": version,
        "manifest_key": base + MANIFEST_FILE,
        # The checksum of the manifest bytes just verified, so readers can tell
        # if the version changed after it was vouched for.
        "manifest_sha256": manifest_sha256,
        "model_uri": f"s3://{bucket}/{base}{MODEL_FILE}",
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "moved_by": moved_by,
        "reason": reason,
        "serving_uri": serving_uri(models_uri, manifest),
    }
    condition = {"IfMatch": expected_etag} if expected_etag else {"IfNoneMatch": "*"}
    try:
        s3_client.put_object(
            Bucket=bucket,
            Key=prefix + LATEST_FILE,
            Body=(json.dumps(pointer, indent=2, sort_keys=True, allow_nan=False) + "\n").encode(),
            ContentType="application/json",
            **condition,
        )
    except ClientError as err:
        if not is_condition_failed(err):
            raise
        current, _ = read_latest_state(s3_client=s3_client, models_uri=models_uri)
        now = "nothing" if current is None else f"version {current['version']}"
        raise LatestMovedError(
            f"s3://{bucket}/{prefix}{LATEST_FILE} changed while version {version} was being made latest: "
            f"it now points at {now}; latest was left as it is"
        ) from err
    write_serving_copy(s3_client=s3_client, models_uri=models_uri, manifest=manifest)
    return pointer


def serving_uri(models_uri: str, manifest: dict[str, Any]) -> str | None:
    """s3://…/serving/<version>/ for a version with a SavedModel export; None for one published before exports."""
    if not _export_files(manifest):
        return None
    return f"s3://{split_s3_dir(models_uri)[0]}/{serving_prefix(models_uri, manifest['version'])}"


def _export_files(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's entries of the SavedModel export, by their path inside it."""
    export = f"{SAVED_MODEL_DIR}/"
    return {name[len(export) :]: entry for name, entry in manifest["files"].items() if name.startswith(export)}


def serving_copy_complete(*, s3_client: Any, models_uri: str, manifest: dict[str, Any]) -> bool:
    """Whether `serving/<version>/` holds every file of the version's export, each as its manifest records
    it (read whole); True for a version without an export."""
    bucket, _ = split_s3_dir(models_uri)
    dest = serving_prefix(models_uri, manifest["version"])
    return all(
        _object_checksum(s3_client, bucket, dest + name) == (entry["sha256"], entry["bytes"])
        for name, entry in _export_files(manifest).items()
    )


def write_serving_copy(*, s3_client: Any, models_uri: str, manifest: dict[str, Any]) -> None:
    """Copy a verified version's export to `serving/<version>/` (server-side), each copy checked against the manifest.

    Nothing is written for a version published before exports existed.
    Files that already hold the manifest's bytes (a retry, a version made
    latest again) stay. saved_model.pb goes last: a server that lists the
    directory meanwhile finds no graph yet, never a graph without its variables.
    A copy that differs raises PublishVerificationError, and what this call
    wrote is removed again, the graph first.
    """
    files = _export_files(manifest)
    if not files:
        return
    version = manifest["version"]
    bucket, _ = split_s3_dir(models_uri)
    source, dest = version_prefix(models_uri, version) + f"{SAVED_MODEL_DIR}/", serving_prefix(models_uri, version)
    written: list[str] = []
    try:
        for name in sorted(files, key=lambda name: (name == GRAPH_FILE, name)):
            if _object_checksum(s3_client, bucket, dest + name) == (files[name]["sha256"], files[name]["bytes"]):
                continue
            s3_client.copy_object(Bucket=bucket, Key=dest + name, CopySource={"Bucket": bucket, "Key": source + name})
            written.append(dest + name)
            _check_object(s3_client, bucket, dest + name, files[name])
    except Exception:
        _remove_objects(s3_client, bucket, written)
        raise


def _remove_objects(s3_client: Any, bucket: str, keys: list[str]) -> None:
    """Delete keys in the reverse of the order they were written (so saved_model.pb first)."""
    for key in reversed(keys):
        s3_client.delete_object(Bucket=bucket, Key=key)


class LocalFile(TypedDict):
    path: str
    sha256: str


class DownloadedFiles(TypedDict):
    """What download_files returns."""

    version: int
    manifest: dict[str, Any]
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
    manifest: dict[str, Any]
    latest_etag: str | None


def download_files(
    *, s3_client: Any, models_uri: str, version: int | None, names: Sequence[str] | None, dest_dir: Path
) -> DownloadedFiles:
    """Fetch the named files of a version (the latest when version is None; all its files when names is None).

    Every file is checked against the sha256 its manifest records, and the
    files appear under their final names only once all of them match: a
    failure leaves dest_dir as it was. When following `latest`, the manifest
    must also be the one `latest.json` vouches for.

    Raises NothingPublishedError, VersionNotFoundError, FileNotPublishedError
    (a name the manifest does not list) or PublishVerificationError.
    """
    pinned_sha = latest_etag = None
    if version is None:
        latest, latest_etag = read_latest_state(s3_client=s3_client, models_uri=models_uri)
        if latest is None:
            refuse_missing_pointer(s3_client=s3_client, models_uri=models_uri)
            raise NothingPublishedError(f"nothing published yet in {models_uri}: no {LATEST_FILE}")
        version, pinned_sha = latest["version"], latest["manifest_sha256"]
    manifest, _ = _load_manifest(s3_client, models_uri, version, pinned_sha)
    if names is None:
        names = sorted(manifest["files"])
    for name in names:
        check_file_name(name)  # names become paths under dest_dir
    missing = [name for name in names if name not in manifest["files"]]
    if missing:
        raise FileNotPublishedError(
            f"version {version} in {models_uri} has no {', '.join(missing)}: "
            f"its manifest lists {', '.join(sorted(manifest['files']))}"
        )

    bucket, _ = split_s3_dir(models_uri)
    base = version_prefix(models_uri, version)
    files = {}
    # Each file is renamed into place when its atomic_path block exits; the
    # stack exits all of them together, after the last file has been checked.
    with ExitStack() as stack:
        for name in names:
            key, expected = base + name, manifest["files"][name]["sha256"]
            final = Path(dest_dir) / name
            tmp = stack.enter_context(atomic_path(final))
            try:
                s3_client.download_file(bucket, key, str(tmp))
            except ClientError as err:
                if is_missing(err):
                    raise _missing(bucket, key, expected) from err
                raise
            got = check_file_sha256(tmp, expected=expected, name=f"s3://{bucket}/{key}", error=PublishChecksumError)
            files[name] = {"path": str(final), "sha256": got}
    return {"version": version, "manifest": manifest, "files": files, "latest_etag": latest_etag}


def download_version(*, s3_client: Any, models_uri: str, version: int | None, dest_dir: Path) -> DownloadedVersion:
    """Fetch every file of a version (the latest when version is None) into dest_dir, then its manifest.json.

    download_files for all the files the manifest lists: model.keras, the
    SavedModel export (saved_model/…), the report and its pictures. The manifest
    comes last, so a directory that has one is complete, and
    `predict --model DIR/model.keras` checks the model against it.
    """
    got = download_files(s3_client=s3_client, models_uri=models_uri, version=version, names=None, dest_dir=dest_dir)
    manifest_path = Path(dest_dir) / MANIFEST_FILE
    with atomic_path(manifest_path) as tmp:
        # The content, in the format publish writes it in.
        tmp.write_text(json.dumps(got["manifest"], indent=2, sort_keys=True, allow_nan=False) + "\n")
    files = {name: f["path"] for name, f in got["files"].items()}
    return {"version": got["version"], "dir": str(dest_dir), "files": {**files, MANIFEST_FILE: str(manifest_path)}}


def download_model(*, s3_client: Any, models_uri: str, version: int | None, dest_dir: Path) -> DownloadedModel:
    """Fetch a version's model.keras (the latest when version is None) into dest_dir.

    The file appears under its final name only if its sha256 matches the
    manifest, so a caller may load it (safe_mode=True) without checking again.
    """
    got = download_files(
        s3_client=s3_client, models_uri=models_uri, version=version, names=[MODEL_FILE], dest_dir=dest_dir
    )
    model = got["files"][MODEL_FILE]
    return {
        "model_path": model["path"],
        "model_sha256": model["sha256"],
        "version": got["version"],
        "manifest": got["manifest"],
        "latest_etag": got["latest_etag"],
    }


def fetch_model(reference: ModelReference, *, s3_client: Any, dest_dir: Path) -> tuple[Path, ModelSource]:
    """(the .keras file to load, where it came from) for a parsed model reference.

    A model in a registry is downloaded into dest_dir by download_model, checked against
    its manifest (and that against `latest.json` when following the pointer); that needs
    `s3_client`. A local file is checked against a manifest.json beside it (a downloaded
    version directory); without one there is nothing to check against, and it is to be
    loaded unverified ("verified_against": None says so). Either way the caller loads the
    file only once it hashes to the source's "model_sha256" (storage.load_keras_model).
    """
    if reference.path is not None:
        return reference.path, _local_model_source(reference.path)
    if s3_client is None:
        raise ModelReferenceError(
            f"model {reference.text!r} is in {reference.models_uri}: reading it needs an S3 client"
        )
    models_uri = reference.models_uri
    fetched = download_model(s3_client=s3_client, models_uri=models_uri, version=reference.version, dest_dir=dest_dir)
    base = f"s3://{split_s3_dir(models_uri)[0]}/{version_prefix(models_uri, fetched['version'])}"
    return Path(fetched["model_path"]), {
        "model": reference.text,
        "model_uri": base + MODEL_FILE,
        "version": fetched["version"],
        "model_sha256": fetched["model_sha256"],
        "verified_against": base + MANIFEST_FILE,
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
