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
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def _is_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/moto-api/", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _pid(state_dir: Path) -> int | None:
    pid_file = state_dir / "moto.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pid_file.unlink()
        return None
    return pid


def start(port: int, state_dir: Path, buckets: list[str]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    if not _is_up(port):
        if _pid(state_dir) is not None:
            sys.exit(f"a local S3 endpoint from {state_dir} is running but not answering on port {port}")
        moto_server = Path(sys.executable).with_name("moto_server")
        with open(state_dir / "moto.log", "ab") as log:
            proc = subprocess.Popen(
                [str(moto_server), "-H", HOST, "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives `make run`, until `make stop`
            )
        (state_dir / "moto.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + 30
        while not _is_up(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the local S3 endpoint did not start on {HOST}:{port}; see {state_dir / 'moto.log'}")
            time.sleep(0.2)

    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{HOST}:{port}")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
    print(f"local S3 endpoint: http://{HOST}:{port} (buckets: {', '.join(buckets)})")


def stop(state_dir: Path) -> None:
    pid = _pid(state_dir)
    if pid is None:
        print("local S3 endpoint: not running")
        return
    os.killpg(pid, signal.SIGTERM)
    for _ in range(50):
        if _pid(state_dir) is None:
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    (state_dir / "moto.pid").unlink(missing_ok=True)
    print("local S3 endpoint: stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--state-dir", type=Path, default=Path(".local"))
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args()
    if args.action == "start":
        start(args.port, args.state_dir, args.bucket)
    else:
        stop(args.state_dir)


if __name__ == "__main__":
    main()
