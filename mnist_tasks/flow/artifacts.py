"""The artifact store: the one thing tasks share, and each worker's verified copy of what it reads.

A task may run on any worker, on any host. It never opens a file another task
wrote on local disk: it uploads what it produces here and hands the next task
an `ArtifactRef` (URI, sha256, size) through XCom. The next task fetches the
object into its own worker's cache and checks the sha256 before using it; a
cached copy that still matches is used without fetching again, and one that
does not is fetched again.

The store is `s3://bucket/prefix/` (a cluster) or `file:///dir/` (one machine).
Keys under it:

    datasets/<data sha256>/raw/<file>.gz          verified downloads, shared by all runs
    datasets/<data sha256>/prepared/<array>.npy   prepared arrays, shared by all runs
    datasets/<data sha256>/prepared/dataset.json  their refs, written last: present means complete
    runs/<dag id>/<run id>/<file>                 one run's model, history, metrics, pictures
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from mnist_tasks.errors import PermanentError
from mnist_tasks.files import ChecksumMismatchError, atomic_path, check_sha256, safe_name, sha256_file
from mnist_tasks.s3 import directory_uri, is_missing, json_bytes, split_s3_uri

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Object metadata (x-amz-meta-sha256) that lets `find` tell what an object holds without reading it.
SHA256_METADATA = "sha256"


class ArtifactRef(TypedDict):
    uri: str
    sha256: str
    bytes: int


class ArtifactUnusableError(PermanentError):
    """An object an upstream task handed over is damaged or gone: a retry of this task reads the same.

    Only running the task that made it again can help, so the DAGs do not retry on it.
    """


class ArtifactIntegrityError(ChecksumMismatchError, ArtifactUnusableError):
    """An object's bytes differ from the checksum it was handed over with; fetching again cannot help."""


class ArtifactMissingError(LookupError, ArtifactUnusableError):
    """An object that was handed over is not in the store (deleted, or another store is configured)."""


def dataset_key(data_sha256: str, *parts: str) -> str:
    return "/".join(("datasets", data_sha256, *parts))


def run_key(dag_id: str, run_id: str, name: str) -> str:
    return "/".join(("runs", safe_name(dag_id), safe_name(run_id), name))


