"""Whole `mnist_retraining` runs through Airflow's `dag.test()`, on tiny data.

The parts are real: the DAG file as the dag-processor parses it, Airflow's
metadata database, a local HTTP mirror on 127.0.0.1, moto's S3 server behind the
Amazon provider's connection. Only the table of expected checksums is swapped
for the tiny data's own. `dag.test()` does not raise when a task fails, so every
test asserts the run's state.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MODELS_BUCKET = "models-e2e"
MODELS_URI = f"s3://{MODELS_BUCKET}/mnist/"
# Tiny data that a dense net separates easily; 20% of the test labels are
# scrambled, so test accuracy stays near 0.8 and a threshold of 0.99 cannot be met.
PASSING_CONF = {"epochs": 3, "batch_size": 16, "accuracy_threshold": 0.5}
UNREACHABLE_CONF = {"epochs": 1, "accuracy_threshold": 0.99}


def _tiny_split(rng: np.random.Generator, prototypes: np.ndarray, count: int, scrambled: float):
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = prototypes[labels].copy()
    noise = rng.random(images.shape) < 0.05
    images[noise] = 255 - images[noise]
    flip = rng.random(count) < scrambled
    labels[flip] = (labels[flip] + rng.integers(1, 10, size=int(flip.sum()))) % 10
    return images, labels


@pytest.fixture(scope="module")
def tiny_mirror(tmp_path_factory) -> tuple[Path, dict]:
    """The four canonical file names holding tiny data, and their spec."""
    from mnist_tasks.dataset import FileSpec, idx_bytes

    rng = np.random.default_rng(7)
    prototypes = ((rng.random((10, 28, 28)) > 0.6) * 255).astype(np.uint8)
    x_train, y_train = _tiny_split(rng, prototypes, 400, scrambled=0.0)
    x_test, y_test = _tiny_split(rng, prototypes, 100, scrambled=0.2)
    mirror = tmp_path_factory.mktemp("mirror")
    spec = {}
    for name, array in [
        ("train-images-idx3-ubyte.gz", x_train),
        ("train-labels-idx1-ubyte.gz", y_train),
        ("t10k-images-idx3-ubyte.gz", x_test),
        ("t10k-labels-idx1-ubyte.gz", y_test),
    ]:
        raw = idx_bytes(array)
        (mirror / name).write_bytes(gzip.compress(raw, mtime=0))
        spec[name] = FileSpec(name=name, size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    return mirror, spec


@pytest.fixture(scope="module")
def airflow_db() -> None:
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)


@pytest.fixture
def http_mirror(tiny_mirror, tmp_path):
    """Serves a copy of the tiny mirror on 127.0.0.1; tests may damage the copy."""
    served = tmp_path / "served"
    shutil.copytree(tiny_mirror[0], served)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@pytest.fixture
def pipeline_env(monkeypatch, tmp_path, tiny_mirror, http_mirror, s3_endpoint, s3_client, airflow_db):
    """Points the DAG at the tiny HTTP mirror, a scratch data dir and moto's S3 server."""
    import mnist_tasks.dataset

    monkeypatch.setattr(mnist_tasks.dataset, "MNIST_FILES", tiny_mirror[1])
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MNIST_MIRRORS", http_mirror[1])
    monkeypatch.setenv("MNIST_MODELS_URI", MODELS_URI)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
            }
        ),
    )
    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    return http_mirror[0]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["mnist_retraining"]
    # dag.test() sleeps through retry delays; a failure here should fail at once.
    for task in dag.tasks:
        task.retries = 0
    return dag


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _objects(s3_client) -> dict[str, bytes]:
    listing = s3_client.list_objects_v2(Bucket=MODELS_BUCKET).get("Contents", [])
    return {o["Key"]: s3_client.get_object(Bucket=MODELS_BUCKET, Key=o["Key"])["Body"].read() for o in listing}


def test_a_run_publishes_a_verified_version_and_moves_latest(pipeline_env, dag, s3_client):
    logical_date = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
    dag_run = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=PASSING_CONF)

    assert str(dag_run.state) == "success", _states(dag_run)
    objects = _objects(s3_client)
    version = "20261120020000"
    latest = json.loads(objects["mnist/latest.json"])
    assert latest["version"] == int(version)
    manifest_bytes = objects[f"mnist/{version}/manifest.json"]
    assert latest["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    manifest = json.loads(manifest_bytes)
    assert set(manifest["files"]) == {"model.keras", "history.json", "metrics.json"}
    for name, recorded in manifest["files"].items():
        assert hashlib.sha256(objects[f"mnist/{version}/{name}"]).hexdigest() == recorded["sha256"], name
    assert manifest["run_id"] == dag_run.run_id
    assert manifest["params"]["epochs"] == PASSING_CONF["epochs"]
    assert manifest["metrics"]["accuracy"] >= PASSING_CONF["accuracy_threshold"]
    assert manifest["data"]["data_sha256"]

    # A re-run of the same run re-publishes the same version instead of adding one.
    again = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=PASSING_CONF)
    assert str(again.state) == "success", _states(again)
    assert again.run_id == dag_run.run_id
    versions = {key.split("/")[1] for key in _objects(s3_client) if key.count("/") == 2}
    assert versions == {version}


def test_a_gate_that_cannot_be_met_fails_the_run_and_publishes_nothing(pipeline_env, dag, s3_client):
    dag_run = dag.test(logical_date=datetime(2026, 11, 21, 2, 0, tzinfo=timezone.utc), run_conf=UNREACHABLE_CONF)

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

    dag_run = dag.test(logical_date=datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc), run_conf=PASSING_CONF)

    assert str(dag_run.state) == "failed"
    states = _states(dag_run)
    assert states["download"] == "failed"
    assert {states[t] for t in ("prepare", "train", "evaluate", "publish")} == {"upstream_failed"}
    assert _objects(s3_client) == {}
    assert not (tmp_path / "data" / "raw" / "train-labels-idx1-ubyte.gz").exists()
