"""registry/publish.py against moto's S3 server: version numbers, keys, manifest checksums, the pointer, refusals."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.registry import (
    GateFailedError,
    LatestMovedError,
    ModelRegistry,
    PointerMissingError,
    PublishVerificationError,
    VersionConflictError,
    build_manifest,
    list_versions,
    publish_model,
    read_latest,
    read_latest_state,
    verify_version,
    version_for,
)
from mnist_tasks.registry.provenance import LIBRARIES, SOURCE_ROOT, git_state

BUCKET = "models"
MODELS_URI = f"s3://{BUCKET}/mnist"  # no trailing slash on purpose: publish normalises it
VERSION = 20261123020000


@pytest.fixture
def bucket(s3_client) -> str:
    s3_client.create_bucket(Bucket=BUCKET)
    return BUCKET


def _files(directory: Path, model_bytes: bytes = b"weights" * 50) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.keras").write_bytes(model_bytes)
    (directory / "metrics.json").write_text(json.dumps({"accuracy": 0.97}))
    return {"model.keras": directory / "model.keras", "metrics.json": directory / "metrics.json"}


# A SavedModel export's files as Keras writes them; publish treats them as bytes.
EXPORT = {
    "saved_model/fingerprint.pb": b"fingerprint",
    "saved_model/saved_model.pb": b"graph" * 100,
    "saved_model/variables/variables.data-00000-of-00001": b"weights" * 300,
    "saved_model/variables/variables.index": b"index",
}


def _files_with_export(directory: Path, model_bytes: bytes = b"weights" * 50) -> dict[str, Path]:
    files = _files(directory, model_bytes)
    for name, body in EXPORT.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(body + model_bytes)  # another model, another export
        files[name] = directory / name
    return files


def _manifest(version: int = VERSION, run_id: str = "scheduled__a", metrics: dict | None = None) -> dict:
    return build_manifest(
        version=version,
        run_id=run_id,
        dag_id="mnist_retraining",
        params={"epochs": 1, "seed": 42},
        data={"data_sha256": "d" * 64, "files": {"train-images-idx3-ubyte.gz": "e" * 64}},
        metrics={"accuracy": 0.97, "loss": 0.1, "passed": True} if metrics is None else metrics,
        started_at="2026-11-23T02:00:05+00:00",
    )


def _bucket_state(s3_client) -> dict[str, bytes]:
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return {k: s3_client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def test_version_for_is_the_utc_logical_date_as_an_integer() -> None:
    assert version_for(datetime(2026, 11, 23, 2, 0, tzinfo=UTC)) == 20261123020000
    # The same instant written in another zone is the same version.
    plus_two = timezone(timedelta(hours=2))
    assert version_for(datetime(2026, 11, 23, 4, 0, tzinfo=plus_two)) == 20261123020000

    instants = [
        datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC),
        datetime(2027, 10, 2, 0, 0, 0, tzinfo=UTC),
    ]
    versions = [version_for(t) for t in instants]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_version_for_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        version_for(datetime(2026, 11, 23, 2, 0))


def test_build_manifest_records_provenance() -> None:
    manifest = _manifest()
    json.dumps(manifest)  # it must be storable as is

    assert manifest["schema"] == 1
    assert manifest["version"] == VERSION
    assert manifest["run_id"] == "scheduled__a" and manifest["dag_id"] == "mnist_retraining"
    assert manifest["data"]["data_sha256"] == "d" * 64
    assert manifest["params"] == {"epochs": 1, "seed": 42}
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None

    assert set(manifest["libraries"]) == set(LIBRARIES) == {
        "tensorflow",
        "keras",
        "numpy",
        "pillow",
        "boto3",
        "apache-airflow",
        "apache-airflow-providers-amazon",
    }
    assert manifest["libraries"]["numpy"] == importlib.metadata.version("numpy")
    # Installed as tensorflow-cpu, recorded under its import name.
    assert manifest["libraries"]["tensorflow"] is not None

    code = manifest["code"]
    assert set(code) == {"package", "version", "git_commit", "git_dirty"}
    assert code["version"] == importlib.metadata.version("mnist-retraining")


def test_git_state_reads_the_checkout_at_the_source_root(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "first")
    assert git_state(tmp_path) == {"git_commit": git("rev-parse", "HEAD"), "git_dirty": False}

    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["git_dirty"] is True

    # A package installed somewhere inside another repository is not that repository's code.
    (tmp_path / "site-packages").mkdir()
    assert git_state(tmp_path / "site-packages") == {"git_commit": None, "git_dirty": None}


def test_the_source_root_is_the_directory_that_holds_the_package() -> None:
    """When publish.py moved into registry/, SOURCE_ROOT still went up one level only: the package's
    own directory, never a checkout's top level, so every manifest recorded no git commit."""
    assert (SOURCE_ROOT / "mnist_tasks" / "__init__.py").is_file()


