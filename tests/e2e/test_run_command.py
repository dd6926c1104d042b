"""The README's run command, as a new user types it, on real MNIST.

`make run` with its own ports and directories (so it cannot collide with a
developer's local stack): the offline mirror from the PyPI wheel, the local S3
endpoint, a fresh Airflow home, one whole DAG run. This is the product's
promise: a published model with test accuracy of at least 0.97.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO, free_ports

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_make_run_publishes_a_model_that_passes_the_gate(tmp_path):
    import boto3

    (s3_port,) = free_ports(1)
    make_vars = [
        f"S3_PORT={s3_port}",
        f"STATE={tmp_path / 'local'}",
        f"DATA_DIR={tmp_path / 'data'}",
        f"AIRFLOW_HOME={tmp_path / 'airflow'}",
    ]
    try:
        run = subprocess.run(
            ["make", "--no-print-directory", "run", *make_vars],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        assert summary["state"] == "success"
        assert summary["gate"] == "passed"
        assert summary["test_accuracy"] >= 0.97
        assert summary["model_uri"] == f"s3://mnist-models/mnist/{summary['model_version']}/model.keras"
        # TensorFlow Serving's layout, in the endpoint make run left up: serving/<version>/saved_model.pb.
        assert summary["serving_uri"] == f"s3://mnist-models/mnist/serving/{summary['model_version']}/"
        s3 = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1",
            aws_access_key_id="local", aws_secret_access_key="local",
        )
        s3.head_object(Bucket="mnist-models", Key=f"mnist/serving/{summary['model_version']}/saved_model.pb")
        assert set(summary["task_seconds"]) == {"download", "prepare", "train", "evaluate", "publish"}
    finally:
        subprocess.run(["make", "--no-print-directory", "stop", *make_vars], cwd=REPO, check=True, timeout=60)
