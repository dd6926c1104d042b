"""Whole `mnist_retraining` runs through Airflow's `dag.test()`, on tiny data.

The parts are real: the DAG file as the dag-processor parses it, Airflow's
metadata database, a local HTTP mirror on 127.0.0.1, the embedded object store
(SeaweedFS, as `make run` starts it) behind the Amazon provider's connection.
Only the table of expected checksums is swapped for the tiny data's own (the
fixtures are in conftest.py). `dag.test()` does not raise when a task fails, so
every test asserts the run's state.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime

import pytest

from mnist_tasks.files import safe_name
from mnist_tasks.model.report import REPORT_FILES
from tests.e2e.conftest import ARTIFACTS_BUCKET, MODELS_BUCKET

INBOX_BUCKET = "mnist-inbox"  # MNIST_LABELED_URI's default bucket, which the embedded store has

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# Tiny data that a dense net separates easily; 20% of the test labels are
# scrambled, so test accuracy stays near 0.8 and a threshold of 0.99 cannot be met.
PASSING_CONF = {"epochs": 3, "batch_size": 16, "accuracy_threshold": 0.5}
# Passes any threshold, but learns next to nothing: far behind a champion trained with PASSING_CONF.
WORSE_CONF = {"epochs": 1, "hidden_units": 1, "learning_rate": 1e-6, "accuracy_threshold": 0.0}
UNREACHABLE_CONF = {"epochs": 1, "accuracy_threshold": 0.99}


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _xcoms(dag_run) -> dict[tuple[str, str], object]:
    """(task id, key) -> value of the run's XComs, as run_dag.py reads them for its summary."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id))
        return {(row.task_id, row.key): XComModel.deserialize_value(row) for row in rows}


def _objects(s3_client) -> dict[str, bytes]:
    listing = s3_client.list_objects_v2(Bucket=MODELS_BUCKET).get("Contents", [])
    return {o["Key"]: s3_client.get_object(Bucket=MODELS_BUCKET, Key=o["Key"])["Body"].read() for o in listing}