@pytest.mark.parametrize(
    ("models_uri", "prefix"),
    [("s3://models/mnist", "mnist/"), ("s3://models/a/b/", "a/b/"), ("s3://models", ""), ("s3://models/", "")],
)
def test_publish_uploads_the_version_then_points_latest_at_it(
    s3_client, bucket: str, tmp_path: Path, models_uri: str, prefix: str
) -> None:
    files = _files(tmp_path / "run")
    result = publish_model(
        registry=ModelRegistry(s3_client, models_uri), version=VERSION, files=files, manifest=_manifest()
    )

    base = f"{prefix}{VERSION}/"
    stored = _bucket_state(s3_client)
    assert set(stored) == {
        base + "claim.json",
        base + "model.keras",
        base + "metrics.json",
        base + "manifest.json",
        base + "manifest.sha256",
        prefix + "latest.json",
    }
    assert json.loads(stored[base + "claim.json"])["run_id"] == "scheduled__a"

    manifest = json.loads(stored[base + "manifest.json"])
    assert set(manifest["files"]) == {"model.keras", "metrics.json"}
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": hashlib.sha256(stored[base + name]).hexdigest(), "bytes": len(stored[base + name])}
        assert stored[base + name] == files[name].read_bytes()
    assert manifest["run_id"] == "scheduled__a"

    manifest_sha = hashlib.sha256(stored[base + "manifest.json"]).hexdigest()
    assert stored[base + "manifest.sha256"] == f"{manifest_sha}  manifest.json\n".encode()  # sha256sum -c reads it
    latest = json.loads(stored[prefix + "latest.json"])
    assert latest["version"] == VERSION
    assert latest["manifest_key"] == base + "manifest.json"
    assert latest["manifest_sha256"] == manifest_sha
    assert latest["model_uri"] == f"s3://{BUCKET}/{base}model.keras"
    assert datetime.fromisoformat(latest["updated_at"]).tzinfo is not None

    assert result == {
        "version": VERSION,
        "version_uri": f"s3://{BUCKET}/{base}",
        "model_uri": f"s3://{BUCKET}/{base}model.keras",
        "manifest_uri": f"s3://{BUCKET}/{base}manifest.json",
        "latest_uri": f"s3://{BUCKET}/{prefix}latest.json",
        "manifest_sha256": manifest_sha,
        "latest_version": VERSION,
        "latest_moved": True,
        "serving_uri": None,  # no SavedModel among its files
    }
    head = s3_client.head_object(Bucket=BUCKET, Key=base + "metrics.json")
    assert head["ContentType"] == "application/json"


