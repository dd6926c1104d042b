"""Start or stop the production topology on this machine, without Docker: Airflow on the CeleryExecutor.

    python scripts/local_cluster.py start --state-dir .local/cluster [--port 8180 --s3-port 9180 ...]
    python scripts/local_cluster.py stop --state-dir .local/cluster

What `start` brings up, each in the background with its pid file and log in the
state dir (`make cluster` runs it; `make stop` stops it all):

- PostgreSQL (Debian's `postgresql` package), a private instance: its own data
  dir, port on 127.0.0.1 and unix socket, a database and a user for Airflow;
- Redis (`redis-server`) on 127.0.0.1 without persistence, the Celery broker;
- the embedded object store (scripts/local_s3.py: SeaweedFS) with the project's
  buckets, the offline MNIST mirror, and `airflow-logs`, where task logs go
  (remote logging); Airflow reaches it as the identity limited to those buckets;
- Airflow's api-server, scheduler, dag-processor and triggerer (the code
  scripts/local_airflow.py starts them with), and two Celery workers: one on the
  queue `default`, one on `training`, where the DAG sends its TensorFlow tasks
  (MNIST_TRAINING_QUEUE); both serve `scoring`, the queue of batch predictions'
  shards (MNIST_SCORING_QUEUE), so shards spread over both. Each worker has its own working and data directory
  and its own log-server port, as if it ran on a host of its own; the tasks it
  runs report its name as their hostname.

Generated secrets (the database's and Redis' passwords, the JWT secret, the
Fernet key, the API's secret key) are kept in `secrets.json` (mode 0600) in the
state dir and shared by every component through its environment. PostgreSQL's
data survives `stop`, and so does the object store's (in <state dir>/s3/).
`start` again starts only what is not running.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import local_airflow
import local_s3
from local_processes import as_user, running, spawn, wait_until
from local_processes import stop as stop_session

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
MIRROR_URI = "s3://mnist-mirror/mnist/"
MODELS_URI = "s3://mnist-models/mnist/"
ARTIFACTS_URI = "s3://mnist-artifacts/"
TASK_LOGS_URI = "s3://airflow-logs/logs"
TRAINING_QUEUE = "training"
SCORING_QUEUE = "scoring"
DATABASE = "airflow"  # the database's name and its owner's


@dataclass(frozen=True)
class Worker:
    name: str
    """Its Celery hostname (the node is celery@<name>) and the hostname its task instances report."""
    queues: tuple[str, ...]
    concurrency: int


WORKERS = (
    Worker("worker-default", queues=("default", SCORING_QUEUE), concurrency=2),
    # TensorFlow takes every core it sees: one training task at a time.
    Worker("worker-training", queues=(TRAINING_QUEUE, SCORING_QUEUE), concurrency=1),
)


@dataclass(frozen=True)
class Ports:
    api: int = 8180
    s3: int = 9180
    postgres: int = 5532
    redis: int = 6479
    # Each worker serves its task logs while they run, and the triggerer its own:
    # three ports, none of them Airflow's default 8793/8794 that `make airflow` holds.
    default_worker_log: int = 8893
    training_worker_log: int = 8894
    triggerer_log: int = 8895

    def worker_log(self, worker: Worker) -> int:
        return self.default_worker_log if worker.name == WORKERS[0].name else self.training_worker_log


def start(ports: Ports, state_dir: Path) -> None:
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    _record_ports(ports, state_dir)
    keys = _secrets(state_dir)
    _start_postgres(ports.postgres, state_dir, password=keys["postgres_password"])
    _start_redis(ports.redis, state_dir, password=keys["redis_password"])
    store = _start_store(ports.s3, state_dir)

    env = _airflow_environment(ports, state_dir, keys, store)
    local_airflow.migrate(env, state_dir)
    local_airflow.start_components(env, port=ports.api, state_dir=state_dir)
    for worker in WORKERS:
        _start_worker(worker, env, ports, state_dir)
    local_airflow.wait_for_ui(ports.api, state_dir)
    _wait_for_workers(env, state_dir)
    local_airflow.unpause(env, state_dir)

    print(local_airflow.login_line(env, ports.api))
    print(
        f"{local_airflow.DAG_ID} is unpaused; CeleryExecutor with "
        + ", ".join(f"{w.name} (queues {','.join(w.queues)}, concurrency {w.concurrency})" for w in WORKERS)
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
    # SIGINT is PostgreSQL's fast shutdown: it ends the sessions, writes a checkpoint and exits.
    if stop_session(state_dir / "postgres.pid", grace_seconds=60, first_signal=signal.SIGINT):
        stopped.append("postgres")
    print(f"cluster: {'stopped ' + ', '.join(stopped) if stopped else 'not running'}")
    print(local_s3.stop_line(state_dir))


def worker_hostname() -> str:
    """The cluster workers' [core] hostname_callable: their task instances report the worker's name.

    All workers share this machine's name, so without it nothing in the UI or the
    API would tell which worker ran a task. The name does not resolve: the UI reads
    a finished task's log from S3, not from the worker's log server.
    """
    return os.environ["MNIST_CLUSTER_WORKER"]


def _record_ports(ports: Ports, state_dir: Path) -> None:
    """Refuse to start a second cluster on other ports over the pieces of a running one."""
    recorded = state_dir / "cluster.json"
    anything_running = any(running(pid) is not None for pid in state_dir.glob("*.pid"))
    if anything_running and recorded.exists():
        before = Ports(**json.loads(recorded.read_text())["ports"])
        if before != ports:
            sys.exit(f"a cluster from {state_dir} is running with {before}; `make stop` first")
    recorded.write_text(json.dumps({"ports": asdict(ports)}, indent=2) + "\n")


def _secrets(state_dir: Path) -> dict[str, str]:
    """This cluster's passwords and keys: generated on the first start, then read back."""
    path = state_dir / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    keys = {
        "postgres_password": secrets.token_hex(24),
        "redis_password": secrets.token_hex(24),
        "jwt_secret": secrets.token_urlsafe(48),
        "api_secret_key": secrets.token_urlsafe(48),
        # A Fernet key is 32 random bytes, url-safe base64 (what Fernet.generate_key returns).
        "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    # Created 0600, never wider for a moment.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        json.dump(keys, out, indent=2)
    return keys


# --- PostgreSQL -------------------------------------------------------------


def _start_postgres(port: int, state_dir: Path, *, password: str) -> None:
    pid_file, log = state_dir / "postgres.pid", state_dir / "postgres.log"
    root, user = postgres_dir(state_dir), _postgres_user()
    socket = ["-h", str(root), "-p", str(port)]
    if running(pid_file) is None:
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


# --- Redis, the mirror ------------------------------------------------------


def _start_redis(port: int, state_dir: Path, *, password: str) -> None:
    pid_file, log = state_dir / "redis.pid", state_dir / "redis.log"
    if running(pid_file) is not None:
        return
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
    """What every Airflow component gets: the caller's environment, with the cluster's topology on top."""
    database = f"{DATABASE}:{keys['postgres_password']}@{HOST}:{ports.postgres}/{DATABASE}"
    return {
        # What `make` exports, unless the caller says otherwise.
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **os.environ,
        "AIRFLOW_HOME": str(state_dir / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{database}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://:{keys['redis_password']}@{HOST}:{ports.redis}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{database}",
        # Generated once and the same in every component: the API's tokens, the
        # encryption of connections and variables, the signing of log requests.
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        **local_airflow.login_environment(ports.api),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{ports.api}/execution/",
        # Task logs go to S3 when a task ends; the UI reads them there, whichever worker wrote them.
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": TASK_LOGS_URI,
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "aws_default",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.triggerer_log),
        # The store's identity limited to the project's buckets (its admin only creates them).
        "AIRFLOW_CONN_AWS_DEFAULT": local_s3.client_environment(store)["AIRFLOW_CONN_AWS_DEFAULT"],
        "MNIST_MIRRORS": MIRROR_URI,
        "MNIST_MODELS_URI": MODELS_URI,
        "MNIST_ARTIFACTS_URI": ARTIFACTS_URI,
        "MNIST_TRAINING_QUEUE": TRAINING_QUEUE,
        "MNIST_SCORING_QUEUE": SCORING_QUEUE,
    }


def _start_worker(worker: Worker, env: dict[str, str], ports: Ports, state_dir: Path) -> None:
    pid_file = local_airflow.pid_file(state_dir, worker.name)
    if running(pid_file) is not None:
        return
    # Its own directory, as on a host of its own: the working dir, MNIST_DATA_DIR
    # (never shared: tasks exchange data through the artifact store) and local task logs.
    home = state_dir / worker.name
    (home / "data").mkdir(parents=True, exist_ok=True)
    worker_env = {
        **env,
        "MNIST_DATA_DIR": str(home / "data"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports.worker_log(worker)),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "local_cluster.worker_hostname",
        "MNIST_CLUSTER_WORKER": worker.name,
        # Makes this module importable in the worker's processes, for the hostname callable.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), env.get("PYTHONPATH")])),
    }
    command = [local_airflow.airflow_executable(), "celery", "worker", "--celery-hostname", worker.name]
    command += ["--queues", ",".join(worker.queues), "--concurrency", str(worker.concurrency)]
    spawn(command, pid_file=pid_file, log_file=local_airflow.log_file(state_dir, worker.name), env=worker_env, cwd=home)


def _wait_for_workers(env: dict[str, str], state_dir: Path) -> None:
    """Until every worker answers a Celery ping through the broker."""
    from celery import Celery

    app = Celery(broker=env["AIRFLOW__CELERY__BROKER_URL"])
    expected = {f"celery@{w.name}" for w in WORKERS}

    def all_answer() -> bool:
        return expected <= set(app.control.inspect(timeout=2).ping() or {})

    try:
        wait_until(
            all_answer,
            alive=lambda: all(running(local_airflow.pid_file(state_dir, w.name)) is not None for w in WORKERS),
            timeout=180,
            failure="the Celery workers did not answer; see "
            + ", ".join(str(local_airflow.log_file(state_dir, w.name)) for w in WORKERS),
        )
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--state-dir", type=Path, default=Path(".local/cluster"))
    defaults = Ports()
    parser.add_argument("--port", type=int, default=defaults.api, help="the UI and the API")
    parser.add_argument("--s3-port", type=int, default=defaults.s3)
    parser.add_argument("--postgres-port", type=int, default=defaults.postgres)
    parser.add_argument("--redis-port", type=int, default=defaults.redis)
    parser.add_argument(
        "--log-ports",
        type=int,
        nargs=3,
        metavar=("DEFAULT_WORKER", "TRAINING_WORKER", "TRIGGERER"),
        default=[defaults.default_worker_log, defaults.training_worker_log, defaults.triggerer_log],
        help="where the workers and the triggerer serve the logs of what they are running",
    )
    args = parser.parse_args()
    if args.action == "stop":
        stop(args.state_dir)
        return
    default_worker_log, training_worker_log, triggerer_log = args.log_ports
    ports = Ports(
        api=args.port,
        s3=args.s3_port,
        postgres=args.postgres_port,
        redis=args.redis_port,
        default_worker_log=default_worker_log,
        training_worker_log=training_worker_log,
        triggerer_log=triggerer_log,
    )
    start(ports, args.state_dir)


if __name__ == "__main__":
    main()
