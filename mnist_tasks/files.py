"""Bytes on disk: checksums and their one check, atomic local writes, scratch directories, safe names."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_tasks.errors import PermanentError

if TYPE_CHECKING:
    from _typeshed import SupportsRead


CHUNK_BYTES = 1 << 20



class ChecksumMismatchError(PermanentError, ValueError):
    """Bytes are not the ones a checksum vouches for; retrying the same bytes cannot help.

    `file`, `expected` and `actual` (hex sha256s) are kept as attributes and make the
    message: `checksum mismatch for <file>: expected <sha256>, got <sha256>`. Modules raise
    subclasses that say whose bytes they were (ModelChecksumError, ...), so callers keep
    catching the type they know.
    """

    def __init__(self, file: str | Path, *, expected: str, actual: str, source: str = "", detail: str = "") -> None:
        self.file, self.expected, self.actual = str(file), expected, actual
        self.source, self.detail = source, detail
        vouched = f" (from {source})" if source else ""
        super().__init__(f"checksum mismatch for {file}: expected {expected}{vouched}, got {actual}{detail}")

    def __reduce__(self) -> tuple[Callable[..., ChecksumMismatchError], tuple[object, ...]]:
        # Keyword-only arguments: the default (cls, args) would not rebuild it across processes.
        return _rebuild_checksum_error, (type(self), self.file, self.expected, self.actual, self.source, self.detail)



def _rebuild_checksum_error(
    cls: type[ChecksumMismatchError], file: str, expected: str, actual: str, source: str, detail: str
) -> ChecksumMismatchError:
    return cls(file, expected=expected, actual=actual, source=source, detail=detail)



def check_sha256(
    file: str | Path,
    *,
    expected: str,
    actual: str,
    source: str = "",
    detail: str = "",
    error: type[ChecksumMismatchError] = ChecksumMismatchError,
) -> None:
    """Raise `error` naming `file`, the expected and the actual sha256 unless they are equal.

    `source` names what vouches for `expected` (a manifest); `detail` ends the message.
    """
    if actual != expected:
        raise error(file, expected=expected, actual=actual, source=source, detail=detail)



def check_file_sha256(
    path: Path,
    *,
    expected: str,
    name: str | Path | None = None,
    source: str = "",
    error: type[ChecksumMismatchError] = ChecksumMismatchError,
) -> str:
    """The sha256 of the file at `path`, once it is `expected` (else `error`, naming `name` or the path)."""
    actual = sha256_file(path)
    check_sha256(path if name is None else name, expected=expected, actual=actual, source=source, error=error)
    return actual



def sha256_stream(stream: SupportsRead[bytes]) -> tuple[str, int]:
    """Return (hex sha256, byte count) of everything left in a binary stream."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size



def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)[0]



def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current



def _temp_prefix(final: Path) -> str:
    """Temp names beside `final` carry the writer's pid: `.model.keras.<pid>.<random>.tmp`."""
    return f".{final.name}.{os.getpid()}."



def _remove_stale_temps(final: Path) -> None:
    """Remove the temp files and directories beside `final` whose writer has died.

    A process killed with SIGKILL never runs its clean-up, so whoever writes
    `final` next removes what it left. A writer that is still running (its pid
    alive on this host) keeps its temp; caches are per worker, so pids are this host's.
    """
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*.tmp*"):
        pid = leftover.name[len(final.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)



def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True



@contextmanager
def atomic_path(final: Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it into place only if the block succeeds.

    Readers never see a half-written file, and a failure leaves nothing behind;
    nor does a crash, once `final` is written again. `suffix` ends the temp name
    (Keras writes only files named *.keras).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=_temp_prefix(final), suffix=".tmp" + suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600; the result should be as readable as any file we create.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)



@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Like `atomic_path`, for a directory filled by the block."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_temp_prefix(final), suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



@contextmanager
def scratch_dir(parent: Path, name: str) -> Iterator[Path]:
    """A private working directory under `parent`, removed when the block ends.

    Named like atomic_path's temps (`.<name>.<pid>.<random>.tmp`), so one that a
    killed process left is removed by the next user of the same name.
    """
    anchor = parent / name
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(anchor)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(anchor), suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



def safe_name(text: str) -> str:
    """`text` (a run id such as manual__2026-11-23T22:41:07+00:00) as one key or path segment, one-to-one.

    Letters, digits, '.', '_', '-' and '~' stay; every other byte of its UTF-8 becomes
    %XX (URL encoding), so two names never share a segment (`collide:1` and `collide+1`
    did when both became `collide_1`) and urllib.parse.unquote gives the name back.
    '.' and '..' alone are encoded too: as a path segment they would name a directory.
    """
    from urllib.parse import quote

    if not text:
        raise ValueError("an empty name has no key")
    if text in (".", ".."):
        return "%2E" * len(text)
    return quote(text, safe="")
