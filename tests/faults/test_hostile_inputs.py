"""Hostile inputs and broken machinery, round 3 (issue 19): each case as a user or a crash meets it.

Through the real parts: the `python -m mnist_tasks` command in its own process, the
pipeline's steps on moto's S3 server, dag.test(), Airflow's API app, real process trees
killed with SIGKILL. Each scenario asserts its own outcome and records itself in the
ledger (conftest.py), which audits the registry where one was touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_tasks.registry import ModelRegistry, read_latest
from tests.conftest import REPO, alive_in_session, script_module, wait_until_written
from tests.e2e.conftest import ARTIFACTS_BUCKET, MODELS_BUCKET, MODELS_URI, load_dag_for_test
from tests.test_cli import publish_test_model, run
from tests.test_preprocess import glyph
from tests.test_train import FAST, prepared, trained  # noqa: F401  (fixtures: a tiny dataset, a model trained on it)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# What the reporter gave `predict`: killed at 2.5 GB, it answered for no file at all.
MEMORY_LIMIT = 2.5 * 2**30


# `python -m mnist_tasks`, reporting its own peak RSS at exit into the file its first argument names.
# Not the kernel's ru_maxrss: a child's starts from its parent's at fork (here pytest's, GBs).
REPORTING_PEAK = """
import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def report():
    with open("/proc/self/status") as status:
        peak_kb = next(line for line in status if line.startswith("VmHWM")).split()[1]
    with open(peak_file, "w") as out:
        out.write(str(int(peak_kb) * 1024))
atexit.register(report)
sys.argv[0] = "mnist_tasks"
runpy.run_module("mnist_tasks", run_name="__main__", alter_sys=True)
"""


def _python_child(args: list[str], peak_file: Path) -> tuple[int, str, int]:
    """(exit code, stdout, peak resident bytes) of `python -m mnist_tasks ARGS` in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-c", REPORTING_PEAK, str(peak_file), *args], capture_output=True, text=True, cwd=REPO
    )
    return done.returncode, done.stdout, int(peak_file.read_text())


