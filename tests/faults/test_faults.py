"""Faults and races, through real parts: Airflow runs with their real retry settings, moto's S3
server behind a proxy that drops, fails or stalls requests, concurrent publishers, damaged bytes.

Each scenario asserts its own outcome, and the ledger (conftest.py) audits the registry after it.
"""

from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pytest

from mnist_tasks.flow import pipeline
from mnist_tasks.flow.artifacts import ArtifactStore
from mnist_tasks.registry import LatestMovedError, ModelRegistry, read_latest, repair_latest
from tests.e2e.conftest import ARTIFACTS_BUCKET, MODELS_BUCKET, MODELS_URI, load_dag_for_test

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

PASSING_CONF = {"epochs": 2, "batch_size": 16, "accuracy_threshold": 0.5}


def _retrying_dag(monkeypatch):
    """mnist_retraining with its real retry settings (2 retries, exponential back-off), the delay shortened."""
    monkeypatch.setenv("MNIST_RETRY_DELAY_SECONDS", "1")
    monkeypatch.setenv("MNIST_TRAINING_RETRY_DELAY_SECONDS", "1")
    return load_dag_for_test("mnist_retraining", keep_retries=True)


def _first_run_published(monkeypatch, s3_client, ledger):
    """mnist_retraining with its real retries, after a first run that published and passed the audit."""
    dag = _retrying_dag(monkeypatch)
    assert str(dag.test(logical_date=datetime(2026, 11, 20, 2, tzinfo=UTC), run_conf=PASSING_CONF).state) == "success"
    ledger.audit(s3_client, MODELS_URI)
    return dag


def _tries(dag_run) -> dict[str, tuple[str, int]]:
    return {ti.task_id: (str(ti.state), ti.try_number) for ti in dag_run.get_task_instances()}


@pytest.mark.parametrize(
    ("fault", "task"),
    [
        (dict(method="PUT", path=r"/latest\.json$", action="503", times=1), "publish"),
        (dict(method="PUT", path=r"/\d+/model\.keras$", action="drop", times=1), "publish"),
        (dict(method="GET", path=r"/\d+/history\.json$", action="stall", times=1, stall_s=6), "publish"),
        (dict(method="PUT", path=r"/runs/.*/model\.keras$", action="503", times=1), "train"),
    ],
    ids=[
        "S3 answers 503 as latest moves",
        "S3 drops the model upload",
        "S3 stalls a read-back",
        "S3 refuses the model",
    ],
)
def test_a_transient_s3_fault_is_retried_and_the_run_publishes_once(
    pipeline_env, aws_through_proxy, monkeypatch, s3_client, ledger, fault, task
):
    from tests.faults.conftest import Fault

    aws_through_proxy.faults.append(Fault(**fault))
    dag = _retrying_dag(monkeypatch)
    dag_run = dag.test(logical_date=datetime(2026, 11, 20, 2, tzinfo=UTC), run_conf=PASSING_CONF)

    tries = _tries(dag_run)
    assert str(dag_run.state) == "success", tries
    assert aws_through_proxy.faults[0].hits == 1
    assert tries[task] == ("success", 2)  # failed once, retried after the back-off
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == 20261120020000
    ledger.scenario(f"transient S3 fault in {task}: {fault['action']} on {fault['method']} {fault['path']}")
    ledger.audit(s3_client, MODELS_URI)


def test_a_checksum_error_fails_at_once_without_retries(pipeline_env, monkeypatch, s3_client, ledger):
    labels = pipeline_env / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw), mtime=0))

    dag = _retrying_dag(monkeypatch)
    dag_run = dag.test(logical_date=datetime(2026, 11, 21, 2, tzinfo=UTC), run_conf=PASSING_CONF)

    assert str(dag_run.state) == "failed"
    assert _tries(dag_run)["download"] == ("failed", 1)  # no retry: the bytes stay wrong
    assert s3_client.list_objects_v2(Bucket=MODELS_BUCKET).get("KeyCount", 0) == 0
    ledger.scenario("a mirror serves a file whose checksum is wrong", bad_inputs=1)
    ledger.audit(s3_client, MODELS_URI)


