"""The MNIST files: download and verify, IDX decoding and validation, normalise and cache.

A file is identified by its *decompressed* content (size and sha256), so any
faithful mirror passes whatever gzip settings it used. Two kinds of failure are
kept apart because the DAG treats them differently:

- `DataIntegrityError`: the bytes are wrong (checksum mismatch, truncated or
  corrupt gzip, an HTML page instead of gzip, a malformed IDX file). Fetching
  the same bytes again cannot help, so the task fails without retries.
- `DownloadError`: the bytes could not be fetched (HTTP error, timeout, missing
  key or file). A later retry may succeed.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from mnist_tasks.errors import MnistError, PermanentError
from mnist_tasks.files import CHUNK_BYTES, ChecksumMismatchError, atomic_path, check_sha256, sha256_stream
from mnist_tasks.s3 import directory_uri, split_s3_uri

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class FileSpec:
    name: str
    size: int
    """Bytes after gunzip."""
    sha256: str
    """Of the bytes after gunzip."""



# The canonical .gz files themselves have these sha256s (for reference only; a
# mirror may recompress): train-images 440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609,
# train-labels 3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c,
# t10k-images 8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6,
# t10k-labels f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6.
MNIST_FILES: dict[str, FileSpec] = {
    spec.name: spec
    for spec in (
        FileSpec(
            "train-images-idx3-ubyte.gz",
            47_040_016,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        FileSpec(
            "train-labels-idx1-ubyte.gz",
            60_008,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        FileSpec(
            "t10k-images-idx3-ubyte.gz",
            7_840_016,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        FileSpec(
            "t10k-labels-idx1-ubyte.gz",
            10_008,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    )
}


class VerifiedFile(TypedDict):
    sha256: str
    """Of the decompressed content, as MNIST_FILES pins it."""
    bytes: int
    """Decompressed."""
    source: str
    """The URL it was fetched from now, or "cache"."""


class DownloadedMnist(TypedDict):
    """What download_mnist returns."""

    raw_dir: str
    files: dict[str, VerifiedFile]
    downloaded: list[str]
    """The names fetched now; the others were in raw_dir and verified."""
    data_sha256: str


GZIP_MAGIC = b"\x1f\x8b"



USER_AGENT = "mnist-retraining (python urllib)"



class DataIntegrityError(PermanentError, ValueError):
    """The content is wrong; fetching the same bytes again will not fix it."""



class DataChecksumError(ChecksumMismatchError, DataIntegrityError):
    """A data file (or the wheel the mirror is built from) is not the one its checksum names."""



class DownloadError(MnistError, RuntimeError):
    """The content could not be fetched; a retry may succeed."""



class MissingFileError(DownloadError):
    """The mirror answered, and it does not have the file (HTTP 404, no such key or file)."""



def files_by_role(files: Mapping[str, FileSpec]) -> dict[tuple[str, str], FileSpec]:
    """{("train" | "test", "images" | "labels"): spec}, from the file names.

    `train-…` is the training split, `t10k-…` the test split; `-images-` and
    `-labels-` say which half of the pair a file is.
    """
    roles: dict[tuple[str, str], FileSpec] = {}
    for name, spec in files.items():
        split = "train" if name.startswith("train-") else "test" if name.startswith("t10k-") else None
        kind = "images" if "-images-" in name else "labels" if "-labels-" in name else None
        if split is None or kind is None:
            raise ValueError(f"cannot tell the split and kind of {name!r}: expected train-/t10k- and -images-/-labels-")
        if (split, kind) in roles:
            raise ValueError(f"two {split} {kind} files: {roles[split, kind].name} and {name}")
        roles[split, kind] = spec
    missing = {(s, k) for s in ("train", "test") for k in ("images", "labels")} - roles.keys()
    if missing:
        raise ValueError(f"no file for {', '.join(f'{s} {k}' for s, k in sorted(missing))} in {sorted(files)}")
    return roles



def check_checksum(spec: FileSpec, *, sha256: str, size: int, source: str) -> None:
    """Raise DataChecksumError unless the sha256 of decompressed content is spec's (the sizes go in the message)."""
    check_sha256(
        f"{spec.name} from {source}",
        expected=spec.sha256,
        actual=sha256,
        detail=f" ({size} bytes decompressed, expected {spec.size})",
        error=DataChecksumError,
    )



@contextmanager
def gzip_errors(name: str, source: str) -> Iterator[None]:
    try:
        yield
    except EOFError as err:
        raise DataIntegrityError(f"{name} from {source} is truncated: {err}") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise DataIntegrityError(f"{name} from {source} is corrupt gzip data: {err}") from err



def _check_gzip_magic(path: Path, name: str, source: str) -> None:
    # Error pages arrive with status 200 often enough (captive portals, CDNs)
    # that showing what came instead is the quickest diagnosis.
    with open(path, "rb") as f:
        head = f.read(16)
    if not head.startswith(GZIP_MAGIC):
        raise DataIntegrityError(f"{name} from {source} is not gzip data (starts with {head!r})")



def verify_gz(path: Path, spec: FileSpec, *, source: str) -> tuple[str, int]:
    """Gunzip `path` in a stream and check it is spec's content; return (sha256, size) decompressed.

    `source` (the URL it came from) goes into the error message.
    """
    _check_gzip_magic(path, spec.name, source)
    with gzip_errors(spec.name, source), gzip.open(path, "rb") as stream:
        sha256, size = sha256_stream(stream)
    check_checksum(spec, sha256=sha256, size=size, source=source)
    return sha256, size