def test_a_retry_of_the_same_run_completes_the_same_version(s3_client, bucket: str, tmp_path: Path) -> None:
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=VERSION, files=_files(tmp_path / "1"), manifest=_manifest()
    )
    # The first attempt died after its claim, mid-upload: no manifest (nor its seal), one file missing,
    # latest not moved.
    for key in (
        f"mnist/{VERSION}/manifest.json", f"mnist/{VERSION}/manifest.sha256", f"mnist/{VERSION}/model.keras",
        "mnist/latest.json",
    ):  # fmt: skip
        s3_client.delete_object(Bucket=BUCKET, Key=key)
    assert list_versions(registry=ModelRegistry(s3_client, MODELS_URI)) == []  # unfinished: not a version

    result = publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=VERSION, files=_files(tmp_path / "2"), manifest=_manifest()
    )
    # And a retry after it completed changes nothing.
    again = publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=VERSION, files=_files(tmp_path / "3"), manifest=_manifest()
    )

    stored = _bucket_state(s3_client)
    assert {k.split("/")[1] for k in stored} == {str(VERSION), "latest.json"}
    assert again["manifest_sha256"] == result["manifest_sha256"]
    assert json.loads(stored["mnist/latest.json"])["manifest_sha256"] == result["manifest_sha256"]
    assert verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=VERSION)["run_id"] == "scheduled__a"


def test_a_retry_seals_a_manifest_its_first_attempt_wrote_but_did_not_seal(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    first = publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=VERSION, files=_files(tmp_path / "1"), manifest=_manifest()
    )
    # The first attempt died between the manifest and its seal: the version is not yet readable.
    for key in (f"mnist/{VERSION}/manifest.sha256", "mnist/latest.json"):
        s3_client.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(PublishVerificationError, match="is not sealed"):
        verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=VERSION)

    retried = publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=VERSION, files=_files(tmp_path / "2"), manifest=_manifest()
    )
    assert retried["manifest_sha256"] == first["manifest_sha256"] and retried["latest_moved"]
    assert verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=VERSION)["run_id"] == "scheduled__a"


def test_a_retry_with_other_bytes_may_not_change_a_published_version(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=VERSION, files=_files(tmp_path / "1"), manifest=_manifest()
    )
    before = _bucket_state(s3_client)
    retrained = _files(tmp_path / "2", model_bytes=b"retrained" * 50)

    with pytest.raises(VersionConflictError, match=rf"{VERSION} was already published by this run .* model.keras"):
        publish_model(
            registry=ModelRegistry(s3_client, MODELS_URI), version=VERSION, files=retrained, manifest=_manifest()
        )
    assert _bucket_state(s3_client) == before


def test_two_runs_publishing_one_version_at_once_leave_one_complete_version(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    def publish(run: str) -> str:
        files = _files(tmp_path / run, model_bytes=run.encode() * 500)
        try:
            publish_model(
                registry=ModelRegistry(s3_client, MODELS_URI),
                version=VERSION, files=files, manifest=_manifest(run_id=run)
            )
            return "published"
        except VersionConflictError:
            return "refused"

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(publish, ["scheduled__a", "manual__b"]))

    assert sorted(outcomes) == ["published", "refused"]
    winner = ["scheduled__a", "manual__b"][outcomes.index("published")]
    manifest = verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=VERSION)
    assert manifest["run_id"] == winner
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == VERSION


def test_latest_never_moves_back_to_an_older_version(s3_client, bucket: str, tmp_path: Path) -> None:
    newer, older = VERSION, VERSION - 1_000_000
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI), version=newer, files=_files(tmp_path / "n"), manifest=_manifest()
    )
    # A re-run of an older run, published last: its version is kept, latest is not moved back.
    result = publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=older,
        files=_files(tmp_path / "o"),
        manifest=_manifest(version=older, run_id="scheduled__old"),
    )

    assert (result["latest_version"], result["latest_moved"]) == (newer, False)
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == newer
    assert verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=older)["version"] == older


