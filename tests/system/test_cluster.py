"""The production topology (`make cluster`) running mnist_retraining, and losing a worker mid-training.

The cluster is the one scripts/local_cluster.py starts: PostgreSQL, Redis, the
embedded object store (SeaweedFS) with the real MNIST mirror, Airflow on the CeleryExecutor with
a worker for the queue `default` and one for `training`, each with its own data
dir, as if on hosts of their own. Everything here goes through what a user has:
the REST API with the admin login, the S3 buckets, the pid files. Stopping the
cluster must leave no process behind.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
import requests

from tests.conftest import REPO, EmbeddedStore, airflow_ui_page, api_session, free_port_block, run_checked

# The first test also pays for starting the cluster and for the nightly run.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

DAG_ID = "mnist_retraining"
MODELS_URI = "s3://mnist-models/mnist/"
ARTIFACTS_BUCKET = "mnist-artifacts"
DEFAULT_WORKER, TRAINING_WORKER = "worker-default", "worker-training"
# Each worker's own loopback address: the hostname its task instances report, where its log server listens.
ADDRESS = {DEFAULT_WORKER: "127.0.0.2", TRAINING_WORKER: "127.0.0.3"}
WORKER_AT = {address: worker for worker, address in ADDRESS.items()}
SCREENSHOTS = REPO / "test-artifacts" / "cluster"
# train's line for each epoch, as it logs it (mnist_tasks/model/train.py).
EPOCH_LINE = r"epoch \d+/\d+: .*val_accuracy 0\.\d+"
ON_TRAINING_WORKER = {"anything_new", "train", "evaluate"}
ON_DEFAULT_WORKER = {"download", "prepare", "publish"}
# One epoch keeps the runs short. Unpausing starts the nightly run (the default Params)
# first; one epoch falls short of its model, so the first run is judged by
# accuracy_threshold alone. The second trains 40 epochs of about 0.7 s each, so that
# train runs for another 25 s after its first epoch's line is in the log (the UI's page
# is open by then); it meets the champion (the first) with the default max_regression.
# It is forced, as nothing new would end it before train.
FIRST_CONF = {"epochs": 1, "seed": 42, "max_regression": 1.0}
SECOND_CONF = {"epochs": 40, "seed": 42, "force": True}
# Two cores, shared: the nightly run, then ours, each waiting for the one before.
RUN_TIMEOUT = 900
START_TIMEOUT = 600
# A lost worker's task comes back with the shipped settings (heartbeat timeout, retry delay).
RECOVERY_GOAL_SECONDS = 180


@dataclass
class Cluster:
    url: str
    user: str
    password: str
    store: EmbeddedStore
    state_dir: Path
    start_command: list[str]
    env: dict[str, str]
    worker_log_port: int
    sessions: set[int] = field(default_factory=set)
    """Every session a pid file named, for the check that nothing is left running."""

    def start(self) -> str:
        """`local_cluster.py start`, as `make cluster` runs it: it starts what is not running."""
        done = subprocess.run(
            [str(a) for a in self.start_command],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        self.note_sessions()
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{self.logs()}"
        return done.stdout

    def pid_files(self) -> list[Path]:
        """Airflow's, PostgreSQL's and Redis' in the state dir, the object store's in s3/."""
        return [*self.state_dir.glob("*.pid"), *self.state_dir.glob("s3/*.pid")]

    def pids(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in self.pid_files()}

    def note_sessions(self) -> None:
        self.sessions |= {int(p.read_text()) for p in self.pid_files()}

    def data_dir(self, worker: str) -> Path:
        return self.state_dir / worker / "data"

    def logs(self) -> str:
        """The end of each component's log, for failure messages."""
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            for log in sorted(self.state_dir.glob("*.log"))
        )


