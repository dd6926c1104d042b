"""Start, stop or inspect the local S3-compatible endpoint (moto's server) on 127.0.0.1.

    python scripts/local_s3.py start --port 9000 --state-dir .local --bucket mnist-mirror --bucket mnist-models
    python scripts/local_s3.py stop --state-dir .local

It keeps everything in memory: stopping it drops the buckets and the published
models. `start` is a no-op when the endpoint is already up, so the run command
can call it every time and a second run finds the mirror still there.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from local_processes import answers, running, spawn, wait_until
from local_processes import stop as stop_session

HOST = "127.0.0.1"


def start(port: int, state_dir: Path, buckets: list[str]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    probe = f"http://{HOST}:{port}/moto-api/"
    if not answers(probe):
        if running(state_dir / "moto.pid") is not None:
            sys.exit(f"a local S3 endpoint from {state_dir} is running but not answering on port {port}")
        log = state_dir / "moto.log"
        proc = spawn(
            [str(Path(sys.executable).with_name("moto_server")), "-H", HOST, "-p", str(port)],
            pid_file=state_dir / "moto.pid",
            log_file=log,
        )
        wait_until(
            lambda: answers(probe),
            alive=lambda: proc.poll() is None,
            timeout=30,
            failure=f"the local S3 endpoint did not start on {HOST}:{port}; see {log}",
        )

    import boto3

    # moto's server takes any credentials; these are only so that boto3 signs its requests
    # when the environment has none (AWS_* unset), instead of failing with a traceback.
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://{HOST}:{port}",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "local"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "local"),
        region_name="us-east-1",
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
    print(f"local S3 endpoint: http://{HOST}:{port} (buckets: {', '.join(buckets)})")


def stop(state_dir: Path) -> None:
    stopped = stop_session(state_dir / "moto.pid", grace_seconds=5)
    print(f"local S3 endpoint: {'stopped' if stopped else 'not running'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--state-dir", type=Path, default=Path(".local"))
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args()
    if args.action == "stop":
        stop(args.state_dir)
        return
    was_running = running(args.state_dir / "moto.pid") is not None
    try:
        start(args.port, args.state_dir, args.bucket)
    except Exception as err:  # noqa: BLE001  one line for the user, and no server left behind
        if not was_running:
            stop_session(args.state_dir / "moto.pid", grace_seconds=5)
        print(f"error: the local S3 endpoint could not be set up: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
