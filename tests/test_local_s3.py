"""scripts/local_s3.py as `make run` uses it: it needs no AWS_* variables, and a failed start leaves no server."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO, free_ports

SCRIPT = REPO / "scripts" / "local_s3.py"


def _run(*args: str, state_dir, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--state-dir", str(state_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_start_needs_no_aws_variables_and_a_failed_start_leaves_no_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws either
    port = str(free_ports(1)[0])

    refused = _run("start", "--port", port, "--bucket", "x", state_dir=tmp_path, env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: the local S3 endpoint could not be set up:")
    assert "InvalidBucketName" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "moto.pid").exists()

    try:
        started = _run("start", "--port", port, "--bucket", "mnist-models", state_dir=tmp_path, env=env)
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port} (buckets: mnist-models)" in started.stdout
    finally:
        assert "stopped" in _run("stop", state_dir=tmp_path, env=env).stdout
