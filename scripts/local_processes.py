"""Background processes of the local stack, tracked by pid files, stopped with all they started.

Each process is started as the leader of a new session. Stopping signals every
process of that session, not only the leader's process group: Airflow moves each
task into a process group of its own, and those must not outlive `make stop`.
Linux only (it reads /proc).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, session id) of a process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in parentheses may contain spaces and ')'; the fields after it may not.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[3])


def _session_members(sid: int) -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            # A zombie has already exited; it only waits for its parent to reap it.
            if stat is not None and stat[1] == sid and stat[0] != "Z":
                yield int(entry)


def running(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process still runs and leads its session, else None.

    A stale file (the process is gone, or the pid now belongs to something else)
    is removed. When the leader died (a crash, a SIGKILL) while processes it
    started still run in its session (a scheduler's log server holding its port,
    LocalExecutor workers), those are stopped first: they belong to no running
    component, and a new one started in its place would meet them.
    """
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    stat = _stat(pid)
    if stat is None or stat[0] == "Z":
        stop(pid_file, grace_seconds=10)  # removes the file, with or without leftovers
        return None
    if stat[1] != pid:  # the pid was reused: the session it led is gone (Linux keeps a session's id)
        pid_file.unlink()
        return None
    return pid


def spawn(
    command: list[str],
    *,
    pid_file: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen:
    """Start `command` in a new session with its output appended to `log_file`; record its pid.

    With `user`, the command runs as that user, in its primary group and no other.
    The command gets the default handling of every signal `stop` may send, whatever
    started us: a shell's background job (`make test &`) inherits SIGINT and SIGQUIT
    ignored, and a server started from it could not even trap them.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,  # outlives the command that started it, until `make stop`
            preexec_fn=_default_signal_handling,
            **as_user(user),
        )
    pid_file.write_text(str(proc.pid))
    return proc


def _default_signal_handling() -> None:
    """In the child, before exec: what the parent ignored, the command does not (exec keeps SIG_IGN)."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def as_user(user: str | None) -> dict:
    """subprocess options that run a command as `user`, in its primary group and no other (None: as we are)."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def stop(pid_file: Path, *, grace_seconds: float = 20.0, first_signal: signal.Signals = signal.SIGTERM) -> bool:
    """Send `first_signal` to every process in the session `pid_file` names, SIGKILL what is left after the grace.

    Returns False when nothing was running. The session is found even when its
    leader has died (Linux does not reuse a pid while a session still carries
    it), and members are looked up on every pass, so processes forked while
    shutting down are caught too. `first_signal` is for servers whose clean
    shutdown is not SIGTERM (PostgreSQL's fast shutdown is SIGINT).
    """
    if not pid_file.exists():
        return False
    sid = int(pid_file.read_text())
    deadline = time.monotonic() + grace_seconds
    sig = first_signal
    signalled: set[int] = set()
    found = False
    while members := list(_session_members(sid)):
        found = True
        if sig != signal.SIGKILL and time.monotonic() > deadline:
            sig = signal.SIGKILL
            signalled.clear()
        for pid in set(members) - signalled:
            with contextlib.suppress(ProcessLookupError):  # it has just exited
                os.kill(pid, sig)
            signalled.add(pid)
        time.sleep(0.2)
    pid_file.unlink(missing_ok=True)
    return found


def kill(pid_file: Path) -> bool:
    """SIGKILL every process in the session `pid_file` names, all in one pass: a crash, not a shutdown.

    Nothing gets a chance to clean up or to notice the others going, as when a
    machine loses power. Returns False when nothing was running.
    """
    return stop(pid_file, grace_seconds=0, first_signal=signal.SIGKILL)


def wait_until(ready: Callable[[], bool], *, alive: Callable[[], bool], timeout: float, failure: str) -> None:
    """Poll `ready` until it holds; SystemExit with `failure` once `alive` fails or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive() or time.monotonic() > deadline:
            raise SystemExit(failure)
        time.sleep(0.5)


def answers(url: str) -> bool:
    """True when `url` answers with any HTTP status (an error status still means it is up)."""
    try:
        # Generous: a busy api-server (a task training on every core) is slow, not down.
        with urllib.request.urlopen(url, timeout=10):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
