"""The artifact store, on moto's S3 server and on a local directory: refs, the verified cache, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mnist_tasks.flow.artifacts import ArtifactIntegrityError, ArtifactMissingError, ArtifactStore

BUCKET = "artifacts"


@pytest.fixture(params=["s3", "file"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "s3":
        client = request.getfixturevalue("s3_client")
        client.create_bucket(Bucket=BUCKET)
        return ArtifactStore(f"s3://{BUCKET}/store", cache_dir=tmp_path / "worker-a", s3_client=client)
    root = tmp_path / "shared-store"
    return ArtifactStore(root.as_uri(), cache_dir=tmp_path / "worker-a")


def _worker(store: ArtifactStore, cache_dir: Path) -> ArtifactStore:
    """The same store seen from another worker, with a cache of its own."""
    return ArtifactStore(store.uri, cache_dir=cache_dir, s3_client=store._s3)


def _file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_put_returns_a_ref_and_another_worker_gets_a_verified_copy(store, tmp_path):
    content = b"model bytes" * 1000
    ref = store.put(_file(tmp_path / "out" / "model.keras", content), "runs/d/r/model.keras")

    assert ref == {
        "uri": store.uri + "runs/d/r/model.keras",
        "sha256": hashlib.sha256(content).hexdigest(),
        "bytes": len(content),
    }
    assert store.find("runs/d/r/model.keras") == ref
    other = _worker(store, tmp_path / "worker-b")
    got = other.get(ref)
    assert got == tmp_path / "worker-b" / "runs" / "d" / "r" / "model.keras"
    assert got.read_bytes() == content


def test_find_answers_none_for_a_missing_key(store):
    assert store.find("datasets/nothing/here.npy") is None


def test_a_warm_worker_uses_its_copy_without_fetching(store, tmp_path):
    ref = store.put(_file(tmp_path / "a.bin", b"abc"), "k/a.bin")
    other = _worker(store, tmp_path / "worker-b")
    other.get(ref)
    # Fetching again would now fail: the warm copy must be what is used.
    replacement = _file(tmp_path / "b.bin", b"xyz")
    store.put(replacement, "k/a.bin")
    assert other.get(ref).read_bytes() == b"abc"


def test_a_damaged_cached_copy_is_fetched_again(store, tmp_path):
    content = bytes(range(256)) * 64
    ref = store.put(_file(tmp_path / "x_test.npy", content), "datasets/d/prepared/x_test.npy")
    other = _worker(store, tmp_path / "worker-b")
    cached = other.get(ref)
    damaged = bytearray(content)
    damaged[100] ^= 0xFF
    cached.write_bytes(bytes(damaged))

    assert other.get(ref).read_bytes() == content


def test_a_stored_object_that_differs_from_its_ref_is_refused_and_nothing_is_left(store, tmp_path):
    ref = store.put(_file(tmp_path / "m.keras", b"good"), "runs/d/r/m.keras")
    store.put(_file(tmp_path / "evil.keras", b"evil"), "runs/d/r/m.keras")
    other = _worker(store, tmp_path / "worker-b")

    with pytest.raises(ArtifactIntegrityError) as err:
        other.get(ref)
    message = str(err.value)
    assert ref["uri"] in message and ref["sha256"] in message
    assert hashlib.sha256(b"evil").hexdigest() in message
    assert list((tmp_path / "worker-b").rglob("*")) == [
        tmp_path / "worker-b" / "runs",
        tmp_path / "worker-b" / "runs" / "d",
        tmp_path / "worker-b" / "runs" / "d" / "r",
    ]


def test_a_missing_object_is_a_clear_error(store, tmp_path):
    ref = {"uri": store.uri + "runs/d/r/gone.keras", "sha256": "ab" * 32, "bytes": 3}
    with pytest.raises(ArtifactMissingError, match="gone.keras is not in the artifact store"):
        _worker(store, tmp_path / "worker-b").get(ref)


def test_a_ref_from_another_store_is_refused(store, tmp_path):
    ref = {"uri": "s3://elsewhere/runs/x.keras", "sha256": "ab" * 32, "bytes": 3}
    with pytest.raises(ArtifactMissingError, match="not in the artifact store"):
        store.get(ref)


def test_json_round_trip(store, tmp_path):
    ref = store.put_json({"b": 1, "a": [1, 2]}, "datasets/d/prepared/dataset.json")
    assert _worker(store, tmp_path / "worker-b").get_json(ref) == {"a": [1, 2], "b": 1}


def test_only_s3_and_file_stores(tmp_path):
    with pytest.raises(ValueError, match="use s3://bucket/prefix/ or file:///dir/"):
        ArtifactStore("https://example.org/store/", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs an s3_client"):
        ArtifactStore("s3://bucket/", cache_dir=tmp_path)