def test_hostile_images_cost_bounded_memory_and_never_the_good_files_answer(trained, tmp_path, ledger):  # noqa: F811
    images = tmp_path / "scans"
    images.mkdir()
    board = (np.indices((6000, 6000)) // 4).sum(axis=0) % 2  # 16 KB of PNG, 36 megapixels
    Image.fromarray(board.astype(bool)).save(images / "a-checkerboard.png", optimize=True)
    dots = np.ones((2000, 2000), dtype=bool)
    dots[::8, ::8] = False
    Image.fromarray(dots).save(images / "b-dots.png", optimize=True)
    Image.fromarray(np.ones((6000, 6000), dtype=bool)).save(images / "c-blank-canvas.png", optimize=True)
    glyph(7).save(images / "d-good.png")

    code, out, peak = _python_child(
        ["predict", "--multi", "--model", trained["model_path"], "--json", str(images)], tmp_path / "peak"
    )

    rows = {Path(row["file"]).name: row for row in json.loads(out)["predictions"]}
    assert code == 1  # some files failed; each row says which and why
    assert rows["a-checkerboard.png"]["error"].endswith("stroke runs, limit 200000 (noise, not digits)")
    assert rows["b-dots.png"]["error"].endswith("too many separate marks: more than 100 digits in one image")
    assert rows["c-blank-canvas.png"]["status"] == "blank"
    assert rows["d-good.png"]["status"] in ("ok", "low_confidence") and len(rows["d-good.png"]["digits"]) == 1
    assert peak < MEMORY_LIMIT, f"peak {peak / 2**30:.2f} GB"
    ledger.scenario("hostile images beside a good one: checkerboard, dots, a huge blank canvas", bad_inputs=3)


def test_run_ids_that_differ_only_in_punctuation_keep_separate_training_artifacts(
    pipeline_env, s3_client, tmp_path, ledger
):
    from mnist_tasks.flow import pipeline
    from mnist_tasks.flow.artifacts import ArtifactStore

    store = ArtifactStore(f"s3://{ARTIFACTS_BUCKET}/store/", cache_dir=tmp_path / "cache", s3_client=s3_client)
    downloaded = pipeline.download(store=store, mirrors=[pipeline_env.as_uri() + "/"], raw_dir=tmp_path / "raw")
    dataset = pipeline.prepare(store=store, downloaded=downloaded, cache_root=tmp_path / "prepared")
    params = {"epochs": 1, "batch_size": 16, "learning_rate": 0.001, "hidden_units": 16}
    models = [
        pipeline.train(
            store=store, prepared=dataset, dag_id="mnist_retraining", run_id=run_id, params={**params, "seed": seed}
        )["model"]
        for seed, run_id in enumerate(["collide:1", "collide+1", "collide_1"], start=1)
    ]

    assert len({model["uri"] for model in models}) == 3, models  # `:` and `+` both became `_`: one object
    assert len({model["sha256"] for model in models}) == 3  # three seeds, three models
    for i, model in enumerate(models):  # each still in the store, as its run handed it over
        store.fetch(model, tmp_path / "check" / str(i))
    ledger.scenario("three runs whose ids differ only in ':', '+' and '_'", bad_inputs=2)


def _two_versions(s3_client, trained: dict) -> None:  # noqa: F811
    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    for version in (1, 2):
        publish_test_model(s3_client, Path(trained["model_path"]), models_uri=MODELS_URI, version=version)


@pytest.fixture
def cli_env(monkeypatch, s3_endpoint):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("MNIST_MODELS_URI", MODELS_URI)


def test_one_damaged_manifest_hides_no_other_version(cli_env, s3_client, trained, tmp_path, capsys, ledger):  # noqa: F811
    _two_versions(s3_client, trained)
    key = "mnist/1/manifest.json"
    damaged = b"{not json"
    s3_client.put_object(Bucket=MODELS_BUCKET, Key=key, Body=damaged)

    code, out, err = run(["models", "list", "-o", "json"], capsys)

    assert code == 0, err
    old, new = json.loads(out)
    assert old["error"].startswith(f"checksum mismatch for s3://{MODELS_BUCKET}/{key}")
    assert (new["version"], new["error"], new["is_latest"]) == (2, None, True)
    s3_client.delete_object(Bucket=MODELS_BUCKET, Key=key)  # what `models list` told a person to look at
    s3_client.delete_object(Bucket=MODELS_BUCKET, Key="mnist/1/manifest.sha256")
    ledger.scenario("a damaged manifest of an old version, listed", bad_inputs=1)
    ledger.audit(s3_client, MODELS_URI)


def test_an_edited_manifest_of_an_old_version_is_noticed_and_never_promoted(
    cli_env, s3_client, trained, tmp_path, capsys, ledger  # noqa: F811
):
    _two_versions(s3_client, trained)
    key = "mnist/1/manifest.json"
    original = s3_client.get_object(Bucket=MODELS_BUCKET, Key=key)["Body"].read()
    edited = json.loads(original)
    edited["metrics"]["accuracy"] = 0.999
    s3_client.put_object(Bucket=MODELS_BUCKET, Key=key, Body=json.dumps(edited).encode())

    code, _, err = run(["models", "promote", "1", "--reason", "roll back"], capsys)

    assert code == 2
    assert err.startswith(f"error: checksum mismatch for s3://{MODELS_BUCKET}/{key}: expected ")
    assert f"(from s3://{MODELS_BUCKET}/mnist/1/manifest.sha256)" in err
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == 2
    s3_client.put_object(Bucket=MODELS_BUCKET, Key=key, Body=original)  # mended, for the audit
    ledger.scenario("the manifest of a version that is not latest edited, then promoted", bad_inputs=1)
    ledger.audit(s3_client, MODELS_URI)


def test_the_cli_refuses_a_prepared_cache_edited_after_prepare(prepared, trained, tmp_path, capsys, ledger):  # noqa: F811
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(prepared, cache)
    for split in ("train", "test"):  # 200 images of each split blanked after prepare recorded their sha256s
        images = np.load(cache / f"x_{split}.npy")
        images[:200] = 0
        np.save(cache / f"x_{split}.npy", images)

    given = ["--cache-dir", str(cache), "--out"]
    for split, argv in (
        ("test", ["evaluate", "--model", trained["model_path"], *given, str(tmp_path / "e")]),
        ("train", ["train", *given, str(tmp_path / "t"), "--epochs", str(FAST["epochs"])]),
    ):
        code, _, err = run(argv, capsys)
        assert code == 2
        assert err.startswith(f"error: checksum mismatch for {cache / f'x_{split}.npy'}: expected ")
    assert not (tmp_path / "e").exists() and not (tmp_path / "t").exists()
    ledger.scenario("200 images blanked in a prepared cache handed to evaluate and train", bad_inputs=2)


def test_a_run_dated_in_the_future_is_refused_before_anything_exists(pipeline_env, s3_client, ledger):
    from airflow.models.dagrun import DagRun

    dag = load_dag_for_test("mnist_retraining")
    with pytest.raises(ValueError, match=r"^logical date 2099-01-01T00:00:00\+00:00 is in the future"):
        dag.test(logical_date=datetime(2099, 1, 1, tzinfo=UTC))

    assert DagRun.find(dag_id="mnist_retraining", logical_date=datetime(2099, 1, 1, tzinfo=UTC)) == []
    assert s3_client.list_objects_v2(Bucket=MODELS_BUCKET).get("KeyCount", 0) == 0
    ledger.scenario("a run with the logical date 2099-01-01", bad_inputs=1)
    ledger.audit(s3_client, MODELS_URI)


def test_the_models_apps_own_api_pages_need_a_login_or_do_not_exist(ledger):
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True)
    client = TestClient(create_app(apps="core"))
    pages = ["docs", "redoc", "openapi.json", "docs/oauth2-redirect"]
    for page in pages:
        assert client.get(f"/mnist-models/{page}").status_code in (401, 404), page
    assert client.get("/mnist-models/").status_code == 401  # the page itself is there, behind the login
    ledger.scenario("the models page's FastAPI docs asked for without a login", bad_inputs=len(pages))


