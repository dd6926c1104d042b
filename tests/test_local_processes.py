"""scripts/local_processes.py: the pid files and the stopping behind `make stop`, on real processes."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, alive_in_session, wait_until_written

# Like an Airflow task: a grandchild moved into a process group of its own, which
# killing the leader's process group would miss.
TREE = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "300"], process_group=0)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(300)
"""


@pytest.fixture
def processes(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    return importlib.import_module("local_processes")


def _tree_that_ignores_sigterm(processes, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """TREE, spawned, its leader ignoring SIGTERM, once its grandchild runs: (the leader, its pid file)."""
    pid_file, grandchild_file = tmp_path / "tree.pid", tmp_path / "grandchild"
    script = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + TREE
    proc = processes.spawn(
        [sys.executable, "-c", script, str(grandchild_file)], pid_file=pid_file, log_file=tmp_path / "tree.log"
    )
    wait_until_written(grandchild_file)
    return proc, pid_file


def test_stop_ends_the_whole_session_including_other_process_groups(processes, tmp_path):
    pid_file, grandchild_file = tmp_path / "tree.pid", tmp_path / "grandchild"
    proc = processes.spawn(
        [sys.executable, "-c", TREE, str(grandchild_file)], pid_file=pid_file, log_file=tmp_path / "tree.log"
    )
    wait_until_written(grandchild_file)
    grandchild = int(grandchild_file.read_text())
    assert os.getpgid(grandchild) != proc.pid
    assert len(alive_in_session(proc.pid)) == 2
    assert processes.running(pid_file) == proc.pid

    assert processes.stop(pid_file, grace_seconds=5) is True

    proc.wait(timeout=5)
    assert alive_in_session(proc.pid) == []
    assert not pid_file.exists()
    assert processes.stop(pid_file) is False


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(processes, tmp_path):
    pid_file = tmp_path / "stubborn.pid"
    ready = tmp_path / "ready"
    proc = processes.spawn(
        ["sh", "-c", f"trap '' TERM; echo 1 > {ready}; while :; do sleep 0.1; done"],
        pid_file=pid_file,
        log_file=tmp_path / "stubborn.log",
    )
    wait_until_written(ready)

    assert processes.stop(pid_file, grace_seconds=1) is True

    assert proc.wait(timeout=5) == -9
    assert alive_in_session(proc.pid) == []


def test_a_stale_pid_file_is_removed(processes, tmp_path):
    pid_file = tmp_path / "gone.pid"
    proc = subprocess.Popen(["true"])
    proc.wait()
    pid_file.write_text(str(proc.pid))

    assert processes.running(pid_file) is None
    assert not pid_file.exists()


def test_what_a_crashed_leader_left_running_is_stopped_before_anything_starts_in_its_place(processes, tmp_path):
    # The scheduler killed with SIGKILL: its log server and executor workers lived on, holding
    # the log server's port, and `make stop` no longer found them once the pid file was replaced.
    proc, pid_file = _tree_that_ignores_sigterm(processes, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert len(alive_in_session(proc.pid)) == 1  # the grandchild, orphaned in the dead leader's session

    assert processes.running(pid_file) is None

    assert alive_in_session(proc.pid) == []
    assert not pid_file.exists()


def test_a_pid_that_does_not_lead_its_session_is_not_ours(processes, tmp_path):
    # A recycled pid: alive, but not the session leader `spawn` started.
    pid_file = tmp_path / "recycled.pid"
    proc = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(str(proc.pid))
        assert processes.running(pid_file) is None
        assert not pid_file.exists()
    finally:
        proc.kill()
        proc.wait()


def test_kill_ends_the_whole_session_at_once_sigterm_or_not(processes, tmp_path):
    # What the cluster test does to a worker: no grace, nothing gets to clean up.
    proc, pid_file = _tree_that_ignores_sigterm(processes, tmp_path)

    assert processes.kill(pid_file) is True

    assert proc.wait(timeout=5) == -9
    assert alive_in_session(proc.pid) == []
    assert not pid_file.exists()
    assert processes.kill(pid_file) is False


def test_stop_can_ask_with_another_signal_first(processes, tmp_path):
    # PostgreSQL's fast shutdown is SIGINT; SIGTERM would only start a smart one.
    pid_file, ready, got = tmp_path / "server.pid", tmp_path / "ready", tmp_path / "got"
    proc = processes.spawn(
        [
            "sh",
            "-c",
            f"trap 'echo INT > {got}; exit 0' INT; trap '' TERM; echo 1 > {ready}; while :; do sleep 0.1; done",
        ],
        pid_file=pid_file,
        log_file=tmp_path / "server.log",
    )
    wait_until_written(ready)

    assert processes.stop(pid_file, grace_seconds=10, first_signal=signal.SIGINT) is True

    assert got.read_text().strip() == "INT"
    assert proc.wait(timeout=5) == 0


def test_stop_works_when_the_stack_was_started_with_sigint_ignored(processes, tmp_path):
    # A shell's background job (`make test &`, `nohup … &`) starts with SIGINT ignored;
    # the server spawned from it must still get (and may trap) the signal stop sends.
    script = f"""
import signal, sys
sys.path.insert(0, {str(REPO / "scripts")!r})
signal.signal(signal.SIGINT, signal.SIG_IGN)
import local_processes
local_processes.spawn(
    ["sh", "-c", "trap 'echo INT > {tmp_path / "got"}; exit 0' INT; echo 1 > {tmp_path / "ready"}; "
     "while :; do sleep 0.1; done"],
    pid_file=local_processes.Path({str(tmp_path / "server.pid")!r}),
    log_file=local_processes.Path({str(tmp_path / "server.log")!r}),
)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    wait_until_written(tmp_path / "ready")

    assert processes.stop(tmp_path / "server.pid", grace_seconds=10, first_signal=signal.SIGINT) is True

    assert (tmp_path / "got").read_text().strip() == "INT"


def test_spawn_runs_in_the_given_directory(processes, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = processes.spawn(["pwd"], pid_file=tmp_path / "pwd.pid", log_file=tmp_path / "pwd.log", cwd=workdir)
    proc.wait(timeout=10)
    assert (tmp_path / "pwd.log").read_text().strip() == str(workdir)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can start a process as another user")
def test_spawn_as_another_user_keeps_none_of_our_groups(processes, tmp_path):
    # How the cluster runs PostgreSQL when started as root, which PostgreSQL refuses to run as.
    import pwd

    proc = processes.spawn(
        ["id"], pid_file=tmp_path / "id.pid", log_file=tmp_path / "id.log", cwd=Path("/"), user="nobody"
    )
    proc.wait(timeout=10)
    ids = dict(field.split("=") for field in (tmp_path / "id.log").read_text().split())

    assert ids["uid"].startswith(f"{pwd.getpwnam('nobody').pw_uid}(")
    assert ids["groups"] == ids["gid"]  # its primary group and no other
