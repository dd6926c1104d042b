"""scripts/local_processes.py: the pid files and the stopping behind `make stop`, on real processes."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

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


def _alive(session: int) -> list[str]:
    """What pgrep finds still running in a session; an exited process awaiting its reaper is not."""
    found = subprocess.run(
        ["pgrep", "-a", "--runstates", "R,S,D,T,t", "-s", str(session)], capture_output=True, text=True
    )
    return found.stdout.splitlines()


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_stop_ends_the_whole_session_including_other_process_groups(processes, tmp_path):
    pid_file, grandchild_file = tmp_path / "tree.pid", tmp_path / "grandchild"
    proc = processes.spawn(
        [sys.executable, "-c", TREE, str(grandchild_file)], pid_file=pid_file, log_file=tmp_path / "tree.log"
    )
    _wait_for(grandchild_file)
    grandchild = int(grandchild_file.read_text())
    assert os.getpgid(grandchild) != proc.pid
    assert len(_alive(proc.pid)) == 2
    assert processes.running(pid_file) == proc.pid

    assert processes.stop(pid_file, grace_seconds=5) is True

    proc.wait(timeout=5)
    assert _alive(proc.pid) == []
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
    _wait_for(ready)
    started = time.monotonic()

    assert processes.stop(pid_file, grace_seconds=1) is True

    assert 1 <= time.monotonic() - started < 5
    assert proc.wait(timeout=5) == -9
    assert _alive(proc.pid) == []


def test_a_stale_pid_file_is_removed(processes, tmp_path):
    pid_file = tmp_path / "gone.pid"
    proc = subprocess.Popen(["true"])
    proc.wait()
    pid_file.write_text(str(proc.pid))

    assert processes.running(pid_file) is None
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