def test_latest_moves_only_from_the_state_evaluate_compared_with(s3_client, bucket: str, tmp_path: Path) -> None:
    earlier = VERSION - 1_000_000
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI), version=earlier, files=_files(tmp_path / "e"),
        manifest=_manifest(version=earlier, run_id="scheduled__e"),
    )
    _, compared = read_latest_state(registry=ModelRegistry(s3_client, MODELS_URI))
    # Meanwhile another run published a newer champion, which this candidate never met.
    newest = VERSION + 1_000_000
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI), version=newest, files=_files(tmp_path / "n"),
        manifest=_manifest(version=newest, run_id="scheduled__n"),
    )
    latest_before = _bucket_state(s3_client)["mnist/latest.json"]

    with pytest.raises(LatestMovedError, match=rf"now points at version {newest}\. Nothing was published"):
        publish_model(
            registry=ModelRegistry(s3_client, MODELS_URI), version=VERSION, files=_files(tmp_path / "c"),
            manifest=_manifest(), compared_latest_etag=compared,
        )
    assert _bucket_state(s3_client)["mnist/latest.json"] == latest_before
    assert not [key for key in _bucket_state(s3_client) if key.startswith(f"mnist/{VERSION}/")]
    # Before the first publish, the state compared with is "nothing published".
    with pytest.raises(LatestMovedError, match=rf"now points at version {newest}"):
        publish_model(
            registry=ModelRegistry(s3_client, MODELS_URI), version=VERSION + 1, files=_files(tmp_path / "f"),
            manifest=_manifest(version=VERSION + 1, run_id="scheduled__f"), compared_latest_etag=None,
        )


def test_publish_refuses_to_make_latest_while_the_pointer_is_missing(s3_client, bucket: str, tmp_path: Path) -> None:
    earlier = VERSION - 1_000_000
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI), version=earlier, files=_files(tmp_path / "e"),
        manifest=_manifest(version=earlier, run_id="scheduled__e"),
    )
    s3_client.delete_object(Bucket=BUCKET, Key="mnist/latest.json")

    # Without latest.json this candidate met no champion; it must not become one.
    with pytest.raises(PointerMissingError, match=rf"latest\.json is missing, yet version {earlier}"):
        publish_model(
            registry=ModelRegistry(s3_client, MODELS_URI), version=VERSION, files=_files(tmp_path / "c"),
            manifest=_manifest(),
        )
    assert "mnist/latest.json" not in _bucket_state(s3_client)


def test_another_run_may_not_overwrite_an_existing_version(s3_client, bucket: str, tmp_path: Path) -> None:
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=VERSION, files=_files(tmp_path / "1"), manifest=_manifest()
    )
    before = _bucket_state(s3_client)

    with pytest.raises(VersionConflictError, match=rf"{VERSION}.*'scheduled__a'.*'manual__b'"):
        publish_model(
            registry=ModelRegistry(s3_client, MODELS_URI),
            version=VERSION,
            files=_files(tmp_path / "2", model_bytes=b"other" * 50),
            manifest=_manifest(run_id="manual__b"),
        )
    assert _bucket_state(s3_client) == before


@pytest.mark.parametrize(
    "metrics",
    [
        {"accuracy": 0.5, "loss": 2.0, "passed": False},
        {"accuracy": 0.5, "loss": 2.0, "gate": {"passed": False, "threshold": 0.93}},
        {"accuracy": 0.99, "loss": 0.1},  # no gate decision at all
    ],
)
def test_a_model_without_a_passed_gate_is_never_published(
    s3_client, bucket: str, tmp_path: Path, metrics: dict[str, Any]
) -> None:
    with pytest.raises(GateFailedError, match=str(VERSION)):
        publish_model(
            registry=ModelRegistry(s3_client, MODELS_URI),
            version=VERSION,
            files=_files(tmp_path),
            manifest=_manifest(metrics=metrics),
        )
    assert _bucket_state(s3_client) == {}


