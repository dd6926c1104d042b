"""What a trained model is a function of, and whether `latest` already is that model.

Training is deterministic: the same data, training Params, code and libraries give the
same weights. So a nightly run whose inputs equal those of the version `latest` points at
would publish that version again under a new number. `compare_with_latest` tells the DAG
to stop after `prepare` instead (its `force` Param retrains anyway).

The inputs are summed up in a `TrainingIdentity`, which publish records in the manifest:
- `data_sha256`: the identity of what trains (`prepare`'s `training_data_sha256`: MNIST's files
  and the labelled set's training split);
- `params`: the training Params as the run was given them (gate Params do not shape the model);
- `code_sha256`: every source file of this package, by path and content;
- `libraries`: the versions of TensorFlow, Keras, NumPy and Pillow.
A version published before identities existed has none, so the first run after an
upgrade trains and publishes once. Nor does a version count whose files no longer verify
or whose TensorFlow Serving copy is incomplete: the run publishes a whole one again.

The check runs on the training queue, so the code and libraries it sums up are those of
the workers that train. (A deployment whose training workers run different images can
still compare one worker's against another's: keep them on one image.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from mnist_tasks.registry import ModelRegistry

# The whole package (this module is in mnist_tasks/flow/): every source file that can change a model.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# What a TrainingIdentity sums up.
INPUTS: tuple[Literal["data_sha256", "params", "code_sha256", "libraries"], ...] = (
    "data_sha256", "params", "code_sha256", "libraries",
)  # fmt: skip
# Of the libraries a manifest records, those whose version can change the weights (not boto3 or Airflow):
# Pillow decodes the users' labelled images before they train.
MODEL_LIBRARIES = ("tensorflow", "keras", "numpy", "pillow")


class TrainingInputs(TypedDict):
    data_sha256: str
    params: dict[str, Any]
    code_sha256: str
    libraries: dict[str, str | None]


class TrainingIdentity(TrainingInputs):
    sha256: str
    """Of the four inputs, as canonical JSON."""


def code_sha256(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the package's Python sources, each by its relative path and the sha256 of its bytes."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir).as_posix()
        digest.update(f"{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def training_identity(*, data_sha256: str, params: Mapping[str, Any]) -> TrainingIdentity:
    """This run's identity: the data and training Params it was given (each as its Param's type: 4.0
    epochs is 4), with this worker's code and the libraries that shape a model."""
    from mnist_tasks.params import PARAMS
    from mnist_tasks.registry.provenance import library_versions

    inputs: TrainingInputs = {
        "data_sha256": data_sha256,
        "params": {name: PARAMS[name].check(value) for name, value in params.items()},
        "code_sha256": code_sha256(),
        "libraries": {name: library_versions()[name] for name in MODEL_LIBRARIES},
    }
    canonical = json.dumps(inputs, sort_keys=True, allow_nan=False, separators=(",", ":"))
    return {"sha256": hashlib.sha256(canonical.encode()).hexdigest(), **inputs}


class Comparison(TypedDict):
    latest_version: int | None
    """The version `latest` points at; None when nothing is published."""
    changed: list[str]
    """What differs from its identity: "data_sha256", "params", "code_sha256", "libraries", or
    "no identity recorded" (a version from before identities); empty when nothing does."""


def compare_with_latest(*, registry: ModelRegistry, identity: TrainingIdentity) -> Comparison:
    """This run's identity against the one recorded by the manifest `latest.json` vouches for (its sha256
    and seal checked; a damaged pointer or manifest raises).

    An equal identity counts only for a version that is whole: every file as its manifest
    records it, and TensorFlow Serving's copy complete. Otherwise training publishes a whole
    version again, as every nightly run did before identities.
    """
    from mnist_tasks.registry import (
        PublishVerificationError,
        read_latest_manifest,
        serving_copy_complete,
        verify_version,
    )

    found = read_latest_manifest(registry=registry)
    if found is None:
        return {"latest_version": None, "changed": []}
    manifest, manifest_sha256 = found
    version, recorded = manifest["version"], manifest.get("training_identity")
    if not recorded:
        return {"latest_version": version, "changed": ["no identity recorded"]}
    if recorded.get("sha256") != identity["sha256"]:
        # A sha256 that differs while no input does is a different rule for summing them up.
        changed: list[str] = [key for key in INPUTS if recorded.get(key) != identity[key]]
        changed = changed or ["how the identity is summed up"]
        return {"latest_version": version, "changed": changed}
    try:
        verify_version(registry=registry, version=version, manifest_sha256=manifest_sha256)
    except PublishVerificationError as err:
        return {"latest_version": version, "changed": [f"its files do not verify ({err})"]}
    if not serving_copy_complete(registry=registry, manifest=manifest):
        return {"latest_version": version, "changed": ["its TensorFlow Serving copy is incomplete"]}
    return {"latest_version": version, "changed": []}