@pytest.fixture(scope="module")
def scripts() -> Iterator[tuple[ModuleType, ModuleType]]:
    """scripts/local_processes.py and scripts/local_postgres.py, imported as the scripts import each other."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "scripts"))
        yield importlib.import_module("local_processes"), importlib.import_module("local_postgres")


@pytest.fixture(scope="module")
def cluster(scripts) -> Iterator[Cluster]:
    _, local_postgres = scripts
    # Not under pytest's basetemp: another pytest session's clean-up of old basetemps
    # must never delete the pid files of a cluster that is still running.
    root = Path(tempfile.mkdtemp(prefix="mnist-cluster-test-"))
    state = root / "state"
    # The store takes its S3 port and the seven after it; the others follow.
    s3 = free_port_block(8 + 5)
    api, postgres, redis, *log_ports = range(s3 + 8, s3 + 13)
    start = [sys.executable, "scripts/local_cluster.py", "start", "--state-dir", state, "--port", api]
    start += ["--s3-port", s3, "--postgres-port", postgres, "--redis-port", redis, "--log-ports", *log_ports]
    # No AWS settings of the caller's: the components reach S3 through aws_default alone.
    # Nor any recovery or TensorFlow logging setting: the cluster runs with the ones the product ships.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "AIRFLOW__SCHEDULER__", "MNIST_RETRY", "MNIST_TRAINING_RETRY", "TF_CPP_"))
    }
    cluster = Cluster(
        url="",
        user="",
        password="",
        store=EmbeddedStore(state, s3),
        state_dir=state,
        start_command=start,
        env=env,
        worker_log_port=log_ports[0],
    )
    try:
        printed = cluster.start()
        login = re.search(r"Airflow UI: (http://\S+) +\(user (\S+), password (\S+)\)", printed)
        assert login, printed
        assert login[1] == f"http://127.0.0.1:{api}"
        cluster.url, cluster.user, cluster.password = login[1], login[2], login[3]
        yield cluster
    finally:
        cluster.note_sessions()
        run_checked([sys.executable, "scripts/local_cluster.py", "stop", "--state-dir", state], env)
        # Any state but Z: an exited process stays a zombie until its parent (here
        # init, which takes its time) reaps it, and a zombie runs nothing.
        left = subprocess.run(
            ["pgrep", "-a", "--runstates", "R,S,D,T,t", "-s", ",".join(map(str, sorted(cluster.sessions)))],
            capture_output=True,
            text=True,
        )
        assert left.returncode == 1, f"still running after stop:\n{left.stdout}"
        # PostgreSQL's backends leave the postmaster's session (each calls setsid):
        # nothing may still listen on any of the cluster's ports either.
        addresses = ["127.0.0.1", *ADDRESS.values()]
        listening = [(host, port) for host in addresses for port in range(s3, s3 + 13) if _listens(host, port)]
        assert not listening, f"still listening after stop: {listening}"
        assert not cluster.pid_files()
        postgres_dir = local_postgres.postgres_dir(state)
        if root not in postgres_dir.parents:
            shutil.rmtree(postgres_dir, ignore_errors=True)
        shutil.rmtree(root)


def _listens(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="module")
def api(cluster) -> requests.Session:
    """The REST API with a token from the admin login, as a user gets one."""
    return api_session(cluster.url, cluster.user, cluster.password)


@pytest.fixture(scope="module")
def s3(cluster):
    return cluster.store.client()  # the identity Airflow's connection has, limited to the project's buckets


def _trigger(api, cluster, conf: dict) -> dict:
    response = api.post(
        f"{cluster.url}/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def _get(api, cluster, path: str, **params) -> dict:
    response = api.get(f"{cluster.url}/api/v2/dags/{DAG_ID}/{path}", params=params, timeout=60)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json()


def _final_state(api, cluster, run_id: str) -> str:
    """Poll a run until it ends; past RUN_TIMEOUT, fail with the components' logs."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while (state := _get(api, cluster, f"dagRuns/{run_id}")["state"]) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"run {run_id} still {state} after {RUN_TIMEOUT} s\n{cluster.logs()}"
        time.sleep(3)
    return state