def test_a_damaged_cached_array_is_fetched_again_and_the_result_is_unchanged(
    pipeline_env, monkeypatch, s3_client, tmp_path, ledger
):
    dag = load_dag_for_test("mnist_retraining")
    first = dag.test(logical_date=datetime(2026, 11, 20, 2, tzinfo=UTC), run_conf=PASSING_CONF)
    assert str(first.state) == "success"
    ledger.audit(s3_client, MODELS_URI)
    accuracy = read_latest_metrics(s3_client)["accuracy"]

    # Overwrite bytes in this worker's copy of x_test.npy (the header stays valid).
    (cached,) = (tmp_path / "data" / "artifacts").rglob("x_test.npy")
    damaged = bytearray(cached.read_bytes())
    damaged[-500:] = b"\xff" * 500
    cached.write_bytes(bytes(damaged))

    # Forced: with nothing new the run would stop before evaluate reads the array.
    second = dag.test(
        logical_date=datetime(2026, 11, 21, 2, tzinfo=UTC),
        run_conf={**PASSING_CONF, "max_regression": 0, "force": True},
    )
    assert str(second.state) == "success"
    assert read_latest_metrics(s3_client)["accuracy"] == accuracy
    assert cached.read_bytes() != bytes(damaged)
    ledger.scenario("bytes overwritten in a cached prepared array", bad_inputs=1)
    ledger.audit(s3_client, MODELS_URI)


def _stored_array(s3_client, name: str) -> str:
    (key,) = [
        o["Key"] for o in s3_client.list_objects_v2(Bucket=ARTIFACTS_BUCKET)["Contents"] if o["Key"].endswith(name)
    ]
    return key


def test_an_array_replaced_in_the_store_is_rebuilt_by_prepare(pipeline_env, monkeypatch, s3_client, ledger):
    dag = _first_run_published(monkeypatch, s3_client, ledger)
    key = _stored_array(s3_client, "/x_train.npy")
    good = s3_client.get_object(Bucket=ARTIFACTS_BUCKET, Key=key)["Body"].read()
    s3_client.put_object(Bucket=ARTIFACTS_BUCKET, Key=key, Body=b"\x93NUMPY replaced by something else")
    monkeypatch.setenv("MNIST_DATA_DIR", str(pipeline_env.parent / "another-worker"))

    dag_run = dag.test(logical_date=datetime(2026, 11, 21, 2, tzinfo=UTC), run_conf=PASSING_CONF)

    assert str(dag_run.state) == "success", _tries(dag_run)
    assert s3_client.get_object(Bucket=ARTIFACTS_BUCKET, Key=key)["Body"].read() == good
    ledger.scenario("an array in the artifact store replaced", bad_inputs=1)
    ledger.audit(s3_client, MODELS_URI)


def test_an_array_corrupted_in_the_store_fails_training_at_once_by_name(
    pipeline_env, monkeypatch, s3_client, ledger
):
    dag = _first_run_published(monkeypatch, s3_client, ledger)
    key = _stored_array(s3_client, "/x_train.npy")
    head = s3_client.head_object(Bucket=ARTIFACTS_BUCKET, Key=key)
    corrupted = bytearray(s3_client.get_object(Bucket=ARTIFACTS_BUCKET, Key=key)["Body"].read())
    corrupted[-100:] = b"\xff" * 100
    # Bit rot: the bytes change, the metadata the uploader recorded does not; only reading tells.
    s3_client.put_object(Bucket=ARTIFACTS_BUCKET, Key=key, Body=bytes(corrupted), Metadata=head["Metadata"])
    monkeypatch.setenv("MNIST_DATA_DIR", str(pipeline_env.parent / "another-worker"))

    # Forced: with nothing new the run would stop before train reads the array.
    dag_run = dag.test(logical_date=datetime(2026, 11, 21, 2, tzinfo=UTC), run_conf={**PASSING_CONF, "force": True})

    assert str(dag_run.state) == "failed"
    assert _tries(dag_run)["train"] == ("failed", 1)
    ledger.scenario("an array in the artifact store corrupted", bad_inputs=1)
    ledger.audit(s3_client, MODELS_URI)


