"""`python -m mnist_tasks <command>`: the happy path of each pipeline and registry command, and its JSON.

The commands run in this process through main(), on tiny synthetic data: download
from a local HTTP server, prepare, train, evaluate, and models list/show/promote
against moto's S3 server. What each printed is checked against what it wrote.
`train` also runs as a person runs it, in a process of its own, for what the terminal shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mnist_tasks.data.download
from mnist_tasks.files import sha256_file
from mnist_tasks.registry import ModelRegistry, read_manifest
from tests.conftest import REPO
from tests.test_cli import publish_test_model, run
from tests.test_dataset import Tiny, _arrays, web  # noqa: F401  (web: a local HTTP server fixture)

# Fixtures: the tiny prepared dataset, and a model trained on it as `train` does.
from tests.test_train import (  # noqa: F401
    FAST,
    TEST_COUNT,
    TRAIN_COUNT,
    prepared,
    synthetic_digits,
    trained,
    write_prepared,
)

MODELS_BUCKET = "cli-commands"
MODELS_URI = f"s3://{MODELS_BUCKET}/mnist/"
OLD, NEW = 20261121020000, 20261122020000
# test_train.py's small, short training as command-line options: --epochs 3 … --seed 1.
FAST_ARGS = [arg for name, value in {**FAST, "seed": 1}.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


def _json(code: int, out: str, err: str) -> dict | list:
    assert code == 0, err
    return json.loads(out)


# --- the pipeline's steps --------------------------------------------------------------------


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Tiny:
    """Four small MNIST files, and the checksum table that makes them the expected ones."""
    data = Tiny(_arrays())
    monkeypatch.setattr(mnist_tasks.data.download, "MNIST_FILES", data.spec)
    return data


def test_download_fetches_and_verifies_the_four_files_and_prints_them(tiny, web, tmp_path, capsys):  # noqa: F811
    base = web(tiny.gz)

    printed = _json(*run(["download", "--mirror", base, "--data-dir", str(tmp_path)], capsys))

    assert printed["raw_dir"] == str(tmp_path / "raw")
    assert sorted(printed["downloaded"]) == sorted(tiny.spec)
    for name, spec in tiny.spec.items():
        assert printed["files"][name] == {"sha256": spec.sha256, "bytes": spec.size, "source": base + name}
        assert (tmp_path / "raw" / name).read_bytes() == tiny.gz[name]
    assert len(printed["data_sha256"]) == 64

    again = _json(*run(["download", "--mirror", base, "--data-dir", str(tmp_path)], capsys))
    assert again["downloaded"] == []  # the verified copy is not fetched again
    assert again["data_sha256"] == printed["data_sha256"]


def test_prepare_caches_the_arrays_and_prints_where(tiny, tmp_path, capsys):
    tiny.write(tmp_path / "raw")

    printed = _json(*run(["prepare", "--data-dir", str(tmp_path)], capsys))

    cache_dir = Path(printed["cache_dir"])
    assert cache_dir.parent == tmp_path / "prepared"
    assert printed["cache_hit"] is False
    assert (printed["train_count"], printed["test_count"]) == (50, 20)
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        "dataset.json",
        "x_test.npy",
        "x_train.npy",
        "y_test.npy",
        "y_train.npy",
    ]
    assert json.loads((cache_dir / "dataset.json").read_text())["data_sha256"] == printed["data_sha256"]

    again = _json(*run(["prepare", "--data-dir", str(tmp_path)], capsys))
    assert again["cache_hit"] is True
    assert again["cache_dir"] == printed["cache_dir"]


def test_train_writes_the_model_and_its_history_and_prints_their_checksums(prepared, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"

    printed = _json(*run(["train", "--cache-dir", str(prepared), "--out", str(out), *FAST_ARGS], capsys))

    assert printed["model_path"] == str(out / "model.keras")
    assert printed["model_sha256"] == sha256_file(out / "model.keras")
    assert printed["history_path"] == str(out / "history.json")
    assert len(json.loads((out / "history.json").read_text())["history"]) == 3  # one row per epoch
    assert printed["params"]["epochs"] == 3 and printed["params"]["hidden_units"] == 32
    assert printed["params"]["batch_size"] == 32 and printed["params"]["seed"] == 1
    assert printed["params"]["augment"] == "off"  # auto, for the dense model
    assert printed["train_count"] == TRAIN_COUNT
    assert set(printed["final"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_train_in_a_terminal_prints_the_json_alone_on_stdout_and_an_epoch_a_line_on_stderr(prepared, tmp_path):  # noqa: F811
    # Whatever the caller's environment says: the package's own setting is tested.
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "mnist_tasks", "train", "--cache-dir", str(prepared), "--out", str(tmp_path)]
    done = subprocess.run([*command, *FAST_ARGS], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model_path"] == str(tmp_path / "model.keras")
    # Nothing else: TensorFlow's C++ start-up lines (CPU features, absl, NodeDef) are off.
    figures = r"loss [\d.]+, accuracy [\d.]+, val_loss [\d.]+, val_accuracy [\d.]+, learning_rate \S+ \(\d+\.\d s\)"
    lines = done.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], done.stderr
    assert all(re.fullmatch(rf"epoch \d/3: {figures}", line) for line in lines), done.stderr


def test_a_diverging_train_prints_nothing_on_stdout(tmp_path, capsys):
    x, y = synthetic_digits(200, seed=5)
    x[7, 3, 3] = np.inf  # the loss is NaN in the first epoch, and Keras' TerminateOnNaN prints why
    data = write_prepared(tmp_path / "data", x_train=x, y_train=y, x_test=x, y_test=y)

    code, out, err = run(["train", "--cache-dir", str(data), "--out", str(tmp_path / "out"), *FAST_ARGS], capsys)
    assert (code, out) == (2, "")
    assert "Invalid loss" in err and err.endswith("no model was written\n")


def test_evaluate_and_train_refuse_arrays_changed_after_prepare_wrote_them(prepared, tmp_path, capsys):  # noqa: F811
    damaged = tmp_path / "prepared"
    shutil.copytree(prepared, damaged)
    x_test = np.load(damaged / "x_test.npy")
    x_test[:20] = 0  # 20 test images blanked after the checksums were recorded
    np.save(damaged / "x_test.npy", x_test)
    model = str(tmp_path / "model.keras")

    code, out, err = run(["evaluate", "--model", model, "--cache-dir", str(damaged), "--out", str(tmp_path)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: checksum mismatch for {damaged / 'x_test.npy'}: expected")
    (damaged / "dataset.json").unlink()
    code, _, err = run(["train", "--cache-dir", str(damaged), "--out", str(tmp_path / "out"), *FAST_ARGS], capsys)
    assert code == 2 and err.startswith(f"error: {damaged} is not a directory `prepare` wrote")


def test_evaluate_prints_the_metrics_and_the_gate_verdict(trained, prepared, tmp_path, capsys):  # noqa: F811
    model = trained["model_path"]
    args = ["evaluate", "--model", model, "--cache-dir", str(prepared), "--out", str(tmp_path)]

    printed = _json(*run([*args, "--threshold", "0.5"], capsys))

    assert printed["passed"] is True
    assert printed["threshold"] == 0.5
    assert printed["accuracy"] >= 0.5
    assert printed["message"].startswith("accuracy gate passed: test accuracy ")
    assert printed["test_count"] == TEST_COUNT
    assert printed["champion_version"] is None  # no registry here: judged by the threshold alone
    assert printed["metrics_path"] == str(tmp_path / "metrics.json")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["accuracy"] == printed["accuracy"]
    assert written["model_sha256"] == trained["model_sha256"]  # the file named, hashed by the command
    assert printed["pictures"] == {name: str(tmp_path / name) for name in written_pictures(tmp_path)}


def written_pictures(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.png"))


# --- the published models ------------------------------------------------------------------------


def _publish(s3_client, directory: Path, version: int) -> dict:
    """A version with a stand-in model file, as a nightly run of the DAG publishes it."""
    directory.mkdir(parents=True)
    (directory / "model.keras").write_bytes(f"weights of {version}".encode() * 20)
    return publish_test_model(
        s3_client,
        directory / "model.keras",
        models_uri=MODELS_URI,
        version=version,
        run_id=f"scheduled__{version}",
        dag_id="mnist_retraining",
        params={"epochs": 6, "architecture": "dense"},
        data={"data_sha256": "d" * 64},
        metrics={"accuracy": 0.97, "passed": True},
    )


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, s3_client, tmp_path: Path):
    """Two published versions, NEW the latest; the CLI reaches moto through AWS_ENDPOINT_URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    _publish(s3_client, tmp_path / "old", OLD)
    _publish(s3_client, tmp_path / "new", NEW)
    return s3_client