def test_a_run_publishes_a_verified_version_and_a_worse_challenger_does_not_replace_it(
    pipeline_env, dag, s3_client, tmp_path
):
    logical_date = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    dag_run = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=PASSING_CONF)

    assert str(dag_run.state) == "success", _states(dag_run)
    objects = _objects(s3_client)
    version = "20261120020000"
    latest = json.loads(objects["mnist/latest.json"])
    assert latest["version"] == int(version)
    manifest_bytes = objects[f"mnist/{version}/manifest.json"]
    assert latest["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    manifest = json.loads(manifest_bytes)
    export = {name for name in manifest["files"] if name.startswith("saved_model/")}
    assert {"saved_model/saved_model.pb", "saved_model/variables/variables.index"} <= export
    assert set(manifest["files"]) == {"model.keras", "history.json", "metrics.json", *REPORT_FILES, *export}
    for name, recorded in manifest["files"].items():
        assert hashlib.sha256(objects[f"mnist/{version}/{name}"]).hexdigest() == recorded["sha256"], name
    # TensorFlow Serving's base path holds the latest version, and nothing else.
    serving = {key.removeprefix("mnist/serving/") for key in objects if key.startswith("mnist/serving/")}
    assert serving == {f"{version}/{name.removeprefix('saved_model/')}" for name in export}
    assert objects[f"mnist/serving/{version}/saved_model.pb"] == objects[f"mnist/{version}/saved_model/saved_model.pb"]
    assert latest["serving_uri"] == f"s3://{MODELS_BUCKET}/mnist/serving/{version}/"
    assert manifest["serving"]["path"] == f"serving/{version}/"
    report = objects[f"mnist/{version}/report.html"].decode()
    assert dag_run.run_id in report and report.count('src="data:image/png;base64,') == 4
    assert manifest["run_id"] == dag_run.run_id
    assert manifest["params"]["epochs"] == PASSING_CONF["epochs"]
    assert manifest["metrics"]["accuracy"] >= PASSING_CONF["accuracy_threshold"]
    assert manifest["data"]["data_sha256"]
    # The manifest points at the artifact store, never at a worker's disk.
    assert str(tmp_path) not in manifest_bytes.decode()
    stored = {o["Key"] for o in s3_client.list_objects_v2(Bucket=ARTIFACTS_BUCKET)["Contents"]}
    run_prefix = f"store/runs/mnist_retraining/{safe_name(dag_run.run_id)}/"
    assert {run_prefix + name for name in ("model.keras", "history.json", "metrics.json")} <= stored
    assert manifest["training"]["model"]["uri"] == f"s3://{ARTIFACTS_BUCKET}/{run_prefix}model.keras"
    assert manifest["training"]["model"]["sha256"] == manifest["files"]["model.keras"]["sha256"]
    data_prefix = f"store/datasets/{manifest['data']['data_sha256']}/"
    assert {f"{data_prefix}prepared/dataset.json", f"{data_prefix}raw/t10k-images-idx3-ubyte.gz"} <= stored

    # A re-run of the same run forced to train again compares with its own published model
    # (a tie), but may not change that version: versions are immutable, and the bucket stays as it was.
    before = _objects(s3_client)
    again = dag.test(logical_date=logical_date, run_after=logical_date, run_conf={**PASSING_CONF, "force": True})
    assert str(again.state) == "failed", _states(again)
    assert again.run_id == dag_run.run_id
    assert _states(again)["publish"] == "failed" and _states(again)["evaluate"] == "success"
    assert _objects(s3_client) == before
    metrics_key = f"store/runs/mnist_retraining/{safe_name(again.run_id)}/metrics.json"
    metrics = json.loads(s3_client.get_object(Bucket=ARTIFACTS_BUCKET, Key=metrics_key)["Body"].read())
    assert metrics["champion"]["version"] == int(version)
    assert metrics["champion"]["accuracy"] == metrics["accuracy"]

    # A later, much worse model meets the absolute threshold but not the champion.
    before = _objects(s3_client)
    worse = dag.test(logical_date=datetime(2026, 11, 21, 2, 0, tzinfo=UTC), run_conf=WORSE_CONF)
    assert str(worse.state) == "failed"
    states = _states(worse)
    assert (states["evaluate"], states["publish"]) == ("failed", "upstream_failed")
    assert _objects(s3_client) == before
    metrics_key = f"store/runs/mnist_retraining/{safe_name(worse.run_id)}/metrics.json"
    gate = json.loads(s3_client.get_object(Bucket=ARTIFACTS_BUCKET, Key=metrics_key)["Body"].read())["gate"]
    assert gate["champion_accuracy"] == metrics["accuracy"]
    assert f"below the champion's {metrics['accuracy']:.4f}" in gate["message"]


def test_a_run_with_nothing_new_trains_nothing_and_publishes_nothing_unless_forced(pipeline_env, s3_client):
    from tests.e2e.conftest import load_dag_for_test

    def run(day: int, conf: dict):
        # Parsed anew for each run: dag.test() leaves a run's conf in the DAG object's params.
        return load_dag_for_test("mnist_retraining").test(
            logical_date=datetime(2026, 11, day, 2, 0, tzinfo=UTC), run_conf=conf
        )

    first = run(20, PASSING_CONF)
    assert str(first.state) == "success", _states(first)
    published = _objects(s3_client)
    first_manifest = json.loads(published["mnist/20261120020000/manifest.json"])
    identity = first_manifest["training_identity"]
    assert identity["data_sha256"] == first_manifest["data"]["data_sha256"]
    assert identity["params"]["epochs"] == PASSING_CONF["epochs"] and "accuracy_threshold" not in identity["params"]

    # The next night: the same data, training Params, code and libraries. Only the gate differs,
    # which does not shape the model.
    unchanged = run(21, {**PASSING_CONF, "accuracy_threshold": 0.6})
    assert str(unchanged.state) == "success", _states(unchanged)
    assert _states(unchanged) == {
        "download": "success", "prepare": "success", "anything_new": "success",
        "train": "skipped", "evaluate": "skipped", "publish": "skipped",
    }  # fmt: skip
    assert _xcoms(unchanged)[("anything_new", "unchanged_since")] == 20261120020000
    assert _objects(s3_client) == published

    forced = run(22, {**PASSING_CONF, "force": True})
    assert str(forced.state) == "success", _states(forced)
    assert json.loads(_objects(s3_client)["mnist/latest.json"])["version"] == 20261122020000
    other = run(23, {**PASSING_CONF, "seed": 7, "max_regression": 1.0})  # another seed: another model
    assert str(other.state) == "success", _states(other)
    assert json.loads(_objects(s3_client)["mnist/latest.json"])["version"] == 20261123020000


def test_a_labelled_set_with_bad_files_trains_reports_them_and_a_new_label_retrains(pipeline_env, s3_client):
    """The users' labelled digits join training; corrupt files and folders that are not digits are reported,
    not fatal; an unchanged set trains nothing, and one more label trains again."""
    from mnist_tasks.feedback.labeled import is_test_image
    from tests.e2e.conftest import load_dag_for_test
    from tests.test_labeled import stroke_png
    from tests.test_preprocess import png_with_a_broken_chunk

    def label(relative: str, body: bytes) -> None:
        s3_client.put_object(Bucket=INBOX_BUCKET, Key=f"labeled/{relative}", Body=body)

    def run(day: int):
        return load_dag_for_test("mnist_retraining").test(
            logical_date=datetime(2026, 11, day, 2, 0, tzinfo=UTC), run_conf={**PASSING_CONF, "max_regression": 1.0}
        )

    for i in range(60):
        label(f"{i % 10}/{i}.png", stroke_png(i))
    label("10/ten.png", stroke_png(100))
    label("x/unknown.png", stroke_png(101))
    label("4/corrupt.png", b"\x89PNG\r\n\x1a\n cut short")
    label("5/broken-chunk.png", png_with_a_broken_chunk(stroke_png(102)))  # Pillow raises SyntaxError on it
    label("6/", b"")  # a folder's marker object, as S3 consoles make them: not a file

    first = run(20)
    assert str(first.state) == "success", _states(first)
    prepared = _xcoms(first)[("prepare", "return_value")]
    assert prepared["labeled"]["excluded"] == {"not_a_digit_folder": 2, "unreadable": 2}
    assert prepared["labeled"]["train_count"] + prepared["labeled"]["test_count"] == 60
    objects = _objects(s3_client)
    manifest = json.loads(objects["mnist/20261120020000/manifest.json"])
    assert manifest["data"]["labeled"]["excluded"] == {"not_a_digit_folder": 2, "unreadable": 2}
    assert manifest["data"]["data_sha256"] == prepared["data_sha256"] != prepared["mnist_data_sha256"]
    # What trained: MNIST and the labelled training split; the test split only judges.
    assert manifest["training_identity"]["data_sha256"] == prepared["training_data_sha256"]
    assert prepared["training_data_sha256"] not in (prepared["data_sha256"], prepared["mnist_data_sha256"])
    assert manifest["training"]["labeled_train_count"] == prepared["labeled"]["train_count"]
    assert manifest["metrics"]["labeled"]["test_count"] == prepared["labeled"]["test_count"]
    report = objects["mnist/20261120020000/report.html"].decode()
    assert "labelled test accuracy" in report and "left out: not_a_digit_folder" in report
    assert f"s3://{INBOX_BUCKET}/labeled/4/corrupt.png" in report

    unchanged = run(21)
    assert str(unchanged.state) == "success", _states(unchanged)
    assert _states(unchanged)["train"] == "skipped"

    # A new image that lands in the test split changes no model: nothing trains.
    test_only = next(seed for seed in range(1000, 2000) if is_test_image(hashlib.sha256(stroke_png(seed)).hexdigest()))
    label(f"7/{test_only}.png", stroke_png(test_only))
    judged_only = run(22)
    assert str(judged_only.state) == "success", _states(judged_only)
    assert _states(judged_only)["train"] == "skipped"

    trains = next(seed for seed in range(1000, 2000) if not is_test_image(hashlib.sha256(stroke_png(seed)).hexdigest()))
    label(f"7/{trains}.png", stroke_png(trains))
    grown = run(23)
    assert str(grown.state) == "success", _states(grown)
    assert json.loads(_objects(s3_client)["mnist/latest.json"])["version"] == 20261123020000


def test_a_gate_that_cannot_be_met_fails_the_run_and_publishes_nothing(pipeline_env, dag, s3_client):
    dag_run = dag.test(logical_date=datetime(2026, 11, 21, 2, 0, tzinfo=UTC), run_conf=UNREACHABLE_CONF)

    assert str(dag_run.state) == "failed"
    states = _states(dag_run)
    assert states["evaluate"] == "failed"
    assert states["publish"] == "upstream_failed"
    assert _objects(s3_client) == {}


def test_a_corrupted_mirror_file_fails_at_download_and_publishes_nothing(pipeline_env, dag, s3_client, tmp_path):
    labels = pipeline_env / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # one label changed: still a valid IDX file
    labels.write_bytes(gzip.compress(bytes(raw), mtime=0))

    dag_run = dag.test(logical_date=datetime(2026, 11, 22, 2, 0, tzinfo=UTC), run_conf=PASSING_CONF)

    assert str(dag_run.state) == "failed"
    states = _states(dag_run)
    assert states["download"] == "failed"
    assert {states[t] for t in ("prepare", "train", "evaluate", "publish")} == {"upstream_failed"}
    assert _objects(s3_client) == {}
    assert not (tmp_path / "data" / "raw" / "train-labels-idx1-ubyte.gz").exists()


def test_a_new_models_uri_on_the_same_airflow_home_still_publishes(pipeline_env, s3_client, monkeypatch):
    from tests.e2e.conftest import load_dag_for_test

    first = load_dag_for_test("mnist_retraining").test(
        logical_date=datetime(2026, 11, 23, 2, 0, tzinfo=UTC), run_conf=PASSING_CONF
    )
    assert str(first.state) == "success", _states(first)
    # The operator moves the registry; the DAG is parsed anew, as the dag-processor would.
    monkeypatch.setenv("MNIST_MODELS_URI", f"s3://{MODELS_BUCKET}/moved/")
    moved = load_dag_for_test("mnist_retraining").test(
        logical_date=datetime(2026, 11, 24, 2, 0, tzinfo=UTC), run_conf=PASSING_CONF
    )

    assert str(moved.state) == "success", _states(moved)
    assert json.loads(_objects(s3_client)["moved/latest.json"])["version"] == 20261124020000


def test_a_cnn_challenger_is_compared_with_the_dense_champion_and_published_as_cnn(pipeline_env, s3_client):
    from mnist_tasks.registry import ModelRegistry, list_versions
    from tests.e2e.conftest import load_dag_for_test

    # Parsed anew: dag.test() leaves a run's conf in the DAG object's params (WORSE_CONF's learning rate).
    dag = load_dag_for_test("mnist_retraining")
    champion = dag.test(logical_date=datetime(2026, 11, 25, 2, 0, tzinfo=UTC), run_conf=PASSING_CONF)
    assert str(champion.state) == "success", _states(champion)
    # Whatever the tiny data (noise patterns, which augmentation scrambles) makes of the cnn, it gets published.
    cnn_conf = {**PASSING_CONF, "architecture": "cnn", "accuracy_threshold": 0.0, "max_regression": 1.0}
    challenger = dag.test(logical_date=datetime(2026, 11, 26, 2, 0, tzinfo=UTC), run_conf=cnn_conf)

    assert str(challenger.state) == "success", _states(challenger)
    objects = _objects(s3_client)
    manifest = json.loads(objects["mnist/20261126020000/manifest.json"])
    assert (manifest["params"]["architecture"], manifest["params"]["augment"]) == ("cnn", "on")
    # Judged against the dense champion on the same test set.
    assert manifest["metrics"]["champion_version"] == 20261125020000
    report = " ".join(objects["mnist/20261126020000/report.html"].decode().split())
    assert "the <code>cnn</code> model, trained with augmented training images" in report
    rows = list_versions(registry=ModelRegistry(s3_client, f"s3://{MODELS_BUCKET}/mnist/"))
    assert [(r["architecture"], r["augment"], r["is_latest"]) for r in rows] == [
        ("dense", "off", False),
        ("cnn", "on", True),
    ]
