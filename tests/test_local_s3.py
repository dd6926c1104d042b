"""The embedded object store (scripts/local_s3.py, SeaweedFS) as `make run` starts it, and the
publishing guarantees on it: authentication, conditional writes under races, restarts and SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from mnist_tasks.registry import (
    LatestMovedError,
    ModelRegistry,
    VersionConflictError,
    claim_version,
    list_versions,
    move_latest,
    publish_model,
    read_latest,
    read_latest_state,
    read_manifest_and_sha256,
    verify_version,
)
from tests.conftest import REPO, EmbeddedStore, free_port_block
from tests.test_publish import VERSION, _files, _manifest

pytestmark = pytest.mark.slow

MODELS_URI = "s3://mnist-models/mnist/"


@pytest.fixture(scope="module")
def own_store() -> Iterator[EmbeddedStore]:
    """A store of this module's own, which its tests stop, restart and kill."""
    root = Path(tempfile.mkdtemp(prefix="mnist-store-restarts-"))
    store = EmbeddedStore(state_dir=root, port=free_port_block(8))
    store.start()
    yield store
    store.stop()
    shutil.rmtree(root)


@pytest.fixture
def store(own_store: EmbeddedStore) -> EmbeddedStore:
    own_store.start()  # a no-op unless a test before stopped or killed it
    own_store.empty()
    return own_store


def _error_code(call) -> str:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"]


def test_credentials_are_generated_private_and_kept_across_restarts(store: EmbeddedStore) -> None:
    path = store.state_dir / "s3" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((store.state_dir / "s3").stat().st_mode) == 0o700
    before = store.credentials
    assert before["pipeline"]["access_key"] != before["admin"]["access_key"]
    assert "local" not in (before["pipeline"]["secret_key"], before["admin"]["secret_key"])
    store.stop()
    store.start()
    assert store.credentials == before


def test_requests_without_credentials_or_with_a_wrong_secret_are_refused(store: EmbeddedStore) -> None:
    import requests

    store.client().put_object(Bucket="mnist-models", Key="mnist/x", Body=b"x")
    for url in (f"{store.endpoint}/mnist-models/mnist/x", f"{store.endpoint}/mnist-models", store.endpoint):
        assert requests.get(url, timeout=30).status_code == 403, url
    wrong = store.client(secret="not-the-secret")
    assert _error_code(lambda: wrong.get_object(Bucket="mnist-models", Key="mnist/x")) == "SignatureDoesNotMatch"
    assert _error_code(lambda: wrong.put_object(Bucket="mnist-models", Key="mnist/y", Body=b"y"))


# The store's internal gRPC services, on the ports after the S3 port: (offset, component).
GRPC_PORTS = ((2, "master"), (4, "volume"), (6, "filer"), (7, "s3"))


def _grpc_reaches(target: str, credentials=None) -> bool:
    """Whether a gRPC call gets through to a service at all (an unknown method's UNIMPLEMENTED does)."""
    import grpc

    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        try:
            channel.unary_unary("/master_pb.Seaweed/GetMasterConfiguration")(b"", timeout=10)
        except grpc.RpcError as err:
            return err.code() != grpc.StatusCode.UNAVAILABLE
    return True


def test_the_internal_ports_refuse_whoever_lacks_the_stores_keys(store: EmbeddedStore) -> None:
    import grpc
    import requests

    s3 = store.client()
    s3.put_object(Bucket="mnist-models", Key="mnist/latest.json", Body=b'{"version": 1}')
    master, volume, filer = (f"http://127.0.0.1:{store.port + offset}" for offset in (1, 3, 5))
    # HTTP: the master's and the filer's APIs are off; the volume server wants a JWT only the master signs.
    assert requests.get(f"{master}/col/delete?collection=mnist-models", timeout=30).status_code == 404
    assert requests.get(f"{master}/dir/assign", timeout=30).status_code == 404
    assert requests.get(f"{filer}/buckets/mnist-models/mnist/latest.json", timeout=30).status_code == 404
    assert requests.put(f"{filer}/buckets/mnist-models/mnist/latest.json", data=b"{}", timeout=30).status_code == 404
    assert requests.post(f"{volume}/1,0123456789", files={"file": b"{}"}, timeout=30).status_code == 401
    assert requests.delete(f"{volume}/1,0123456789", timeout=30).status_code == 401
    # gRPC, on its ports and on the unix sockets weed adds beside them: mutual TLS or nothing.
    tls = store.state_dir / "s3" / "tls"
    with_keys = grpc.ssl_channel_credentials(
        (tls / "ca.crt").read_bytes(), (tls / "store.key").read_bytes(), (tls / "store.crt").read_bytes()
    )
    for offset, component in GRPC_PORTS:
        port = store.port + offset
        for target in (f"127.0.0.1:{port}", f"unix:/tmp/seaweedfs-{component}-grpc-{port}.sock"):
            assert not _grpc_reaches(target), target
        assert _grpc_reaches(f"127.0.0.1:{port}", with_keys), port  # the probe itself works
    assert s3.get_object(Bucket="mnist-models", Key="mnist/latest.json")["Body"].read() == b'{"version": 1}'


