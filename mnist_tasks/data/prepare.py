"""Prepare: decode the verified IDX files once, normalise, and cache the arrays with their sha256s."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from mnist_tasks.data import download
from mnist_tasks.data.download import (
    DataChecksumError,
    DataIntegrityError,
    FileSpec,
    files_by_role,
    files_sha256,
    verify_gz,
)
from mnist_tasks.data.idx import read_idx_images, read_idx_labels
from mnist_tasks.files import atomic_dir, check_file_sha256, sha256_file
from mnist_tasks.s3 import json_bytes

DATASET_INFO = "dataset.json"



ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")


class PreparedCache(TypedDict):
    """What prepare_dataset returns."""

    cache_dir: str
    cache_hit: bool
    """True when the cache was already there and intact: nothing was decoded."""
    data_sha256: str
    train_count: int
    test_count: int


def _decode_split(raw_dir: Path, images: FileSpec, labels: FileSpec) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (N, 28, 28) in [0, 1], y uint8 (N,)) of one split."""
    x = read_idx_images(raw_dir / images.name)
    y = read_idx_labels(raw_dir / labels.name)
    if len(x) != len(y):
        raise DataIntegrityError(f"{images.name} has {len(x)} images but {labels.name} has {len(y)} labels")
    return np.divide(x, 255, dtype=np.float32), y



def prepare_dataset(
    *, raw_dir: Path, cache_root: Path, files: Mapping[str, FileSpec] | None = None
) -> PreparedCache:
    """Decode and normalise the verified raw files into a cache keyed by their checksum.

    The cache directory, cache_root/<data_sha256[:16]>, holds x_train.npy,
    y_train.npy, x_test.npy, y_test.npy and dataset.json (with their sha256s).
    It appears complete or not at all; when it exists and every array still
    has its sha256, nothing is decoded; a damaged one is rebuilt.

    Returns {"cache_dir", "cache_hit", "data_sha256", "train_count", "test_count"}.
    """
    files = download.MNIST_FILES if files is None else files
    roles = files_by_role(files)
    checked: dict[str, dict[str, Any]] = {}  # name -> {"sha256", "bytes"}
    for name in sorted(files):
        path = raw_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: download the data first")
        sha256, size = verify_gz(path, files[name], source=str(path))
        checked[name] = {"sha256": sha256, "bytes": size}
    data_sha256 = files_sha256({name: c["sha256"] for name, c in checked.items()})
    cache_dir = cache_root / data_sha256[:16]
    info_path = cache_dir / DATASET_INFO
    if info_path.exists() and not _cache_intact(cache_dir):
        # Changed since it was written (a disk fault, a stray write): rebuilt from the verified raw files.
        shutil.rmtree(cache_dir)

    cache_hit = info_path.exists()
    if not cache_hit:
        _write_cache(raw_dir, roles, cache_dir, {"data_sha256": data_sha256, "files": checked})

    info = json.loads(info_path.read_text())
    if info["data_sha256"] != data_sha256:
        raise DataIntegrityError(f"{cache_dir} was made from data {info['data_sha256']}, expected {data_sha256}")
    return {
        "cache_dir": str(cache_dir),
        "cache_hit": cache_hit,
        "data_sha256": data_sha256,
        "train_count": info["train_count"],
        "test_count": info["test_count"],
    }



def _write_cache(
    raw_dir: Path, roles: dict[tuple[str, str], FileSpec], cache_dir: Path, info: dict[str, Any]
) -> None:
    x_train, y_train = _decode_split(raw_dir, roles["train", "images"], roles["train", "labels"])
    x_test, y_test = _decode_split(raw_dir, roles["test", "images"], roles["test", "labels"])
    info = {
        **info,
        "train_count": len(y_train),
        "test_count": len(y_test),
        "x": "float32 (N, 28, 28), pixel / 255",
        "y": "uint8 (N,), digits 0-9",
    }
    try:
        with atomic_dir(cache_dir) as tmp:
            for array_name, array in zip(ARRAY_NAMES, (x_train, y_train, x_test, y_test), strict=True):
                np.save(tmp / f"{array_name}.npy", array, allow_pickle=False)
            # Checked on every later cache hit: a cache is used only while it is what was written.
            info["arrays"] = {name: sha256_file(tmp / f"{name}.npy") for name in ARRAY_NAMES}
            (tmp / DATASET_INFO).write_bytes(json_bytes(info))
    except OSError:
        # Another process may have renamed the same cache into place first;
        # it was made from the same bytes, so it is just as good.
        if not (cache_dir / DATASET_INFO).exists():
            raise



def _cache_intact(cache_dir: Path) -> bool:
    """Whether every array in the cache still has the sha256 recorded when it was written."""
    try:
        for split in ("train", "test"):
            check_prepared(cache_dir, split)
    except (DataIntegrityError, FileNotFoundError):
        return False
    return True



def check_prepared(cache_dir: Path, split: str) -> None:
    """DataChecksumError unless `split`'s arrays in a directory `prepare` wrote have the sha256s of its dataset.json.

    For a directory named by hand (the CLI's --cache-dir): an array changed after it was
    written would silently change what trains or what the gate measures. The DAG's tasks
    read the artifact store's copies instead, each checked as it is fetched.
    """
    info_path = cache_dir / DATASET_INFO
    if not info_path.is_file():
        raise DataIntegrityError(f"{cache_dir} is not a directory `prepare` wrote: it has no {DATASET_INFO}")
    recorded = json.loads(info_path.read_text()).get("arrays") or {}
    for name in (f"x_{split}", f"y_{split}"):
        if name not in recorded:
            raise DataIntegrityError(f"{info_path} records no checksum for {name}.npy")
        path = cache_dir / f"{name}.npy"
        check_file_sha256(path, expected=recorded[name], source=str(info_path), error=DataChecksumError)



def load_split(cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the "train" or "test" split, memory-mapped read-only from a directory of prepared arrays.

    The directory needs only that split's two files (a worker that evaluates holds no training set).
    """
    x, y = (np.load(cache_dir / f"{axis}_{split}.npy", mmap_mode="r", allow_pickle=False) for axis in ("x", "y"))
    return x, y


def load_prepared(cache_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), memory-mapped read-only from a prepare_dataset cache."""
    return (*load_split(cache_dir, "train"), *load_split(cache_dir, "test"))
