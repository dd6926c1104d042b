"""What the retraining DAG's steps (pipeline.py) return: each task's XCom, read by the tasks after it.

Refs to the artifact store (URI, sha256, size), checksums and small figures, never a local
path: any step may run on any worker. The manifest records several of them as they are
(registry/manifest.py).
"""

from __future__ import annotations

from typing import Any, TypedDict

from mnist_tasks.feedback.labeled import LabeledSet
from mnist_tasks.flow.artifacts import ArtifactRef
from mnist_tasks.flow.lineage import TrainingIdentity
from mnist_tasks.model.serving import ServingSignature


class DownloadedFile(TypedDict):
    sha256: str
    """Of the decompressed content, as `download.MNIST_FILES` pins it."""
    bytes: int
    source: str
    """The mirror URL it came from now, or "cache" when this worker already had it."""
    artifact: ArtifactRef
    """The .gz file in the store."""


class Downloaded(TypedDict):
    data_sha256: str
    files: dict[str, DownloadedFile]
    downloaded: list[str]


class PreparedLabeled(LabeledSet):
    arrays: dict[str, ArtifactRef]
    """x_train, y_train, x_test, y_test of the labelled set in the store; empty while the set is."""


class MnistInfo(TypedDict):
    """The artifact store's record of MNIST's prepared arrays (datasets/<data sha256>/prepared/dataset.json)."""

    data_sha256: str
    train_count: int
    test_count: int
    """MNIST's."""
    arrays: dict[str, ArtifactRef]
    """MNIST's x_train, y_train, x_test, y_test."""


class PreparedMnist(MnistInfo):
    cache_hit: bool
    """True when the store already held the prepared arrays of this MNIST data."""


class Prepared(PreparedMnist):
    """prepare's result. `data_sha256` is the dataset's identity: MNIST's and the labelled set's
    (labeled.combined_data_sha256)."""

    training_data_sha256: str
    """The same of what trains (MNIST and the labelled training split): part of the training identity."""
    mnist_data_sha256: str
    labeled: PreparedLabeled


class Novelty(TypedDict):
    train: bool
    """False when `latest` already is the model this run would train (and `force` is not set)."""
    reason: str
    """Why, in a sentence for the task log."""
    unchanged_since: int | None
    """The version `latest` points at, when nothing changed since it."""
    identity: TrainingIdentity


class StoredSavedModel(TypedDict):
    files: dict[str, ArtifactRef]
    """Path inside the export ('variables/variables.index') -> the file in the store."""
    signature: ServingSignature


class Trained(TypedDict):
    model: ArtifactRef
    history: ArtifactRef
    saved_model: StoredSavedModel
    """The model's SavedModel export, for TensorFlow Serving."""
    params: dict[str, Any]
    final: dict[str, float]
    train_count: int
    labeled_train_count: int
    seconds: float
