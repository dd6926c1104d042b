"""Start or stop a local Airflow: api-server (the UI), scheduler, dag-processor and triggerer.

    python scripts/local_airflow.py start --port 8080 --state-dir .local
    python scripts/local_airflow.py stop --state-dir .local

Airflow's home, DAG folder and plugin folder come from the environment
(AIRFLOW_HOME, AIRFLOW__CORE__DAGS_FOLDER, AIRFLOW__CORE__PLUGINS_FOLDER), as do
the settings the DAG reads (MNIST_*, AIRFLOW_CONN_AWS_DEFAULT); `make airflow`
sets them all. Each component runs in the background with its pid file and log
in the state dir. `start` migrates the SQLite database, starts what is not
running yet, waits until the UI answers, unpauses mnist_retraining and prints
how to log in. `stop` ends every component together with the task processes
it started.

The executor is the LocalExecutor, which runs tasks as subprocesses of the
scheduler; Airflow 3 accepts it with SQLite (unlike Airflow 2), and it is what
`airflow standalone` uses. Log-ins go through the SimpleAuthManager with one
admin user, whose password Airflow generates on first start and keeps in
$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from local_processes import answers, running, spawn, stop as stop_session, wait_until

HOST = "127.0.0.1"
DAG_ID = "mnist_retraining"
USER = "admin"
# Stopped in this order: no new task starts once the scheduler is gone, and the
# api-server, which running tasks report to, goes last.
COMPONENTS = ("scheduler", "triggerer", "dag-processor", "api-server")


def _airflow() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _environment(port: int) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # Tasks at once; the LocalExecutor keeps this many worker processes (default 32).
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        # Where task processes reach the execution API, and the UI's own links.
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{port}",
    }


def _command(component: str, port: int) -> list[str]:
    if component == "api-server":
        # One worker: a laptop, two cores, one user.
        return [_airflow(), "api-server", "--host", HOST, "--port", str(port), "--workers", "1"]
    return [_airflow(), component]


def _run_quietly(command: list[str], *, env: dict[str, str], log_file: Path) -> bool:
    with open(log_file, "ab") as log:
        return subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode == 0


def _password(env: dict[str, str]) -> str:
    """The admin password the api-server generated (it writes the file before it answers)."""
    home = Path(env.get("AIRFLOW_HOME") or Path.home() / "airflow")
    password_file = Path(
        env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
        or home / "simple_auth_manager_passwords.json.generated"
    )
    return json.loads(password_file.read_text())[USER]


def start(port: int, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    env = _environment(port)
    url = f"http://{HOST}:{port}"
    health = f"{url}/api/v2/monitor/health"

    # Also creates airflow.cfg before the components start, so they all read the
    # same generated secrets (the API's JWT secret above all).
    migrate_log = state_dir / "airflow-migrate.log"
    if not _run_quietly([_airflow(), "db", "migrate"], env=env, log_file=migrate_log):
        sys.exit(f"`airflow db migrate` failed; see {migrate_log}")

    for component in COMPONENTS:
        pid_file = state_dir / f"airflow-{component}.pid"
        if running(pid_file) is None:
            spawn(_command(component, port), pid_file=pid_file, log_file=state_dir / f"airflow-{component}.log", env=env)
    api_pid = state_dir / "airflow-api-server.pid"
    wait_until(
        lambda: answers(health),
        alive=lambda: running(api_pid) is not None,
        timeout=180,
        failure=f"the Airflow api-server did not answer on {url}; see {state_dir / 'airflow-api-server.log'} "
        "(one started earlier on another port? `make stop` first)",
    )

    # The DAG can be unpaused once the dag-processor has stored it.
    unpause_log = state_dir / "airflow-unpause.log"
    deadline = time.monotonic() + 180
    while not _run_quietly([_airflow(), "dags", "unpause", DAG_ID], env=env, log_file=unpause_log):
        if time.monotonic() > deadline:
            sys.exit(f"could not unpause {DAG_ID}: did the dag-processor parse it? see {unpause_log}")
        time.sleep(2)

    print(f"Airflow UI: {url}  (user {USER}, password {_password(env)})")
    print(f"{DAG_ID} is unpaused; logs: {state_dir}/airflow-*.log; `make stop` stops everything")


def stop(state_dir: Path) -> None:
    stopped = [c for c in COMPONENTS if stop_session(state_dir / f"airflow-{c}.pid", grace_seconds=30)]
    print(f"Airflow: {'stopped ' + ', '.join(stopped) if stopped else 'not running'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--state-dir", type=Path, default=Path(".local"))
    args = parser.parse_args()
    if args.action == "start":
        start(args.port, args.state_dir)
    else:
        stop(args.state_dir)


if __name__ == "__main__":
    main()
