"""Where a model came from: the manifest a run publishes, with the code and libraries it ran.

build_manifest gathers what a stranger needs to tell where a model came from; publish
adds the sha256 of every file. library_versions is also part of a run's training identity
(flow/lineage.py).
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from mnist_tasks.registry.manifest import (
    MANIFEST_SCHEMA,
    Claim,
    ManifestCode,
    ManifestData,
    ManifestMetrics,
    ManifestTraining,
)

if TYPE_CHECKING:
    from mnist_tasks.flow.lineage import TrainingIdentity
    from mnist_tasks.model.serving import ServingEntry

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

# The directory holding mnist_tasks/: the root of the source tree when this is a checkout
# (this file is mnist_tasks/registry/provenance.py).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def build_manifest(
    *,
    version: int,
    run_id: str,
    dag_id: str,
    params: dict[str, Any],
    data: ManifestData,
    metrics: ManifestMetrics,
    started_at: str | None,
    training: ManifestTraining | None = None,
    serving: ServingEntry | None = None,
    training_identity: TrainingIdentity | None = None,
) -> Claim:
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
        "code": code_version(),
        "libraries": library_versions(),
        "python": platform.python_version(),
    }


def code_version() -> ManifestCode:
    """This package's installed version and, when it runs from a checkout, its commit (git_state)."""
    return {"package": PACKAGE, "version": _distribution_version((PACKAGE,)), **git_state(SOURCE_ROOT)}


def library_versions() -> dict[str, str | None]:
    """The installed version of each of LIBRARIES (None when not installed)."""
    return {key: _distribution_version(names) for key, names in LIBRARIES.items()}


def _distribution_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class GitState(TypedDict):
    git_commit: str | None
    git_dirty: bool | None


def git_state(source_root: Path) -> GitState:
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
