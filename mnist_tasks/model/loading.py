"""Loading a .keras file safely: only the bytes a checksum vouches for, with Keras' safe_mode."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_tasks.errors import PermanentError
from mnist_tasks.files import ChecksumMismatchError, check_file_sha256

if TYPE_CHECKING:
    import keras


class ModelChecksumError(ChecksumMismatchError):
    """The model file is not the one we were told to load."""



class UnloadableModelError(PermanentError, ValueError):
    """A file whose checksum matched is still not a Keras model."""



def load_keras_model(path: Path, *, sha256: str, name: str | Path | None = None, source: str = "") -> keras.Model:
    """The Keras model in the .keras file `path`, loaded with safe_mode=True only once its sha256 is `sha256`.

    A mismatch raises ModelChecksumError naming `name` (default: the path) and `source`
    (what vouches for the checksum); a file that Keras cannot load, UnloadableModelError.
    safe_mode=True refuses the Lambda layers that would run code from the file.
    """
    check_file_sha256(path, expected=sha256, name=name, source=source, error=ModelChecksumError)
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        # Keras reports a file that is not a saved model in any of these ways.
        raise UnloadableModelError(f"{path if name is None else name}: cannot load as a Keras model: {exc}") from exc
