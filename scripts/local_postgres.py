"""A private PostgreSQL instance (Debian's `postgresql` package) for a local Airflow: `make airflow` and `make cluster`.

Its data dir and unix socket are under the state dir it is given, it listens on
127.0.0.1 only, and it holds one database and one role, both named `airflow`,
with a generated password. Both local stacks run on this, as Airflow's docs ask
of anything beyond development: on SQLite, a trigger beside a starting task once
answered 500 (its `INSERT INTO log` failed).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from local_processes import as_user, running, spawn, wait_until
from local_processes import stop as stop_session

HOST = "127.0.0.1"
DATABASE = "airflow"  # the database's name and its owner's


def start(port: int, state_dir: Path, *, password: str) -> bool:
    """Start the server unless it runs; create the role and database, or reset the role's password.

    Returns True when it started the server, False when it was running.
    """
    pid_file, log = state_dir / "postgres.pid", state_dir / "postgres.log"
    root, user = postgres_dir(state_dir), _postgres_user()
    socket = ["-h", str(root), "-p", str(port)]
    started = running(pid_file) is None
    if started:
        _prepare_postgres_dir(root, user)
        if not (root / "data" / "PG_VERSION").exists():
            initdb = [_pg_bin("initdb"), "-D", str(root / "data"), "-E", "UTF8", "--locale=C"]
            _run_as(user, initdb + ["--auth-local=peer", "--auth-host=scram-sha-256"], cwd=root, log=log)
        server = [_pg_bin("postgres"), "-D", str(root / "data"), "-p", str(port)]
        server += ["-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={root}"]
        proc = spawn(server, pid_file=pid_file, log_file=log, cwd=root, user=user)
        wait_until(
            lambda: _run_as(user, [_pg_bin("pg_isready"), "-q", *socket], cwd=root, check=False),
            alive=lambda: proc.poll() is None,
            timeout=60,
            failure=f"PostgreSQL did not start on {HOST}:{port}; see {log}",
        )
    # Through the socket, as the database's superuser (peer authentication). The SQL,
    # password included, goes on stdin: a command line is visible to every user.
    sql = f"""
        SELECT 'CREATE ROLE {DATABASE} LOGIN'
            WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DATABASE}')\\gexec
        ALTER ROLE {DATABASE} PASSWORD '{password}';
        SELECT 'CREATE DATABASE {DATABASE} OWNER {DATABASE}'
            WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec
    """
    psql = [_pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *socket, "-d", "postgres"]
    _run_as(user, psql, cwd=root, log=state_dir / "postgres-setup.log", stdin=sql)
    return started


def stop(state_dir: Path) -> bool:
    """Stop it with its fast shutdown (SIGINT): it ends the sessions, writes a checkpoint and exits.

    Returns False when it was not running.
    """
    return stop_session(state_dir / "postgres.pid", grace_seconds=60, first_signal=signal.SIGINT)


def database_url(port: int, password: str, *, scheme: str = "postgresql+psycopg2") -> str:
    """The database as SQLAlchemy (and Celery's result backend, scheme `db+postgresql`) reach it."""
    return f"{scheme}://{DATABASE}:{password}@{HOST}:{port}/{DATABASE}"


def postgres_dir(state_dir: Path) -> Path:
    """Where PostgreSQL keeps its data dir and its socket: <state dir>/postgres when it can.

    PostgreSQL refuses to run as root, so as root it runs as the `postgres` user,
    which must be able to reach that directory. A checkout under /root, or a state
    dir made by mkdtemp (0700), is closed to it; then, and when the socket's path
    would pass the 107-byte limit of a unix socket, the directory is one under
    /tmp named after the state dir, so the same state dir always finds its data.
    """
    state_dir = state_dir.resolve()
    own = state_dir / "postgres"
    socket_fits = len(str(own / ".s.PGSQL.65535")) < 100
    user = _postgres_user()
    if socket_fits and (user is None or _run_as(user, ["test", "-x", str(state_dir)], cwd=Path("/"), check=False)):
        return own
    key = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    # Named when only `make cluster` ran PostgreSQL; renamed, it would lose the data of existing clusters.
    return Path(tempfile.gettempdir()) / f"mnist-cluster-postgres-{key}"


def _postgres_user() -> str | None:
    """Who runs PostgreSQL: `postgres` when we are root (which it refuses to run as), else we do."""
    return "postgres" if os.geteuid() == 0 else None


def _prepare_postgres_dir(root: Path, user: str | None) -> None:
    """The directory exists, belongs to the server's user, and no one else may enter it."""
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        sys.exit(f"{root} is not a directory")
    root.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        owner = pwd.getpwnam(user)
        if root.stat().st_uid != owner.pw_uid:
            if root.parent == Path(tempfile.gettempdir()) and any(root.iterdir()):
                # In a world-writable /tmp, a directory someone else filled is not ours to adopt.
                sys.exit(f"{root} exists and belongs to someone else; remove it or use another state dir")
            os.chown(root, owner.pw_uid, owner.pw_gid)
    root.chmod(0o700)


def _pg_bin(name: str) -> str:
    """A PostgreSQL program: Debian keeps initdb and postgres off PATH, in /usr/lib/postgresql/<version>/bin."""
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    found = str(versions[-1]) if versions else shutil.which(name)
    if not found:
        sys.exit(f"{name} not found: install PostgreSQL (scripts/install_system_packages.sh does)")
    return found


def _run_as(
    user: str | None, command: list[str], *, cwd: Path, log: Path | None = None, stdin: str = "", check: bool = True
) -> bool:
    """Run a command to its end as `user` (None: as we are); True when it succeeded."""
    with open(log or os.devnull, "ab") as out:
        done = subprocess.run(
            command, cwd=cwd, input=stdin.encode(), stdout=out, stderr=subprocess.STDOUT, **as_user(user)
        )
    if check and done.returncode != 0:
        sys.exit(f"{Path(command[0]).name} failed; see {log}")
    return done.returncode == 0
