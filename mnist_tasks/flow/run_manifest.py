"""The manifest a run publishes its version with: its earlier attempt's claim, or one built from its results."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from mnist_tasks.flow.lineage import TrainingIdentity
    from mnist_tasks.flow.results import Downloaded, Prepared, Trained
    from mnist_tasks.registry import Claim, ModelRegistry
    from mnist_tasks.registry.manifest import ManifestMetrics


def run_manifest(
    *,
    registry: ModelRegistry,
    version: int,
    dag_id: str,
    run_id: str,
    started_at: str | None,
    downloaded: Downloaded,
    prepared: Prepared,
    trained: Trained,
    evaluated: Mapping[str, Any],
    identity: TrainingIdentity,
) -> Claim:
    """The manifest (without files) this run publishes `version` with: its earlier claim, or a new one
    (the data, the training run, its export and its evaluation).

    A retry after an earlier attempt of this run claimed the version gets that claim, so it
    publishes the same bytes (versions are immutable).
    """
    from mnist_tasks.model.serving import manifest_entry
    from mnist_tasks.registry import build_manifest, read_claim

    claim = read_claim(registry=registry, version=version)
    if claim is not None and claim["run_id"] == run_id:
        return claim
    built = build_manifest(
        version=version,
        run_id=run_id,
        dag_id=dag_id,
        params=trained["params"],
        # The MNIST files as downloaded, with the identity of all the data (the labelled set's too).
        data={
            **downloaded,
            "data_sha256": prepared["data_sha256"],
            "mnist_data_sha256": prepared["mnist_data_sha256"],
            "labeled": prepared["labeled"],
        },
        metrics=cast("ManifestMetrics", evaluated),
        started_at=started_at,
        training={
            "model": trained["model"], "history": trained["history"], "final": trained["final"],
            "train_count": trained["train_count"], "labeled_train_count": trained["labeled_train_count"],
            "seconds": trained["seconds"],
        },  # fmt: skip
        serving=manifest_entry(version=version, signature=trained["saved_model"]["signature"]),
        training_identity=identity,
    )
    # In the key order the stored claim will have, so a retry renders the same report.
    return cast("Claim", json.loads(json.dumps(built, sort_keys=True)))
