"""What a trained model is a function of, and whether `latest` already is that model.

Training is deterministic: the same data, training Params, code and libraries give the
same weights. So a nightly run whose inputs equal those of the version `latest` points at
would publish that version again under a new number. `compare_with_latest` tells the DAG
to stop after `prepare` instead (its `force` Param retrains anyway).

The inputs are summed up in a `TrainingIdentity`, which publish records in the manifest:
- `data_sha256`: the dataset's identity (`prepare`'s);
- `params`: the training Params as the run was given them (gate Params do not shape the model);
- `code_sha256`: every source file of this package, by path and content;
- `libraries`: the versions of the libraries the manifest records (TensorFlow, Keras, NumPy, …).
A version published before identities existed has none, so the first run after an
upgrade trains and publishes once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

PACKAGE_DIR = Path(__file__).resolve().parent
INPUTS = ("data_sha256", "params", "code_sha256", "libraries")  # what a TrainingIdentity sums up


class TrainingIdentity(TypedDict):
    sha256: str
    """Of the other four keys, as canonical JSON."""
    data_sha256: str
    params: dict[str, Any]
    code_sha256: str
    libraries: dict[str, str | None]


def code_sha256(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the package's Python sources, each by its relative path and the sha256 of its bytes."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir).as_posix()
        digest.update(f"{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def training_identity(*, data_sha256: str, params: Mapping[str, Any]) -> TrainingIdentity:
    """This run's identity: the data and Params it was given, with this worker's code and libraries."""
    from mnist_tasks.publish import library_versions

    inputs: dict[str, Any] = {
        "data_sha256": data_sha256,
        "params": dict(params),
        "code_sha256": code_sha256(),
        "libraries": library_versions(),
    }
    canonical = json.dumps(inputs, sort_keys=True, allow_nan=False, separators=(",", ":"))
    return {"sha256": hashlib.sha256(canonical.encode()).hexdigest(), **inputs}  # type: ignore[typeddict-item]


class Comparison(TypedDict):
    latest_version: int | None
    """The version `latest` points at; None when nothing is published."""
    changed: list[str]
    """What differs from its identity: "data_sha256", "params", "code_sha256", "libraries", or
    "no identity recorded" (a version from before identities); empty when nothing does."""


def compare_with_latest(*, s3_client: Any, models_uri: str, identity: TrainingIdentity) -> Comparison:
    """This run's identity against the one recorded by the manifest `latest.json` vouches for (its sha256
    and seal checked)."""
    from mnist_tasks.registry import read_latest_manifest

    manifest = read_latest_manifest(s3_client=s3_client, models_uri=models_uri)
    if manifest is None:
        return {"latest_version": None, "changed": []}
    recorded = manifest.get("training_identity")
    if not recorded:
        changed = ["no identity recorded"]
    elif recorded.get("sha256") == identity["sha256"]:
        changed = []
    else:
        changed = [key for key in INPUTS if recorded.get(key) != identity[key]]
    return {"latest_version": manifest["version"], "changed": changed}
