"""`python -m mnist_tasks`: the predict command, and how every command reports this package's errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mnist_tasks.cli import main
from tests.conftest import REPO
from tests.test_predict import glyph, model  # noqa: F401  (model: the small classifier fixture)

MODELS_BUCKET = "cli-models"
MODELS_URI = f"s3://{MODELS_BUCKET}/mnist/"
VERSION = 20261120020000


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of main(argv), in this process."""
    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def dark_digit(path: Path, digit: int | str) -> Path:
    Image.eval(glyph(digit, size=80), lambda v: 255 - v).save(path)
    return path


def publish_test_model(
    s3_client,
    model_path: Path,
    *,
    models_uri: str,
    version: int,
    more_files: dict[str, Path] | None = None,
    **manifest_fields,
) -> dict:
    """Publish a model file (and more_files) as `version` the way the DAG does (manifest, read-back, latest.json).

    manifest_fields replace build_manifest's arguments (run_id, dag_id, params, data, metrics).
    """
    from mnist_tasks.registry import ModelRegistry, build_manifest, publish_model

    fields = {
        "run_id": f"tests__{version}",
        "dag_id": "tests",
        "params": {},
        "data": {},
        "metrics": {"accuracy": 0.9, "passed": True},
        **manifest_fields,
    }
    manifest = build_manifest(version=version, started_at=None, **fields)
    return publish_model(
        registry=ModelRegistry(s3_client, models_uri),
        version=version,
        files={"model.keras": model_path, **(more_files or {})},
        manifest=manifest,
    )


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    dark_digit(folder / "a-seven.png", 7)
    Image.eval(glyph(3, size=80), lambda v: 255 - v).convert("RGB").save(folder / "b-three.jpg", quality=85)
    return folder


# --- errors --------------------------------------------------------------------------------


def test_this_packages_errors_are_one_line_messages_with_exit_code_2(s3_endpoint, s3_client):
    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    done = subprocess.run(
        [sys.executable, "-m", "mnist_tasks", "models", "show", "7", "--models-uri", MODELS_URI],
        env={**os.environ, "AWS_ENDPOINT_URL": s3_endpoint},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"error: no version 7 in {MODELS_URI}: s3://{MODELS_BUCKET}/mnist/7/manifest.json does not exist\n"
    )


