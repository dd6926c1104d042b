"""The local stacks' own bookkeeping (scripts/local_airflow.py, scripts/local_cluster.py), without starting anything."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO, script_module


def test_a_stacks_secrets_are_generated_once_private_and_long_enough_for_their_algorithms(tmp_path):
    local_airflow = script_module("local_airflow")
    keys = local_airflow.stack_secrets(tmp_path, extra_passwords=("redis_password",))
    assert set(keys) == {"postgres_password", "redis_password", "jwt_secret", "api_secret_key", "fernet_key"}
    # HMAC-SHA512 signs the API's tokens: PyJWT warns below 64 bytes (Airflow's own generated key had 24).
    assert len(keys["jwt_secret"].encode()) >= 64
    assert len(keys["api_secret_key"].encode()) >= 64
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
    assert local_airflow.stack_secrets(tmp_path, extra_passwords=("redis_password",)) == keys  # read back
    assert not list(tmp_path.glob(".secrets-*"))


def test_a_key_the_stack_did_not_have_is_added_and_the_others_kept(tmp_path):
    local_airflow = script_module("local_airflow")
    (tmp_path / "secrets.json").write_text(json.dumps({"postgres_password": "kept", "jwt_secret": "j" * 64}))
    keys = local_airflow.stack_secrets(tmp_path)
    assert (keys["postgres_password"], keys["jwt_secret"]) == ("kept", "j" * 64)
    assert json.loads((tmp_path / "secrets.json").read_text()) == keys


@pytest.mark.parametrize(
    ("started", "printed"),
    [
        (["postgres", "api-server"], "started postgres, api-server"),
        (["api-server", "postgres"], "started api-server, postgres"),
        ([], "everything was running: started nothing"),
        (["api-server"], "started api-server (not running); already running: postgres"),
    ],
)
def test_start_says_what_it_started_and_what_was_running(started, printed):
    assert script_module("local_airflow").started_line(started, ["postgres", "api-server"]) == printed


def test_a_cluster_started_with_other_settings_is_refused_until_stopped(tmp_path):
    local_cluster = script_module("local_cluster")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (tmp_path / "redis.pid").write_text(str(sleeper.pid))
        # What a checkout from before the workers shared one log port recorded.
        old = {"api": 8180, "default_worker_log": 8893, "training_worker_log": 8894, "triggerer_log": 8895}
        (tmp_path / "cluster.json").write_text(json.dumps({"ports": old}))
        with pytest.raises(SystemExit, match="running with other settings"):
            local_cluster._record_ports(local_cluster.Ports(), tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    local_cluster._record_ports(local_cluster.Ports(), tmp_path)  # nothing runs now: recorded anew
    assert json.loads((tmp_path / "cluster.json").read_text())["ports"]["worker_log"] == 8893


def test_a_worker_is_the_celery_command_after_the_double_dash_with_its_log_server_beside_it(tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "local_cluster.py"), "worker", "--address", "127.0.0.9"]
    refused = subprocess.run(script, capture_output=True, text=True)
    assert refused.returncode == 2 and "worker needs --address and --log-port" in refused.stderr
    refused = subprocess.run([*script, "--log-port", "9"], capture_output=True, text=True)
    assert refused.returncode == 2 and "the Celery worker's command line after --" in refused.stderr
    # The command after `--` keeps its own options, --port among them.
    argv = tmp_path / "argv"
    celery_worker = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(' '.join(sys.argv[2:]))"]
    worker = subprocess.Popen(
        [*script, "--log-port", "9", "--", *celery_worker, str(argv), "--port", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert worker.wait(timeout=120) == 0
        assert argv.read_text() == "--port 1"
    finally:
        # The log server it started stays in its process group, as in a worker's session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
