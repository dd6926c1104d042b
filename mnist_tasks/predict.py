"""New images -> digits, preprocessed the way MNIST's own digits were made.

A model trained on MNIST has only ever seen light ink on a black background, size-normalised
into a 20x20 box (aspect ratio kept, anti-aliased) and placed in a 28x28 field so that the
intensity-weighted centre of mass sits at (14, 14). Photos, scans and drawings look nothing
like that, so every image goes through the same steps before the model sees it:

1. open it upright (EXIF orientation), refusing oversized files before decoding pixels;
2. greyscale, with any transparency flattened onto white (black under light ink);
3. polarity: the border tells the background; dark ink on light paper is inverted;
4. crop to the ink, ignoring specks much smaller than the digit (blank -> no digit);
5. scale into a 20x20 box, thickening pen strokes that would shrink to a faint hairline;
6. paste into 28x28 with the centre of mass at (14, 14);
7. float32 in [0, 1].

`--multi` splits an image into digits (connected strokes, broken strokes merged by column)
and reads them left to right.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_tasks.model import IMAGE_SHAPE, NUM_CLASSES
from mnist_tasks.params import PARAMS
from mnist_tasks.storage import UnloadableModelError, atomic_path, load_keras_model, sha256_file, split_s3_dir

if TYPE_CHECKING:
    import keras

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 50 * 1024 * 1024

BOX = 20  # side of the box the digit is scaled into, pixels
CENTRE = IMAGE_SHAPE[0] / 2  # 14.0: where the centre of mass goes, in pixel-index coordinates (row, column)

MIN_CONTRAST = 0.1  # ink differing from the background by less (of full black-to-white) is none
# Intensities below are fractions of the image's ink range (background 0, strongest ink 1).
STRONG = 0.25  # pixels that form strokes, used to find and sort the digit's parts
# Anti-aliased edges count only within EDGE_RADIUS of a stroke, and only above FAINT: JPEG
# ringing around strokes reaches ~8% at quality 75 and would otherwise widen the crop.
FAINT = 0.1
EDGE_RADIUS = 2  # pixels
SPECK_FRACTION = 0.05  # parts with less area than this fraction of the largest part are dust
MERGE_OVERLAP = 0.5  # parts sharing this fraction of the narrower one's columns are one digit

# Stroke widths in pixels of the 28x28 field. MNIST pens draw 2-3 pixel strokes; a thin pen on a
# large canvas shrinks to a faint one-pixel trace the model has never seen, so such digits are
# drawn thicker at SUPERSAMPLE times the resolution before the final shrink.
MIN_STROKE = 1.5
TARGET_STROKE = 2.0
SUPERSAMPLE = 4


class ImageError(ValueError):
    """An input cannot be used as a digit image: missing, not an image, unreadable, too large."""


class PredictError(ValueError):
    """Arguments to `predict_files` that cannot work, found before anything is written."""


class ModelOutputError(RuntimeError):
    """The model does not return 10 class probabilities per image."""


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
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not images:
            raise ImageError(f"{path}: directory has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        found.extend(images)
    return list(dict.fromkeys(found))


def load_image(path: Path, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> Image.Image:
    """Open an image file upright (EXIF orientation applied), first frame only.

    Size limits are checked on the file and on the header, before any pixel is decoded, so a
    small file claiming a huge canvas costs nothing. Every problem is an `ImageError` naming
    the file.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if size > max_bytes:
        raise ImageError(f"{path}: file too large: {size} bytes, limit {max_bytes}")
    try:
        image = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as exc:
        # Pillow checks its own, higher limit while reading the header, before we see the size.
        raise ImageError(f"{path}: image too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image (no format Pillow can read)") from exc
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: unreadable image: {exc}") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"{path}: image too large: {width}x{height} = {width * height} pixels, limit {max_pixels}")
        try:
            image.load()
            return ImageOps.exif_transpose(image)
        except (OSError, ValueError) as exc:  # truncated or corrupt data; Pillow raises both
            raise ImageError(f"{path}: unreadable image: {exc}") from exc


def preprocess_image(image: Image.Image) -> np.ndarray | None:
    """One digit as MNIST would have it: float32 (28, 28) in [0, 1], or None if there is no ink."""
    ink = _ink(image)
    if ink is None:
        return None
    parts = _parts(ink > STRONG)
    keep = np.flatnonzero(parts.area >= SPECK_FRACTION * parts.area.max()) + 1
    return _mnist_field(ink, np.isin(parts.labels, keep))


