"""docker-compose.yaml: a CeleryExecutor cluster that Compose accepts, and that ships no secret.

No Docker engine runs here, so the file is checked by Compose's own config
validation (Debian's docker-compose, installed by .ci/run) and by reading it. The
same topology runs for real, natively, in `make cluster` (tests/system/).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
POLICY = REPO / "deploy" / "minio-airflow-policy.json"
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
ONE_SHOT = {"airflow-init", "minio-init"}
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
    assert {"postgres", "redis", "minio", "minio-init"} | AIRFLOW_COMPONENTS == set(services)
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
        "AIRFLOW__API__BASE_URL",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
        "MNIST_MODELS_URI",
        "MNIST_PREDICT_INPUT_URI",
        "MNIST_PREDICTIONS_URI",
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
    assert "mc ready local" in checks["minio"]


def test_workers_serve_their_queues_and_scale(compose):
    def worker_options(service: str) -> dict[str, str]:
        argv = shlex.split(compose["services"][service]["command"])
        assert argv[:2] == ["celery", "worker"]
        return dict(zip(argv[2::2], argv[3::2], strict=True))

    assert worker_options("airflow-worker") == {"--queues": "default"}
    assert worker_options("airflow-worker-training") == {"--queues": "training", "--concurrency": "1"}
    for worker in WORKERS:
        service = compose["services"][worker]
        # Either would make `docker compose up --scale airflow-worker=3` fail.
        assert "container_name" not in service and "ports" not in service, worker
        assert service["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_task_logs_go_to_s3(compose):
    common = compose["x-airflow-common"]["environment"]
    assert common["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "true"
    assert common["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "s3://airflow-logs/logs"
    assert common["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == "aws_default"


def test_visibility_timeout_outlasts_the_longest_task_and_run(compose):
    common = compose["x-airflow-common"]["environment"]
    timeout = int(common["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"])
    assert timeout > 3600  # train's execution_timeout
    assert timeout > DAG_RUN_TIMEOUT_SECONDS


def test_airflow_reaches_s3_with_its_own_limited_key_not_minios_root(compose):
    connection = json.loads(compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_AWS_DEFAULT"])
    assert connection["login"].startswith("${AIRFLOW_S3_ACCESS_KEY:?")
    assert connection["password"].startswith("${AIRFLOW_S3_SECRET_KEY:?")
    for service in AIRFLOW_COMPONENTS:
        assert not any("MINIO_ROOT" in value for value in _env(compose, service).values()), service

    init = compose["services"]["minio-init"]["command"][0]
    assert set(re.findall(r"local/([a-z-]+)", init)) == BUCKETS
    assert 'mc admin user add local "$$AIRFLOW_S3_ACCESS_KEY" "$$AIRFLOW_S3_SECRET_KEY"' in init
    assert "mc admin policy create local mnist-airflow /deploy/minio-airflow-policy.json" in init
    assert 'mc admin policy attach local mnist-airflow --user "$$AIRFLOW_S3_ACCESS_KEY"' in init
    assert "./deploy/minio-airflow-policy.json:/deploy/minio-airflow-policy.json:ro" in (
        compose["services"]["minio-init"]["volumes"]
    )


def test_minio_policy_allows_object_access_on_the_project_buckets_only():
    statements = json.loads(POLICY.read_text())["Statement"]
    assert all(statement["Effect"] == "Allow" for statement in statements)
    granted = {
        (action, resource)
        for statement in statements
        for action in statement["Action"]
        for resource in statement["Resource"]
    }
    bucket_actions = {"s3:ListBucket", "s3:GetBucketLocation"}
    object_actions = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert granted == {(a, f"arn:aws:s3:::{b}") for a in bucket_actions for b in BUCKETS} | {
        (a, f"arn:aws:s3:::{b}/*") for a in object_actions for b in BUCKETS
    }


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