def test_a_damaged_latest_json_fails_the_run_at_once_and_publishes_nothing(
    pipeline_env, monkeypatch, s3_client, ledger
):
    dag = _first_run_published(monkeypatch, s3_client, ledger)
    pointer = s3_client.get_object(Bucket=MODELS_BUCKET, Key="mnist/latest.json")["Body"].read()
    s3_client.put_object(Bucket=MODELS_BUCKET, Key="mnist/latest.json", Body=pointer[: len(pointer) // 2])
    versions_before = _versions(s3_client)

    dag_run = dag.test(logical_date=datetime(2026, 11, 21, 2, tzinfo=UTC), run_conf=PASSING_CONF)

    assert str(dag_run.state) == "failed"
    # The first task that reads the pointer: waiting cannot mend it, so no retry.
    assert _tries(dag_run)["anything_new"] == ("failed", 1)
    assert _versions(s3_client) == versions_before
    s3_client.put_object(Bucket=MODELS_BUCKET, Key="mnist/latest.json", Body=pointer)  # mended, for the audit
    ledger.scenario("latest.json cut in half", bad_inputs=1)
    ledger.audit(s3_client, MODELS_URI)


def test_a_deleted_latest_json_never_waives_the_champion_until_it_is_repaired(
    pipeline_env, monkeypatch, s3_client, ledger
):
    dag = _first_run_published(monkeypatch, s3_client, ledger)
    pointer = read_latest(registry=ModelRegistry(s3_client, MODELS_URI))
    s3_client.delete_object(Bucket=MODELS_BUCKET, Key="mnist/latest.json")
    versions_before = _versions(s3_client)

    # A worse model that clears the threshold: with the pointer gone it must meet no empty throne.
    worse = {**PASSING_CONF, "epochs": 1, "accuracy_threshold": 0.1}
    dag_run = dag.test(logical_date=datetime(2026, 11, 21, 2, tzinfo=UTC), run_conf=worse)

    assert str(dag_run.state) == "failed"
    # Refused at once by the first task that reads the pointer, and alerted: a person must repair.
    assert _tries(dag_run)["anything_new"] == ("failed", 1)
    assert _versions(s3_client) == versions_before
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI)) is None

    repaired = repair_latest(registry=ModelRegistry(s3_client, MODELS_URI))
    assert (repaired["version"], repaired["manifest_sha256"]) == (pointer["version"], pointer["manifest_sha256"])
    ledger.scenario("latest.json deleted while versions are published", bad_inputs=1)
    ledger.audit(s3_client, MODELS_URI)


def _versions(s3_client) -> set[str]:
    listing = s3_client.list_objects_v2(Bucket=MODELS_BUCKET, Prefix="mnist/", Delimiter="/")
    return {p["Prefix"] for p in listing.get("CommonPrefixes", [])}


def test_a_delayed_publish_never_moves_latest_back(pipeline_env, s3_client, tmp_path, ledger):
    """Run A is evaluated against the champion of the moment; run B publishes a newer model
    before A's publish (a retry after an outage, a second scheduler). A must not move latest."""
    store = ArtifactStore(
        f"s3://{ARTIFACTS_BUCKET}/store/", cache_dir=tmp_path / "worker" / "artifacts", s3_client=s3_client
    )
    from mnist_tasks.flow.lineage import training_identity

    params = {"epochs": 2, "batch_size": 16, "learning_rate": 0.001, "hidden_units": 32, "seed": 1}

    def evaluated_run(run_id: str):
        downloaded = pipeline.download(
            store=store, mirrors=[pipeline_env.as_uri() + "/"], raw_dir=tmp_path / "worker" / "raw"
        )
        prepared = pipeline.prepare(store=store, downloaded=downloaded, cache_root=tmp_path / "worker" / "prepared")
        trained = pipeline.train(
            store=store, prepared=prepared, dag_id="mnist_retraining", run_id=run_id, params=params
        )
        evaluated = pipeline.evaluate(
            store=store, registry=ModelRegistry(s3_client, MODELS_URI), prepared=prepared, trained=trained,
            dag_id="mnist_retraining", run_id=run_id, threshold=0.0, max_regression=1.0,
        )
        identity = training_identity(data_sha256=prepared["data_sha256"], params=params)
        return {
            "downloaded": downloaded, "prepared": prepared, "trained": trained, "evaluated": evaluated,
            "identity": identity,
        }  # fmt: skip

    def publish(run_id: str, version: int, outputs: dict):
        return pipeline.publish(
            store=store, registry=ModelRegistry(s3_client, MODELS_URI), version=version, dag_id="mnist_retraining",
            run_id=run_id, started_at=None, **outputs,
        )

    a = evaluated_run("scheduled__a")  # compared with nothing published
    b = evaluated_run("scheduled__b")
    publish("scheduled__b", 20261121020000, b)
    ledger.audit(s3_client, MODELS_URI)

    with pytest.raises(LatestMovedError, match="now points at version 20261121020000"):
        publish("scheduled__a", 20261120020000, a)
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == 20261121020000
    ledger.scenario("a delayed publish meets a newer latest")
    ledger.audit(s3_client, MODELS_URI)