@pytest.mark.parametrize("name", ["manifest.json", "../model.keras", "/abs.json", "a//b.json"])
def test_bad_file_names_are_refused_before_anything_is_written(
    s3_client, bucket: str, tmp_path: Path, name: str
) -> None:
    files = _files(tmp_path)
    with pytest.raises(ValueError, match="bad file name"):
        publish_model(
            registry=ModelRegistry(s3_client, MODELS_URI),
            version=VERSION,
            files={**files, name: files["metrics.json"]},
            manifest=_manifest(),
        )
    assert _bucket_state(s3_client) == {}


class _OverwritesModelAfterUpload:
    """The real client on moto, except that right after model.keras is uploaded,
    something else overwrites it: the bucket then holds bytes the manifest does
    not describe, as after a corrupted upload."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_file(self, path: str, bucket: str, key: str, **kwargs: Any) -> Any:
        self._client.upload_file(path, bucket, key, **kwargs)
        if key.endswith("/model.keras"):
            self._client.put_object(Bucket=bucket, Key=key, Body=b"corrupted")


def test_a_failed_read_back_leaves_latest_untouched(s3_client, bucket: str, tmp_path: Path) -> None:
    first = 20261122020000
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=first,
        files=_files(tmp_path / "1"),
        manifest=_manifest(version=first),
    )
    latest_before = s3_client.get_object(Bucket=BUCKET, Key="mnist/latest.json")["Body"].read()

    files = _files(tmp_path / "2", model_bytes=b"good" * 50)
    expected = hashlib.sha256(b"good" * 50).hexdigest()
    got = hashlib.sha256(b"corrupted").hexdigest()
    with pytest.raises(PublishVerificationError, match=rf"mnist/{VERSION}/model.keras.*{expected}.*{got}"):
        publish_model(
            registry=ModelRegistry(_OverwritesModelAfterUpload(s3_client), MODELS_URI),
            version=VERSION,
            files=files,
            manifest=_manifest(),
        )

    assert s3_client.get_object(Bucket=BUCKET, Key="mnist/latest.json")["Body"].read() == latest_before
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == first


class _RecordsCopies:
    """The real client on moto, recording the keys of server-side copies in order; `corrupt`
    overwrites the copy of keys ending so, as if the copy had gone wrong."""

    def __init__(self, client: Any, corrupt: str | None = None) -> None:
        self._client, self._corrupt = client, corrupt
        self.copied: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def copy_object(self, **kwargs: Any) -> Any:
        self.copied.append(kwargs["Key"])
        result = self._client.copy_object(**kwargs)
        if self._corrupt and kwargs["Key"].endswith(self._corrupt):
            self._client.put_object(Bucket=kwargs["Bucket"], Key=kwargs["Key"], Body=b"corrupted")
        return result


def test_the_export_is_published_and_copied_for_tf_serving_as_latest_moves(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    files = _files_with_export(tmp_path / "run")
    client = _RecordsCopies(s3_client)
    result = publish_model(
        registry=ModelRegistry(client, MODELS_URI), version=VERSION, files=files, manifest=_manifest()
    )

    stored = _bucket_state(s3_client)
    manifest = json.loads(stored[f"mnist/{VERSION}/manifest.json"])
    for name in EXPORT:
        body = files[name].read_bytes()
        assert stored[f"mnist/{VERSION}/{name}"] == body
        assert manifest["files"][name] == {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
        # TensorFlow Serving's layout: serving/<version>/saved_model.pb, serving/<version>/variables/…
        assert stored[f"mnist/serving/{VERSION}/{name.removeprefix('saved_model/')}"] == body
    assert client.copied[-1] == f"mnist/serving/{VERSION}/saved_model.pb"  # the graph last
    assert len(client.copied) == len(EXPORT)
    assert result["serving_uri"] == f"s3://{BUCKET}/mnist/serving/{VERSION}/"
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["serving_uri"] == result["serving_uri"]
    # serving/ is not a version.
    assert [row["version"] for row in list_versions(registry=ModelRegistry(s3_client, MODELS_URI))] == [VERSION]

    # A retry finds the copies right and writes nothing.
    again = _RecordsCopies(s3_client)
    publish_model(registry=ModelRegistry(again, MODELS_URI), version=VERSION, files=files, manifest=_manifest())
    assert again.copied == [] and _bucket_state(s3_client) == stored


def test_a_version_that_does_not_become_latest_gets_no_serving_directory(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    newer, older = VERSION, VERSION - 1_000_000
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI), version=newer, files=_files_with_export(tmp_path / "n"),
        manifest=_manifest(),
    )
    # TensorFlow Serving serves the highest directory, so only the latest may be there.
    result = publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI), version=older,
        files=_files_with_export(tmp_path / "o", model_bytes=b"older" * 50),
        manifest=_manifest(version=older, run_id="scheduled__old"),
    )

    assert (result["latest_moved"], result["serving_uri"]) == (False, None)
    serving = {key for key in _bucket_state(s3_client) if key.startswith("mnist/serving/")}
    assert serving == {f"mnist/serving/{newer}/{name.removeprefix('saved_model/')}" for name in EXPORT}
    assert f"mnist/{older}/saved_model/saved_model.pb" in _bucket_state(s3_client)


class _TampersWithExport(_OverwritesModelAfterUpload):
    def upload_file(self, path: str, bucket: str, key: str, **kwargs: Any) -> Any:
        self._client.upload_file(path, bucket, key, **kwargs)
        if key.endswith("/saved_model/variables/variables.index"):
            self._client.put_object(Bucket=bucket, Key=key, Body=b"tampered")


def test_a_damaged_export_file_fails_and_latest_does_not_move(s3_client, bucket: str, tmp_path: Path) -> None:
    first = VERSION - 1_000_000
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI), version=first, files=_files_with_export(tmp_path / "1"),
        manifest=_manifest(version=first, run_id="scheduled__first"),
    )
    latest_before = _bucket_state(s3_client)["mnist/latest.json"]

    files = _files_with_export(tmp_path / "2", model_bytes=b"good" * 50)
    expected = hashlib.sha256(files["saved_model/variables/variables.index"].read_bytes()).hexdigest()
    damaged = f"mnist/{VERSION}/saved_model/variables/variables.index"
    with pytest.raises(PublishVerificationError, match=rf"{damaged}: expected {expected}"):
        publish_model(
            registry=ModelRegistry(_TampersWithExport(s3_client), MODELS_URI), version=VERSION, files=files,
            manifest=_manifest(),
        )

    stored = _bucket_state(s3_client)
    assert stored["mnist/latest.json"] == latest_before
    assert not [key for key in stored if key.startswith(f"mnist/serving/{VERSION}/")]


def test_a_damaged_serving_copy_fails_after_latest_moved_and_the_retry_makes_it(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    # The copy is made after the pointer moves, so TF Serving can lag latest but never lead it.
    files = _files_with_export(tmp_path / "run")
    expected = hashlib.sha256(files["saved_model/variables/variables.index"].read_bytes()).hexdigest()
    damaged = f"mnist/serving/{VERSION}/variables/variables.index"
    corrupting = _RecordsCopies(s3_client, corrupt="/variables/variables.index")
    with pytest.raises(PublishVerificationError, match=rf"{damaged}: expected {expected}"):
        publish_model(
            registry=ModelRegistry(corrupting, MODELS_URI), version=VERSION, files=files, manifest=_manifest()
        )

    stored = _bucket_state(s3_client)
    assert json.loads(stored["mnist/latest.json"])["version"] == VERSION
    assert not [key for key in stored if key.startswith(f"mnist/serving/{VERSION}/")]  # what was copied is gone

    retried = publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI), version=VERSION, files=files, manifest=_manifest()
    )
    assert retried["serving_uri"] == f"s3://{BUCKET}/mnist/serving/{VERSION}/"
    assert f"mnist/serving/{VERSION}/saved_model.pb" in _bucket_state(s3_client)
