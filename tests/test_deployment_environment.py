"""deploy/environment.mk, the settings every stack shares, and the stacks that must agree with it.

`make` includes the file; scripts/local_airflow.py (make airflow's components) and
scripts/local_cluster.py (make cluster's) read it through scripts/stack_environment.py;
docker-compose.yaml holds it as a block that script writes. Each test builds a stack's
environment as the stack does, without starting anything, and compares it with the file:
every setting is there with the file's value, and only a default (`?=`) gives way to
what the caller exported.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, script_module

stack_environment = script_module("stack_environment")
SETTINGS = stack_environment.read_settings()
SHARED = {setting.name for setting in SETTINGS}
COMPOSE = REPO / "docker-compose.yaml"
# What the scripts build an environment from, made up: nothing starts here.
KEYS = {
    name: f"x-{name}" for name in ("postgres_password", "redis_password", "jwt_secret", "api_secret_key", "fernet_key")
}
STORE = {"endpoint": "http://127.0.0.1:9180", "pipeline": {"access_key": "AK", "secret_key": "SK"}}
# The settings the two CeleryExecutor stacks, make cluster and compose, hold to each other.
CELERY_SETTINGS = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__LOGGING__REMOTE_LOGGING",
    "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER",
    "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID",
    "MNIST_TRAINING_QUEUE",
    "MNIST_SCORING_QUEUE",
)
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|KEY|CONN_|SQL_ALCHEMY|BROKER|RESULT_BACKEND", re.IGNORECASE)


def _caller_sets_everything() -> dict[str, str]:
    """An environment that exports every shared setting with a value of its own."""
    return {name: f"callers-{name.lower()}" for name in SHARED}


def _expected(caller: dict[str, str], project_dir: Path = REPO) -> dict[str, str]:
    return {
        s.name: caller.get(s.name, s.resolved(project_dir)) if s.default else s.resolved(project_dir) for s in SETTINGS
    }


def _shared_part(environment: dict[str, str]) -> dict[str, str | None]:
    return {name: environment.get(name) for name in SHARED}


def _make_environment(target: str, caller: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The environment `make <target>` runs its recipe in: `make -n`, with one recipe that runs anyway (`+`)."""
    dump = tmp_path / f"{target}.env"
    done = subprocess.run(
        ["make", "-n", "--eval", f"print-env: ; +@env -0 > {dump}", "--eval", f"{target}: print-env", target],
        cwd=REPO,
        env={"PATH": os.environ["PATH"], **caller},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(item.split("=", 1) for item in dump.read_text().split("\0") if item)


@pytest.mark.skipif(shutil.which("make") is None and not os.environ.get("CI"), reason="make is not installed")
@pytest.mark.parametrize("target", ["run", "airflow", "cluster"])
@pytest.mark.parametrize("caller", [{}, _caller_sets_everything()], ids=["clean", "caller-exports-all"])
def test_make_exports_the_file(target, caller, tmp_path):
    assert _shared_part(_make_environment(target, caller, tmp_path)) == _expected(caller)


@pytest.mark.parametrize("caller", [{}, _caller_sets_everything()], ids=["clean", "caller-exports-all"])
def test_make_airflows_components_get_the_file(caller, monkeypatch):
    for name in SHARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in caller.items():
        monkeypatch.setenv(name, value)
    environment = script_module("local_airflow")._environment(8080, 5632, KEYS)
    assert _shared_part(environment) == _expected(caller)


@pytest.mark.parametrize("caller", [{}, _caller_sets_everything()], ids=["clean", "caller-exports-all"])
def test_make_clusters_components_get_the_file(caller, monkeypatch, tmp_path):
    for name in SHARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in caller.items():
        monkeypatch.setenv(name, value)
    local_cluster = script_module("local_cluster")
    environment = local_cluster._airflow_environment(local_cluster.Ports(), tmp_path, KEYS, STORE)
    assert _shared_part(environment) == _expected(caller)


def test_compose_holds_the_files_block():
    text = COMPOSE.read_text()
    assert stack_environment.with_block(text, stack_environment.compose_block(SETTINGS)) == text, (
        "docker-compose.yaml differs from deploy/environment.mk: run `python scripts/stack_environment.py --write`"
    )


def test_every_airflow_component_in_compose_gets_the_file():
    compose = yaml.safe_load(COMPOSE.read_text())
    # A default as a variable of .env, which compose replaces with the file's value when empty or unset.
    expected = {
        s.name: f"${{{s.name}:-{s.resolved('/opt/airflow')}}}" if s.default else s.resolved("/opt/airflow")
        for s in SETTINGS
    }
    components = [
        name
        for name, service in compose["services"].items()
        if "AIRFLOW__CORE__EXECUTOR" in (service.get("environment") or {})
    ]
    assert len(components) == 8  # init, api-server, scheduler, dag-processor, triggerer, two workers, flower
    for name in components:
        assert _shared_part(compose["services"][name]["environment"]) == expected, name


def test_the_image_keeps_dags_and_plugins_where_compose_points():
    dockerfile = (REPO / "Dockerfile").read_text()
    for folder in ("dags", "plugins"):
        assert re.search(rf"^COPY .*\s{folder} {stack_environment.IMAGE_PROJECT_DIR}/{folder}$", dockerfile, re.M)


def test_the_celery_stacks_agree(monkeypatch, tmp_path):
    """make cluster is compose's topology on one machine: the same executor, queues and remote task logs."""
    for name in CELERY_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    local_cluster = script_module("local_cluster")
    make_cluster = local_cluster._airflow_environment(local_cluster.Ports(), tmp_path, KEYS, STORE)
    compose = yaml.safe_load(COMPOSE.read_text())["x-airflow-common"]["environment"]

    def as_airflow_reads(value: str) -> str:  # its booleans in any case
        return value.lower() if value.lower() in ("true", "false") else value

    for name in CELERY_SETTINGS:
        assert as_airflow_reads(make_cluster[name]) == as_airflow_reads(str(compose[name])), name


def test_the_files_mnist_settings_are_the_products_own_defaults():
    """Spelled out so every stack shows them; they change nothing the product would not do unset."""
    from mnist_tasks.settings import Settings

    mnist = {
        name: value for name, value in stack_environment.shared_environment({}).items() if name.startswith("MNIST_")
    }
    assert len(mnist) >= 10
    assert Settings.from_env(mnist) == Settings.from_env({})


def test_every_bucket_the_file_names_is_in_every_store():
    buckets = {
        value.removeprefix("s3://").split("/")[0]
        for value in stack_environment.shared_environment({}).values()
        if value.startswith("s3://")
    }
    assert buckets == {"mnist-models", "mnist-artifacts", "mnist-inbox", "mnist-predictions"}
    assert buckets <= set(script_module("local_s3").BUCKETS)
    assert buckets <= set(yaml.safe_load(COMPOSE.read_text())["x-s3-buckets"].split())


def test_no_secret_is_a_shared_setting():
    """Secrets never have defaults: compose requires each from .env, the local stacks generate theirs."""
    for setting in SETTINGS:
        assert not SECRET_NAMES.search(setting.name), setting.name
        assert not re.search(r"://[^/\s]*@", setting.value), setting.name


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        ("AIRFLOW__CORE__LOAD_EXAMPLES = False", "not `export NAME = value`"),
        ("export AIRFLOW__CORE__LOAD_EXAMPLES := False", "not `export NAME = value`"),
        ("export AIRFLOW__CORE__DAGS_FOLDER = $(HOME)/dags", "a $ (other than $(PROJECT_DIR))"),
        ("export MNIST_ALERT_EMAIL_TO = ops@example.com # the on-call", "a $ (other than $(PROJECT_DIR))"),
        ('export MNIST_ALERT_EMAIL_TO = "ops@example.com"', "quote"),
        ("export MNIST_ALERT_EMAIL_TO = ops@example.com ", "surrounding spaces"),
    ],
)
def test_a_line_make_and_python_would_read_differently_is_refused(tmp_path, line, refused):
    source = tmp_path / "environment.mk"
    source.write_text(f"# The opening comment.\n\n# What it is.\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(refused)) as error:
        stack_environment.read_settings(source)
    assert f"{source}:4" in str(error.value)


def test_a_setting_given_twice_is_refused(tmp_path):
    source = tmp_path / "environment.mk"
    source.write_text(
        "# The opening comment.\n\nexport MNIST_RUN_DEADLINE_MINUTES ?= 120\nexport MNIST_RUN_DEADLINE_MINUTES = 60\n"
    )
    with pytest.raises(ValueError, match="set more than once: MNIST_RUN_DEADLINE_MINUTES"):
        stack_environment.read_settings(source)


def test_compose_block_carries_each_settings_comment_and_keeps_the_rest_of_the_file():
    settings = stack_environment.read_settings()
    block = stack_environment.compose_block(settings)
    assert all(f"    # {line}".rstrip() in block.splitlines() for s in settings for line in s.comment)
    text = COMPOSE.read_text()
    before, after = text.split(stack_environment.BEGIN + "\n")[0], text.split(stack_environment.END + "\n")[1]
    assert stack_environment.with_block(text, "    # nothing\n") == before + "    # nothing\n" + after
