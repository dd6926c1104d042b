"""IDX, MNIST's file format: decoding with its checks, and encoding (for the mirror and tests)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from mnist_tasks.data.download import DataIntegrityError, gzip_errors
from mnist_tasks.model.architecture import IMAGE_SHAPE

# IDX magic: two zero bytes, a type byte (0x08 = uint8), the number of dimensions.
IMAGES_MAGIC = 0x0803  # 2051



LABELS_MAGIC = 0x0801  # 2049



def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic, one big-endian uint32 per dimension, the data."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX encoding here is for uint8 arrays, got {array.dtype}")
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array).tobytes()



def _read_idx(path: Path, *, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    with gzip_errors(path.name, str(path)):
        data = gzip.decompress(path.read_bytes())
    got_magic = int.from_bytes(data[:4], "big")
    if got_magic != magic:
        raise DataIntegrityError(f"{path}: IDX magic number expected {magic}, got {got_magic}")
    ndim = 1 + len(item_shape)
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise DataIntegrityError(f"{path}: {len(data)} bytes, too short for an IDX header of {header_bytes} bytes")
    dims = tuple(int.from_bytes(data[i : i + 4], "big") for i in range(4, header_bytes, 4))
    if dims[1:] != item_shape:
        raise DataIntegrityError(f"{path}: item shape expected {item_shape}, header says {dims[1:]}")
    expected = header_bytes + math.prod(dims)
    if len(data) != expected:
        raise DataIntegrityError(
            f"{path}: header says {dims[0]} items, which is {expected} bytes, got {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(dims).copy()



def read_idx_images(path: Path) -> np.ndarray:
    """A gzipped IDX image file -> uint8 array (N, 28, 28)."""
    return _read_idx(path, magic=IMAGES_MAGIC, item_shape=IMAGE_SHAPE)



def read_idx_labels(path: Path) -> np.ndarray:
    """A gzipped IDX label file -> uint8 array (N,) of digits 0-9."""
    labels = _read_idx(path, magic=LABELS_MAGIC, item_shape=())
    if labels.size and labels.max() > 9:
        index = int(np.argmax(labels > 9))
        raise DataIntegrityError(f"{path}: label {index} expected a digit 0-9, got {labels[index]}")
    return labels
