"""docker-compose.yaml: valid for Compose, and it ships no passwords.

No Docker engine runs here, so the file is checked by Compose's own config
validation (Debian's docker-compose, installed by .ci/run) and by reading it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yaml"
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|KEY", re.IGNORECASE)
# Secrets may only be references that compose refuses to start without.
REQUIRED_REFERENCE = re.compile(r"\$\{[A-Z_]+:\?[^}]+\}")


def _environments(compose: dict):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            yield name, key, str(value)


def test_services_of_the_stack():
    compose = yaml.safe_load(COMPOSE.read_text())
    assert {
        "postgres",
        "minio",
        "minio-init",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    } <= set(compose["services"])


def test_no_secret_has_a_default_value():
    compose = yaml.safe_load(COMPOSE.read_text())
    checked = 0
    for service, key, value in _environments(compose):
        if SECRET_NAMES.search(key) and key != "AIRFLOW__CORE__EXECUTION_API_SERVER_URL":
            assert REQUIRED_REFERENCE.fullmatch(value), f"{service}.{key} has a literal value"
            checked += 1
    assert checked >= 4
    # Credentials embedded in URLs and connection strings are references too.
    assert not re.search(r"://[^:/\s]+:(?!\$\{)[^@\s]+@", COMPOSE.read_text())


@pytest.mark.skipif(
    shutil.which("docker-compose") is None and not os.environ.get("CI"),
    reason="docker-compose is installed by `make test` (scripts/install_system_packages.sh)",
)
def test_compose_validates_with_values_and_refuses_without(tmp_path):
    env = tmp_path / "ci.env"
    env.write_text(
        "POSTGRES_PASSWORD=x\nMINIO_ROOT_USER=u\nMINIO_ROOT_PASSWORD=p\nAIRFLOW_JWT_SECRET=j\nAIRFLOW_FERNET_KEY=f\n"
    )
    ok = subprocess.run(
        ["docker-compose", "--env-file", str(env), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = subprocess.run(
        ["docker-compose", "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert refused.returncode != 0
    assert "in .env" in refused.stderr