# A server that ignores SIGTERM (LocalExecutor's workers do) with a grandchild in a process
# group of its own (Airflow's task runner), which killing the leader's group would miss.
SERVER = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def test_a_crashed_server_leaves_nothing_running_after_stop(tmp_path, ledger):
    processes = script_module("local_processes")
    pid_file, child_file = tmp_path / "scheduler.pid", tmp_path / "child"
    leader = processes.spawn(
        [sys.executable, "-c", SERVER, str(child_file)], pid_file=pid_file, log_file=tmp_path / "scheduler.log"
    )
    wait_until_written(child_file)
    os.kill(leader.pid, signal.SIGKILL)  # the crash: its children live on, orphaned
    leader.wait(timeout=30)
    assert len(alive_in_session(leader.pid)) == 1

    processes.stop(pid_file, grace_seconds=2)  # what `make stop` does

    assert alive_in_session(leader.pid) == []
    assert not pid_file.exists()
    ledger.scenario("a server killed with SIGKILL, its workers ignoring SIGTERM, then stopped")


def test_a_stack_started_with_sigint_ignored_still_stops_on_sigint(tmp_path, ledger):
    # A script's background job (`make test &`, `nohup … &`) starts with SIGINT ignored.
    ready, got = tmp_path / "ready", tmp_path / "got"
    starter = f"""
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.path.insert(0, {str(REPO / "scripts")!r})
import local_processes
local_processes.spawn(
    ["sh", "-c", "trap 'echo INT > {got}; exit 0' INT; echo 1 > {ready}; while :; do sleep 0.1; done"],
    pid_file=local_processes.Path({str(tmp_path / "db.pid")!r}),
    log_file=local_processes.Path({str(tmp_path / "db.log")!r}),
)
"""
    subprocess.run([sys.executable, "-c", starter], check=True, timeout=120)
    wait_until_written(ready)

    stopped = script_module("local_processes").stop(tmp_path / "db.pid", grace_seconds=30, first_signal=signal.SIGINT)

    assert stopped is True
    assert wait_until_written(got).strip() == "INT"
    ledger.scenario("a server spawned from a shell that ignores SIGINT, stopped with SIGINT")