def test_other_exceptions_are_one_line_too_and_debug_shows_their_traceback(monkeypatch, capsys):
    import mnist_tasks.registry

    def broken(**_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(mnist_tasks.registry, "list_versions", broken)
    code, out, err = run(["models", "list", "--models-uri", MODELS_URI], capsys)
    assert (code, out) == (2, "")
    assert err == "error: a bug (RuntimeError; --debug shows the traceback)\n"
    with pytest.raises(RuntimeError, match="a bug"):
        main(["--debug", "models", "list", "--models-uri", MODELS_URI])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["download", "--mirror", "notaurl"], "unsupported mirror 'notaurl/'"),
        (["models", "show", "0"], "a version is a positive whole number without leading zeros"),
        (["models", "show", "0042"], "got '0042'"),
        (["report", "007", "--out", "x"], "got '007'"),
        (["models", "download", "007", "--out", "x"], "expected a version number or latest, got '007'"),
        (["models", "list", "--models-uri", "s3://no-such-bucket/m/"], "NoSuchBucket"),
    ],
)
def test_user_mistakes_are_one_line_errors_with_exit_code_2(s3_endpoint, s3_client, tmp_path, argv, message):
    done = subprocess.run(
        [sys.executable, "-m", "mnist_tasks", *argv],
        env={**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "MNIST_DATA_DIR": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_malformed_latest_json_is_a_one_line_error(s3_client, s3_endpoint, monkeypatch, capsys):
    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    s3_client.put_object(Bucket=MODELS_BUCKET, Key="mnist/latest.json", Body=b"{not json")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    code, _, err = run(["models", "list", "--models-uri", MODELS_URI], capsys)
    assert code == 2
    # It names the object, so a person knows what to mend (#19: it used to say only "Expecting property name").
    assert err.startswith(f"error: s3://{MODELS_BUCKET}/mnist/latest.json is not valid JSON: Expecting property name")
    assert "Traceback" not in err


def test_models_repair_on_a_registry_with_its_pointer_is_a_no_op(s3_client, s3_endpoint, monkeypatch, capsys):
    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    s3_client.put_object(Bucket=MODELS_BUCKET, Key="mnist/latest.json", Body=b'{"version": 20261123020000}')
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    code, out, _ = run(["models", "repair", "--models-uri", MODELS_URI], capsys)
    assert (code, json.loads(out)) == (0, {"version": 20261123020000})


def test_predict_refuses_a_directory_without_images_before_loading_any_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no images")
    code, out, err = run(["predict", "--model", str(tmp_path / "absent.keras"), str(tmp_path)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {tmp_path}: directory has no image files")


@pytest.mark.parametrize(
    ("model_arg", "message"),
    [
        ("newest", "error: model 'newest': expected latest, a version number, an s3:// URI or a local .keras file"),
        ("0", "error: model '0': expected latest, a version number"),
        ("s3://bucket/mnist/", "error: s3://bucket/mnist/ names no model: expected s3://bucket/prefix/<version>/"),
        ("{tmp}/absent.keras", "error: {tmp}/absent.keras: no such model file"),
    ],
)
def test_predict_names_what_is_wrong_with_the_model_argument(images, tmp_path, capsys, model_arg, message):
    code, out, err = run(["predict", "--model", model_arg.format(tmp=tmp_path), str(images)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(message.format(tmp=tmp_path))


def test_predict_refuses_a_min_confidence_outside_0_to_1(images, capsys):
    code, _, err = run(["predict", "--min-confidence", "1.5", str(images)], capsys)
    assert code == 2
    assert "--min-confidence: min_confidence must be at most 1, got 1.5" in err


# --- predictions with a local model file ---------------------------------------------------


@pytest.mark.slow
def test_predict_prints_digit_probability_and_top3_and_warns_about_an_unverified_model(
    model_file, images, capsys
):
    code, out, err = run(["predict", "--model", str(model_file), str(images)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(images / "a-seven.png"), str(images / "b-three.jpg")]
    for line, digit in zip(lines, (7, 3), strict=True):
        assert line.split(": ", 1)[1].startswith(f"{digit}  p=")
        assert line.count(",") == 2 and "top 3: " in line
    assert f"warning: no manifest.json beside {model_file}: loading it unverified" in err


@pytest.mark.slow
def test_predict_json_reports_every_file_and_exits_1_when_one_could_not_be_read(model_file, images, capsys):
    (images / "c-broken.png").write_text("not a picture")
    Image.new("L", (60, 60), 255).save(images / "d-blank.png")

    code, out, _ = run(["predict", "--json", "--model", str(model_file), str(images)], capsys)
    assert code == 1
    result = json.loads(out)
    assert result["model"] == {
        "model": str(model_file),
        "model_uri": str(model_file),
        "version": None,
        "model_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "verified_against": None,
        "architecture": "dense",  # from the model itself: no manifest says
        "augment": None,
    }
    rows = {Path(r["file"]).name: r for r in result["predictions"]}
    assert [(name, r["status"], r["digit"]) for name, r in rows.items()] == [
        ("a-seven.png", "ok", 7), ("b-three.jpg", "ok", 3),
        ("c-broken.png", "error", None), ("d-blank.png", "blank", None),
    ]  # fmt: skip
    assert rows["c-broken.png"]["error"].startswith(f"{images / 'c-broken.png'}: not an image")
    assert len(rows["a-seven.png"]["top3"]) == 3

    code, out, _ = run(["predict", "--model", str(model_file), str(images)], capsys)
    assert code == 1
    assert out.splitlines()[2:] == [
        f"{images / 'c-broken.png'}: error: not an image (no format Pillow can read)",
        f"{images / 'd-blank.png'}: blank (no digit found)",
    ]


@pytest.mark.slow
def test_predict_reads_a_number_with_multi_and_saves_what_the_model_saw(model_file, tmp_path, capsys):
    number = dark_digit(tmp_path / "house.png", "407")
    code, out, _ = run(
        ["predict", "--multi", "--save-preprocessed", str(tmp_path / "seen"), "--model", str(model_file), str(number)],
        capsys,
    )
    assert code == 0
    assert out.startswith(f"{number}: 407  digits: 4 p=")
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == ["house_0.png", "house_1.png", "house_2.png"]


@pytest.mark.slow
def test_a_manifest_beside_a_local_model_must_vouch_for_it(model_file, images, tmp_path, capsys):
    folder = tmp_path / "downloaded"
    folder.mkdir()
    local = folder / "model.keras"
    local.write_bytes(model_file.read_bytes())
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    manifest = folder / "manifest.json"

    manifest.write_text(json.dumps({"version": VERSION, "files": {"model.keras": {"sha256": sha, "bytes": 1}}}))
    code, out, err = run(["predict", "--json", "--model", str(local), str(images)], capsys)
    assert code == 0 and "warning" not in err
    assert json.loads(out)["model"] == {
        "model": str(local), "model_uri": str(local), "version": VERSION, "model_sha256": sha,
        "verified_against": str(manifest),
        "architecture": "dense",
        "augment": "off",
    }  # fmt: skip

    manifest.write_text(json.dumps({"version": VERSION, "files": {"model.keras": {"sha256": "0" * 64}}}))
    code, out, err = run(["predict", "--model", str(local), str(images)], capsys)
    assert (code, out) == (2, "")
    assert err == f"error: checksum mismatch for {local}: expected {'0' * 64} (from {manifest}), got {sha}\n"

    manifest.write_text(json.dumps({"version": VERSION, "files": {"other.keras": {"sha256": sha}}}))
    code, out, err = run(["predict", "--model", str(local), str(images)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {manifest} beside {local} records no sha256 for model.keras")


# --- predictions with a published model ----------------------------------------------------


@pytest.mark.slow
def test_predict_with_published_models_checks_them_against_their_manifest(
    model_file, images, s3_endpoint, s3_client, monkeypatch, capsys
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    publish_test_model(s3_client, model_file, models_uri=MODELS_URI, version=VERSION)
    version_dir = f"{MODELS_URI}{VERSION}/"

    for model_arg in ["latest", str(VERSION), version_dir, version_dir + "model.keras", MODELS_URI + "latest.json"]:
        argv = ["predict", "--json", "--model", model_arg, "--models-uri", MODELS_URI, str(images)]
        code, out, err = run(argv, capsys)
        assert code == 0, err
        result = json.loads(out)
        assert result["model"] == {
            "model": model_arg,
            "model_uri": version_dir + "model.keras",
            "version": VERSION,
            "model_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
            "verified_against": version_dir + "manifest.json",
            "architecture": "dense",
            "augment": "off",
        }
        assert [r["digit"] for r in result["predictions"]] == [7, 3]

    # The object is replaced behind the manifest's back: no form of --model may load it.
    s3_client.put_object(Bucket=MODELS_BUCKET, Key=f"mnist/{VERSION}/model.keras", Body=b"tampered")
    for model_arg in ["latest", str(VERSION), version_dir]:
        code, out, err = run(["predict", "--model", model_arg, "--models-uri", MODELS_URI, str(images)], capsys)
        assert (code, out) == (2, "")
        model_uri = f"s3://{MODELS_BUCKET}/mnist/{VERSION}/model.keras"
        assert err.startswith(f"error: checksum mismatch for {model_uri}: expected ")


@pytest.mark.slow
def test_models_download_fetches_a_version_with_its_export_and_predict_checks_the_copy(
    model, model_file, images, s3_endpoint, s3_client, monkeypatch, capsys, tmp_path  # noqa: F811
):
    import tensorflow as tf

    from mnist_tasks.model.serving import export_saved_model

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3_client.create_bucket(Bucket=MODELS_BUCKET)
    export = export_saved_model(model, tmp_path / "run" / "saved_model")
    more = {f"saved_model/{name}": Path(export["path"]) / name for name in export["files"]}
    publish_test_model(s3_client, model_file, models_uri=MODELS_URI, version=VERSION, more_files=more)
    dest = tmp_path / "downloaded"

    code, out, err = run(["models", "download", "latest", "--out", str(dest), "--models-uri", MODELS_URI], capsys)

    assert code == 0, err
    result = json.loads(out)
    assert (result["version"], result["dir"]) == (VERSION, str(dest))
    assert set(result["files"]) == {"model.keras", "manifest.json", *more}
    assert tf.saved_model.load(str(dest / "saved_model")).signatures["serving_default"] is not None
    code, out, err = run(["predict", "--json", "--model", str(dest / "model.keras"), str(images)], capsys)
    assert code == 0, err
    assert json.loads(out)["model"]["verified_against"] == str(dest / "manifest.json")


def test_a_bad_setting_is_a_one_line_error_too(monkeypatch, capsys):
    monkeypatch.setenv("MNIST_RETRY_DELAY_SECONDS", "soon")
    code, _, err = run(["models", "list"], capsys)
    assert code == 2
    assert err == "error: MNIST_RETRY_DELAY_SECONDS must be a whole number greater than 0, got 'soon'\n"
