"""scripts/run_dag.py (what `make run` runs): its summary line for a failed run, and it stops on SIGTERM, even
while its run waits for a retry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_tasks.data.download import MNIST_FILES
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import run_dag  # noqa: E402

pytestmark = pytest.mark.slow


def test_sigterm_stops_a_run_that_waits_for_a_retry(tmp_path):
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "MNIST_DATA_DIR": str(tmp_path / "data"),
        "MNIST_ARTIFACTS_URI": (tmp_path / "store").as_uri() + "/",
        # Port 9 (discard) refuses: download fails with a network error, which is retried, 300 s later.
        "MNIST_MIRRORS": "http://127.0.0.1:9/",
        "MNIST_RETRY_DELAY_SECONDS": "300",
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        run = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "run_dag.py")], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 240
        while "up_for_retry" not in log.read_text(errors="replace"):
            assert run.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(1)

        stopped_at = time.monotonic()
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 128 + signal.SIGTERM
        # Interrupted, not killed after the grace period.
        assert time.monotonic() - stopped_at < run_dag.GRACE_SECONDS
        assert log.read_text().rstrip().endswith("stopped by SIGTERM")
    finally:
        run.kill()
    # The child that ran the DAG is gone too: no process has this run's environment.
    assert _processes_with(f"MNIST_DATA_DIR={tmp_path / 'data'}") == []


def _processes_with(variable: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if variable.encode() in environ:
            found.append(int(entry))
    return found


def test_a_failed_run_ends_with_a_summary_naming_the_failed_task_and_exit_code_1(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in MNIST_FILES:
        (mirror / name).write_bytes(b"<html>not MNIST</html>")  # a checksum mismatch: failed, not retried
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "MNIST_DATA_DIR": str(tmp_path / "data"),
        "MNIST_ARTIFACTS_URI": (tmp_path / "store").as_uri() + "/",
        "MNIST_MIRRORS": mirror.as_uri() + "/",
        "MNIST_RETRY_DELAY_SECONDS": "1",
        "MNIST_TRAINING_RETRY_DELAY_SECONDS": "1",
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)

    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_dag.py"), "--conf", '{"epochs": 1}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 1, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # the last line of stdout, after Airflow's log
    assert summary["dag_id"] == "mnist_retraining"
    assert summary["run_id"].startswith("manual__")
    assert summary["state"] == "failed"
    assert summary["failed_tasks"] == ["download"]
    # Nothing was evaluated or published, and the summary says so rather than guessing.
    assert summary["test_accuracy"] is None and summary["gate"] is None
    assert summary["model_version"] is None and summary["model_uri"] is None and summary["serving_uri"] is None
    assert summary["unchanged_since"] is None
    assert set(summary["task_seconds"]) == {"download", "prepare", "anything_new", "train", "evaluate", "publish"}
    assert summary["seconds"] > 0


def test_an_asset_left_by_an_earlier_version_of_the_dags_is_retired_so_publish_can_emit(tmp_path):
    import sqlite3

    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MNIST_MODELS_URI": "s3://mnist-models/mnist/",
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    latest = "s3://mnist-models/mnist/latest.json"
    database = sqlite3.connect(tmp_path / "airflow" / "airflow.db")
    with database:  # what an Airflow home used by the DAGs before their Asset was named by its URI holds
        database.execute(
            "insert into asset (name, uri, \"group\", extra, created_at, updated_at)"
            " values ('mnist_model', ?, 'asset', '{}', datetime('now'), datetime('now'))",
            (latest,),
        )
        database.execute("insert into asset_active (name, uri) values ('mnist_model', ?)", (latest,))

    retire = (
        "import sys; sys.path.insert(0, 'scripts'); import run_dag;"
        "from airflow.dag_processing.dagbag import DagBag;"
        "run_dag._retire_unreferenced_assets(DagBag(dag_folder='dags'))"
    )
    subprocess.run([sys.executable, "-c", retire], env=env, cwd=REPO, check=True, capture_output=True)

    with database:
        active = database.execute("select name, uri from asset_active").fetchall()
    database.close()
    assert active == [(latest, latest)]  # the Asset publish declares, and no other holding its URI