def test_models_list_prints_every_version_oldest_first_and_marks_latest(registry, capsys):
    printed = _json(*run(["models", "list", "-o", "json", "--models-uri", MODELS_URI], capsys))

    assert [row["version"] for row in printed] == [OLD, NEW]
    assert [row["is_latest"] for row in printed] == [False, True]
    assert printed[1]["run_id"] == f"scheduled__{NEW}"
    assert printed[1]["accuracy"] == 0.97 and printed[1]["passed"] is True
    assert printed[1]["data_sha256"] == "d" * 64


def test_models_list_prints_a_table_for_people_and_yaml_on_request(registry, capsys):
    code, out, err = run(["models", "list", "--models-uri", MODELS_URI], capsys)

    assert code == 0, err
    header, rule, old, new = out.splitlines()
    assert header.split()[:3] == ["version", "is_latest", "created_at"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert old.split()[:2] == [str(OLD), "False"] and new.split()[:2] == [str(NEW), "True"]
    assert "d" * 12 in new and "d" * 13 not in new  # a sha256 shortened as git shortens hashes
    assert f"scheduled__{NEW}" in new

    import yaml

    as_yaml = yaml.safe_load(run(["models", "list", "-o", "yaml", "--models-uri", MODELS_URI], capsys)[1])
    assert as_yaml == _json(*run(["models", "list", "-o", "json", "--models-uri", MODELS_URI], capsys))


def test_models_show_prints_the_versions_manifest(registry, capsys):
    printed = _json(*run(["models", "show", str(OLD), "--models-uri", MODELS_URI], capsys))

    assert printed == read_manifest(registry=ModelRegistry(registry, MODELS_URI), version=OLD)
    assert printed["version"] == OLD
    assert printed["run_id"] == f"scheduled__{OLD}"
    assert set(printed["files"]) == {"model.keras"}


def test_models_promote_moves_latest_back_and_prints_the_pointer(registry, capsys):
    args = ["models", "promote", str(OLD), "--reason", "rollback: NEW misreads sevens", "--models-uri", MODELS_URI]

    printed = _json(*run(args, capsys))

    assert printed["version"] == OLD
    assert printed["reason"] == "rollback: NEW misreads sevens"
    assert printed["model_uri"] == f"{MODELS_URI}{OLD}/model.keras"
    assert "@" in printed["moved_by"]  # user@host
    assert printed["serving_uri"] is None  # published without a SavedModel export
    stored = json.loads(registry.get_object(Bucket=MODELS_BUCKET, Key="mnist/latest.json")["Body"].read())
    assert stored == printed
    listed = _json(*run(["models", "list", "-o", "json", "--models-uri", MODELS_URI], capsys))
    assert [row["is_latest"] for row in listed] == [True, False]
