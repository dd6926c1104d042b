"""mnist_batch_predict under faults: a shard's task dies mid-way and its retry completes the run.

Through dag.test() with the DAG's real retry settings, moto's S3 server behind the fault proxy.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

import mnist_tasks.inference.shard
from mnist_tasks.files import safe_name
from tests.e2e.conftest import MODELS_URI, ensure_buckets, load_dag_for_test
from tests.test_cli import dark_digit, model_file, publish_test_model  # noqa: F401  (model_file: fixture)
from tests.test_predict import model  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

INBOX, PREDICTIONS = "mnist-inbox", "mnist-predictions"


def test_a_shard_that_dies_mid_way_is_retried_and_the_run_has_each_row_once(
    monkeypatch, tmp_path, s3_client, airflow_db, aws_through_proxy, model_file, ledger  # noqa: F811
):
    from tests.faults.conftest import Fault

    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MNIST_MODELS_URI", MODELS_URI)
    monkeypatch.setenv("MNIST_PREDICTIONS_URI", f"s3://{PREDICTIONS}/predictions/")
    monkeypatch.setenv("MNIST_REVIEW_URI", f"s3://{INBOX}/review/")
    monkeypatch.setenv("MNIST_RETRY_DELAY_SECONDS", "1")
    monkeypatch.setenv("MNIST_TRAINING_RETRY_DELAY_SECONDS", "1")
    ensure_buckets(s3_client, MODELS_URI.split("/")[2], INBOX, PREDICTIONS)
    publish_test_model(s3_client, model_file, models_uri=MODELS_URI, version=20261120020000)
    seven = dark_digit(tmp_path / "seven.png", 7)
    keys = [f"scans/{i:02d}.png" for i in range(9)]
    for key in keys:
        s3_client.upload_file(str(seven), INBOX, key)
    # The second shard (images 3-5) loses its connection on its third image, after two were scored
    # and written to its part (a row at a time).
    monkeypatch.setattr(mnist_tasks.inference.shard, "BATCH_SIZE", 1)
    aws_through_proxy.faults.append(Fault(method="GET", path=r"/mnist-inbox/scans/05\.png", action="drop", times=1))

    dag = load_dag_for_test("mnist_batch_predict", keep_retries=True)
    run = dag.test(
        logical_date=datetime(2026, 11, 21, 6, tzinfo=UTC),
        run_conf={"input_uri": f"s3://{INBOX}/scans/", "shard_size": 3},
    )

    assert str(run.state) == "success"
    tries = {(ti.task_id, ti.map_index): (str(ti.state), ti.try_number) for ti in run.get_task_instances()}
    assert tries[("score", 1)] == ("success", 2)  # died once, retried
    assert {tries[("score", i)] for i in (0, 2)} == {("success", 1)}
    assert aws_through_proxy.faults[0].hits == 1
    key = f"predictions/{safe_name(run.run_id)}/predictions.csv"
    rows = list(csv.DictReader(io.StringIO(s3_client.get_object(Bucket=PREDICTIONS, Key=key)["Body"].read().decode())))
    assert [row["file"] for row in rows] == [f"s3://{INBOX}/{k}" for k in keys]  # each once, in key order
    assert {row["digit"] for row in rows} == {"7"}
    ledger.scenario("a batch shard's connection dropped mid-way, the shard retried")
