"""lineage: what a model is a function of, and whether `latest` already is that model (moto's S3 server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_tasks.flow.lineage import PACKAGE_DIR, code_sha256, compare_with_latest, training_identity
from mnist_tasks.registry import LATEST_FILE, ModelRegistry, PublishVerificationError, build_manifest, publish_model

MODELS_URI = "s3://models/mnist/"
PARAMS = {"architecture": "dense", "epochs": 4, "seed": 42}


def test_the_code_checksum_follows_every_source_file_by_path_and_content(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "sub" / "b.py").write_text("B = 2\n")
    (tmp_path / "notes.txt").write_text("not code")
    first = code_sha256(tmp_path)

    (tmp_path / "notes.txt").write_text("still not code")
    assert code_sha256(tmp_path) == first
    (tmp_path / "sub" / "b.py").write_text("B = 3\n")
    assert code_sha256(tmp_path) != first
    (tmp_path / "sub" / "b.py").write_text("B = 2\n")
    (tmp_path / "sub" / "b.py").rename(tmp_path / "b.py")
    assert code_sha256(tmp_path) != first


def test_the_code_identity_covers_every_subpackage_of_mnist_tasks():
    """lineage.py moved into flow/ (issue 21) and its PACKAGE_DIR still went up one level only: the
    identity covered flow/ alone, so a change to training code never asked for a new model."""
    import mnist_tasks

    assert Path(mnist_tasks.__file__).resolve().parent == PACKAGE_DIR
    assert (PACKAGE_DIR / "model" / "train.py").is_file() and (PACKAGE_DIR / "data" / "prepare.py").is_file()


def test_the_identity_changes_with_the_data_and_the_params_and_not_with_their_order_or_spelling():
    identity = training_identity(data_sha256="d" * 64, params=PARAMS)
    assert identity == training_identity(data_sha256="d" * 64, params=dict(reversed(PARAMS.items())))
    assert identity == training_identity(data_sha256="d" * 64, params={**PARAMS, "epochs": 4.0})
    assert identity["code_sha256"] == code_sha256()
    assert set(identity["libraries"]) == {"tensorflow", "keras", "numpy", "pillow"}
    assert identity["libraries"]["tensorflow"]
    assert training_identity(data_sha256="e" * 64, params=PARAMS)["sha256"] != identity["sha256"]
    assert training_identity(data_sha256="d" * 64, params={**PARAMS, "seed": 7})["sha256"] != identity["sha256"]


def _publish(s3_client, tmp_path: Path, version: int, identity: dict | None) -> None:
    model = tmp_path / f"{version}.keras"
    model.write_bytes(b"weights" * 50)
    graph = tmp_path / f"{version}.pb"
    graph.write_bytes(b"graph" * 50)
    manifest = build_manifest(
        version=version, run_id=f"run-{version}", dag_id="mnist_retraining", params=PARAMS,
        data={"data_sha256": "d" * 64}, metrics={"accuracy": 0.97, "passed": True}, started_at=None,
        training_identity=identity,
    )  # fmt: skip
    files = {"model.keras": model, "saved_model/saved_model.pb": graph}  # the export, copied to serving/
    publish_model(registry=ModelRegistry(s3_client, MODELS_URI), version=version, files=files, manifest=manifest)


@pytest.fixture
def registry(s3_client):
    s3_client.create_bucket(Bucket="models")
    return s3_client


def test_the_latest_version_is_compared_by_the_identity_its_manifest_records(registry, tmp_path):
    identity = training_identity(data_sha256="d" * 64, params=PARAMS)
    assert compare_with_latest(registry=ModelRegistry(registry, MODELS_URI), identity=identity) == {
        "latest_version": None, "changed": [],
    }  # fmt: skip

    _publish(registry, tmp_path, 20261120020000, identity=None)  # from before identities
    assert compare_with_latest(registry=ModelRegistry(registry, MODELS_URI), identity=identity) == {
        "latest_version": 20261120020000, "changed": ["no identity recorded"],
    }  # fmt: skip

    _publish(registry, tmp_path, 20261121020000, identity=dict(identity))
    assert compare_with_latest(registry=ModelRegistry(registry, MODELS_URI), identity=identity) == {
        "latest_version": 20261121020000, "changed": [],
    }  # fmt: skip
    other = training_identity(data_sha256="e" * 64, params={**PARAMS, "epochs": 5})
    assert compare_with_latest(registry=ModelRegistry(registry, MODELS_URI), identity=other)["changed"] == [
        "data_sha256", "params",
    ]  # fmt: skip


def test_a_latest_version_whose_files_no_longer_verify_counts_as_changed(registry, tmp_path):
    identity = training_identity(data_sha256="d" * 64, params=PARAMS)
    _publish(registry, tmp_path, 20261121020000, identity=dict(identity))
    registry.put_object(Bucket="models", Key="mnist/20261121020000/model.keras", Body=b"bit rot")

    (changed,) = compare_with_latest(registry=ModelRegistry(registry, MODELS_URI), identity=identity)["changed"]
    assert changed.startswith("its files do not verify") and "mnist/20261121020000/model.keras" in changed


def test_a_latest_version_whose_serving_copy_is_incomplete_counts_as_changed(registry, tmp_path):
    identity = training_identity(data_sha256="d" * 64, params=PARAMS)
    _publish(registry, tmp_path, 20261121020000, identity=dict(identity))
    registry.delete_object(Bucket="models", Key="mnist/serving/20261121020000/saved_model.pb")

    assert compare_with_latest(registry=ModelRegistry(registry, MODELS_URI), identity=identity)["changed"] == [
        "its TensorFlow Serving copy is incomplete"
    ]


def test_a_latest_manifest_that_differs_from_what_latest_json_vouches_for_is_refused(registry, tmp_path):
    identity = training_identity(data_sha256="d" * 64, params=PARAMS)
    _publish(registry, tmp_path, 20261121020000, identity=dict(identity))
    latest = json.loads(registry.get_object(Bucket="models", Key=f"mnist/{LATEST_FILE}")["Body"].read())
    registry.put_object(Bucket="models", Key=f"mnist/{LATEST_FILE}", Body=json.dumps(
        {**latest, "manifest_sha256": "0" * 64}).encode())  # fmt: skip
    with pytest.raises(PublishVerificationError, match="mnist/20261121020000/manifest.json"):
        compare_with_latest(registry=ModelRegistry(registry, MODELS_URI), identity=identity)