def split_digits(image: Image.Image) -> list[np.ndarray]:
    """Every digit in the image, left to right, each preprocessed like `preprocess_image`.

    A digit is a group of connected strokes; parts whose column ranges mostly overlap (a
    broken stroke, the bar of a 5) are one digit. A blank image gives an empty list.
    """
    ink = _ink(image)
    if ink is None:
        return []
    parts = _parts(ink > STRONG)
    kept = np.flatnonzero(parts.area >= SPECK_FRACTION * parts.area.max())
    groups: list[tuple[int, int, list[int]]] = []  # (left, right, part indices) per digit
    for i in sorted(kept, key=lambda i: parts.left[i]):
        left, right = int(parts.left[i]), int(parts.right[i])
        if groups:
            g_left, g_right, members = groups[-1]
            shared = min(right, g_right) - max(left, g_left) + 1
            if shared >= MERGE_OVERLAP * min(right - left + 1, g_right - g_left + 1):
                groups[-1] = (min(left, g_left), max(right, g_right), [*members, i])
                continue
        groups.append((left, right, [i]))
    return [_mnist_field(ink, np.isin(parts.labels, np.array(members) + 1)) for _, _, members in groups]


def predict_files(
    *,
    model: keras.Model,
    paths: Sequence[Path],
    min_confidence: float = 0.5,
    multi: bool = False,
    save_preprocessed: Path | None = None,
) -> list[dict]:
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
            digits = _digits_in(path, multi=multi)
        except ImageError as exc:
            per_file.append((path, 0, str(exc)))
            continue
        per_file.append((path, len(digits), None))
        fields.extend(digits)

    probabilities = _classify(model, fields)
    rows: list[dict] = []
    start = 0
    for path, count, error in per_file:
        digits = []
        for i in range(count):
            digit = _read_digit(probabilities[start + i], min_confidence=min_confidence)
            saved = None
            if save_preprocessed is not None:
                name = f"{path.stem}_{i}.png" if multi else f"{path.stem}.png"
                saved = str(_save_field(fields[start + i], save_preprocessed / name))
            digits.append({**digit, "preprocessed": saved})
        start += count
        rows.append(_file_result(path, digits, error=error, multi=multi))
    return rows


def is_local_model(model: str) -> bool:
    """Whether a `--model` value names a local .keras file rather than a model in S3."""
    return model.endswith(".keras") and not model.startswith("s3://")


def load_model_for_prediction(*, model: str, models_uri: str, s3_client: Any = None) -> tuple[keras.Model, dict]:
    """The Keras model named by `model`, loaded with safe_mode=True once its sha256 matches.

    `model` is one of
      "latest"                 the version `latest.json` in `models_uri` points at;
      "<version>"              that version in `models_uri`;
      "s3://…/<version>/", "s3://…/<version>/model.keras", "s3://…/latest.json"
                               the same, in the registry that URI is in;
      "PATH.keras"             a local file. If a manifest.json sits beside it (a downloaded
                               version directory), the file must match the sha256 it records;
                               without one there is nothing to check against, and the model is
                               loaded unverified ("verified_against": None says so).
    A model in S3 is checked against its manifest by registry.download_model, and that manifest
    against `latest.json` when following the pointer; it needs `s3_client`.

    Returns (model, {"model": as given, "model_uri", "version" (None for an unpublished file),
    "model_sha256", "verified_against": the manifest's location or None, "architecture" and
    "augment" as the manifest records them (a file without one: architecture from the model
    itself, augment None)}).
    """
    if is_local_model(model):
        source, verified_sha256 = _check_local_model(Path(model))
        loaded = _load_keras(Path(model), sha256=verified_sha256, name=model, source=source["verified_against"] or "")
        return loaded, {"architecture": loaded.name.removeprefix("mnist_"), "augment": None, **source}

    from mnist_tasks.registry import (
        MANIFEST_FILE,
        MODEL_FILE,
        download_model,
        locate_model,
        trained_with,
        version_prefix,
    )

    version: int | None
    if model == "latest":
        version = None
    elif re.fullmatch(r"[1-9][0-9]*", model):
        version = int(model)
    elif model.startswith("s3://"):
        try:
            models_uri, version = locate_model(model)
        except ValueError as exc:
            raise PredictError(str(exc)) from exc
    else:
        raise PredictError(f"model {model!r}: expected latest, a version number, an s3:// URI or a local .keras file")
    if s3_client is None:
        raise PredictError(f"model {model!r} is in {models_uri}: reading it needs an S3 client")

    with tempfile.TemporaryDirectory(prefix="mnist-model-") as tmp:
        fetched = download_model(s3_client=s3_client, models_uri=models_uri, version=version, dest_dir=Path(tmp))
        base = f"s3://{split_s3_dir(models_uri)[0]}/{version_prefix(models_uri, fetched['version'])}"
        loaded = _load_keras(Path(fetched["model_path"]), sha256=fetched["model_sha256"], name=base + MODEL_FILE)
    return loaded, {
        "model": model,
        "model_uri": base + MODEL_FILE,
        "version": fetched["version"],
        "model_sha256": fetched["model_sha256"],
        "verified_against": base + MANIFEST_FILE,
        **trained_with(fetched["manifest"]),
    }


