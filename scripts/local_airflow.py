"""Start or stop a local Airflow: PostgreSQL, api-server (the UI), scheduler, dag-processor and triggerer.

    python scripts/local_airflow.py start --port 8080 --postgres-port 5632 --state-dir .local
    python scripts/local_airflow.py stop --state-dir .local

Airflow's home (AIRFLOW_HOME), the DAGs' data dir and mirror (MNIST_DATA_DIR,
MNIST_MIRRORS) and the store's connection (AIRFLOW_CONN_AWS_DEFAULT) come from
the environment; `make airflow` sets them. The settings every stack shares (the
checkout's dags/ and plugins/, the recovery settings, the product's buckets)
come from deploy/environment.mk, applied as make applies them
(scripts/stack_environment.py).

Each component runs in the background with its pid file and log in the state
dir. `start` starts a private PostgreSQL (scripts/local_postgres.py) and
migrates its database, starts what is not running yet, waits until the UI
answers, unpauses mnist_retraining, prints how to log in and what it started.
`stop` ends every component together with the task processes it started.

The executor is the LocalExecutor, which runs tasks as subprocesses of the
scheduler. The database is PostgreSQL, not SQLite, which Airflow's docs keep for
development: on SQLite a trigger beside a starting task once answered 500 (its
`INSERT INTO log` failed). Log-ins go
through the SimpleAuthManager with one admin user, whose password Airflow
generates on first start and keeps in
$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated. The database's
password and Airflow's keys are generated on the first start and kept in
<state dir>/secrets.json (mode 0600).

scripts/local_cluster.py starts the same components with the same functions
(stack_secrets, migrate, start_components, wait_for_ui, unpause), given another
environment: the CeleryExecutor, Redis, and Celery workers of its own.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import local_postgres
import stack_environment
from local_processes import answers, running, spawn, wait_until
from local_processes import stop as stop_session

HOST = "127.0.0.1"
DAG_ID = "mnist_retraining"
USER = "admin"
# Stopped in this order: no new task starts once the scheduler is gone, and the
# api-server, which running tasks report to, goes last.
COMPONENTS = ("scheduler", "triggerer", "dag-processor", "api-server")


def start(port: int, postgres_port: int, state_dir: Path) -> None:
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    keys = stack_secrets(state_dir)
    started = ["postgres"] if local_postgres.start(postgres_port, state_dir, password=keys["postgres_password"]) else []
    env = _environment(port, postgres_port, keys)
    migrate(env, state_dir)
    started += start_components(env, port=port, state_dir=state_dir)
    wait_for_ui(port, state_dir)
    unpause(env, state_dir)
    print(login_line(env, port))
    print(started_line(started, ["postgres", *COMPONENTS]))
    print(f"{DAG_ID} is unpaused; logs: {state_dir}/*.log; `make stop` stops everything")


def _environment(port: int, postgres_port: int, keys: dict[str, str]) -> dict[str, str]:
    return {
        # The caller's environment (what `make airflow` exports), with the shared settings.
        **stack_environment.shared_environment(os.environ),
        **database_environment(postgres_port, keys),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # Tasks at once; the LocalExecutor keeps this many worker processes (default 32).
        "AIRFLOW__CORE__PARALLELISM": "4",
        **login_environment(port),
    }


def stack_secrets(state_dir: Path, *, extra_passwords: tuple[str, ...] = ()) -> dict[str, str]:
    """A stack's passwords and keys: generated on its first start, kept in <state dir>/secrets.json (0600), read back.

    Each is long enough for its algorithm: the JWT secret signs with HMAC-SHA512,
    which wants 64 bytes or more (Airflow's own generated one has 24, and warns).
    """
    path = state_dir / "secrets.json"
    wanted = {
        "postgres_password": lambda: secrets.token_hex(24),
        **{name: lambda: secrets.token_hex(24) for name in extra_passwords},
        "jwt_secret": lambda: secrets.token_urlsafe(64),
        "api_secret_key": lambda: secrets.token_urlsafe(64),
        # A Fernet key is 32 random bytes, url-safe base64 (what Fernet.generate_key returns).
        "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    # Two starts at once (two terminals) must not each write keys of their own.
    with open(state_dir / "secrets.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = json.loads(path.read_text()) if path.exists() else {}
        missing = {name: generate() for name, generate in wanted.items() if name not in keys}
        if missing:
            keys.update(missing)
            # mkstemp creates the file 0600, never wider for a moment; it is renamed over the old one.
            descriptor, temporary = tempfile.mkstemp(dir=state_dir, prefix=".secrets-")
            with os.fdopen(descriptor, "w") as out:
                json.dump(keys, out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
    return keys


def database_environment(postgres_port: int, keys: dict[str, str]) -> dict[str, str]:
    """The database and the keys every component of a stack shares (the same on every host of a cluster)."""
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": local_postgres.database_url(postgres_port, keys["postgres_password"]),
        # The API's tokens, the encryption of connections and variables, the signing of log requests.
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
    }


def login_environment(port: int) -> dict[str, str]:
    """One admin user (of the SimpleAuthManager, a shared setting), and the address the UI's links use."""
    return {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        # The UI's own links, and where task processes reach the execution API unless set apart.
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{port}",
    }


def migrate(env: dict[str, str], state_dir: Path) -> None:
    """Create or upgrade the database `env` names."""
    state_dir.mkdir(parents=True, exist_ok=True)
    # Also creates airflow.cfg before the components start, so they all read the
    # same generated secrets (the API's JWT secret above all) unless `env` sets them.
    migrate_log = state_dir / "airflow-migrate.log"
    if not run_quietly([airflow_executable(), "db", "migrate"], env=env, log_file=migrate_log):
        sys.exit(f"`airflow db migrate` failed; see {migrate_log}")


def start_components(env: dict[str, str], *, port: int, state_dir: Path) -> list[str]:
    """Start in the background, all with `env`, each of COMPONENTS that is not running yet; return those."""
    started = []
    for component in COMPONENTS:
        if running(pid_file(state_dir, component)) is None:
            spawn(
                _command(component, port),
                pid_file=pid_file(state_dir, component),
                log_file=log_file(state_dir, component),
                env=env,
            )
            started.append(component)
    return started


def started_line(started: list[str], components: list[str]) -> str:
    """What `start` did, so that running it again to bring back what died shows that it did only that."""
    if set(started) == set(components):
        return "started " + ", ".join(started)
    if not started:
        return "everything was running: started nothing"
    running_already = [c for c in components if c not in started]
    return f"started {', '.join(started)} (not running); already running: {', '.join(running_already)}"


def wait_for_ui(port: int, state_dir: Path) -> None:
    url = f"http://{HOST}:{port}"
    wait_until(
        lambda: answers(f"{url}/api/v2/monitor/health"),
        alive=lambda: running(pid_file(state_dir, "api-server")) is not None,
        timeout=180,
        failure=f"the Airflow api-server did not answer on {url}; see {log_file(state_dir, 'api-server')} "
        "(one started earlier on another port? `make stop` first)",
    )


def unpause(env: dict[str, str], state_dir: Path) -> None:
    """Unpause the DAG as soon as the dag-processor has stored it."""
    unpause_log = state_dir / "airflow-unpause.log"
    deadline = time.monotonic() + 180
    while not run_quietly([airflow_executable(), "dags", "unpause", DAG_ID], env=env, log_file=unpause_log):
        if time.monotonic() > deadline:
            sys.exit(f"could not unpause {DAG_ID}: did the dag-processor parse it? see {unpause_log}")
        time.sleep(2)


def login_line(env: dict[str, str], port: int) -> str:
    """How to log in, as `start` prints it; the api-server writes the password file before it answers."""
    home = Path(env.get("AIRFLOW_HOME") or Path.home() / "airflow")
    password_file = Path(
        env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
        or home / "simple_auth_manager_passwords.json.generated"
    )
    password = json.loads(password_file.read_text())[USER]
    return f"Airflow UI: http://{HOST}:{port}  (user {USER}, password {password})"


def stop(state_dir: Path) -> None:
    state_dir = state_dir.resolve()
    stopped = stop_components(state_dir, COMPONENTS)
    if local_postgres.stop(state_dir):
        stopped.append("postgres")
    print(f"make airflow's stack: {'stopped ' + ', '.join(stopped) if stopped else 'not running'}")


def stop_components(state_dir: Path, components: Iterable[str]) -> list[str]:
    """Stop these components in this order, each with the task processes it started; return those that ran."""
    return [c for c in components if stop_session(pid_file(state_dir, c), grace_seconds=30)]


def pid_file(state_dir: Path, component: str) -> Path:
    return state_dir / f"airflow-{component}.pid"


def log_file(state_dir: Path, component: str) -> Path:
    return state_dir / f"airflow-{component}.log"


def airflow_executable() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _command(component: str, port: int) -> list[str]:
    if component == "api-server":
        # One worker: a laptop, two cores, one user.
        return [airflow_executable(), "api-server", "--host", HOST, "--port", str(port), "--workers", "1"]
    return [airflow_executable(), component]


def run_quietly(command: list[str], *, env: dict[str, str], log_file: Path) -> bool:
    """Run a command to its end with its output appended to `log_file`; True when it succeeded."""
    with open(log_file, "ab") as log:
        return subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--postgres-port", type=int, default=5632)
    parser.add_argument("--state-dir", type=Path, default=Path(".local"))
    args = parser.parse_args()
    if args.action == "start":
        start(args.port, args.postgres_port, args.state_dir)
    else:
        stop(args.state_dir)


if __name__ == "__main__":
    main()
