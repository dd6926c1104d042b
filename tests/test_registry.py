"""The registry (mnist_tasks/registry/) against moto's S3 server: listing, manifests, rollback by promote,
verified downloads."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from mnist_tasks.registry import (
    DamagedObjectError,
    GateNotPassedError,
    LatestMovedError,
    ModelReference,
    ModelReferenceError,
    ModelRegistry,
    NothingPublishedError,
    PointerMissingError,
    PublishVerificationError,
    VersionNotFoundError,
    build_manifest,
    download_model,
    download_version,
    list_versions,
    move_latest,
    parse_model_reference,
    parse_version_or_latest,
    promote,
    publish_model,
    read_latest,
    read_manifest,
    read_manifest_and_sha256,
    repair_latest,
    seal_version,
    verify_version,
)

BUCKET = "models"
MODELS_URI = f"s3://{BUCKET}/mnist/"
V1, V2, V3 = 20261123020000, 20261124020000, 20261125020000


@pytest.fixture
def bucket(s3_client) -> str:
    s3_client.create_bucket(Bucket=BUCKET)
    return BUCKET


def _model_bytes(version: int) -> bytes:
    return f"model {version}".encode() * 40


# A SavedModel export's files; the registry treats them as bytes.
EXPORT_FILES = ("saved_model/saved_model.pb", "saved_model/fingerprint.pb", "saved_model/variables/variables.index")


def _publish(
    s3_client, tmp_path: Path, version: int, accuracy: float = 0.97, passed: bool = True, export: bool = False
) -> dict | None:
    """Publish a version; without `export` it is one published before SavedModel exports existed."""
    run_dir = tmp_path / str(version)
    run_dir.mkdir()
    (run_dir / "model.keras").write_bytes(_model_bytes(version))
    (run_dir / "history.json").write_text(json.dumps({"loss": [0.3, 0.2]}))
    files = {"model.keras": run_dir / "model.keras", "history.json": run_dir / "history.json"}
    for name in EXPORT_FILES if export else ():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(f"{name} of {version}".encode())
        files[name] = run_dir / name
    manifest = build_manifest(
        version=version,
        run_id=f"scheduled__{version}",
        dag_id="mnist_retraining",
        params={"epochs": 1},
        data={"data_sha256": f"{version:064d}"},
        metrics={"accuracy": accuracy, "loss": 0.1, "passed": True},
        started_at=None,
    )
    if not passed:
        # publish_model refuses a failed gate, so such a version only arises from outside it.
        return _write_failed_version(s3_client, run_dir, version, manifest)
    return publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=version,
        files=files,
        manifest=manifest,
    )


def _write_failed_version(s3_client, run_dir: Path, version: int, manifest: dict) -> None:
    files = {name: (run_dir / name).read_bytes() for name in ("model.keras", "history.json")}
    manifest = {
        **manifest,
        "metrics": {"accuracy": 0.5, "passed": False, "message": "accuracy gate failed: test accuracy 0.5000"},
        "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in files.items()},
    }
    for name, body in files.items():
        s3_client.put_object(Bucket=BUCKET, Key=f"mnist/{version}/{name}", Body=body)
    _store_sealed_manifest(s3_client, version, json.dumps(manifest).encode())


def _store_sealed_manifest(s3_client, version: int, body: bytes) -> None:
    """A manifest written from outside publish, with the seal publish would give it."""
    s3_client.put_object(Bucket=BUCKET, Key=f"mnist/{version}/manifest.json", Body=body)
    seal = f"{hashlib.sha256(body).hexdigest()}  manifest.json\n"
    s3_client.put_object(Bucket=BUCKET, Key=f"mnist/{version}/manifest.sha256", Body=seal.encode())


def _latest_bytes(s3_client) -> bytes:
    return s3_client.get_object(Bucket=BUCKET, Key="mnist/latest.json")["Body"].read()


def test_an_empty_registry(s3_client, bucket: str, tmp_path: Path) -> None:
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI)) is None
    assert list_versions(registry=ModelRegistry(s3_client, MODELS_URI)) == []
    with pytest.raises(VersionNotFoundError, match="nothing published"):
        download_model(registry=ModelRegistry(s3_client, MODELS_URI), version=None, dest_dir=tmp_path)


def test_list_versions_has_one_row_per_published_version_oldest_first(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    _publish(s3_client, tmp_path, V3, accuracy=0.95)
    _publish(s3_client, tmp_path, V1, accuracy=0.96)
    _publish(s3_client, tmp_path, V2, accuracy=0.97)  # published last, yet older: latest stays at V3
    # An upload that died before its manifest, and things that are not versions.
    s3_client.put_object(Bucket=BUCKET, Key="mnist/20261126020000/model.keras", Body=b"partial")
    s3_client.put_object(Bucket=BUCKET, Key="mnist/notes/readme.txt", Body=b"hello")
    s3_client.put_object(Bucket=BUCKET, Key="mnist/0042/manifest.json", Body=b"{}")
    s3_client.put_object(Bucket=BUCKET, Key="mnist/serving/20261127020000/saved_model.pb", Body=b"graph")

    rows = list_versions(registry=ModelRegistry(s3_client, MODELS_URI))

    assert [r["version"] for r in rows] == [V1, V2, V3]
    assert [r["is_latest"] for r in rows] == [False, False, True]
    assert [r["accuracy"] for r in rows] == [0.96, 0.97, 0.95]
    assert all(r["passed"] is True for r in rows)
    assert [r["run_id"] for r in rows] == [f"scheduled__{v}" for v in (V1, V2, V3)]
    assert [r["data_sha256"] for r in rows] == [f"{v:064d}" for v in (V1, V2, V3)]
    assert set(rows[0]) == {
        "error", "version", "created_at", "architecture", "augment", "accuracy", "labeled_accuracy",
        "labeled_test_count", "passed", "data_sha256", "run_id", "is_latest",
    }
    # Published before the labelled set existed: no figure for it.
    assert {(r["labeled_accuracy"], r["labeled_test_count"]) for r in rows} == {(None, None)}
    assert all(r["error"] is None for r in rows)
    # These manifests predate the architecture Params: such versions were the dense model, unaugmented.
    assert {(r["architecture"], r["augment"]) for r in rows} == {("dense", "off")}


@pytest.mark.parametrize(
    ("stored", "error"),
    [
        (b"{not json", r"s3://models/mnist/20261123020000/manifest\.json is not valid JSON"),
        (b"[1, 2]", r"s3://models/mnist/20261123020000/manifest\.json is not a JSON object"),
        (
            json.dumps({"version": V1, "files": {"model.keras": {}}}).encode(),
            r"s3://models/mnist/20261123020000/manifest\.json lacks 'created_at'",
        ),
    ],
    ids=["not JSON", "not an object", "fields missing"],
)
def test_a_damaged_manifest_is_listed_flagged_and_hides_no_other_version(
    s3_client, bucket: str, tmp_path: Path, stored: bytes, error: str
) -> None:
    _publish(s3_client, tmp_path, V1)
    _publish(s3_client, tmp_path, V2)
    _store_sealed_manifest(s3_client, V1, stored)  # sealed: its content, not its seal, is what is wrong

    damaged, intact = list_versions(registry=ModelRegistry(s3_client, MODELS_URI))

    assert damaged["version"] == V1 and re.match(error, damaged["error"])
    assert damaged["run_id"] is None and damaged["is_latest"] is False
    assert (intact["version"], intact["error"], intact["is_latest"]) == (V2, None, True)


def test_an_edited_manifest_of_a_version_that_is_not_latest_is_noticed_everywhere(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    """Only latest.json vouched for a manifest, so an older one could be edited unseen (issue 19, case 9)."""
    _publish(s3_client, tmp_path, V1, accuracy=0.9)
    _publish(s3_client, tmp_path, V2)
    key = f"mnist/{V1}/manifest.json"
    manifest = json.loads(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    manifest["metrics"]["accuracy"] = 0.999
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(manifest).encode())
    mismatch = rf"^checksum mismatch for s3://{BUCKET}/{key}: expected \w+ \(from s3://{BUCKET}/mnist/{V1}/manifest\.sha256\)"

    edited, intact = list_versions(registry=ModelRegistry(s3_client, MODELS_URI))
    assert re.match(mismatch, edited["error"]) and edited["accuracy"] is None
    assert intact["error"] is None
    for refused in (verify_version, read_manifest, promote):
        with pytest.raises(PublishVerificationError, match=mismatch):
            refused(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI))["version"] == V2


def test_a_version_without_a_seal_is_flagged_and_never_promoted_but_a_pinned_latest_still_serves(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    _publish(s3_client, tmp_path, V1)
    _publish(s3_client, tmp_path, V2)
    for version in (V1, V2):  # as published before seals existed
        s3_client.delete_object(Bucket=BUCKET, Key=f"mnist/{version}/manifest.sha256")
    unsealed = rf"^s3://{BUCKET}/mnist/{V1}/manifest\.json is not sealed: s3://{BUCKET}/mnist/{V1}/manifest\.sha256"

    rows = list_versions(registry=ModelRegistry(s3_client, MODELS_URI))
    assert re.match(unsealed, rows[0]["error"])
    with pytest.raises(PublishVerificationError, match=unsealed):
        promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)
    # latest.json pins V2's manifest by its sha256: that is what vouches for it.
    assert download_model(registry=ModelRegistry(s3_client, MODELS_URI), version=None, dest_dir=tmp_path / "d")

    sealed = seal_version(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)  # a person vouches for it
    assert sealed["seal_uri"] == f"s3://{BUCKET}/mnist/{V1}/manifest.sha256"
    assert promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)["version"] == V1
    assert seal_version(registry=ModelRegistry(s3_client, MODELS_URI), version=V1) == sealed  # sealed once


def test_seal_refuses_a_version_whose_files_do_not_verify(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)
    s3_client.delete_object(Bucket=BUCKET, Key=f"mnist/{V1}/manifest.sha256")
    s3_client.put_object(Bucket=BUCKET, Key=f"mnist/{V1}/model.keras", Body=b"tampered")
    with pytest.raises(PublishVerificationError, match=rf"mnist/{V1}/model\.keras"):
        seal_version(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)
    assert s3_client.list_objects_v2(Bucket=BUCKET, Prefix=f"mnist/{V1}/manifest.sha256")["KeyCount"] == 0


def test_a_seal_that_is_not_one_is_named(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)
    s3_client.put_object(Bucket=BUCKET, Key=f"mnist/{V1}/manifest.sha256", Body=b"garbage")
    with pytest.raises(DamagedObjectError, match=rf"^s3://{BUCKET}/mnist/{V1}/manifest\.sha256 is not a seal"):
        verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)


def test_a_damaged_latest_json_is_an_error_that_names_it(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)
    s3_client.put_object(Bucket=BUCKET, Key="mnist/latest.json", Body=b"{not json")

    with pytest.raises(DamagedObjectError, match=r"^s3://models/mnist/latest\.json is not valid JSON"):
        read_latest(registry=ModelRegistry(s3_client, MODELS_URI))


def test_read_manifest_of_an_unknown_version_names_it(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)
    assert read_manifest(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)["run_id"] == f"scheduled__{V1}"
    with pytest.raises(VersionNotFoundError, match=rf"no version 123 .*s3://{BUCKET}/mnist/123/manifest.json"):
        read_manifest(registry=ModelRegistry(s3_client, MODELS_URI), version=123)


def test_a_deleted_latest_json_never_waives_the_champion(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)
    s3_client.delete_object(Bucket=BUCKET, Key="mnist/latest.json")

    # What evaluate asks for the champion, and batch predictions for the model to use.
    with pytest.raises(PointerMissingError, match=r"s3://models/mnist/latest\.json is missing, yet version 2026"):
        download_model(registry=ModelRegistry(s3_client, MODELS_URI), version=None, dest_dir=tmp_path / "champion")


def test_repair_points_latest_at_the_newest_version_that_verifies_and_passed(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    _publish(s3_client, tmp_path, V1)
    _publish(s3_client, tmp_path, V2, passed=False)  # newer, but its gate failed
    s3_client.put_object(Bucket=BUCKET, Key=f"mnist/{V3}/model.keras", Body=b"partial")  # no manifest
    s3_client.delete_object(Bucket=BUCKET, Key="mnist/latest.json")

    pointer = repair_latest(registry=ModelRegistry(s3_client, MODELS_URI))

    assert pointer["version"] == V1 and pointer["reason"].startswith("repaired: latest.json was missing")
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI)) == pointer
    # A pointer that exists is not touched: moving it on purpose is promote's job.
    assert repair_latest(registry=ModelRegistry(s3_client, MODELS_URI)) == pointer


def test_repair_with_nothing_that_qualifies_says_so(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V2, passed=False)
    s3_client.delete_object(Bucket=BUCKET, Key="mnist/latest.json")
    with pytest.raises(NothingPublishedError, match="no version in s3://models/mnist/ verifies and passed"):
        repair_latest(registry=ModelRegistry(s3_client, MODELS_URI))


def test_promote_rolls_latest_back_to_an_older_verified_version(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)
    _publish(s3_client, tmp_path, V2)

    pointer = promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)

    manifest_bytes = s3_client.get_object(Bucket=BUCKET, Key=f"mnist/{V1}/manifest.json")["Body"].read()
    assert pointer["version"] == V1
    assert pointer["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    assert pointer["model_uri"] == f"s3://{BUCKET}/mnist/{V1}/model.keras"
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI)) == pointer
    assert [r["is_latest"] for r in list_versions(registry=ModelRegistry(s3_client, MODELS_URI))] == [True, False]


@pytest.mark.parametrize("damage", ["overwrite model", "delete history"])
def test_promote_refuses_a_damaged_version_and_keeps_latest(
    s3_client, bucket: str, tmp_path: Path, damage: str
) -> None:
    _publish(s3_client, tmp_path, V1)
    _publish(s3_client, tmp_path, V2)
    if damage == "overwrite model":
        s3_client.put_object(Bucket=BUCKET, Key=f"mnist/{V1}/model.keras", Body=b"tampered")
        expected_error = rf"mnist/{V1}/model.keras: expected {hashlib.sha256(_model_bytes(V1)).hexdigest()}"
    else:
        s3_client.delete_object(Bucket=BUCKET, Key=f"mnist/{V1}/history.json")
        expected_error = rf"mnist/{V1}/history.json: .*missing"
    before = _latest_bytes(s3_client)

    with pytest.raises(PublishVerificationError, match=expected_error):
        promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)
    with pytest.raises(PublishVerificationError, match=expected_error):
        verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)

    assert _latest_bytes(s3_client) == before
    assert verify_version(registry=ModelRegistry(s3_client, MODELS_URI), version=V2)["version"] == V2


def test_promote_refuses_an_unknown_version(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)
    before = _latest_bytes(s3_client)
    with pytest.raises(VersionNotFoundError, match=str(V2)):
        promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V2)
    assert _latest_bytes(s3_client) == before


def test_download_model_fetches_the_latest_or_a_given_version(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)
    _publish(s3_client, tmp_path, V2)

    latest = download_model(registry=ModelRegistry(s3_client, MODELS_URI), version=None, dest_dir=tmp_path / "a")
    assert latest["version"] == V2
    assert Path(latest["model_path"]) == tmp_path / "a" / "model.keras"
    assert Path(latest["model_path"]).read_bytes() == _model_bytes(V2)
    assert latest["model_sha256"] == hashlib.sha256(_model_bytes(V2)).hexdigest()
    assert latest["manifest"]["run_id"] == f"scheduled__{V2}"

    older = download_model(registry=ModelRegistry(s3_client, MODELS_URI), version=V1, dest_dir=tmp_path / "b")
    assert Path(older["model_path"]).read_bytes() == _model_bytes(V1)


def test_download_model_refuses_bytes_the_manifest_does_not_describe(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    _publish(s3_client, tmp_path, V1)
    s3_client.put_object(Bucket=BUCKET, Key=f"mnist/{V1}/model.keras", Body=b"tampered")
    dest = tmp_path / "dest"

    with pytest.raises(PublishVerificationError, match=hashlib.sha256(b"tampered").hexdigest()):
        download_model(registry=ModelRegistry(s3_client, MODELS_URI), version=None, dest_dir=dest)
    assert list(dest.iterdir()) == []  # not even a temp file


def test_download_model_refuses_a_manifest_changed_after_latest_vouched_for_it(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    _publish(s3_client, tmp_path, V1)
    key = f"mnist/{V1}/manifest.json"
    manifest = json.loads(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    manifest["metrics"]["accuracy"] = 0.999
    _store_sealed_manifest(s3_client, V1, json.dumps(manifest).encode())  # resealed: latest.json still tells

    with pytest.raises(PublishVerificationError, match=rf"checksum mismatch for s3://{BUCKET}/{key}: expected "):
        download_model(registry=ModelRegistry(s3_client, MODELS_URI), version=None, dest_dir=tmp_path / "dest")


def test_promote_records_who_moved_latest_when_and_why(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)
    _publish(s3_client, tmp_path, V2)

    pointer = promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V1, reason="V2 misreads 7s")

    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI)) == pointer
    assert pointer["reason"] == "V2 misreads 7s"
    assert "@" in pointer["moved_by"] and pointer["updated_at"]


def test_promote_refuses_a_version_whose_gate_failed_unless_forced_with_a_reason(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    _publish(s3_client, tmp_path, V1)
    _publish(s3_client, tmp_path, V2, passed=False)
    before = _latest_bytes(s3_client)

    with pytest.raises(GateNotPassedError, match=rf"version {V2} did not pass its accuracy gate .*--force"):
        promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V2)
    with pytest.raises(GateNotPassedError, match="--force needs a --reason"):
        promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V2, force=True)
    assert _latest_bytes(s3_client) == before

    pointer = promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V2, force=True, reason="incident 42")
    assert (pointer["version"], pointer["reason"]) == (V2, "incident 42")


def _serving_keys(s3_client, version: int) -> dict[str, bytes]:
    listing = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=f"mnist/serving/{version}/").get("Contents", [])
    return {o["Key"]: s3_client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listing}


def test_promote_copies_the_export_for_tf_serving_when_it_is_missing(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V2, export=True)
    _publish(s3_client, tmp_path, V1, export=True)  # older: not latest, so not in serving/
    assert _serving_keys(s3_client, V1) == {}

    pointer = promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V1, reason="V2 misreads 7s")

    assert pointer["serving_uri"] == f"s3://{BUCKET}/mnist/serving/{V1}/"
    assert _serving_keys(s3_client, V1) == {
        f"mnist/serving/{V1}/{name.removeprefix('saved_model/')}": f"{name} of {V1}".encode() for name in EXPORT_FILES
    }
    assert _serving_keys(s3_client, V2)  # TF Serving still serves the highest unless pinned (README)
    assert read_latest(registry=ModelRegistry(s3_client, MODELS_URI)) == pointer


def test_a_version_published_before_exports_is_still_read_and_promoted(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V1)  # no saved_model/
    _publish(s3_client, tmp_path, V2, export=True)

    pointer = promote(registry=ModelRegistry(s3_client, MODELS_URI), version=V1, reason="back to the dense model")

    assert (pointer["version"], pointer["serving_uri"]) == (V1, None)  # latest moved; nothing for TF Serving
    assert _serving_keys(s3_client, V1) == {}
    assert [r["is_latest"] for r in list_versions(registry=ModelRegistry(s3_client, MODELS_URI))] == [True, False]
    assert "saved_model/saved_model.pb" not in read_manifest(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)[
        "files"
    ]
    got = download_model(registry=ModelRegistry(s3_client, MODELS_URI), version=None, dest_dir=tmp_path / "dl")
    assert Path(got["model_path"]).read_bytes() == _model_bytes(V1)


def test_latest_moved_meanwhile_takes_back_the_serving_copy(s3_client, bucket: str, tmp_path: Path) -> None:
    _publish(s3_client, tmp_path, V2, export=True)
    _publish(s3_client, tmp_path, V1, export=True)
    manifest, manifest_sha256 = read_manifest_and_sha256(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)
    before = _latest_bytes(s3_client)

    # As if someone moved latest.json after this writer read it.
    with pytest.raises(LatestMovedError, match=f"now points at version {V2}"):
        move_latest(
            registry=ModelRegistry(s3_client, MODELS_URI), manifest=manifest, manifest_sha256=manifest_sha256,
            expected_etag='"0123456789abcdef0123456789abcdef"', moved_by="test", reason="race",
        )

    assert _latest_bytes(s3_client) == before
    assert _serving_keys(s3_client, V1) == {}  # TF Serving must not find a version that is not latest
    assert _serving_keys(s3_client, V2)


def test_download_version_fetches_every_file_with_the_export_and_the_manifest(
    s3_client, bucket: str, tmp_path: Path
) -> None:
    _publish(s3_client, tmp_path, V1, export=True)

    got = download_version(registry=ModelRegistry(s3_client, MODELS_URI), version=None, dest_dir=tmp_path / "dl")

    dest = tmp_path / "dl"
    assert got["version"] == V1 and got["dir"] == str(dest)
    assert set(got["files"]) == {"model.keras", "history.json", "manifest.json", *EXPORT_FILES}
    assert (dest / "saved_model" / "variables" / "variables.index").read_bytes() == (
        f"saved_model/variables/variables.index of {V1}".encode()
    )
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest == read_manifest(registry=ModelRegistry(s3_client, MODELS_URI), version=V1)
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == entry["sha256"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latest", ModelReference("latest", MODELS_URI, None, None)),
        (str(V1), ModelReference(str(V1), MODELS_URI, V1, None)),
        (f"s3://other/p/{V1}/model.keras", ModelReference(f"s3://other/p/{V1}/model.keras", "s3://other/p/", V1, None)),
        ("s3://other/p/latest.json", ModelReference("s3://other/p/latest.json", "s3://other/p/", None, None)),
        ("dir/model.keras", ModelReference("dir/model.keras", None, None, Path("dir/model.keras"))),
    ],
)
def test_a_model_reference_names_a_version_of_a_registry_or_a_local_file(text: str, expected) -> None:
    assert parse_model_reference(text, models_uri=MODELS_URI) == expected


@pytest.mark.parametrize("text", ["0042", "0", "newest", "s3://other/p/notes.txt"])
def test_a_model_reference_follows_the_one_version_rule(text: str) -> None:
    with pytest.raises(ModelReferenceError, match="expected"):
        parse_model_reference(text, models_uri=MODELS_URI)
    with pytest.raises(ValueError, match=f"expected a version number or latest, got {text!r}"):
        parse_version_or_latest(text)