def _check_local_model(path: Path) -> tuple[dict, str]:
    """(load_model_for_prediction's description of a local model file, the sha256 to load it with).

    The sha256 is what a manifest beside the file records, or, without one, the file's own.
    """
    from mnist_tasks.registry import MANIFEST_FILE, trained_with

    if not path.is_file():
        raise PredictError(f"{path}: no such model file")
    got = sha256_file(path)
    source = {"model": str(path), "model_uri": str(path), "version": None, "model_sha256": got}
    manifest_path = path.parent / MANIFEST_FILE
    if not manifest_path.exists():
        return {**source, "verified_against": None}, got
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"][path.name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # A manifest that cannot vouch for the file must not be mistaken for one that does.
        raise PredictError(
            f"{manifest_path} beside {path} records no sha256 for {path.name} ({type(exc).__name__}: {exc}); "
            "move the model away from it to load it unverified"
        ) from exc
    description = {
        **source,
        "version": manifest.get("version"),
        "verified_against": str(manifest_path),
        **trained_with(manifest),
    }
    return description, expected


def _load_keras(path: Path, *, sha256: str, name: str, source: str = "") -> keras.Model:
    try:
        return load_keras_model(path, sha256=sha256, name=name, source=source)
    except UnloadableModelError as exc:
        raise PredictError(str(exc)) from exc


class _Parts(NamedTuple):
    labels: np.ndarray  # int32 (H, W): 0 background, i + 1 for part i
    area: np.ndarray  # pixels per part
    left: np.ndarray  # first column per part
    right: np.ndarray  # last column per part


def _gray(image: Image.Image) -> np.ndarray:
    """float32 (H, W) in [0, 1] with 1 = white; transparent pixels become a backdrop that contrasts with the ink."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit greyscale (PNG, TIFF): Pillow's convert("L") would clip, not scale.
        return np.clip(np.asarray(image, dtype=np.float32) / 65535, 0, 1)
    try:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            # Transparent pixels often hold black RGB; without flattening they would read as ink.
            image = _flattened(image.convert("RGBA"))
        gray = image.convert("L")
    except ValueError as exc:
        raise ImageError(f"cannot convert image mode {image.mode} to greyscale: {exc}") from exc
    return np.asarray(gray, dtype=np.float32) / 255


def _flattened(rgba: Image.Image) -> Image.Image:
    """rgba composited onto white paper, or onto black when what is drawn is light (white chalk on a transparent layer)."""
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32)
    drawn = float(alpha.sum())
    lightness = 0.0 if drawn == 0 else float((np.asarray(rgba.convert("L"), dtype=np.float32) * alpha).sum() / drawn)
    backdrop = "black" if lightness > 127.5 else "white"
    return Image.alpha_composite(Image.new("RGBA", rgba.size, backdrop), rgba)


def _ink(image: Image.Image) -> np.ndarray | None:
    """float32 (H, W): 0 where the background is, 1 at the strongest ink; None if no ink."""
    gray = _gray(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    # Ink is what differs from the background; if that is mostly darker, the ink is dark.
    ink = background - gray if gray.mean() < background else gray - background
    ink = np.clip(ink, 0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        return None
    return ink / peak


def _parts(mask: np.ndarray) -> _Parts:
    """8-connected components of a boolean mask.

    Works on runs of consecutive pixels in a row (a few per stroke and row) with a union-find,
    so the Python loop stays short even for large images; scipy is not a dependency.
    """
    height, width = mask.shape
    stride = width + 2  # > any column, so row * stride + column sorts runs row by row
    steps = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    row, start = np.nonzero(steps == 1)
    _, stop = np.nonzero(steps == -1)  # exclusive
    # Runs in the row above that touch run i, including diagonally, are first[i]:last[i].
    first = np.searchsorted(row * stride + stop, (row - 1) * stride + start, side="left")
    last = np.searchsorted(row * stride + start, (row - 1) * stride + stop, side="right")

    parent = list(range(len(start)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in np.flatnonzero(last > first).tolist():
        for j in range(int(first[i]), int(last[i])):
            parent[root(j)] = root(i)
    _, run_part = np.unique([root(i) for i in range(len(start))], return_inverse=True)
    run_part = run_part.reshape(-1).astype(np.int32)

    count = int(run_part.max()) + 1 if len(run_part) else 0
    length = stop - start
    offset = np.cumsum(length) - length
    pixels = np.repeat(row * width + start - offset, length) + np.arange(int(length.sum()))
    labels = np.zeros((height, width), dtype=np.int32)
    labels.reshape(-1)[pixels] = np.repeat(run_part + 1, length)
    left = np.full(count, width)
    right = np.full(count, -1)
    np.minimum.at(left, run_part, start)
    np.maximum.at(right, run_part, stop - 1)
    return _Parts(labels, np.bincount(run_part, weights=length, minlength=count), left, right)


def _grow(values: np.ndarray, radius: int) -> np.ndarray:
    """Maximum over a (2 * radius + 1)-pixel square: dilation, for masks and grey images alike."""
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in (0, 1)]
        values = np.lib.stride_tricks.sliding_window_view(np.pad(values, pad), 2 * radius + 1, axis=axis).max(axis=-1)
    return values


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: area / half the boundary length.

    Pixel edges overstate a slanted boundary's length by |cos| + |sin| of its angle; pi / 4
    corrects that on average over all angles, which is what the curves of a digit have.
    """
    padded = np.pad(mask, 1)
    edges = np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1])
    return 2 * np.count_nonzero(mask) / (edges * math.pi / 4)