def test_the_pipeline_identity_reaches_the_project_buckets_only(store: EmbeddedStore) -> None:
    admin, pipeline = store.client("admin"), store.client()
    admin.create_bucket(Bucket="someone-elses")
    admin.put_object(Bucket="someone-elses", Key="secret", Body=b"s")

    pipeline.put_object(Bucket="mnist-artifacts", Key="k", Body=b"v")
    assert pipeline.get_object(Bucket="mnist-artifacts", Key="k")["Body"].read() == b"v"
    assert [o["Key"] for o in pipeline.list_objects_v2(Bucket="mnist-artifacts")["Contents"]] == ["k"]
    assert _error_code(lambda: pipeline.get_object(Bucket="someone-elses", Key="secret")) == "AccessDenied"
    assert _error_code(lambda: pipeline.put_object(Bucket="someone-elses", Key="x", Body=b"x")) == "AccessDenied"
    assert _error_code(lambda: pipeline.list_objects_v2(Bucket="someone-elses")) == "AccessDenied"
    assert _error_code(lambda: pipeline.create_bucket(Bucket="new-bucket")) == "AccessDenied"
    admin.delete_object(Bucket="someone-elses", Key="secret")
    admin.delete_bucket(Bucket="someone-elses")


def _winners(attempt: Callable[[Any], None], contenders: list, *, refused: type[Exception]) -> list:
    """The contenders whose `attempt` was not refused, all attempting at once (a barrier lets them go together)."""
    barrier = threading.Barrier(len(contenders))

    def one(contender: Any) -> bool:
        barrier.wait()
        try:
            attempt(contender)
            return True
        except refused:
            return False

    with ThreadPoolExecutor(max_workers=len(contenders)) as pool:
        return [contender for contender, won in zip(contenders, pool.map(one, contenders), strict=True) if won]


def test_concurrent_claimers_of_one_version_exactly_one_wins(store: EmbeddedStore) -> None:
    s3 = store.client()

    def claim(run: str) -> None:
        claim_version(registry=ModelRegistry(s3, MODELS_URI), version=VERSION, manifest=_manifest(run_id=run))

    winners = _winners(claim, [f"manual__{n}" for n in range(12)], refused=VersionConflictError)

    assert len(winners) == 1
    claim_key = f"mnist/{VERSION}/claim.json"
    assert json.loads(s3.get_object(Bucket="mnist-models", Key=claim_key)["Body"].read())["run_id"] == winners[0]


def test_concurrent_publishers_of_one_version_leave_one_complete_version(store: EmbeddedStore, tmp_path) -> None:
    s3 = store.client()

    def publish(run: str) -> None:
        _publish(s3, tmp_path, VERSION, run_id=run)

    winners = _winners(publish, [f"manual__{n}" for n in range(4)], refused=VersionConflictError)

    assert len(winners) == 1
    manifest = verify_version(registry=ModelRegistry(s3, MODELS_URI), version=VERSION)  # nothing mixed in
    assert manifest["run_id"] == winners[0]
    assert read_latest(registry=ModelRegistry(s3, MODELS_URI))["version"] == VERSION


def test_concurrent_movers_of_latest_from_one_state_exactly_one_wins(store: EmbeddedStore, tmp_path) -> None:
    s3 = store.client()
    versions = [VERSION + n for n in range(8)]
    for version in versions:
        _publish(s3, tmp_path, version)
    _, etag = read_latest_state(registry=ModelRegistry(s3, MODELS_URI))
    manifests = {v: read_manifest_and_sha256(registry=ModelRegistry(s3, MODELS_URI), version=v) for v in versions}

    def move(version: int) -> None:
        manifest, sha256 = manifests[version]
        move_latest(
            registry=ModelRegistry(s3, MODELS_URI), manifest=manifest, manifest_sha256=sha256,
            expected_etag=etag, moved_by="test", reason="race",
        )

    winners = _winners(move, versions, refused=LatestMovedError)

    assert len(winners) == 1
    latest = read_latest(registry=ModelRegistry(s3, MODELS_URI))
    assert latest["version"] == winners[0]
    assert latest["manifest_sha256"] == read_manifest_and_sha256(
        registry=ModelRegistry(s3, MODELS_URI), version=winners[0]
    )[1]


