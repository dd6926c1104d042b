"""Start or stop the production topology on this machine, without Docker: Airflow on the CeleryExecutor.

    python scripts/local_cluster.py start --state-dir .local/cluster [--port 8180 --s3-port 9180 ...]
    python scripts/local_cluster.py stop --state-dir .local/cluster

What `start` brings up, each in the background with its pid file and log in the
state dir (`make cluster` runs it; `make stop` stops it all):

- PostgreSQL (Debian's `postgresql` package), a private instance: its own data
  dir, port on 127.0.0.1 and unix socket, a database and a user for Airflow
  (scripts/local_postgres.py, as `make airflow` runs it);
- Redis (`redis-server`) on 127.0.0.1 without persistence, the Celery broker;
- the embedded object store (scripts/local_s3.py: SeaweedFS) with the project's
  buckets, the offline MNIST mirror, and `airflow-logs`, where task logs go
  (remote logging); Airflow reaches it as the identity limited to those buckets;
- Airflow's api-server, scheduler, dag-processor and triggerer (the code
  scripts/local_airflow.py starts them with), and two Celery workers: one on the
  queue `default`, one on `training`, where the DAG sends its TensorFlow tasks
  (MNIST_TRAINING_QUEUE); both serve `scoring`, the queue of batch predictions'
  shards (MNIST_SCORING_QUEUE), so shards spread over both.

Each worker runs as if on a host of its own: its own working and data directory,
and its own address, a loopback address of this machine (127.0.0.2, 127.0.0.3),
which its task instances report as their hostname. Its log server listens there,
on the port every worker shares ([logging] worker_log_server_port), so the
api-server reads a running or a dead worker's task log at
http://<hostname>:<port>, as it does across hosts.

Generated secrets (the database's and Redis' passwords, the JWT secret, the
Fernet key, the API's secret key) are kept in `secrets.json` (mode 0600) in the
state dir and shared by every component through its environment. PostgreSQL's
data survives `stop`, and so does the object store's (in <state dir>/s3/).
`start` again starts only what is not running, and says which: after a worker
died, it prints `started worker-training (not running); already running: ...`.

    python scripts/local_cluster.py worker --address ADDRESS --log-port PORT -- CELERY WORKER COMMAND

is how `start` runs a worker: it serves the worker's task logs on ADDRESS, then
becomes the Celery worker, so both go together, as on a host that loses power.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import local_airflow
import local_postgres
import local_s3
import stack_environment
from local_processes import answers, running, spawn, wait_until
from local_processes import stop as stop_session

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
MIRROR_URI = "s3://mnist-mirror/mnist/"
# Where the DAG publishes (deploy/environment.mk); scripts/benchmark_batch_cluster.py looks there.
MODELS_URI = stack_environment.shared_environment({})["MNIST_MODELS_URI"]
# Task logs, the Celery queues: as in docker-compose.yaml, the other CeleryExecutor stack
# (tests/test_deployment_environment.py holds them to it).
TASK_LOGS_URI = "s3://airflow-logs/logs"
TRAINING_QUEUE = "training"
SCORING_QUEUE = "scoring"


@dataclass(frozen=True)
class Worker:
    name: str
    """Its Celery hostname: the node is celery@<name>, and its pid file and log are named after it."""
    address: str
    """Where its log server listens, and the hostname its task instances report (the api-server asks it there)."""
    queues: tuple[str, ...]
    concurrency: int


WORKERS = (
    Worker("worker-default", "127.0.0.2", queues=("default", SCORING_QUEUE), concurrency=2),
    # TensorFlow takes every core it sees: one training task at a time.
    Worker("worker-training", "127.0.0.3", queues=(TRAINING_QUEUE, SCORING_QUEUE), concurrency=1),
)


@dataclass(frozen=True)
class Ports:
    api: int = 8180
    s3: int = 9180
    postgres: int = 5532
    redis: int = 6479
    # Every worker serves the logs of its running tasks on this port, each on its own
    # address, and the triggerer its own on the next: not Airflow's default 8793/8794,
    # which `make airflow` holds.
    worker_log: int = 8893
    triggerer_log: int = 8894


def start(ports: Ports, state_dir: Path) -> None:
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    _record_ports(ports, state_dir)
    keys = local_airflow.stack_secrets(state_dir, extra_passwords=("redis_password",))
    services = {
        "postgres": local_postgres.start(ports.postgres, state_dir, password=keys["postgres_password"]),
        "redis": _start_redis(ports.redis, state_dir, password=keys["redis_password"]),
        "object store": running(local_s3.store_dir(state_dir) / "weed.pid") is None,
    }
    started = [name for name, was_started in services.items() if was_started]
    store = _start_store(ports.s3, state_dir)

    env = _airflow_environment(ports, state_dir, keys, store)
    local_airflow.migrate(env, state_dir)
    started += local_airflow.start_components(env, port=ports.api, state_dir=state_dir)
    started += [worker.name for worker in WORKERS if _start_worker(worker, env, ports, state_dir)]
    local_airflow.wait_for_ui(ports.api, state_dir)
    _wait_for_workers(env, state_dir)
    local_airflow.unpause(env, state_dir)

    print(local_airflow.login_line(env, ports.api))
    components = [*services, *local_airflow.COMPONENTS, *(w.name for w in WORKERS)]
    print(local_airflow.started_line(started, components))
    print(
        f"{local_airflow.DAG_ID} is unpaused; CeleryExecutor with "
        + ", ".join(
            f"{w.name} at {w.address} (queues {','.join(w.queues)}, concurrency {w.concurrency})" for w in WORKERS
        )
    )
    print(f"logs and pid files: {state_dir}/*.log, *.pid and s3/; task logs: {TASK_LOGS_URI} on http://{HOST}:{ports.s3}")
    print("`make stop` stops everything")


def stop(state_dir: Path) -> None:
    state_dir = state_dir.resolve()
    # The scheduler first, so no task is sent to a worker that is going; the
    # workers (and their tasks) next, while the api-server they report to still answers.
    stopped = local_airflow.stop_components(state_dir, ["scheduler"])
    stopped += local_airflow.stop_components(state_dir, [w.name for w in WORKERS])
    stopped += local_airflow.stop_components(state_dir, [c for c in local_airflow.COMPONENTS if c != "scheduler"])
    if stop_session(state_dir / "redis.pid", grace_seconds=10):
        stopped.append("redis")
    if local_postgres.stop(state_dir):
        stopped.append("postgres")
    print(f"make cluster's stack: {'stopped ' + ', '.join(stopped) if stopped else 'not running'}")
    print(local_s3.stop_line(state_dir))


def worker_hostname() -> str:
    """The cluster workers' [core] hostname_callable: their task instances report the worker's own address.

    All workers share this machine's name, which would tell neither a person nor
    the api-server which worker ran a task. The api-server reads a running task's
    log, and a dead worker's, from http://<hostname>:<worker_log_server_port>, so
    the hostname must be an address it reaches: the loopback address the worker's
    log server listens on. On hosts of their own, workers report their host's
    name (Airflow's default), and the same port serves the same way.
    """
    return os.environ["MNIST_CLUSTER_WORKER_ADDRESS"]


def run_worker(address: str, log_port: int, celery_worker: list[str]) -> None:
    """Serve the worker's task logs on its own address in a child process, then become the Celery worker.

    Airflow's own log server listens on every address, so two workers on one host
    could not share the port the api-server asks. The child stays in the worker's
    session: `stop` and a SIGKILL of the session end both, as a lost host does.
    """
    subprocess.Popen([sys.executable, __file__, "serve-logs", "--address", address, "--log-port", str(log_port)])
    os.execv(celery_worker[0], celery_worker)


def serve_logs(address: str, port: int) -> None:
    """Airflow's log server (airflow.utils.serve_logs: what `airflow celery worker` runs), on one address only."""
    import uvicorn

    uvicorn.run(
        "airflow.utils.serve_logs.log_server:get_app",
        factory=True,
        host=address,
        port=port,
        log_config=None,
        access_log=False,
    )


def _record_ports(ports: Ports, state_dir: Path) -> None:
    """Refuse to start a second cluster on other ports over the pieces of a running one."""
    recorded = state_dir / "cluster.json"
    anything_running = any(running(pid) is not None for pid in state_dir.glob("*.pid"))
    if anything_running and recorded.exists():
        before = json.loads(recorded.read_text())["ports"]
        if before != asdict(ports):
            # Also a cluster started by an older checkout, whose ports had other names.
            sys.exit(f"a cluster from {state_dir} is running with other settings, {before}; `make stop` first")
    recorded.write_text(json.dumps({"ports": asdict(ports)}, indent=2) + "\n")


# --- Redis, the mirror ------------------------------------------------------


def _start_redis(port: int, state_dir: Path, *, password: str) -> bool:
    """Start Redis unless it runs; True when it started it."""
    pid_file, log = state_dir / "redis.pid", state_dir / "redis.log"
    if running(pid_file) is not None:
        return False
    # In a file (0600), not on the command line, for the password's sake. No
    # persistence: messages still queued go with Redis; the scheduler retries
    # (or fails) their tasks after [scheduler] task_queued_timeout.
    config = state_dir / "redis.conf"
    with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(
            f"bind {HOST}\nport {port}\nprotected-mode yes\nrequirepass {password}\n"
            f'save ""\nappendonly no\ndaemonize no\ndir {state_dir}\nlogfile ""\n'
        )
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("redis-server not found: install it (scripts/install_system_packages.sh does)")
    proc = spawn([redis_server, str(config)], pid_file=pid_file, log_file=log)
    wait_until(
        lambda: _redis_answers(port, password),
        alive=lambda: proc.poll() is None,
        timeout=30,
        failure=f"Redis did not start on {HOST}:{port}; see {log}",
    )


def _redis_answers(port: int, password: str) -> bool:
    import redis

    try:
        return redis.Redis(host=HOST, port=port, password=password, socket_timeout=5).ping()
    except redis.RedisError:
        return False


def _start_store(port: int, state_dir: Path) -> local_s3.Credentials:
    """The embedded object store with the project's buckets and the offline MNIST mirror, as `make mirror` makes them.

    The mirror is built with the store's credentials in its environment only:
    Airflow's components reach S3 through the aws_default connection alone, as
    they do in production.
    """
    store = local_s3.start(port, state_dir)
    env = {**os.environ, **local_s3.client_environment(store)}
    # Skipped when the mirror is there already.
    log = state_dir / "mirror.log"
    mirror = [sys.executable, "-m", "mnist_tasks", "mirror", "--to", MIRROR_URI, "--work-dir", str(state_dir / "wheel")]
    with open(log, "ab") as out:
        if subprocess.run(mirror, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit(f"building the MNIST mirror failed; see {log}")
    return store


# --- Airflow ----------------------------------------------------------------


def _airflow_environment(
    ports: Ports, state_dir: Path, keys: dict[str, str], store: local_s3.Credentials
) -> dict[str, str]:
    """What every Airflow component gets: the caller's environment with the settings every stack shares
    (deploy/environment.mk, as `make` exports them), and the cluster's topology on top."""
    return {
        **stack_environment.shared_environment(os.environ),
        "AIRFLOW_HOME": str(state_dir / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        **local_airflow.database_environment(ports.postgres, keys),
        "AIRFLOW__CELERY__BROKER_URL": f"redis://:{keys['redis_password']}@{HOST}:{ports.redis}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": local_postgres.database_url(
            ports.postgres, keys["postgres_password"], scheme="db+postgresql"
        ),
        **local_airflow.login_environment(ports.api),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{ports.api}/execution/",
        # Task logs go to S3 when a task ends; the UI reads them there, whichever worker wrote them.
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": TASK_LOGS_URI,
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "aws_default",
        # Until then, the api-server reads a task's log from its worker's log server on this port.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports.worker_log),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.triggerer_log),
        # The store's identity limited to the project's buckets (its admin only creates them).
        "AIRFLOW_CONN_AWS_DEFAULT": local_s3.client_environment(store)["AIRFLOW_CONN_AWS_DEFAULT"],
        "MNIST_MIRRORS": MIRROR_URI,
        "MNIST_TRAINING_QUEUE": TRAINING_QUEUE,
        "MNIST_SCORING_QUEUE": SCORING_QUEUE,
    }


def _start_worker(worker: Worker, env: dict[str, str], ports: Ports, state_dir: Path) -> bool:
    """Start the worker unless it runs; True when it started it."""
    pid_file = local_airflow.pid_file(state_dir, worker.name)
    if running(pid_file) is not None:
        return False
    # Its own directory, as on a host of its own: the working dir, MNIST_DATA_DIR
    # (never shared: tasks exchange data through the artifact store) and local task logs.
    home = state_dir / worker.name
    (home / "data").mkdir(parents=True, exist_ok=True)
    worker_env = {
        **env,
        "MNIST_DATA_DIR": str(home / "data"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "local_cluster.worker_hostname",
        "MNIST_CLUSTER_WORKER_ADDRESS": worker.address,
        # Makes this module importable in the worker's processes, for the hostname callable.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), env.get("PYTHONPATH")])),
    }
    # Its log server is run_worker's, on the worker's address: not the one Airflow's starts on every address.
    celery_worker = [local_airflow.airflow_executable(), "celery", "worker", "--celery-hostname", worker.name]
    celery_worker += ["--queues", ",".join(worker.queues), "--concurrency", str(worker.concurrency)]
    celery_worker += ["--skip-serve-logs"]
    command = [sys.executable, __file__, "worker", "--address", worker.address, "--log-port", str(ports.worker_log)]
    spawn(
        [*command, "--", *celery_worker],
        pid_file=pid_file,
        log_file=local_airflow.log_file(state_dir, worker.name),
        env=worker_env,
        cwd=home,
    )
    return True


def _wait_for_workers(env: dict[str, str], state_dir: Path) -> None:
    """Until every worker answers a Celery ping through the broker, and its log server at its address."""
    from celery import Celery

    app = Celery(broker=env["AIRFLOW__CELERY__BROKER_URL"])
    expected = {f"celery@{w.name}" for w in WORKERS}
    log_port = env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"]

    def all_answer() -> bool:
        # Any HTTP answer will do: the log server refuses a request that is not signed.
        if not all(answers(f"http://{w.address}:{log_port}/log/") for w in WORKERS):
            return False
        return expected <= set(app.control.inspect(timeout=2).ping() or {})

    try:
        wait_until(
            all_answer,
            alive=lambda: all(running(local_airflow.pid_file(state_dir, w.name)) is not None for w in WORKERS),
            timeout=180,
            failure="the Celery workers or their log servers did not answer; see "
            + ", ".join(str(local_airflow.log_file(state_dir, w.name)) for w in WORKERS),
        )
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "worker", "serve-logs"])
    parser.add_argument("--state-dir", type=Path, default=Path(".local/cluster"))
    defaults = Ports()
    parser.add_argument("--port", type=int, default=defaults.api, help="the UI and the API")
    parser.add_argument("--s3-port", type=int, default=defaults.s3)
    parser.add_argument("--postgres-port", type=int, default=defaults.postgres)
    parser.add_argument("--redis-port", type=int, default=defaults.redis)
    parser.add_argument(
        "--log-ports",
        type=int,
        nargs=2,
        metavar=("WORKERS", "TRIGGERER"),
        default=[defaults.worker_log, defaults.triggerer_log],
        help="where the workers (each on its address) and the triggerer serve the logs of what they are running",
    )
    parser.add_argument("--address", help="worker, serve-logs: the address the worker's log server listens on")
    parser.add_argument("--log-port", type=int, help="worker, serve-logs: the port it listens on")
    # worker: the Celery worker's command line follows `--`, options and all.
    argv = sys.argv[1:]
    ours, celery_worker = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    if args.action in ("worker", "serve-logs") and not (args.address and args.log_port):
        parser.error(f"{args.action} needs --address and --log-port")
    if args.action == "worker" and not celery_worker:
        parser.error("worker needs the Celery worker's command line after --")
    if args.action == "stop":
        stop(args.state_dir)
    elif args.action == "worker":
        run_worker(args.address, args.log_port, celery_worker)
    elif args.action == "serve-logs":
        serve_logs(args.address, args.log_port)
    else:
        worker_log, triggerer_log = args.log_ports
        ports = Ports(
            api=args.port,
            s3=args.s3_port,
            postgres=args.postgres_port,
            redis=args.redis_port,
            worker_log=worker_log,
            triggerer_log=triggerer_log,
        )
        start(ports, args.state_dir)


if __name__ == "__main__":
    main()
