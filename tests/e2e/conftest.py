"""Fixtures for whole `mnist_retraining` runs through `dag.test()` on tiny data,
and the receivers that capture the alerts such runs send.

The runs here go to the embedded store the product ships (SeaweedFS), as the
identity limited to the project's buckets; the tests read and damage it as its
admin. tests/faults/ reuses pipeline_env on moto's server, behind its proxy.
"""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import functools
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

MODELS_BUCKET = "mnist-models"
MODELS_URI = f"s3://{MODELS_BUCKET}/mnist/"
ARTIFACTS_BUCKET = "mnist-artifacts"
ARTIFACTS_URI = f"s3://{ARTIFACTS_BUCKET}/store/"


@pytest.fixture
def s3_client(embedded_store):
    """The embedded store's admin, on an emptied store."""
    embedded_store.empty()
    return embedded_store.client("admin")


@pytest.fixture
def aws_connection(monkeypatch, embedded_store) -> None:
    """Airflow's `aws_default` connection as `make run` sets it: the store's limited identity."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", embedded_store.client_environment()["AIRFLOW_CONN_AWS_DEFAULT"])


def ensure_buckets(s3_client, *buckets: str) -> None:
    """Create what is missing: moto starts empty, the embedded store has the project's buckets."""
    existing = {bucket["Name"] for bucket in s3_client.list_buckets()["Buckets"]}
    for bucket in set(buckets) - existing:
        s3_client.create_bucket(Bucket=bucket)


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
    from mnist_tasks.data.download import FileSpec
    from mnist_tasks.data.idx import idx_bytes

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
def pipeline_env(monkeypatch, tmp_path, tiny_mirror, http_mirror, s3_client, aws_connection, airflow_db):
    """Points the DAG at the tiny HTTP mirror, a scratch data dir and an empty S3 store (models and artifacts)."""
    import mnist_tasks.data.download

    monkeypatch.setattr(mnist_tasks.data.download, "MNIST_FILES", tiny_mirror[1])
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MNIST_MIRRORS", http_mirror[1])
    monkeypatch.setenv("MNIST_MODELS_URI", MODELS_URI)
    monkeypatch.setenv("MNIST_ARTIFACTS_URI", ARTIFACTS_URI)
    ensure_buckets(s3_client, MODELS_BUCKET, ARTIFACTS_BUCKET)
    return http_mirror[0]


def load_dag_for_test(dag_id: str, *, keep_retries: bool = False):
    """The DAG as the dag-processor parses it from dags/, adjusted for dag.test().

    Parsed anew, so settings read at parse time (MNIST_RETRY_DELAY_SECONDS) are the test's.
    """
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags[dag_id]
    if not keep_retries:
        # dag.test() sleeps through retry delays; a failure here should fail at once.
        for task in dag.tasks:
            task.retries = 0
    # dag.test() crashes at the end of a successful run of a DAG with a deadline
    # (apache/airflow#73428); it never creates a DAGRUN_QUEUED_AT deadline anyway,
    # since its runs are not queued. test_alerting_wiring checks the deadline.
    dag.deadline = None
    return dag


@pytest.fixture(scope="module")
def dag():
    return load_dag_for_test("mnist_retraining")


class SmtpReceiver:
    """An SMTP server on 127.0.0.1 (aiosmtpd, in its own thread) that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.recipients: list[list[str]] = []
        self._loop = asyncio.new_event_loop()

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted"

    def __enter__(self) -> SmtpReceiver:
        from aiosmtpd.smtp import SMTP

        # Port 0 picks a free port; aiosmtpd's Controller cannot report which one.
        self._server = self._loop.run_until_complete(
            self._loop.create_server(lambda: SMTP(self), host="127.0.0.1", port=0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that keeps every POST and answers with `status`."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks/mnist"

    def payloads(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def __enter__(self) -> WebhookReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


UI_BASE_URL = "http://airflow.test:8080/"
ALERT_RECIPIENT = "ml-team@example.test"


@pytest.fixture
def alert_receivers(monkeypatch):
    """The alert connections point at a local SMTP server and a local webhook receiver."""
    with SmtpReceiver() as smtp, WebhookReceiver() as webhook:
        monkeypatch.setenv(
            "AIRFLOW_CONN_MNIST_ALERTS_SMTP",
            json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "extra": {"from_email": "airflow@example.test", "disable_ssl": True, "disable_tls": True},
                }
            ),
        )
        monkeypatch.setenv("AIRFLOW_CONN_MNIST_ALERTS_WEBHOOK", json.dumps({"conn_type": "http", "host": webhook.url}))
        monkeypatch.setenv("MNIST_ALERT_EMAIL_TO", ALERT_RECIPIENT)
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", UI_BASE_URL)
        yield smtp, webhook
