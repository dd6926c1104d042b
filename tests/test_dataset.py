"""data/download.py, idx.py and prepare.py on tiny synthetic MNIST: downloads from a real HTTP server on 127.0.0.1,
file:// and moto's S3; IDX validation; the prepared cache."""

from __future__ import annotations

import functools
import gzip
import hashlib
import itertools
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import mnist_tasks.data.download
import mnist_tasks.data.prepare
from mnist_tasks.data.download import (
    MNIST_FILES,
    DataIntegrityError,
    DownloadError,
    FileSpec,
    download_mnist,
    files_by_role,
)
from mnist_tasks.data.idx import idx_bytes, read_idx_images, read_idx_labels
from mnist_tasks.data.prepare import load_prepared, prepare_dataset

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


def _arrays(seed: int = 0, train: int = 50, test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        TRAIN_IMAGES: rng.integers(0, 256, size=(train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, size=train, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, size=(test, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, size=test, dtype=np.uint8),
    }


def _spec(name: str, raw: bytes) -> FileSpec:
    return FileSpec(name=name, size=len(raw), sha256=hashlib.sha256(raw).hexdigest())


class Tiny:
    """Four small files under the canonical names, their gzip bytes and their own spec."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        raws = {name: idx_bytes(array) for name, array in arrays.items()}
        self.gz = {name: gzip.compress(raw, mtime=0) for name, raw in raws.items()}
        self.spec = {name: _spec(name, raw) for name, raw in raws.items()}

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in self.gz.items():
            (directory / name).write_bytes(content)
        return directory


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return Tiny(_arrays())


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Callable[[dict[str, bytes]], str]]:
    """serve({name: bytes}) -> base URL of a new directory holding exactly those files (others 404)."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    # A short poll interval keeps shutdown() quick.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    numbers = itertools.count()

    def serve(files: dict[str, bytes]) -> str:
        directory = root / f"mirror{next(numbers)}"
        directory.mkdir()
        for name, content in files.items():
            (directory / name).write_bytes(content)
        return f"http://127.0.0.1:{server.server_port}/{directory.name}/"

    yield serve
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead_mirror() -> Iterator[str]:
    """An http:// base URL on a loopback port that nothing listens on.

    The port stays bound (not listening) by this fixture, so no other process can start listening on it meanwhile.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/mnist/"


def _names_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def test_the_canonical_table_names_one_file_per_split_and_kind() -> None:
    roles = files_by_role(MNIST_FILES)
    assert roles["train", "images"].size == 16 + 60_000 * 28 * 28
    assert roles["train", "labels"].size == 8 + 60_000
    assert roles["test", "images"].size == 16 + 10_000 * 28 * 28
    assert roles["test", "labels"].size == 8 + 10_000
    with pytest.raises(ValueError, match="cannot tell the split and kind of 'extra.gz'"):
        files_by_role({**MNIST_FILES, "extra.gz": FileSpec("extra.gz", 1, "0" * 64)})


def test_download_verifies_then_reuses_the_local_copy_without_the_network(tiny, web, dead_mirror, tmp_path):
    raw = tmp_path / "raw"
    base = web(tiny.gz)

    first = download_mnist(mirrors=[base], raw_dir=raw, files=tiny.spec)

    assert _names_in(raw) == set(tiny.spec)  # and no temp files
    assert first["raw_dir"] == str(raw)
    assert sorted(first["downloaded"]) == sorted(tiny.spec)
    for name, spec in tiny.spec.items():
        assert first["files"][name] == {"sha256": spec.sha256, "bytes": spec.size, "source": base + name}
        assert (raw / name).read_bytes() == tiny.gz[name]
    json.dumps(first)

    second = download_mnist(mirrors=[dead_mirror], raw_dir=raw, files=tiny.spec)
    assert second["downloaded"] == []
    assert {f["source"] for f in second["files"].values()} == {"cache"}
    assert second["data_sha256"] == first["data_sha256"]


def test_data_checksum_depends_on_every_file(tiny, tmp_path):
    other = Tiny({**tiny.arrays, TEST_LABELS: (tiny.arrays[TEST_LABELS] + 1) % 10})
    a = download_mnist(mirrors=[tiny.write(tmp_path / "a").as_uri()], raw_dir=tmp_path / "raw-a", files=tiny.spec)
    b = download_mnist(
        mirrors=[other.write(tmp_path / "b").as_uri()], raw_dir=tmp_path / "raw-b", files=other.spec
    )
    assert a["data_sha256"] != b["data_sha256"]
    assert len(a["data_sha256"]) == 64


def test_the_default_table_is_read_when_called(tiny, web, tmp_path, monkeypatch):
    # The end-to-end tests swap the table for tiny data's own.
    monkeypatch.setattr(mnist_tasks.data.download, "MNIST_FILES", tiny.spec)
    result = download_mnist(mirrors=[web(tiny.gz)], raw_dir=tmp_path / "raw")
    assert set(result["files"]) == set(tiny.spec)
    assert prepare_dataset(raw_dir=tmp_path / "raw", cache_root=tmp_path / "prepared")["train_count"] == 50


def test_falls_back_to_the_next_mirror_when_one_has_no_such_file(tiny, web, tmp_path):
    empty = web({})
    good = web(tiny.gz)
    result = download_mnist(mirrors=[empty, good], raw_dir=tmp_path / "raw", files=tiny.spec)
    assert {f["source"] for f in result["files"].values()} == {good + name for name in tiny.spec}


def test_a_checksum_mismatch_names_file_and_checksums_and_leaves_nothing(tiny, web, tmp_path):
    wrong_raw = idx_bytes((tiny.arrays[TRAIN_LABELS] + 1) % 10)
    base = web({**tiny.gz, TRAIN_LABELS: gzip.compress(wrong_raw)})
    raw = tmp_path / "raw"

    with pytest.raises(DataIntegrityError) as caught:
        download_mnist(mirrors=[base], raw_dir=raw, files=tiny.spec)

    message = str(caught.value)
    expected = tiny.spec[TRAIN_LABELS]
    assert (
        f"checksum mismatch for {TRAIN_LABELS} from {base}{TRAIN_LABELS}: "
        f"expected {expected.sha256}, got {hashlib.sha256(wrong_raw).hexdigest()} "
        f"({len(wrong_raw)} bytes decompressed, expected {expected.size})"
    ) in message
    assert TRAIN_LABELS not in _names_in(raw)
    assert not [n for n in _names_in(raw) if n.startswith(".")]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda gz: gz[: len(gz) // 2], "is truncated"),
        (
            lambda gz: b"<!DOCTYPE html><html><body>Service unavailable</body></html>",
            "is not gzip data (starts with b'<!DOCTYPE",
        ),
        (lambda gz: b"", "is not gzip data (starts with b'')"),
        (lambda gz: gz[:20] + bytes(b ^ 0xFF for b in gz[20:40]) + gz[40:], "is corrupt gzip data"),
    ],
    ids=["truncated", "html-page", "empty", "corrupt-deflate"],
)
def test_damaged_downloads_are_integrity_errors_and_leave_nothing(tiny, web, tmp_path, damage, expected):
    base = web({**tiny.gz, TRAIN_IMAGES: damage(tiny.gz[TRAIN_IMAGES])})
    raw = tmp_path / "raw"
    with pytest.raises(DataIntegrityError) as caught:
        download_mnist(mirrors=[base], raw_dir=raw, files=tiny.spec)
    assert f"{TRAIN_IMAGES} from {base}{TRAIN_IMAGES} {expected}" in str(caught.value)
    assert TRAIN_IMAGES not in _names_in(raw)
    assert not [n for n in _names_in(raw) if n.startswith(".")]


def test_a_network_failure_anywhere_makes_the_error_retryable_and_lists_every_mirror(
    tiny, web, dead_mirror, tmp_path
):
    corrupt = web({**tiny.gz, TEST_IMAGES: b"<html>404</html>"})
    empty = web({})
    with pytest.raises(DownloadError) as caught:
        download_mnist(mirrors=[corrupt, empty, dead_mirror], raw_dir=tmp_path / "raw", files=tiny.spec)
    assert not isinstance(caught.value, DataIntegrityError)
    message = str(caught.value)
    assert f"could not get a verified {TEST_IMAGES} from 3 mirror(s)" in message
    assert f"{TEST_IMAGES} from {corrupt}{TEST_IMAGES} is not gzip data" in message
    assert f"HTTP 404 File not found for {empty}{TEST_IMAGES}" in message
    assert f"could not download {dead_mirror}{TEST_IMAGES}" in message


def test_a_damaged_local_copy_is_fetched_again(tiny, web, tmp_path):
    raw = tiny.write(tmp_path / "raw")
    (raw / TRAIN_IMAGES).write_bytes(gzip.compress(b"not these bytes"))
    base = web(tiny.gz)
    result = download_mnist(mirrors=[base], raw_dir=raw, files=tiny.spec)
    assert result["downloaded"] == [TRAIN_IMAGES]
    assert (raw / TRAIN_IMAGES).read_bytes() == tiny.gz[TRAIN_IMAGES]


def test_file_mirror(tiny, tmp_path):
    mirror = tiny.write(tmp_path / "mirror dir")  # a space, to exercise URL quoting
    result = download_mnist(mirrors=[mirror.as_uri()], raw_dir=tmp_path / "raw", files=tiny.spec)
    assert result["files"][TRAIN_IMAGES]["source"] == mirror.as_uri() + "/" + TRAIN_IMAGES


def test_s3_mirror_and_fallback_from_a_missing_key(tiny, s3_client, tmp_path):
    s3_client.create_bucket(Bucket="datasets")
    for name, content in tiny.gz.items():
        if name != TEST_LABELS:
            s3_client.put_object(Bucket="datasets", Key=f"mnist/{name}", Body=content)
    backup = tiny.write(tmp_path / "backup").as_uri()

    result = download_mnist(
        mirrors=["s3://datasets/mnist", backup], raw_dir=tmp_path / "raw", s3_client=s3_client, files=tiny.spec
    )

    assert result["files"][TRAIN_IMAGES]["source"] == f"s3://datasets/mnist/{TRAIN_IMAGES}"
    assert result["files"][TEST_LABELS]["source"] == f"{backup}/{TEST_LABELS}"
    with pytest.raises(DownloadError, match=f"S3 error NoSuchKey for s3://datasets/mnist/{TEST_LABELS}"):
        download_mnist(
            mirrors=["s3://datasets/mnist/"], raw_dir=tmp_path / "raw2", s3_client=s3_client, files=tiny.spec
        )


@pytest.mark.parametrize(
    ("mirrors", "message"),
    [
        ([], "no mirrors given"),
        (["s3://datasets/mnist/"], "needs an s3_client"),
        (["ftp://example.org/mnist/"], "unsupported mirror"),
    ],
)
def test_misconfigured_mirrors_are_refused_before_any_work(tmp_path, mirrors, message):
    with pytest.raises(ValueError, match=message):
        download_mnist(mirrors=mirrors, raw_dir=tmp_path / "raw", files={})
    assert not (tmp_path / "raw").exists()


def _write_gz(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw))
    return path


def test_idx_round_trip(tiny, tmp_path):
    images = _write_gz(tmp_path / "i.gz", idx_bytes(tiny.arrays[TRAIN_IMAGES]))
    labels = _write_gz(tmp_path / "l.gz", idx_bytes(tiny.arrays[TRAIN_LABELS]))
    assert idx_bytes(tiny.arrays[TRAIN_LABELS])[:8] == (2049).to_bytes(4, "big") + (50).to_bytes(4, "big")
    np.testing.assert_array_equal(read_idx_images(images), tiny.arrays[TRAIN_IMAGES])
    np.testing.assert_array_equal(read_idx_labels(labels), tiny.arrays[TRAIN_LABELS])
    assert read_idx_images(images).dtype == np.uint8


def _header(magic: int, *dims: int) -> bytes:
    return b"".join(n.to_bytes(4, "big") for n in (magic, *dims))


@pytest.mark.parametrize(
    ("reader", "raw", "message"),
    [
        (read_idx_images, idx_bytes(np.zeros(3, np.uint8)), "IDX magic number expected 2051, got 2049"),
        (read_idx_labels, idx_bytes(np.zeros((1, 28, 28), np.uint8)), "IDX magic number expected 2049, got 2051"),
        (
            read_idx_images,
            idx_bytes(np.zeros((2, 27, 28), np.uint8)),
            r"item shape expected \(28, 28\), header says \(27, 28\)",
        ),
        (
            read_idx_images,
            _header(2051, 5, 28, 28) + bytes(4 * 784),
            "header says 5 items, which is 3936 bytes, got 3152 bytes",
        ),
        (read_idx_labels, _header(2049, 3) + bytes(4), "header says 3 items, which is 11 bytes, got 12 bytes"),
        (read_idx_labels, _header(2049), "4 bytes, too short for an IDX header of 8 bytes"),
        (read_idx_labels, idx_bytes(np.array([1, 2, 10, 3], np.uint8)), "label 2 expected a digit 0-9, got 10"),
    ],
    ids=["images-magic", "labels-magic", "dims", "count-short", "count-long", "short-header", "label-10"],
)
def test_idx_validation_names_file_expected_and_got(tmp_path, reader, raw, message):
    path = _write_gz(tmp_path / "bad-idx.gz", raw)
    with pytest.raises(DataIntegrityError, match=message) as caught:
        reader(path)
    assert str(path) in str(caught.value)


def test_prepare_writes_normalised_arrays_and_reuses_them(tiny, tmp_path, monkeypatch):
    raw = tiny.write(tmp_path / "raw")
    cache_root = tmp_path / "prepared"

    first = prepare_dataset(raw_dir=raw, cache_root=cache_root, files=tiny.spec)

    cache_dir = Path(first["cache_dir"])
    assert first["cache_hit"] is False
    assert (first["train_count"], first["test_count"]) == (50, 20)
    assert cache_dir.parent == cache_root and cache_dir.name == first["data_sha256"][:16]
    assert _names_in(cache_root) == {cache_dir.name}  # no temp dirs
    downloaded = download_mnist(mirrors=[raw.as_uri()], raw_dir=raw, files=tiny.spec)
    assert first["data_sha256"] == downloaded["data_sha256"]
    x_train, y_train, x_test, y_test = load_prepared(cache_dir)
    assert x_train.shape == (50, 28, 28) and x_test.shape == (20, 28, 28)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.uint8
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    np.testing.assert_allclose(x_train * 255, tiny.arrays[TRAIN_IMAGES], atol=1e-4)
    np.testing.assert_array_equal(y_test, tiny.arrays[TEST_LABELS])
    assert not x_train.flags.writeable
    info = json.loads((cache_dir / "dataset.json").read_text())
    assert info["data_sha256"] == first["data_sha256"]
    assert (info["train_count"], info["test_count"]) == (50, 20)

    stamp = (cache_dir / "dataset.json").stat().st_mtime_ns

    def no_decoding(path: Path) -> None:
        raise AssertionError(f"decoded {path} on a cache hit")

    monkeypatch.setattr(mnist_tasks.data.prepare, "read_idx_images", no_decoding)
    second = prepare_dataset(raw_dir=raw, cache_root=cache_root, files=tiny.spec)
    assert second == {**first, "cache_hit": True}
    assert (cache_dir / "dataset.json").stat().st_mtime_ns == stamp


def test_prepare_refuses_raw_files_that_do_not_match_the_spec(tiny, tmp_path):
    raw = tiny.write(tmp_path / "raw")
    (raw / TEST_IMAGES).write_bytes(tiny.gz[TRAIN_IMAGES])
    with pytest.raises(DataIntegrityError, match=f"checksum mismatch for {TEST_IMAGES}"):
        prepare_dataset(raw_dir=raw, cache_root=tmp_path / "prepared", files=tiny.spec)
    assert _names_in(tmp_path / "prepared") == set()


def test_prepare_refuses_mismatched_counts_and_leaves_no_cache(tiny, tmp_path):
    short = Tiny({**tiny.arrays, TRAIN_LABELS: tiny.arrays[TRAIN_LABELS][:49]})
    raw = short.write(tmp_path / "raw")
    with pytest.raises(DataIntegrityError, match=f"{TRAIN_IMAGES} has 50 images but {TRAIN_LABELS} has 49 labels"):
        prepare_dataset(raw_dir=raw, cache_root=tmp_path / "prepared", files=short.spec)
    assert _names_in(tmp_path / "prepared") == set()


def test_prepare_refuses_bad_labels_and_leaves_no_cache(tiny, tmp_path):
    labels = tiny.arrays[TEST_LABELS].copy()
    labels[7] = 10
    bad = Tiny({**tiny.arrays, TEST_LABELS: labels})
    with pytest.raises(DataIntegrityError, match="label 7 expected a digit 0-9, got 10"):
        prepare_dataset(raw_dir=bad.write(tmp_path / "raw"), cache_root=tmp_path / "prepared", files=bad.spec)
    assert _names_in(tmp_path / "prepared") == set()


def test_prepare_needs_the_raw_files(tiny, tmp_path):
    raw = tiny.write(tmp_path / "raw")
    (raw / TRAIN_LABELS).unlink()
    with pytest.raises(FileNotFoundError, match=f"{TRAIN_LABELS} does not exist"):
        prepare_dataset(raw_dir=raw, cache_root=tmp_path / "prepared", files=tiny.spec)


def test_a_damaged_cache_is_rebuilt_rather_than_used(tiny, tmp_path):
    raw = tiny.write(tmp_path / "raw")
    first = prepare_dataset(raw_dir=raw, cache_root=tmp_path / "prepared", files=tiny.spec)
    x_test = Path(first["cache_dir"]) / "x_test.npy"
    good = x_test.read_bytes()
    damaged = bytearray(good)
    damaged[-64:] = b"\xff" * 64  # the .npy header stays valid: only a checksum can tell
    x_test.write_bytes(bytes(damaged))

    again = prepare_dataset(raw_dir=raw, cache_root=tmp_path / "prepared", files=tiny.spec)

    assert again["cache_hit"] is False
    assert x_test.read_bytes() == good
    assert prepare_dataset(raw_dir=raw, cache_root=tmp_path / "prepared", files=tiny.spec)["cache_hit"] is True