def _task_instances(api, cluster, run_id: str) -> dict[str, dict]:
    found = _get(api, cluster, f"dagRuns/{run_id}/taskInstances")["task_instances"]
    return {ti["task_id"]: ti for ti in found}


def _log(api, cluster, run_id: str, task_id: str, try_number: int) -> tuple[list[str], str]:
    """(where the API read it from, the text) of one try's log."""
    sources, entries = _log_entries(api, cluster, run_id, try_number, task_id=task_id)
    return sources, "\n".join(entry["event"] for entry in entries)


def _log_entries(api, cluster, run_id: str, try_number: int, *, task_id: str = "train") -> tuple[list[str], list[dict]]:
    """(where the API read it from, its entries: event, level, timestamp) of one try's log."""
    response = api.get(
        f"{cluster.url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
        headers={"Accept": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    entries = [{**entry, "event": entry.get("event", "")} for entry in response.json()["content"]]
    events = [entry["event"] for entry in entries]
    # The log starts with a group naming its sources.
    assert events[0] == "::group::Log message source details", events[:5]
    end = events.index("::endgroup::")
    return events[1:end], entries[end + 1 :]


def _versions(s3) -> set[int]:
    from mnist_tasks.registry import ModelRegistry, list_versions

    return {row["version"] for row in list_versions(registry=ModelRegistry(s3, MODELS_URI))}


@pytest.fixture(scope="module")
def first_run(cluster, api) -> dict:
    run = _trigger(api, cluster, FIRST_CONF)
    run["final_state"] = _final_state(api, cluster, run["dag_run_id"])
    run["task_instances"] = _task_instances(api, cluster, run["dag_run_id"])
    return run


def test_a_run_succeeds_with_each_task_on_the_worker_of_its_queue(first_run, cluster):
    assert first_run["final_state"] == "success", f"{first_run['task_instances']}\n{cluster.logs()}"
    ran_on = {task_id: ti["hostname"] for task_id, ti in first_run["task_instances"].items()}
    assert ran_on == {
        **{task_id: ADDRESS[TRAINING_WORKER] for task_id in ON_TRAINING_WORKER},
        **{task_id: ADDRESS[DEFAULT_WORKER] for task_id in ON_DEFAULT_WORKER},
    }, cluster.logs()


def test_the_model_is_published_and_matches_its_manifest(first_run, cluster, s3):
    from mnist_tasks.registry import ModelRegistry, read_latest, verify_version

    assert first_run["final_state"] == "success", cluster.logs()
    latest = read_latest(registry=ModelRegistry(s3, MODELS_URI))
    manifest = verify_version(
        registry=ModelRegistry(s3, MODELS_URI), version=latest["version"], manifest_sha256=latest["manifest_sha256"]
    )
    assert manifest["run_id"] == first_run["dag_run_id"], cluster.logs()
    assert (manifest["params"]["epochs"], manifest["params"]["seed"]) == (1, 42)


def test_the_logs_of_both_workers_tasks_are_read_from_s3_through_the_api(first_run, cluster, api):
    run_id = first_run["dag_run_id"]
    prepared = _get(api, cluster, f"dagRuns/{run_id}/taskInstances/prepare/xcomEntries/return_value")["value"]
    # Each task's own output: what prepare returned, train's line for the epoch it ran.
    expected = {"prepare": re.escape(prepared["data_sha256"]), "train": EPOCH_LINE}
    for task_id, own_output in expected.items():
        sources, text = _log(api, cluster, run_id, task_id, 1)
        assert [s for s in sources if not s.startswith("s3://airflow-logs/logs/")] == [], sources
        assert f"task_id={task_id}/attempt=1.log" in sources[0]
        assert re.search(own_output, text), f"{task_id}'s log lacks {own_output!r}:\n{text[-3000:]}"


def test_the_workers_share_no_files(first_run, cluster, s3):
    """Each worker holds what its own tasks wrote, and verified copies of what they fetched from the artifact store."""
    assert first_run["final_state"] == "success", cluster.logs()
    default, training = _files(cluster.data_dir(DEFAULT_WORKER)), _files(cluster.data_dir(TRAINING_WORKER))
    store = _ArtifactStoreDigests(s3)
    # A worker's copy of a store object sits at MNIST_DATA_DIR/artifacts/<key>: it
    # must be byte for byte that object. Anything else the worker wrote itself.
    written_by = {}
    for worker, files in ((DEFAULT_WORKER, default), (TRAINING_WORKER, training)):
        for path, digest in files.items():
            in_store = store.sha256(path.removeprefix("artifacts/")) if path.startswith("artifacts/") else None
            assert in_store in (None, digest), f"{worker}'s {path} differs from the store's object"
        written_by[worker] = files.keys() - store.copies(files)
    assert written_by[DEFAULT_WORKER], default  # download's files, at least
    assert not written_by[DEFAULT_WORKER] & training.keys(), sorted(written_by[DEFAULT_WORKER] & training.keys())
    assert not written_by[TRAINING_WORKER] & default.keys(), sorted(written_by[TRAINING_WORKER] & default.keys())
    # The training worker got its data, and the default one the model, through the store.
    assert any(path.endswith("/x_train.npy") for path in store.copies(training)), sorted(training)
    assert any(path.endswith("/model.keras") for path in store.copies(default)), sorted(default)


class _ArtifactStoreDigests:
    """The sha256 of objects in the artifact store, each read once."""

    def __init__(self, s3) -> None:
        self._s3 = s3
        self._digests: dict[str, str | None] = {}

    def sha256(self, key: str) -> str | None:
        """None when the store has no such object."""
        if key not in self._digests:
            try:
                body = self._s3.get_object(Bucket=ARTIFACTS_BUCKET, Key=key)["Body"]
            except self._s3.exceptions.NoSuchKey:
                self._digests[key] = None
            else:
                self._digests[key] = _sha256(body.iter_chunks(1 << 20))
        return self._digests[key]

    def copies(self, files: dict[str, str]) -> set[str]:
        """Which of a worker's files are copies of store objects."""
        return {
            path
            for path, digest in files.items()
            if path.startswith("artifacts/") and self.sha256(path.removeprefix("artifacts/")) == digest
        }


def _files(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under `root`."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                digests[str(path.relative_to(root))] = _sha256(iter(lambda: f.read(1 << 20), b""))
    return digests


def _sha256(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_bench_batch_scores_on_the_cluster_in_a_shard_per_slot_of_the_scoring_queues_workers(
    first_run, cluster, tmp_path
):
    """`make bench-batch`'s cluster part: mnist_batch_predict in one shard, then in a shard per task slot of
    the workers serving the scoring queue (both serve it), through the REST API."""
    import numpy as np

    from tests.test_train import synthetic_digits

    assert first_run["final_state"] == "success", cluster.logs()
    np.save(tmp_path / "x_test.npy", synthetic_digits(12, seed=5)[0])
    command = [sys.executable, "scripts/benchmark_batch_cluster.py", "--cache-dir", tmp_path]
    command += ["--cluster", cluster.state_dir, "--sizes", "12", "--rounds", "1"]
    printed = subprocess.run([str(a) for a in command], cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert printed.returncode == 0, f"{printed.stdout}\n{printed.stderr}\n{cluster.logs()}"

    # images, one shard's images/s, three shards' (2 + 1 task slots), the speedup: median (range); the hosts
    row = re.search(r"^ +12( +[\d,.]+ \([\d,.]+–[\d,.]+\)){3}  (.+)$", printed.stdout, re.MULTILINE)
    assert row, printed.stdout
    hosts = row[2].split(", ")
    assert len(hosts) == 3 and set(hosts) <= {DEFAULT_WORKER, TRAINING_WORKER}, printed.stdout


def test_a_worker_killed_mid_shard_is_replaced_and_the_batch_run_has_each_row_once(
    first_run, cluster, api, s3, scripts
):
    import csv
    import io
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    from mnist_tasks.files import safe_name
    from tests.test_train import synthetic_digits

    local_processes, _ = scripts
    assert first_run["final_state"] == "success", cluster.logs()
    # Two shards of 5,000: each scores for several seconds, time to kill its worker mid-way.
    digits = synthetic_digits(10_000, seed=9)[0]
    keys = [f"kill-shard/{i:05d}.png" for i in range(len(digits))]

    def put(i: int) -> None:
        png = io.BytesIO()
        Image.fromarray(np.round(digits[i].reshape(28, 28) * 255).astype(np.uint8)).save(png, format="PNG")
        s3.put_object(Bucket="mnist-inbox", Key=keys[i], Body=png.getvalue())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(len(keys))))
    batch = f"{cluster.url}/api/v2/dags/mnist_batch_predict"
    assert api.patch(batch, json={"is_paused": False}, timeout=60).status_code == 200
    try:
        conf = {"input_uri": "s3://mnist-inbox/kill-shard/", "shard_size": 5_000, "max_low_confidence_share": 1.0}
        triggered = api.post(f"{batch}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=60)
        assert triggered.status_code == 200, triggered.text
        run_id = triggered.json()["dag_run_id"]

        def shards() -> list[dict]:
            found = api.get(f"{batch}/dagRuns/{run_id}/taskInstances", timeout=60)
            assert found.status_code == 200, found.text
            return [ti for ti in found.json()["task_instances"] if ti["task_id"] == "score"]

        deadline = time.monotonic() + RUN_TIMEOUT
        while not (running := [ti for ti in shards() if ti["state"] == "running"]):
            assert time.monotonic() < deadline, f"no shard ever ran: {shards()}\n{cluster.logs()}"
            time.sleep(0.5)
        victim = running[0]
        # Like the machine losing power: every process of the worker's session, the shard's included.
        assert local_processes.kill(cluster.state_dir / f"airflow-{WORKER_AT[victim['hostname']]}.pid")
        killed_while = next(ti for ti in shards() if ti["map_index"] == victim["map_index"])
        assert (killed_while["state"], killed_while["try_number"]) == ("running", 1), killed_while
        cluster.start()  # starts the worker that is missing

        while (state := api.get(f"{batch}/dagRuns/{run_id}", timeout=60).json()["state"]) not in ("success", "failed"):
            assert time.monotonic() < deadline, f"batch run still {state}\n{cluster.logs()}"
            time.sleep(3)
        assert state == "success", f"{shards()}\n{cluster.logs()}"
        retried = next(ti for ti in shards() if ti["map_index"] == victim["map_index"])
        assert retried["try_number"] >= 2, retried
    finally:
        api.patch(batch, json={"is_paused": True}, timeout=60)
    table = s3.get_object(Bucket="mnist-predictions", Key=f"predictions/{safe_name(run_id)}/predictions.csv")
    rows = list(csv.DictReader(io.StringIO(table["Body"].read().decode())))
    assert [row["file"] for row in rows] == [f"s3://mnist-inbox/{key}" for key in keys]  # each once, in key order


def test_a_training_worker_killed_mid_train_is_back_within_minutes_and_its_logs_are_read_all_along(
    first_run, cluster, api, s3, scripts
):
    """The running train's log, read from the training worker's log server through the API and in the UI;
    then the worker SIGKILLed, restarted as `make cluster` does, and the run recovering with the shipped
    settings. Screenshots and the timeline (recovery.json) go to test-artifacts/cluster/."""
    from mnist_tasks.registry import ModelRegistry, read_latest, verify_version

    local_processes, _ = scripts
    assert first_run["final_state"] == "success", cluster.logs()
    versions_before = _versions(s3)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    served = f"http://{ADDRESS[TRAINING_WORKER]}:{cluster.worker_log_port}/log/"
    with airflow_ui_page(cluster.url, cluster.user, cluster.password) as page:
        run_id = _trigger(api, cluster, SECOND_CONF)["dag_run_id"]
        assert _wait_for_running(api, cluster, run_id, "train")["hostname"] == ADDRESS[TRAINING_WORKER]
        ui_log = f"{cluster.url}/dags/{DAG_ID}/runs/{run_id}/tasks/train?try_number=1"
        page.goto(ui_log)  # loaded while train starts: once its first epoch is logged, a reload shows it
        # While it runs, the api-server reads the try's log from the worker's log server, at its address.
        sources, lines = _wait_for_epoch_line(api, cluster, run_id)
        page.reload()
        page.get_by_text(re.compile(EPOCH_LINE)).first.wait_for()
        page.screenshot(path=SCREENSHOTS / "01-running-train-log.png")

        # Like the machine losing power: every process of the worker's session, the task's and
        # the log server's included, at once.
        killed = f"airflow-{TRAINING_WORKER}.pid"
        others = {name: pid for name, pid in cluster.pids().items() if name != killed}
        assert local_processes.kill(cluster.state_dir / killed)
        killed_at = datetime.now(UTC)
        killed_while = _task_instances(api, cluster, run_id)["train"]
        assert (killed_while["state"], killed_while["try_number"]) == ("running", 1), killed_while
        _shows_the_killed_try_while_its_worker_is_down(api, cluster, run_id, page, ui_log)

        # Starting the cluster again starts the worker that is missing, says so, and starts nothing else.
        printed = cluster.start()
        assert f"started {TRAINING_WORKER} (not running); already running: " in printed, printed
        restarted = cluster.pids()
        assert restarted.pop(killed) and restarted == others, f"{others} -> {restarted}\n{cluster.logs()}"
        final = _final_state(api, cluster, run_id)
        assert final == "success", f"{_task_instances(api, cluster, run_id)}\n{cluster.logs()}"
        _shows_the_killed_try_after_its_worker_is_back(api, cluster, run_id, page, ui_log)

    assert [s for s in sources if not s.startswith(served)] == [], sources
    assert {e.get("level") for e in lines if re.search(EPOCH_LINE, e["event"])} == {"info"}, lines
    assert not [e for e in lines if e.get("level") == "error"], lines
    task_instances = _task_instances(api, cluster, run_id)
    # The first try died with its worker; the scheduler noticed the missing heartbeat and retried it.
    assert task_instances["train"]["try_number"] == 2, task_instances["train"]
    assert {task_instances[t]["hostname"] for t in ON_TRAINING_WORKER} == {ADDRESS[TRAINING_WORKER]}, task_instances
    _record_recovery(api, cluster, run_id, killed_at)

    new_versions = _versions(s3) - versions_before
    assert len(new_versions) == 1, f"{new_versions}\n{cluster.logs()}"
    (version,) = new_versions
    latest = read_latest(registry=ModelRegistry(s3, MODELS_URI))
    assert latest["version"] == version
    manifest = verify_version(
        registry=ModelRegistry(s3, MODELS_URI), version=version, manifest_sha256=latest["manifest_sha256"]
    )
    assert manifest["run_id"] == run_id, cluster.logs()


def _wait_for_epoch_line(api, cluster, run_id: str) -> tuple[list[str], list[dict]]:
    """The running train's log once it holds an epoch line, as the API reads it (sources, entries)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        sources, lines = _log_entries(api, cluster, run_id, 1)
        if any(re.search(EPOCH_LINE, e["event"]) for e in lines):
            return sources, lines
        assert _task_instances(api, cluster, run_id)["train"]["state"] == "running", lines
        assert time.monotonic() < deadline, lines
        time.sleep(0.5)


def _shows_the_killed_try_while_its_worker_is_down(api, cluster, run_id: str, page, ui_log: str) -> None:
    """Its page says which address no longer answers, not that a name did not resolve."""
    sources, _ = _log_entries(api, cluster, run_id, 1)
    refused = f"Could not read served logs: HTTPConnectionPool(host='{ADDRESS[TRAINING_WORKER]}'"
    assert any(s.startswith(refused) for s in sources), sources
    assert not any("resolve" in s for s in sources), sources
    page.goto(ui_log)
    page.get_by_text("Log message source details").first.click()
    page.get_by_text(refused).first.wait_for()
    page.screenshot(path=SCREENSHOTS / "02-killed-try-worker-down.png")


def _shows_the_killed_try_after_its_worker_is_back(api, cluster, run_id: str, page, ui_log: str) -> None:
    """The killed try's log, from the disk of the worker restarted at the same address: its lines up to the kill;
    and why it ended, in the scheduler's words, in the task's audit log."""
    sources, lines = _log_entries(api, cluster, run_id, 1)
    served = f"http://{ADDRESS[TRAINING_WORKER]}:{cluster.worker_log_port}/log/"
    assert [s for s in sources if not s.startswith(served)] == [], sources
    assert any(re.search(EPOCH_LINE, e["event"]) for e in lines), lines
    page.goto(ui_log)
    page.get_by_text(re.compile(EPOCH_LINE)).first.wait_for()
    page.screenshot(path=SCREENSHOTS / "03-killed-try-after-restart.png")
    page.get_by_text("Audit Log", exact=True).click()
    page.get_by_text("heartbeat timeout", exact=True).first.wait_for()
    page.screenshot(path=SCREENSHOTS / "04-audit-log-heartbeat-timeout.png")


def _record_recovery(api, cluster, run_id: str, killed_at: datetime) -> None:
    """Write when, after the kill, the scheduler noticed, the retry started and the run succeeded."""
    found = api.get(
        f"{cluster.url}/api/v2/eventLogs", params={"dag_id": DAG_ID, "run_id": run_id, "task_id": "train"}, timeout=60
    )
    assert found.status_code == 200, found.text
    (heartbeat_timeout,) = [e for e in found.json()["event_logs"] if e["event"] == "heartbeat timeout"]
    # The shipped setting, not Airflow's 300 s.
    assert "within time limit (60 seconds)" in heartbeat_timeout["extra"], heartbeat_timeout
    timeline = {
        "killed": killed_at.isoformat(),
        "heartbeat_timeout_noticed": heartbeat_timeout["when"],
        "retry_started": _task_instances(api, cluster, run_id)["train"]["start_date"],
        "run_succeeded": _get(api, cluster, f"dagRuns/{run_id}")["end_date"],
    }
    seconds = {event: (datetime.fromisoformat(at) - killed_at).total_seconds() for event, at in timeline.items()}
    (SCREENSHOTS / "recovery.json").write_text(json.dumps({"at": timeline, "seconds_after_kill": seconds}, indent=2))
    print(f"recovery after SIGKILL of {TRAINING_WORKER}: {seconds} (goal: success within {RECOVERY_GOAL_SECONDS} s)")
    # 60 s without a heartbeat, the scheduler looking every 10 s, 15-30 s before the first retry:
    # the retry starts within 100 s of the kill; the margin is a busy machine's.
    assert seconds["retry_started"] < 60 + 10 + 30 + 120, timeline


def _wait_for_running(api, cluster, run_id: str, task_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT
    while (ti := _task_instances(api, cluster, run_id).get(task_id, {})).get("state") != "running":
        assert ti.get("state") not in ("success", "failed", "upstream_failed"), ti
        assert time.monotonic() < deadline, f"{task_id} of {run_id} never ran: {ti}\n{cluster.logs()}"
        time.sleep(0.5)
    return ti
