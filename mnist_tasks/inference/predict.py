"""New images -> digits: the model's reading of each file, as result rows.

Each image is first made to look like an MNIST digit (mnist_tasks/inference/preprocess.py's docstring
has the steps); which model to load, and its checks, are the registry's
(`registry.parse_model_reference`, `registry.fetch_model`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from PIL import Image

from mnist_tasks.errors import PermanentError
from mnist_tasks.files import atomic_path
from mnist_tasks.inference.preprocess import IMAGE_SUFFIXES, ImageError, digits_in_file, is_image_name
from mnist_tasks.model.architecture import NUM_CLASSES
from mnist_tasks.model.loading import UnloadableModelError, load_keras_model
from mnist_tasks.params import PARAMS
from mnist_tasks.registry import ModelSource, fetch_model, parse_model_reference

if TYPE_CHECKING:
    import keras
    from mypy_boto3_s3 import S3Client


class PredictError(PermanentError, ValueError):
    """Arguments to `predict_files` that cannot work, found before anything is written."""


class ModelOutputError(PermanentError, RuntimeError):
    """The model does not return 10 class probabilities per image."""


class Reading(TypedDict):
    """The model's reading of one image (`read_digit`)."""

    digit: int | None
    """None below min_confidence."""
    probability: float
    top3: list[list[float]]
    """[[digit, probability], ...], best first; the digit an int."""
    status: str
    """"ok" or "low_confidence"."""


