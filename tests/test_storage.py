"""files.py: atomic writes (and the temp files of a writer killed with SIGKILL removed by the next one),
the one checksum check, S3 directory URIs, and safe Keras loading."""

from __future__ import annotations

import hashlib
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mnist_tasks.files import (
    ChecksumMismatchError,
    atomic_dir,
    atomic_path,
    check_file_sha256,
    check_sha256,
    safe_name,
    scratch_dir,
)
from mnist_tasks.model.loading import ModelChecksumError, UnloadableModelError, load_keras_model
from mnist_tasks.s3 import split_s3_dir

# A real process that starts writing `final` through the given context manager,
# puts a few MB in its temp, and is killed with SIGKILL mid-write: no clean-up runs.
KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from mnist_tasks.files import atomic_dir, atomic_path, scratch_dir

    final, kind = Path(sys.argv[1]), sys.argv[2]
    writers = {
        "file": lambda: atomic_path(final, suffix=".keras"),
        "dir": lambda: atomic_dir(final),
        "scratch": lambda: scratch_dir(final.parent, final.name),
    }
    with writers[kind]() as tmp:
        target = tmp if kind == "file" else tmp / "x_train.npy"
        target.write_bytes(b"\\0" * (4 << 20))
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _killed_writer(final: Path, kind: str) -> list[Path]:
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(final), kind], capture_output=True, timeout=60)
    assert done.returncode == -9, done.stderr
    leftovers = [p for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.")]
    assert len(leftovers) == 1 and not final.exists()  # what a crash leaves
    return leftovers


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_the_next_writer_removes_what_a_killed_writer_left(tmp_path: Path, kind: str) -> None:
    final = tmp_path / ("model.keras" if kind == "file" else "prepared")
    _killed_writer(final, kind)

    with atomic_path(final) if kind == "file" else atomic_dir(final) as tmp:
        if kind == "file":
            tmp.write_bytes(b"complete")
        else:
            (tmp / "x_train.npy").write_bytes(b"complete")

    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_a_live_writers_temp_is_left_alone(tmp_path: Path) -> None:
    final = tmp_path / "history.json"
    # Another process, alive, in the middle of writing the same file.
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from mnist_tasks.files import atomic_path\n"
            "with atomic_path(Path(sys.argv[1])) as tmp:\n"
            "    tmp.write_text('theirs'); print('writing', flush=True); time.sleep(60)\n",
            str(final),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        with atomic_path(final) as tmp:
            tmp.write_text("ours")
        theirs = [p for p in tmp_path.iterdir() if p.name.startswith(f".history.json.{writer.pid}.")]
        assert len(theirs) == 1 and theirs[0].read_text() == "theirs"
    finally:
        writer.kill()
        writer.wait()
    assert final.read_text() == "ours"


def test_a_failed_block_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_the_next_scratch_user_removes_what_a_killed_one_left(tmp_path: Path) -> None:
    _killed_writer(tmp_path / "batch-predict", "scratch")

    with scratch_dir(tmp_path, "batch-predict") as scratch:
        (scratch / "image.png").write_bytes(b"png")
        assert [p.name for p in tmp_path.iterdir()] == [scratch.name]  # the killed one's is gone

    assert list(tmp_path.iterdir()) == []


def test_a_checksum_mismatch_names_the_file_the_expected_and_the_actual_sha256(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(b"model")
    actual = hashlib.sha256(b"model").hexdigest()
    assert check_file_sha256(path, expected=actual) == actual

    with pytest.raises(ModelChecksumError) as caught:
        check_file_sha256(path, expected="ab" * 32, source="manifest.json", error=ModelChecksumError)
    err = caught.value
    assert str(err) == f"checksum mismatch for {path}: expected {'ab' * 32} (from manifest.json), got {actual}"
    assert (err.file, err.expected, err.actual) == (str(path), "ab" * 32, actual)
    assert isinstance(err, ChecksumMismatchError)
    # Errors cross process boundaries (Airflow's task runner): the type and message survive.
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), str(copy)) == (ModelChecksumError, str(err))


def test_matching_checksums_pass_and_the_detail_ends_the_message() -> None:
    check_sha256("x", expected="a", actual="a")
    with pytest.raises(ChecksumMismatchError, match=r"^checksum mismatch for s3://b/k: expected a, got b \(3 bytes\)$"):
        check_sha256("s3://b/k", expected="a", actual="b", detail=" (3 bytes)")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/a/b", ("bucket", "a/b/")),
        ("s3://bucket/a/b/", ("bucket", "a/b/")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket", ("bucket", "")),
    ],
)
def test_an_s3_directory_uri_splits_into_bucket_and_a_prefix_ending_in_a_slash(uri: str, expected) -> None:
    assert split_s3_dir(uri) == expected


def test_the_keras_loader_checks_the_sha256_before_it_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelChecksumError, match=f"checksum mismatch for {path}"):
        load_keras_model(path, sha256="00" * 32)
    with pytest.raises(UnloadableModelError, match="m.keras: cannot load as a Keras model"):
        load_keras_model(path, sha256=hashlib.sha256(b"not a model").hexdigest(), name="m.keras")


@given(st.text(min_size=1), st.text(min_size=1))
def test_names_map_to_keys_one_to_one(first: str, second: str) -> None:
    # Run ids become key segments: two runs must never write one object.
    assume(first != second)
    assert safe_name(first) != safe_name(second)


@given(st.text(min_size=1))
def test_a_safe_name_is_one_plain_segment_that_gives_the_name_back(name: str) -> None:
    from urllib.parse import unquote

    segment = safe_name(name)
    assert re.fullmatch(r"[A-Za-z0-9._~%-]+", segment)
    assert segment not in (".", "..")
    assert unquote(segment) == name


def test_run_ids_that_differ_only_in_punctuation_get_their_own_keys() -> None:
    assert safe_name("collide:1") != safe_name("collide+1")
    assert safe_name("manual__2026-11-23T22:41:07+00:00") == "manual__2026-11-23T22%3A41%3A07%2B00%3A00"