def _fetch_http(url: str, dest: Path, timeout_s: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK_BYTES)
    except urllib.error.HTTPError as err:
        error = MissingFileError if err.code in (404, 410) else DownloadError
        raise error(f"HTTP {err.code} {err.reason} for {url}") from err
    except urllib.error.URLError as err:
        raise DownloadError(f"could not download {url}: {err.reason}") from err
    except (OSError, HTTPException) as err:  # timeouts, resets, a body cut short
        raise DownloadError(f"could not download {url}: {err!r}") from err



def _fetch_s3(url: str, dest: Path, s3_client: S3Client) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(url)
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
        with open(dest, "wb") as out:
            shutil.copyfileobj(body, out, CHUNK_BYTES)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        error = MissingFileError if code in ("NoSuchKey", "NoSuchBucket", "404") else DownloadError
        raise error(f"S3 error {code} for {url}: {err}") from err
    except (BotoCoreError, OSError) as err:
        raise DownloadError(f"could not download {url}: {err}") from err



def _fetch_local(url: str, dest: Path) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file:// URL on another host is not supported: {url}")
    try:
        shutil.copyfile(urllib.request.url2pathname(parts.path), dest)
    except FileNotFoundError as err:
        raise MissingFileError(f"no such file: {url}") from err
    except OSError as err:
        raise DownloadError(f"could not copy {url}: {err}") from err



def fetch_file(url: str, dest: Path, *, s3_client: S3Client | None = None, timeout_s: float = 60) -> None:
    """Copy the bytes at an https://, http://, s3:// or file:// URL to `dest`, unchecked.

    `timeout_s` is per network operation for HTTP; S3 uses the client's own timeouts.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("http", "https"):
        _fetch_http(url, dest, timeout_s)
    elif scheme == "s3":
        if s3_client is None:
            raise ValueError(f"reading {url} needs an s3_client")
        _fetch_s3(url, dest, s3_client)
    elif scheme == "file":
        _fetch_local(url, dest)
    else:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}: use https://, http://, s3:// or file://")



def _download_verified(
    spec: FileSpec, mirrors: Sequence[str], final: Path, s3_client: S3Client | None, timeout_s: float
) -> VerifiedFile:
    failures: list[Exception] = []
    for base in mirrors:
        url = base + spec.name
        try:
            # A failed attempt leaves nothing: atomic_path deletes its temp file.
            with atomic_path(final) as tmp:
                fetch_file(url, tmp, s3_client=s3_client, timeout_s=timeout_s)
                sha256, size = verify_gz(tmp, spec, source=url)
            return {"sha256": sha256, "bytes": size, "source": url}
        except (DownloadError, DataIntegrityError) as err:
            failures.append(err)
    # Only when every mirror served bad bytes is a retry pointless; if any
    # failure was a network one, that mirror may yet serve the right file.
    error = DataIntegrityError if all(isinstance(e, DataIntegrityError) for e in failures) else DownloadError
    reasons = "\n".join(f"  - {e}" for e in failures)
    raise error(f"could not get a verified {spec.name} from {len(mirrors)} mirror(s):\n{reasons}") from failures[-1]



def files_sha256(checksums: Mapping[str, str]) -> str:
    """The identity of the whole dataset: sha256 of `sha256sum`-style lines, in name order.

    Each line is "<sha256 of the decompressed file>  <file name>\\n".
    """
    lines = "".join(f"{checksums[name]}  {name}\n" for name in sorted(checksums))
    return hashlib.sha256(lines.encode()).hexdigest()



def download_mnist(
    *,
    mirrors: Sequence[str],
    raw_dir: Path,
    s3_client: S3Client | None = None,
    files: Mapping[str, FileSpec] | None = None,
    timeout_s: float = 60,
) -> DownloadedMnist:
    """Make raw_dir hold the MNIST files, each verified; fetch only what is missing or damaged.

    Mirrors are base URLs (https://…/, http://…/, s3://bucket/prefix/, file:///dir/)
    tried in order per file. A local copy that no longer verifies is deleted and
    fetched again. When every mirror fails for a file, the error lists each
    mirror's reason; it is a DataIntegrityError only if every mirror served bad
    bytes, else a DownloadError.

    Returns {"raw_dir", "files": {name: {"sha256", "bytes", "source"}},
    "downloaded": [names fetched now], "data_sha256"}; sha256 and bytes are of
    the decompressed content, source is the URL or "cache".
    """
    files = MNIST_FILES if files is None else files
    if not mirrors:
        raise ValueError("no mirrors given")
    bases = [directory_uri(m) for m in mirrors]
    for base in bases:
        scheme = urllib.parse.urlsplit(base).scheme
        if scheme not in ("http", "https", "s3", "file"):
            raise ValueError(f"unsupported mirror {base!r}: use https://, http://, s3:// or file://")
        if scheme == "s3" and s3_client is None:
            raise ValueError(f"mirror {base} needs an s3_client")

    raw_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, VerifiedFile] = {}
    downloaded: list[str] = []
    for name in sorted(files):
        spec = files[name]
        final = raw_dir / name
        if final.exists():
            try:
                sha256, size = verify_gz(final, spec, source=str(final))
                results[name] = {"sha256": sha256, "bytes": size, "source": "cache"}
                continue
            except DataIntegrityError:
                final.unlink()  # damaged on disk; the mirrors have the real thing
        results[name] = _download_verified(spec, bases, final, s3_client, timeout_s)
        downloaded.append(name)
    return {
        "raw_dir": str(raw_dir),
        "files": results,
        "downloaded": downloaded,
        "data_sha256": files_sha256({name: r["sha256"] for name, r in results.items()}),
    }