def _publish(s3: Any, tmp_path: Path, version: int, run_id: str | None = None) -> None:
    """A version of test bytes, each run's its own, published as the DAG's publish task does."""
    run_id = run_id or f"scheduled__{version}"
    files = _files(tmp_path / run_id, model_bytes=run_id.encode() * 100)
    manifest = _manifest(version=version, run_id=run_id)
    publish_model(registry=ModelRegistry(s3, MODELS_URI), version=version, files=files, manifest=manifest)


def _registry(store: EmbeddedStore) -> tuple[list[dict], dict | None]:
    s3 = store.client()
    rows = list_versions(registry=ModelRegistry(s3, MODELS_URI))
    for row in rows:
        verify_version(registry=ModelRegistry(s3, MODELS_URI), version=row["version"])
    return rows, read_latest(registry=ModelRegistry(s3, MODELS_URI))


@pytest.mark.parametrize("ending", ["stop", "kill"])
def test_published_versions_survive_a_stop_or_a_sigkill_of_the_store(store: EmbeddedStore, tmp_path, ending) -> None:
    for version in (VERSION, VERSION + 1):
        _publish(store.client(), tmp_path, version)
    before = _registry(store)
    assert [row["version"] for row in before[0]] == [VERSION, VERSION + 1]

    if ending == "stop":
        store.stop()
    else:
        store.kill()
    with pytest.raises(EndpointConnectionError):
        store.client().list_objects_v2(Bucket="mnist-models")
    store.start()

    assert _registry(store) == before  # listed, verified against their manifests, latest unchanged


def test_every_acknowledged_write_survives_a_sigkill(store: EmbeddedStore) -> None:
    s3 = store.client()
    bodies = {f"burst/{n:04d}": os.urandom(1000 + n) for n in range(300)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket="mnist-artifacts", Key=item[0], Body=item[1]), bodies.items()))
    store.kill()  # at once: no shutdown, nothing flushed on the way out
    store.start()
    s3 = store.client()
    assert {key: s3.get_object(Bucket="mnist-artifacts", Key=key)["Body"].read() for key in bodies} == bodies


class _KillAfterModelUpload:
    """The real client, except that the store is killed with SIGKILL once model.keras is uploaded.

    Between two of publish's requests, after the claim and the model, before the rest and the manifest.
    """

    def __init__(self, client: Any, store: EmbeddedStore) -> None:
        self._client, self._store = client, store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_file(self, path: str, bucket: str, key: str, **kwargs: Any) -> Any:
        result = self._client.upload_file(path, bucket, key, **kwargs)
        if key.endswith("/model.keras"):
            self._store.kill()
        return result


def test_a_sigkill_of_the_store_during_publish_lists_no_partial_version_and_the_retry_completes_it(
    store: EmbeddedStore, tmp_path
) -> None:
    _publish(store.client(), tmp_path, VERSION)
    files = _files(tmp_path / "new", model_bytes=b"new" * 300)
    manifest = _manifest(version=VERSION + 1, run_id="scheduled__new")

    with pytest.raises(EndpointConnectionError):
        publish_model(
            registry=ModelRegistry(_KillAfterModelUpload(store.client(), store), MODELS_URI),
            version=VERSION + 1, files=files, manifest=manifest,
        )
    store.start()
    rows, latest = _registry(store)
    assert [row["version"] for row in rows] == [VERSION]  # the half-written version is not listed
    assert latest["version"] == VERSION

    # Airflow's retry of the same run: the same version, completed and made latest.
    publish_model(
        registry=ModelRegistry(store.client(), MODELS_URI), version=VERSION + 1, files=files, manifest=manifest
    )
    rows, latest = _registry(store)
    assert [row["version"] for row in rows] == [VERSION, VERSION + 1]
    assert latest["version"] == VERSION + 1


def test_start_needs_no_aws_variables_and_a_failed_start_leaves_no_server(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws either
    port = free_port_block(8)

    def script(action: str, *args: object) -> subprocess.CompletedProcess:
        command = [sys.executable, "scripts/local_s3.py", action, "--state-dir", str(tmp_path), *map(str, args)]
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)

    # One of its internal ports is taken: the store cannot start, and says where to look.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 3))
        taken.listen()
        refused = script("start", "--port", port)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: the object store could not be set up:")
    assert "weed.log" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "s3" / "weed.pid").exists()

    try:
        started = script("start", "--port", port)
        assert started.returncode == 0, started.stderr
        assert f"object store: http://127.0.0.1:{port} (SeaweedFS" in started.stdout
        listed = script("exec", "--", sys.executable, "-m", "mnist_tasks", "models", "list")
        assert listed.returncode == 0, listed.stderr
    finally:
        assert "stopped" in script("stop").stdout
