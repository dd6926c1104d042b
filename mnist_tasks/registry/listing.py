"""The published versions, one row each: what `models list` and the Models page show."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, cast

from mnist_tasks.registry.errors import PublishVerificationError, VersionNotFoundError
from mnist_tasks.registry.layout import MANIFEST_FILE, ModelRegistry, version_dirs
from mnist_tasks.registry.manifest import Manifest, gate_passed, read_manifest, trained_with
from mnist_tasks.registry.pointer import read_latest


class VersionRow(TypedDict):
    """One version in list_versions: its fields are None when `error` says why its manifest cannot be read."""

    error: str | None
    version: int
    created_at: str | None
    architecture: str | None
    augment: str | None
    accuracy: float | None
    labeled_accuracy: float | None
    labeled_test_count: int | None
    passed: bool | None
    data_sha256: str | None
    run_id: str | None
    is_latest: bool


# The keys of list_versions' rows, but is_latest.
_ROW_FIELDS = (
    "error", "version", "created_at", "architecture", "augment", "accuracy", "labeled_accuracy", "labeled_test_count",
    "passed", "data_sha256", "run_id",
)


def list_versions(*, registry: ModelRegistry) -> list[VersionRow]:
    """One row per published version (a directory with a manifest), oldest first.

    A version whose manifest cannot be read is listed too, flagged: its row's
    `error` says which object and why, its other fields are None. One damaged
    manifest never hides the others. (A damaged latest.json raises
    DamagedObjectError naming it: which version is latest is then unknown.)
    """
    latest = read_latest(registry=registry)
    rows: list[VersionRow] = []
    for version in version_dirs(registry):
        is_latest = latest is not None and latest["version"] == version
        try:
            manifest = read_manifest(registry=registry, version=version)
            row = _version_row(manifest)
        except VersionNotFoundError:
            continue
        except (PublishVerificationError, KeyError, TypeError, AttributeError) as err:
            key = registry.key(version, MANIFEST_FILE)
            error = str(err) if isinstance(err, PublishVerificationError) else f"{registry.uri(key)} lacks {err}"
            row = {**dict.fromkeys(_ROW_FIELDS), "version": version, "error": error}
        rows.append(cast("VersionRow", {**row, "is_latest": is_latest}))
    return rows


def _version_row(manifest: Manifest) -> dict[str, object]:
    return {
        "error": None,
        "version": manifest["version"],
        "created_at": manifest["created_at"],
        **trained_with(manifest),
        "accuracy": manifest["metrics"].get("accuracy"),
        # On the users' labelled test split; None before there was one (or for versions from before it existed).
        "labeled_accuracy": _labeled(manifest).get("accuracy"),
        "labeled_test_count": _labeled(manifest).get("test_count"),
        "passed": gate_passed(manifest["metrics"]),
        "data_sha256": manifest["data"].get("data_sha256"),
        "run_id": manifest["run_id"],
    }


def _labeled(manifest: Manifest) -> Mapping[str, Any]:
    """The version's figures on the users' labelled test split; empty when it records none."""
    return manifest["metrics"].get("labeled") or {}