def _fit(ink: np.ndarray, box: int, resample: Image.Resampling) -> np.ndarray:
    """Scale so the longer side is `box` pixels, anti-aliased; strongest ink back to 1."""
    height, width = ink.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    scaled = np.clip(np.asarray(Image.fromarray(ink.astype(np.float32)).resize(size, resample)), 0, None)
    return scaled / scaled.max()


def _mnist_field(ink: np.ndarray, strokes: np.ndarray) -> np.ndarray:
    """The digit made of `strokes` (mask of its parts) scaled into the box and centred by mass."""
    # Faint anti-aliased edges near the strokes belong to the digit; other ink (dust, the
    # neighbouring digits of a number) does not.
    region = _grow(strokes, EDGE_RADIUS) & (ink > FAINT)
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    crop = np.where(region, ink, 0)[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    stroke = _stroke_width(crop > 0.5 * crop.max()) * BOX / max(crop.shape)
    if stroke >= MIN_STROKE:
        digit = _fit(crop, BOX, Image.Resampling.LANCZOS)
    else:
        # Shrunk hairlines keep only a fraction of their ink, more so where the pen was lighter:
        # every stroke pixel becomes full ink (which widens the line by about one supersampled
        # pixel), then each side grows by `radius` until the stroke is TARGET_STROKE wide.
        radius = max(1, round(((TARGET_STROKE - stroke) * SUPERSAMPLE - 1) / 2))
        fine = _fit(crop, BOX * SUPERSAMPLE - 2 * radius, Image.Resampling.LANCZOS)  # room to grow
        fine = np.minimum(fine / STRONG, 1)
        digit = _fit(_grow(np.pad(fine, radius), radius), BOX, Image.Resampling.BOX)

    height, width = digit.shape
    mass = digit.sum()
    centre_row = digit.sum(axis=1) @ np.arange(height) / mass
    centre_col = digit.sum(axis=0) @ np.arange(width) / mass
    # Whole-pixel shifts keep the strokes as sharp as the scaling left them.
    top = int(np.clip(round(CENTRE - centre_row), 0, IMAGE_SHAPE[0] - height))
    left = int(np.clip(round(CENTRE - centre_col), 0, IMAGE_SHAPE[1] - width))
    field = np.zeros(IMAGE_SHAPE, dtype=np.float32)
    field[top : top + height, left : left + width] = np.clip(digit, 0, 1)
    return field


def _digits_in(path: Path, *, multi: bool) -> list[np.ndarray]:
    image = load_image(path)
    try:
        if multi:
            return split_digits(image)
        field = preprocess_image(image)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from exc
    return [] if field is None else [field]


def _classify(model: keras.Model, fields: list[np.ndarray]) -> np.ndarray:
    """(N, NUM_CLASSES) class probabilities for N fields, in one batched call."""
    if not fields:
        return np.zeros((0, NUM_CLASSES), dtype=np.float32)
    # The model decides its input layout: (28, 28), (28, 28, 1) or flat (784,).
    x = np.stack(fields).reshape((len(fields), *model.input_shape[1:]))
    probabilities = np.asarray(model.predict(x, verbose=0))
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


def _read_digit(probabilities: np.ndarray, *, min_confidence: float) -> dict:
    best = np.argsort(probabilities)[::-1][:3]
    probability = float(probabilities[best[0]])
    confident = probability >= min_confidence
    return {
        "digit": int(best[0]) if confident else None,
        "probability": probability,
        "top3": [[int(d), float(probabilities[d])] for d in best],
        "status": "ok" if confident else "low_confidence",
    }


def _file_result(path: Path, digits: list[dict], *, error: str | None, multi: bool) -> dict:
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
    nothing = {"digit": None, "probability": None, "top3": [], "preprocessed": None}
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
