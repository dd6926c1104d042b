"""The fault suite's parts: a fault-injecting proxy in front of moto's S3 server, and a ledger.

Every scenario records itself in the ledger and has it audit the registry it
touched, after each step that could break it: each published version must
verify against its manifest and record a passed gate, `latest` must point at
one of them, and every version the scenario saw published must still be there.
The suite ends with one summary line.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from mnist_tasks.registry import (
    ModelRegistry,
    PublishVerificationError,
    gate_passed,
    list_versions,
    read_latest,
    verify_version,
)
from tests.conftest import aws_connection_json

# The e2e fixtures: tiny data served by a local HTTP mirror, Airflow's database, dag.test() loading.
from tests.e2e.conftest import airflow_db, http_mirror, pipeline_env, tiny_mirror  # noqa: F401

ERROR_CODES = {"503": "SlowDown", "403": "AccessDenied"}  # the error answers a Fault can inject


@dataclass
class Fault:
    """Requests whose method and path match: the first `times` get `action`, the rest pass."""

    method: str
    path: str  # a regular expression, searched in the request path
    # "503" or "403" (S3's error answer), "drop" (close the connection unanswered),
    # or "stall" (wait `stall_s`, then pass)
    action: str
    times: int
    stall_s: float = 0.0
    hits: int = 0


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to an S3 endpoint, injecting the faults it is given."""

    def __init__(self, upstream: str) -> None:
        self.faults: list[Fault] = []
        self._upstream = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy.match(self.command, self.path)
                if fault is not None and fault.action == "drop":
                    self.close_connection = True
                    return
                if fault is not None and fault.action in ERROR_CODES:
                    code = ERROR_CODES[fault.action]
                    payload = f"<Error><Code>{code}</Code><Message>injected fault</Message></Error>".encode()
                    self.send_response(int(fault.action))
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault is not None and fault.action == "stall":
                    time.sleep(fault.stall_s)
                upstream = http.client.HTTPConnection(proxy._upstream.hostname, proxy._upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._lock = threading.Lock()

    def match(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and re.search(fault.path, path) and fault.hits < fault.times:
                    fault.hits += 1
                    return fault
        return None

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fault_proxy(s3_endpoint):
    with FaultProxy(s3_endpoint) as proxy:
        yield proxy


@pytest.fixture
def aws_through_proxy(monkeypatch, fault_proxy) -> FaultProxy:
    """Airflow's aws_default goes through the proxy, and botocore does not retry on its own:
    each injected fault reaches the task, so Airflow's retries are what recovers."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        aws_connection_json(
            fault_proxy.url,
            config_kwargs={"retries": {"total_max_attempts": 1}, "read_timeout": 3, "connect_timeout": 3},
        ),
    )
    return fault_proxy


@dataclass
class Ledger:
    scenarios: list[str] = field(default_factory=list)
    bad_inputs: int = 0
    bad_models: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    _published: dict[tuple[str, int], str] = field(default_factory=dict)

    def scenario(self, name: str, *, bad_inputs: int = 0) -> None:
        self.scenarios.append(name)
        self.bad_inputs += bad_inputs

    def audit(self, s3_client, models_uri: str) -> None:
        """Check the registry's promises; what breaks them is counted and fails the scenario."""
        bucket = models_uri.split("/")[2]
        bad, lost = [], []
        published = {row["version"]: row for row in list_versions(registry=ModelRegistry(s3_client, models_uri))}
        for version in published:
            try:
                manifest = verify_version(registry=ModelRegistry(s3_client, models_uri), version=version)
            except PublishVerificationError as err:
                bad.append(f"{models_uri}{version}: {err}")
                continue
            if gate_passed(manifest["metrics"]) is not True:
                bad.append(f"{models_uri}{version}: published without a passed gate")
            self._published.setdefault((bucket, version), manifest["run_id"])
        for (seen_bucket, version), run_id in self._published.items():
            if seen_bucket == bucket and version not in published:
                lost.append(f"{models_uri}{version} (run {run_id}) is gone")
        latest = read_latest(registry=ModelRegistry(s3_client, models_uri))
        if latest is not None and latest["version"] not in published:
            bad.append(f"latest points at {latest['version']}, which is not a complete version")
        self.bad_models += bad
        self.lost += lost
        assert (bad, lost) == ([], [])


LEDGER = Ledger()


@pytest.fixture
def ledger() -> Ledger:
    # Each scenario starts from an empty S3 server (the s3_client fixture resets it).
    LEDGER._published.clear()
    return LEDGER


def pytest_terminal_summary(terminalreporter) -> None:
    if LEDGER.scenarios:
        terminalreporter.write_line(
            f"fault suite: {len(LEDGER.scenarios)} scenarios run, {LEDGER.bad_inputs} bad inputs tried, "
            f"{len(LEDGER.bad_models)} bad models published, {len(LEDGER.lost)} artifacts lost"
        )
