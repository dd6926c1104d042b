"""TensorFlow Serving's copy of a version's SavedModel export, under `serving/<version>/`.

`serving/` is TensorFlow Serving's base path: it serves the highest numbered
directory there. So a version's export is copied there only as `latest` moves
to it (pointer.move_latest), and since publishing only moves `latest` forward, the
highest one is the latest, until someone promotes an older version by hand (the
docs/serving.md says how to make TensorFlow Serving follow such a rollback).
"""

from __future__ import annotations

from mnist_tasks.model.serving import GRAPH_FILE, SAVED_MODEL_DIR
from mnist_tasks.registry.layout import ModelRegistry
from mnist_tasks.registry.manifest import FileEntry, Manifest
from mnist_tasks.registry.verify import check_object, object_checksum


def serving_uri(registry: ModelRegistry, manifest: Manifest) -> str | None:
    """s3://…/serving/<version>/ for a version with a SavedModel export; None for one published before exports."""
    if not export_files(manifest):
        return None
    return registry.uri(registry.serving_prefix(manifest["version"]))


def export_files(manifest: Manifest) -> dict[str, FileEntry]:
    """The manifest's entries of the SavedModel export, by their path inside it."""
    export = f"{SAVED_MODEL_DIR}/"
    return {name[len(export) :]: entry for name, entry in manifest["files"].items() if name.startswith(export)}


def serving_copy_complete(*, registry: ModelRegistry, manifest: Manifest) -> bool:
    """Whether `serving/<version>/` holds every file of the version's export, each as its manifest records
    it (read whole); True for a version without an export."""
    dest = registry.serving_prefix(manifest["version"])
    return all(
        object_checksum(registry, dest + name) == (entry["sha256"], entry["bytes"])
        for name, entry in export_files(manifest).items()
    )


def write_serving_copy(*, registry: ModelRegistry, manifest: Manifest) -> None:
    """Copy a verified version's export to `serving/<version>/` (server-side), each copy checked against the manifest.

    Nothing is written for a version published before exports existed.
    Files that already hold the manifest's bytes (a retry, a version made
    latest again) stay. saved_model.pb goes last: a server that lists the
    directory meanwhile finds no graph yet, never a graph without its variables.
    A copy that differs raises PublishVerificationError, and what this call
    wrote is removed again, the graph first.
    """
    files = export_files(manifest)
    if not files:
        return
    version, bucket = manifest["version"], registry.bucket
    source, dest = registry.key(version, f"{SAVED_MODEL_DIR}/"), registry.serving_prefix(version)
    written: list[str] = []
    try:
        for name in sorted(files, key=lambda name: (name == GRAPH_FILE, name)):
            if object_checksum(registry, dest + name) == (files[name]["sha256"], files[name]["bytes"]):
                continue
            registry.client.copy_object(
                Bucket=bucket, Key=dest + name, CopySource={"Bucket": bucket, "Key": source + name}
            )
            written.append(dest + name)
            check_object(registry, dest + name, files[name])
    except Exception:
        _remove_objects(registry, written)
        raise


def _remove_objects(registry: ModelRegistry, keys: list[str]) -> None:
    """Delete keys in the reverse of the order they were written (so saved_model.pb first)."""
    for key in reversed(keys):
        registry.client.delete_object(Bucket=registry.bucket, Key=key)
