"""The README's run command, as a new user types it, on real MNIST.

`make run` with its own ports and directories (so it cannot collide with a
developer's local stack): the offline mirror from the PyPI wheel, the embedded
object store, a fresh Airflow home, one whole DAG run. This is the product's
promise: a published model with test accuracy of at least 0.97, which is still
there, as the champion, for the next `make run` after `make stop`.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO, EmbeddedStore, free_port_block

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _make(target: str, make_vars: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["make", "--no-print-directory", target, *make_vars], cwd=REPO, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_make_run_publishes_a_model_that_passes_the_gate_and_stays_the_champion_after_stop(tmp_path):

    s3_port = free_port_block(8)
    make_vars = [
        f"S3_PORT={s3_port}",
        f"STATE={tmp_path / 'local'}",
        f"DATA_DIR={tmp_path / 'data'}",
        f"AIRFLOW_HOME={tmp_path / 'airflow'}",
    ]
    try:
        summary = json.loads(_make("run", make_vars).stdout.strip().splitlines()[-1])
        assert summary["state"] == "success"
        assert summary["gate"] == "passed"
        assert summary["test_accuracy"] >= 0.97
        assert summary["model_uri"] == f"s3://mnist-models/mnist/{summary['model_version']}/model.keras"
        # TensorFlow Serving's layout, in the endpoint make run left up: serving/<version>/saved_model.pb.
        assert summary["serving_uri"] == f"s3://mnist-models/mnist/serving/{summary['model_version']}/"
        s3 = EmbeddedStore(tmp_path / "local", s3_port).client()  # the store make run left up
        s3.head_object(Bucket="mnist-models", Key=f"mnist/serving/{summary['model_version']}/saved_model.pb")
        assert set(summary["task_seconds"]) == {"download", "prepare", "anything_new", "train", "evaluate", "publish"}
        assert summary["champion_accuracy"] is None  # the first model of an empty store

        assert summary["unchanged_since"] is None

        # The store keeps what it holds across `make stop`: the next run meets the first model, and as
        # nothing changed (the same data, Params, code and libraries) it trains and publishes nothing.
        assert "stopped (its data stays)" in _make("stop", make_vars).stdout
        again = json.loads(_make("run", make_vars).stdout.strip().splitlines()[-1])
        assert again["state"] == "success"
        assert again["unchanged_since"] == summary["model_version"]
        assert (again["model_version"], again["test_accuracy"]) == (None, None)
    finally:
        subprocess.run(["make", "--no-print-directory", "stop", *make_vars], cwd=REPO, check=True, timeout=60)
