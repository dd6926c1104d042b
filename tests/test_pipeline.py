"""The DAG's steps on four workers that share nothing but the artifact store (moto's S3 server).

Each step gets a worker cache of its own, as on a Celery cluster where any task
may land on any host. Tiny data from a file:// mirror; slow only for TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks.feedback.labeled import combined_data_sha256
from mnist_tasks.flow import pipeline
from mnist_tasks.flow.artifacts import ArtifactIntegrityError, ArtifactStore
from mnist_tasks.registry import ModelRegistry, download_model, read_latest, verify_version
from tests.e2e.conftest import tiny_mirror  # noqa: F401  (a fixture)
from tests.test_labeled import stroke_png

pytestmark = pytest.mark.slow

ARTIFACTS_URI = "s3://pipeline-artifacts/store/"
MODELS_URI = "s3://pipeline-models/mnist/"
LABELED_BUCKET = "pipeline-inbox"
LABELED_URI = f"s3://{LABELED_BUCKET}/labeled/"
PARAMS = {"epochs": 2, "batch_size": 16, "learning_rate": 0.001, "hidden_units": 32, "seed": 3}


@pytest.fixture
def workers(tmp_path, s3_client, tiny_mirror, monkeypatch):  # noqa: F811
    import mnist_tasks.data.download

    monkeypatch.setattr(mnist_tasks.data.download, "MNIST_FILES", tiny_mirror[1])
    s3_client.create_bucket(Bucket="pipeline-artifacts")
    s3_client.create_bucket(Bucket="pipeline-models")

    def worker(name: str) -> ArtifactStore:
        return ArtifactStore(ARTIFACTS_URI, cache_dir=tmp_path / name / "artifacts", s3_client=s3_client)

    return worker


def _run(workers, s3_client, tiny_mirror, tmp_path, run_id: str, version: int):  # noqa: F811
    a, b, c, d = (workers(name) for name in ("worker-a", "worker-b", "worker-c", "worker-d"))
    downloaded = pipeline.download(
        store=a, mirrors=[tiny_mirror[0].as_uri() + "/"], raw_dir=tmp_path / "worker-a" / "raw"
    )
    prepared = pipeline.prepare(store=b, downloaded=downloaded, cache_root=tmp_path / "worker-b" / "prepared")
    novelty = pipeline.novelty(
        registry=ModelRegistry(s3_client, MODELS_URI), prepared=prepared, params=PARAMS, force=False
    )
    trained = pipeline.train(store=c, prepared=prepared, dag_id="mnist_retraining", run_id=run_id, params=PARAMS)
    evaluated = pipeline.evaluate(
        store=d,
        registry=ModelRegistry(s3_client, MODELS_URI),
        prepared=prepared,
        trained=trained,
        dag_id="mnist_retraining",
        run_id=run_id,
        threshold=0.0,
        max_regression=1.0,
    )
    published = pipeline.publish(
        store=a,
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=version,
        dag_id="mnist_retraining",
        run_id=run_id,
        started_at=None,
        downloaded=downloaded,
        prepared=prepared,
        trained=trained,
        evaluated=evaluated,
        identity=novelty["identity"],
    )
    return {
        "download": downloaded, "prepare": prepared, "novelty": novelty, "train": trained, "evaluate": evaluated,
        "publish": published,
    }  # fmt: skip


def test_steps_on_four_workers_publish_a_verified_version(workers, s3_client, tiny_mirror, tmp_path):  # noqa: F811
    results = _run(workers, s3_client, tiny_mirror, tmp_path, run_id="manual__2026-11-25T10:00:00+00:00", version=1)

    manifest = verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=1)
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == 1
    assert manifest["training"]["model"]["sha256"] == manifest["files"]["model.keras"]["sha256"]
    # What XCom would carry, and the manifest, name no worker's disk.
    assert str(tmp_path) not in json.dumps(results)
    assert str(tmp_path) not in json.dumps(manifest)
    assert results["prepare"]["cache_hit"] is False
    # Each worker holds only what its own step fetched or wrote.
    trainer = {p.name for p in (tmp_path / "worker-c").rglob("*") if p.is_file()}
    export = {name.rsplit("/", 1)[-1] for name in results["train"]["saved_model"]["files"]}
    assert trainer == {"x_train.npy", "y_train.npy", "model.keras", "history.json", *export}
    evaluator = {p.name for p in (tmp_path / "worker-d").rglob("*") if p.is_file()}
    assert {"x_test.npy", "y_test.npy", "model.keras", "metrics.json"} <= evaluator
    assert "x_train.npy" not in evaluator


def test_a_second_run_reuses_the_stored_data(workers, s3_client, tiny_mirror, tmp_path):  # noqa: F811
    _run(workers, s3_client, tiny_mirror, tmp_path, run_id="scheduled__2026-11-24T02:00:00+00:00", version=1)
    second = _run(workers, s3_client, tiny_mirror, tmp_path, run_id="scheduled__2026-11-25T02:00:00+00:00", version=2)

    assert second["download"]["downloaded"] == []
    assert second["prepare"]["cache_hit"] is True
    assert second["evaluate"]["champion_version"] == 1
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == 2


def test_a_damaged_prepared_array_in_the_store_fails_training_by_name(
    workers, s3_client, tiny_mirror, tmp_path  # noqa: F811
):
    a, b, c = workers("worker-a"), workers("worker-b"), workers("worker-c")
    downloaded = pipeline.download(store=a, mirrors=[tiny_mirror[0].as_uri() + "/"], raw_dir=tmp_path / "raw")
    prepared = pipeline.prepare(store=b, downloaded=downloaded, cache_root=tmp_path / "prepared")
    ref = prepared["arrays"]["y_train"]
    bucket, key = ref["uri"][len("s3://") :].split("/", 1)
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"\x93NUMPY tampered")

    with pytest.raises(ArtifactIntegrityError, match=f"checksum mismatch for {ref['uri']}: expected {ref['sha256']}"):
        pipeline.train(store=c, prepared=prepared, dag_id="d", run_id="r", params=PARAMS)
    assert not Path(c.local_path(key[len("store/") :])).exists()


def test_a_retried_publish_completes_the_same_version(workers, s3_client, tiny_mirror, tmp_path):  # noqa: F811
    run_id = "scheduled__2026-11-24T02:00:00+00:00"
    first = _run(workers, s3_client, tiny_mirror, tmp_path, run_id=run_id, version=1)
    # The first attempt died mid-upload, after its claim: no manifest, a file and the pointer missing.
    for key in ("mnist/1/manifest.json", "mnist/1/report.html", "mnist/latest.json"):
        s3_client.delete_object(Bucket="pipeline-models", Key=key)

    retried = pipeline.publish(
        store=workers("worker-e"),
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=1,
        dag_id="mnist_retraining",
        run_id=run_id,
        started_at=None,
        downloaded=first["download"],
        prepared=first["prepare"],
        trained=first["train"],
        evaluated=first["evaluate"],
        identity=first["novelty"]["identity"],
    )

    assert retried["manifest_sha256"] == first["publish"]["manifest_sha256"]
    assert verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=1)["run_id"] == run_id
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == 1


def test_tf_serving_finds_the_latest_version_under_serving_and_it_predicts_as_the_keras_model(
    workers, s3_client, tiny_mirror, tmp_path  # noqa: F811
):
    import keras
    import tensorflow as tf

    results = _run(workers, s3_client, tiny_mirror, tmp_path, run_id="scheduled__2026-11-24T02:00:00+00:00", version=1)

    manifest = verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=1)
    assert manifest["serving"] == {
        "export": "1/saved_model/",
        "path": "serving/1/",
        "signature": "serving_default",
        "input": {"name": "images", "shape": [None, 28, 28], "dtype": "float32"},
        "output": {"name": "output_0", "shape": [None, 10], "dtype": "float32"},
    }
    export = results["train"]["saved_model"]["files"]
    assert {f"saved_model/{name}" for name in export} <= set(manifest["files"])
    assert results["publish"]["serving_uri"] == "s3://pipeline-models/mnist/serving/1/"

    # What a server with base path s3://…/mnist/serving/ reads, copied to disk as it is.
    base = tmp_path / "tf-serving"
    listing = s3_client.list_objects_v2(Bucket="pipeline-models", Prefix="mnist/serving/")["Contents"]
    for key in (o["Key"] for o in listing):
        (base / key.removeprefix("mnist/serving/")).parent.mkdir(parents=True, exist_ok=True)
        s3_client.download_file("pipeline-models", key, str(base / key.removeprefix("mnist/serving/")))
    assert sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()) == sorted(
        f"1/{name}" for name in export
    )

    served = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    images = np.load(workers("worker-e").get(results["prepare"]["arrays"]["x_test"]))[:32]
    published = download_model(registry=ModelRegistry(s3_client, MODELS_URI), version=1, dest_dir=tmp_path / "keras")
    expected = keras.models.load_model(published["model_path"], safe_mode=True).predict(images, verbose=0)
    assert np.allclose(served(images=tf.constant(images))["output_0"].numpy(), expected, atol=1e-5)


def test_prepare_stores_the_labelled_arrays_and_names_the_data_by_both_sets(
    workers, s3_client, tiny_mirror, tmp_path  # noqa: F811
):
    store = workers("worker-a")
    s3_client.create_bucket(Bucket=LABELED_BUCKET)
    downloaded = pipeline.download(store=store, mirrors=[tiny_mirror[0].as_uri() + "/"], raw_dir=tmp_path / "raw")

    def prepared():
        return pipeline.prepare(
            store=store, downloaded=downloaded, cache_root=tmp_path / "prepared", s3_client=s3_client,
            labeled_uri=LABELED_URI,
        )  # fmt: skip

    empty = prepared()
    assert empty["data_sha256"] == empty["mnist_data_sha256"] == downloaded["data_sha256"]
    assert (empty["labeled"]["sha256"], empty["labeled"]["arrays"]) == (None, {})

    _label(s3_client, 30)
    s3_client.put_object(Bucket=LABELED_BUCKET, Key="labeled/x/stray.png", Body=stroke_png(99))
    grown = prepared()
    labeled = grown["labeled"]
    assert grown["data_sha256"] == combined_data_sha256(downloaded["data_sha256"], labeled["sha256"])
    assert grown["data_sha256"] != downloaded["data_sha256"]
    assert labeled["train_count"] + labeled["test_count"] == 30
    assert labeled["excluded"] == {"not_a_digit_folder": 1}
    y_test = np.load(store.get(labeled["arrays"]["y_test"]))
    assert len(y_test) == labeled["test_count"]
    assert prepared()["labeled"]["arrays"] == labeled["arrays"]  # found in the store, by the set's identity


def _label(s3_client, count: int) -> None:
    for i in range(count):
        s3_client.put_object(Bucket=LABELED_BUCKET, Key=f"labeled/{i % 10}/{i}.png", Body=stroke_png(i))


def test_labelled_images_train_and_gate_beside_mnist(workers, s3_client, tiny_mirror, tmp_path):  # noqa: F811
    store = workers("worker-a")
    s3_client.create_bucket(Bucket=LABELED_BUCKET)
    _label(s3_client, 200)
    downloaded = pipeline.download(store=store, mirrors=[tiny_mirror[0].as_uri() + "/"], raw_dir=tmp_path / "raw")
    prepared = pipeline.prepare(
        store=store, downloaded=downloaded, cache_root=tmp_path / "prepared", s3_client=s3_client,
        labeled_uri=LABELED_URI,
    )  # fmt: skip
    labeled = prepared["labeled"]
    trained = pipeline.train(store=store, prepared=prepared, dag_id="d", run_id="r", params=PARAMS)
    assert trained["labeled_train_count"] == labeled["train_count"]

    def evaluated(min_test_images: int, labeled_threshold: float) -> dict:
        return pipeline.evaluate(
            store=store, registry=ModelRegistry(s3_client, MODELS_URI), prepared=prepared, trained=trained,
            dag_id="d", run_id="r", threshold=0.0, max_regression=1.0, labeled_threshold=labeled_threshold,
            labeled_min_test_images=min_test_images,
        )  # fmt: skip

    judged = evaluated(min_test_images=1, labeled_threshold=1.0)
    assert judged["labeled"]["test_count"] == labeled["test_count"] > 0
    assert judged["labeled"]["gated"] is True
    accuracy = judged["labeled"]["accuracy"]
    assert judged["passed"] is (accuracy == 1.0)
    verdict = "passed: labelled test accuracy" if accuracy == 1.0 else "failed: labelled test accuracy"
    assert f"labelled-set gate {verdict} {accuracy:.4f}" in judged["message"]
    metrics = json.loads(store.get(judged["artifacts"]["metrics.json"]).read_text())
    assert metrics["labeled"]["per_class"].keys() == {str(d) for d in range(10)}

    too_few = evaluated(min_test_images=labeled["test_count"] + 1, labeled_threshold=1.0)
    assert too_few["passed"] is True
    assert too_few["labeled"]["gated"] is False
    assert f"fewer than labeled_min_test_images {labeled['test_count'] + 1}" in too_few["message"]