def expand_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files as given, directories replaced by their image files (by suffix, sorted by name).

    Not recursive; hidden files (e.g. macOS `._x.png`) are skipped. A path that does not exist
    is kept, so that `predict_files` reports it next to the files that do.
    """
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        images = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and is_image_name(p.name)
        )
        if not images:
            raise ImageError(f"{path}: directory has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        found.extend(images)
    return list(dict.fromkeys(found))


def predict_files(
    *,
    model: keras.Model,
    paths: Sequence[Path],
    min_confidence: float = 0.5,
    multi: bool = False,
    save_preprocessed: Path | None = None,
) -> list[dict[str, Any]]:
    """Predict the digit (or with `multi`, the number) in each file, in one model call.

    One dict per file, in order:
      {"file", "digit": int | None, "probability": float | None, "top3": [[digit, p], ...],
       "status": "ok" | "blank" | "low_confidence" | "error", "error": str | None,
       "preprocessed": str | None}
    With `multi`, "digit", "probability", "top3" and "preprocessed" move into "digits" (one
    dict per digit, left to right, each with its own "status") and "number" holds the reading,
    with "?" for a digit below `min_confidence`, or None for blank and error.

    "digit" is None unless its probability reaches `min_confidence`; "top3" always shows the
    model's best guesses. A file that cannot be read gets status "error" and a message naming
    it; the other files are still predicted. `save_preprocessed` is a directory that receives
    the 28x28 images the model saw, as `<stem>.png` (`<stem>_<i>.png` with `multi`).
    """
    PARAMS["min_confidence"].check(min_confidence)
    if save_preprocessed is not None:
        _check_unique_stems(paths)

    fields: list[np.ndarray] = []
    per_file: list[tuple[Path, int, str | None]] = []  # (path, number of digits, error)
    for path in paths:
        try:
            digits = digits_in_file(path, multi=multi)
        except ImageError as exc:
            per_file.append((path, 0, str(exc)))
            continue
        per_file.append((path, len(digits), None))
        fields.extend(digits)

    probabilities = classify(model, fields)
    rows: list[dict[str, Any]] = []
    start = 0
    for path, count, error in per_file:
        readings: list[dict[str, Any]] = []
        for i in range(count):
            digit = read_digit(probabilities[start + i], min_confidence=min_confidence)
            saved = None
            if save_preprocessed is not None:
                name = f"{path.stem}_{i}.png" if multi else f"{path.stem}.png"
                saved = str(_save_field(fields[start + i], save_preprocessed / name))
            readings.append({**digit, "preprocessed": saved})
        start += count
        rows.append(_file_result(path, readings, error=error, multi=multi))
    return rows


def load_model_for_prediction(
    *, model: str, models_uri: str, s3_client: S3Client | None = None
) -> tuple[keras.Model, ModelSource]:
    """The Keras model a reference names (registry.parse_model_reference has the forms), and its source.

    The file is fetched and checked by registry.fetch_model, then loaded with safe_mode=True
    once its sha256 matches. A model in S3 needs `s3_client`. A local file without a manifest
    beside it is loaded unverified ("verified_against": None) and its architecture is read
    from the model itself.
    """
    reference = parse_model_reference(model, models_uri=models_uri)
    with tempfile.TemporaryDirectory(prefix="mnist-model-") as tmp:
        path, source = fetch_model(reference, s3_client=s3_client, dest_dir=Path(tmp))
        try:
            loaded = load_keras_model(
                path,
                sha256=source["model_sha256"],
                name=model if reference.path is not None else source["model_uri"],
                source=source["verified_against"] or "",
            )
        except UnloadableModelError as exc:
            raise PredictError(str(exc)) from exc
    if source["architecture"] is None:
        source = {**source, "architecture": loaded.name.removeprefix("mnist_")}
    return loaded, source


def classify(model: keras.Model, fields: list[np.ndarray]) -> np.ndarray:
    """(N, NUM_CLASSES) class probabilities for N fields, in one batched call.

    predict_on_batch, not predict: predict cuts the input into batches of 32 and
    costs tens of milliseconds of set-up per call, which batch predictions pay per batch.
    """
    if not fields:
        return np.zeros((0, NUM_CLASSES), dtype=np.float32)
    # The model decides its input layout: (28, 28), (28, 28, 1) or flat (784,).
    x = np.stack(fields).reshape((len(fields), *model.input_shape[1:]))
    probabilities = np.asarray(model.predict_on_batch(x))
    expected = (len(fields), NUM_CLASSES)
    if probabilities.shape != expected:
        raise ModelOutputError(f"model output shape: expected {expected}, got {probabilities.shape}")
    sums = probabilities.sum(axis=1)
    if probabilities.min() < 0 or not np.allclose(sums, 1, atol=1e-3):
        raise ModelOutputError(
            "model output is not class probabilities (softmax): rows must be >= 0 and sum to 1, "
            f"got sums {sums.min():.4f}..{sums.max():.4f} and minimum {probabilities.min():.4f}"
        )
    return probabilities


def read_digit(probabilities: np.ndarray, *, min_confidence: float) -> Reading:
    """{digit (None below min_confidence), probability, top3, status} of one image's class probabilities."""
    best = np.argsort(probabilities)[::-1][:3]
    probability = float(probabilities[best[0]])
    confident = probability >= min_confidence
    return {
        "digit": int(best[0]) if confident else None,
        "probability": probability,
        "top3": [[int(d), float(probabilities[d])] for d in best],
        "status": "ok" if confident else "low_confidence",
    }


def _file_result(path: Path, digits: list[dict[str, Any]], *, error: str | None, multi: bool) -> dict[str, Any]:
    if error is not None:
        status = "error"
    elif not digits:
        status = "blank"
    elif all(d["status"] == "ok" for d in digits):
        status = "ok"
    else:
        status = "low_confidence"
    if multi:
        number = "".join("?" if d["digit"] is None else str(d["digit"]) for d in digits) or None
        return {"file": str(path), "number": number, "digits": digits, "status": status, "error": error}
    nothing: dict[str, Any] = {"digit": None, "probability": None, "top3": [], "preprocessed": None}
    digit = {key: value for key, value in (digits[0] if digits else nothing).items() if key != "status"}
    return {"file": str(path), **digit, "status": status, "error": error}


def _save_field(field: np.ndarray, path: Path) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(np.round(field * 255).astype(np.uint8)).save(tmp, format="PNG")
    return path


def _check_unique_stems(paths: Sequence[Path]) -> None:
    """Preprocessed images are named by stem; two inputs with one stem would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen and seen[path.stem] != path:
            raise PredictError(
                f"cannot save preprocessed images: {seen[path.stem]} and {path} would both be saved as {path.stem}.png"
            )
        seen[path.stem] = path