class ArtifactStore:
    """Upload, look up and fetch (verified) the objects under one store URI.

    `cache_dir` is this worker's copy of the store: an object's local copy is
    `cache_dir/<its key>`, so a prepared dataset's arrays sit side by side under
    the file names `prepare.load_split` reads.
    """

    def __init__(self, uri: str, *, cache_dir: Path, s3_client: S3Client | None = None) -> None:
        scheme = urllib.parse.urlsplit(uri).scheme
        if scheme not in ("s3", "file"):
            raise ValueError(f"unsupported artifact store {uri!r}: use s3://bucket/prefix/ or file:///dir/")
        if scheme == "s3" and s3_client is None:
            raise ValueError(f"artifact store {uri} needs an s3_client")
        self.uri = directory_uri(uri)
        self.cache_dir = cache_dir
        # None only for a file:// store, which never uses it (an s3:// one without a client was refused above).
        self._s3 = cast("S3Client", s3_client)

    def uri_for(self, key: str) -> str:
        return self.uri + key

    def local_path(self, key: str) -> Path:
        """Where this worker keeps its copy of `key` (what `get` returns, once verified)."""
        return self.cache_dir / key

    def put(self, path: Path, key: str) -> ArtifactRef:
        """Upload a local file under `key` (replacing what is there); return its ref.

        The file also becomes this worker's cached copy, so a task that runs
        next on the same worker finds it (and still checks it).
        """
        sha256, size = sha256_file(path), path.stat().st_size
        uri = self.uri_for(key)
        if uri.startswith("s3://"):
            bucket, object_key = split_s3_uri(uri)
            self._s3.upload_file(str(path), bucket, object_key, ExtraArgs={"Metadata": {SHA256_METADATA: sha256}})
        else:
            with atomic_path(_local_path(uri)) as tmp:
                shutil.copyfile(path, tmp)
        _link_or_copy(path, self.local_path(key))
        return {"uri": uri, "sha256": sha256, "bytes": size}

    def put_json(self, value: Any, key: str) -> ArtifactRef:
        path = self.local_path(key)
        with atomic_path(path) as tmp:
            tmp.write_bytes(json_bytes(value, sort_keys=True))
        return self.put(path, key)

    def get(self, ref: ArtifactRef) -> Path:
        """This worker's copy of the object `ref` names, fetched if missing or damaged, always verified."""
        dest = self.local_path(self.key_of(ref))
        self.fetch(ref, dest)
        return dest

    def get_json(self, ref: ArtifactRef) -> Any:
        return json.loads(self.get(ref).read_text())

    def split_dir(self, arrays: Mapping[str, ArtifactRef], split: str) -> Path:
        """This worker's verified copies of one split's arrays (x_<split>.npy, y_<split>.npy): their directory."""
        images = self.get(arrays[f"x_{split}"])
        self.get(arrays[f"y_{split}"])  # the same key directory, so beside it
        return images.parent

    def key_of(self, ref: ArtifactRef) -> str:
        if not ref["uri"].startswith(self.uri):
            raise ArtifactMissingError(
                f"{ref['uri']} is not in the artifact store {self.uri} (was MNIST_ARTIFACTS_URI changed mid-run?)"
            )
        return ref["uri"][len(self.uri) :]

    def find(self, key: str) -> ArtifactRef | None:
        """The ref of what `key` holds now, or None when there is nothing there.

        S3 answers from the object's metadata (one HEAD request); an object
        without it (uploaded by something else) counts as absent, so it is
        replaced. The sha256 is what the uploader recorded: `fetch` checks it.
        """
        uri = self.uri_for(key)
        if uri.startswith("s3://"):
            from botocore.exceptions import ClientError

            bucket, object_key = split_s3_uri(uri)
            try:
                head = self._s3.head_object(Bucket=bucket, Key=object_key)
            except ClientError as err:
                if is_missing(err):
                    return None
                raise
            sha256 = head.get("Metadata", {}).get(SHA256_METADATA)
            return None if sha256 is None else {"uri": uri, "sha256": sha256, "bytes": head["ContentLength"]}
        path = _local_path(uri)
        if not path.is_file():
            return None
        return {"uri": uri, "sha256": sha256_file(path), "bytes": path.stat().st_size}

    def fetch(self, ref: ArtifactRef, dest: Path) -> bool:
        """Make `dest` hold the object `ref` names, checked against its sha256; True if it already did.

        A file at `dest` that does not match (damaged, or from an older run) is
        replaced. The new copy appears under `dest` only once it matches, else
        ArtifactIntegrityError names the object, the expected and the actual
        checksum, and `dest` is left without a file.
        """
        if dest.is_file():
            if sha256_file(dest) == ref["sha256"]:
                return True
            dest.unlink()
        with atomic_path(dest) as tmp:
            self._download(ref["uri"], tmp)
            check_sha256(
                ref["uri"],
                expected=ref["sha256"],
                actual=sha256_file(tmp),
                detail=f" ({tmp.stat().st_size} bytes, expected {ref['bytes']}); the object changed in the store "
                "after it was handed over: delete it, and the task that wrote it makes it again",
                error=ArtifactIntegrityError,
            )
        return False

    def _download(self, uri: str, dest: Path) -> None:
        if uri.startswith("s3://"):
            from botocore.exceptions import ClientError

            bucket, key = split_s3_uri(uri)
            try:
                self._s3.download_file(bucket, key, str(dest))
            except ClientError as err:
                if is_missing(err):
                    raise ArtifactMissingError(f"{uri} is not in the artifact store") from err
                raise
            return
        try:
            shutil.copyfile(_local_path(uri), dest)
        except FileNotFoundError as err:
            raise ArtifactMissingError(f"{uri} is not in the artifact store") from err


def _local_path(uri: str) -> Path:
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ValueError(f"not a local file:// URI: {uri!r}")
    return Path(urllib.request.url2pathname(parts.path))


def _link_or_copy(source: Path, dest: Path) -> None:
    """Make `dest` hold `source`'s bytes: a hard link where possible (no second copy of 200 MB of arrays)."""
    if dest.exists() and os.path.samefile(source, dest):
        return
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, tmp)