def test_concurrent_runs_publishing_one_version_leave_one_complete_version(pipeline_env, s3_client, tmp_path, ledger):
    from mnist_tasks.registry import VersionConflictError, build_manifest, publish_model

    def publisher(run_id: str) -> str:
        model = tmp_path / run_id / "model.keras"
        model.parent.mkdir()
        model.write_bytes(np.random.default_rng(len(run_id)).bytes(2 << 20))
        manifest = build_manifest(
            version=7, run_id=run_id, dag_id="mnist_retraining", params={}, data={"data_sha256": "0" * 64},
            metrics={"accuracy": 0.9, "passed": True}, started_at=None,
        )
        try:
            publish_model(registry=ModelRegistry(s3_client, MODELS_URI), version=7, files={"model.keras": model},
                          manifest=manifest)
            return "published"
        except VersionConflictError:
            return "refused"  # anything else fails the test: map() re-raises it

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(publisher, [f"run-{i}" for i in range(4)]))

    assert sorted(outcomes) == ["published", "refused", "refused", "refused"]
    ledger.scenario("four runs publish the same version at once")
    ledger.audit(s3_client, MODELS_URI)


BAD_CLI_INPUTS = [
    ["train", "--cache-dir", ".", "--out", "o", "--epochs", "0"],
    ["train", "--cache-dir", ".", "--out", "o", "--epochs", "1000000000"],
    ["train", "--cache-dir", ".", "--out", "o", "--seed", "-1"],
    ["train", "--cache-dir", ".", "--out", "o", "--learning-rate", "1e308"],
    ["train", "--cache-dir", ".", "--out", "o", "--learning-rate", "nan"],
    ["evaluate", "--model", "m.keras", "--cache-dir", ".", "--out", "o", "--threshold", "1.5"],
    ["evaluate", "--model", "m.keras", "--cache-dir", ".", "--out", "o", "--threshold", "-0.1"],
    ["download", "--mirror", "notaurl"],
    ["models", "show", "0"],
    ["models", "promote", "20261120020000", "--force"],
    ["report", "0042", "--out", "o"],
    ["predict", "--min-confidence", "2", "x.png"],
]


@pytest.mark.parametrize("argv", BAD_CLI_INPUTS, ids=[" ".join(a) for a in BAD_CLI_INPUTS])
def test_bad_command_lines_are_one_line_errors_and_change_nothing(
    argv, s3_endpoint, s3_client, monkeypatch, tmp_path, capsys, ledger
):
    from mnist_tasks.cli import main

    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("MNIST_MODELS_URI", MODELS_URI)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "error:" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    ledger.scenario(f"bad command line: {' '.join(argv)}", bad_inputs=1)


def read_latest_metrics(s3_client) -> dict:
    latest = read_latest(registry=ModelRegistry(s3_client, MODELS_URI))
    key = f"mnist/{latest['version']}/metrics.json"
    return json.loads(s3_client.get_object(Bucket=MODELS_BUCKET, Key=key)["Body"].read())


def test_the_audit_itself_catches_a_damaged_or_lost_version(s3_client, tmp_path):
    from mnist_tasks.registry import build_manifest, publish_model
    from tests.faults.conftest import Ledger

    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    model = tmp_path / "model.keras"
    model.write_bytes(b"weights" * 100)
    manifest = build_manifest(
        version=5, run_id="r", dag_id="d", params={}, data={}, metrics={"passed": True}, started_at=None
    )
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI), version=5, files={"model.keras": model}, manifest=manifest
    )
    audit = Ledger()  # not the suite's: its counts stay clean
    audit.audit(s3_client, MODELS_URI)

    s3_client.put_object(Bucket=MODELS_BUCKET, Key="mnist/5/model.keras", Body=b"tampered")
    with pytest.raises(AssertionError):
        audit.audit(s3_client, MODELS_URI)
    assert len(audit.bad_models) == 1

    for key in ("mnist/5/model.keras", "mnist/5/manifest.json"):
        s3_client.delete_object(Bucket=MODELS_BUCKET, Key=key)
    with pytest.raises(AssertionError):
        audit.audit(s3_client, MODELS_URI)
    assert audit.lost == [f"{MODELS_URI}5 (run r) is gone"]
