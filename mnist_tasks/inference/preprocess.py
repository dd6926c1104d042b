"""Images -> 28x28 fields, preprocessed the way MNIST's own digits were made: pure PIL and numpy.

This docstring is the one description of the algorithm; the docs and `predict --help` point here.

A model trained on MNIST has only ever seen light ink on a black background, size-normalised
into a 20x20 box (aspect ratio kept, anti-aliased) and placed in a 28x28 field so that the
intensity-weighted centre of mass sits at (14, 14). Photos, scans and drawings look nothing
like that, so every image goes through the same steps before the model sees it:

1. open it upright (EXIF orientation), refusing oversized files before decoding pixels;
2. greyscale, with any transparency flattened onto white (black under light ink), averaged
   down to at most WORK_PIXELS: a digit needs no more, and the work below stays bounded;
3. polarity: the border tells the background; dark ink on light paper is inverted;
4. crop to the ink, ignoring specks much smaller than the digit (blank -> no digit);
5. scale into a 20x20 box, thickening pen strokes that would shrink to a faint hairline;
6. paste into 28x28 with the centre of mass at (14, 14);
7. float32 in [0, 1].

`multi` (`predict --multi`) splits an image into digits (connected strokes, broken strokes
merged by column) and reads them left to right.

What one image may cost is bounded before the work starts, so a hostile file (a 60 KB PNG
of a 6000x6000 checkerboard, a grid of dots) gets its own error and never costs the other
files their result: the file's bytes and the canvas its header declares (refused unread),
the pixels worked on (averaged down), the ink's row runs, which the connected-component
search visits (refused above MAX_RUNS: noise, not strokes), and the digits read from one
image (refused above MAX_DIGITS). Each digit is then worked on inside its own box.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_tasks.errors import PermanentError
from mnist_tasks.model.architecture import IMAGE_SHAPE

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 40_000_000  # decoded canvas, checked on the header: a 48-megapixel phone photo is 8000x6000
MAX_FILE_BYTES = 50 * 1024 * 1024  # larger files are refused unread (and batch predict does not download them)
# Pixels the steps after greyscale work on; larger images are averaged down by a whole factor.
# A 300 dpi A4 scan (8.7 megapixels) keeps half its resolution, strokes of a few pixels.
WORK_PIXELS = 4_000_000
# Row runs of strong ink (a stroke crossing a row is one run): a page of handwriting has tens
# of thousands; a checkerboard or fine noise has millions, each a node of the component search.
MAX_RUNS = 200_000
MAX_DIGITS = 100  # digits `multi` reads from one image: a line of a form, not a page of dots

BOX = 20  # side of the box the digit is scaled into, pixels
CENTRE = IMAGE_SHAPE[0] / 2  # 14.0: where the centre of mass goes, in pixel-index coordinates (row, column)

# A drawn layer whose lesser tone covers at least this share is a sheet with ink on it, not strokes alone.
SHEET_INK_SHARE = 0.005
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

# What Pillow raises on a corrupt file besides OSError and ValueError: its PNG reader a SyntaxError
# ("broken PNG file"), other readers EOFError, struct.error or IndexError on data cut short or mangled.
PILLOW_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError)


class ImageError(PermanentError, ValueError):
    """An input cannot be used as a digit image: missing, not an image, unreadable, too large."""


class ImageTooLargeError(ImageError):
    """The file, or the canvas its header declares, is over a limit (refused before decoding)."""


def is_image_name(name: str) -> bool:
    """Whether a file name is an image's (by suffix) and not hidden (macOS' `._x.png` copies are not images)."""
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def check_file_size(name: str | Path, size: int, *, max_bytes: int = MAX_FILE_BYTES) -> None:
    """ImageError naming the file when it is larger than `max_bytes`."""
    if size > max_bytes:
        raise ImageTooLargeError(f"{name}: file too large: {size} bytes, limit {max_bytes}")


def digits_in_file(path: Path, *, multi: bool) -> list[np.ndarray]:
    """The fields of the digit in the image file (none if blank), or with `multi` of every digit, left to right."""
    return _digits(load_image(path), path, multi=multi)


def digits_in_bytes(data: bytes, *, name: str, multi: bool = False) -> list[np.ndarray]:
    """digits_in_file for an image already in memory (an S3 object's body); errors name `name`."""
    check_file_size(name, len(data))
    return _digits(_opened(lambda: Image.open(io.BytesIO(data)), name), name, multi=multi)


def _digits(image: Image.Image, name: str | Path, *, multi: bool) -> list[np.ndarray]:
    try:
        if multi:
            return split_digits(image)
        field = preprocess_image(image)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from exc
    return [] if field is None else [field]


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
    check_file_size(path, size, max_bytes=max_bytes)
    return _opened(lambda: Image.open(path), path, max_pixels=max_pixels)


def _opened(open_header: Callable[[], Image.Image], name: str | Path, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image `open_header` opens (reading its header only), decoded upright once its size is within limits."""
    try:
        image = open_header()
    except Image.DecompressionBombError as exc:
        # Pillow checks its own, higher limit while reading the header, before we see the size.
        raise ImageTooLargeError(f"{name}: image too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image (no format Pillow can read)") from exc
    except PILLOW_DECODE_ERRORS as exc:
        raise ImageError(f"{name}: unreadable image: {exc}") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{name}: image too large: {width}x{height} = {width * height} pixels, limit {max_pixels}"
            )
        try:
            image.load()
            return ImageOps.exif_transpose(image)
        except PILLOW_DECODE_ERRORS as exc:  # truncated or corrupt data
            raise ImageError(f"{name}: unreadable image: {exc}") from exc


def preprocess_image(image: Image.Image) -> np.ndarray | None:
    """One digit as MNIST would have it: float32 (28, 28) in [0, 1], or None if there is no ink."""
    ink = _ink(image)
    if ink is None:
        return None
    parts = _parts(ink > STRONG)
    return _mnist_field(ink, parts, _kept(parts))


def split_digits(image: Image.Image) -> list[np.ndarray]:
    """Every digit in the image, left to right, each preprocessed like `preprocess_image`.

    A digit is a group of connected strokes; parts whose column ranges mostly overlap (a
    broken stroke, the bar of a 5) are one digit. A blank image gives an empty list.
    """
    ink = _ink(image)
    if ink is None:
        return []
    parts = _parts(ink > STRONG)
    kept = _kept(parts)
    kept = kept[np.argsort(parts.left[kept], kind="stable")]
    digits: list[_Digit] = []
    for i, left, right in zip(kept.tolist(), parts.left[kept].tolist(), parts.right[kept].tolist(), strict=True):
        if digits:
            last = digits[-1]
            shared = min(right, last.right) - max(left, last.left) + 1
            if shared >= MERGE_OVERLAP * min(right - left + 1, last.right - last.left + 1):
                last.left, last.right = min(left, last.left), max(right, last.right)
                last.parts.append(i)
                continue
        if len(digits) == MAX_DIGITS:
            raise ImageError(f"too many separate marks: more than {MAX_DIGITS} digits in one image")
        digits.append(_Digit(left, right, [i]))
    return [_mnist_field(ink, parts, np.array(digit.parts)) for digit in digits]


@dataclass
class _Digit:
    left: int  # first column
    right: int  # last column
    parts: list[int]  # indices of its parts


class _Parts(NamedTuple):
    labels: np.ndarray  # int32 (H, W): 0 background, i + 1 for part i
    area: np.ndarray  # pixels per part
    left: np.ndarray  # first column per part
    right: np.ndarray  # last column per part
    top: np.ndarray  # first row per part
    bottom: np.ndarray  # last row per part


def _kept(parts: _Parts) -> np.ndarray:
    """Indices of the parts that are not dust (specks much smaller than the largest part)."""
    return np.flatnonzero(parts.area >= SPECK_FRACTION * parts.area.max())


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


def _averaged_down(gray: np.ndarray, max_pixels: int = WORK_PIXELS) -> np.ndarray:
    """gray with each block of pixels averaged, the smallest whole blocks that bring it to at most max_pixels.

    Blocks are square where the image allows; a strip too thin for that (2 x 20,000,000)
    is averaged along its length only. Pixels beyond the last whole block are dropped.
    """
    height, width = gray.shape
    if height * width <= max_pixels:
        return gray
    factor = math.ceil(math.sqrt(height * width / max_pixels))
    short, long = sorted((height, width))
    short_factor = min(factor, short)
    long_factor = math.ceil(long / (max_pixels // (short // short_factor)))
    rows, cols = (short_factor, long_factor) if height <= width else (long_factor, short_factor)
    kept = gray[: height // rows * rows, : width // cols * cols]
    averaged: np.ndarray = kept.reshape(height // rows, rows, width // cols, cols).mean(axis=(1, 3), dtype=np.float32)
    return averaged


def _flattened(rgba: Image.Image) -> Image.Image:
    """rgba composited onto a backdrop that continues what is drawn, so the border tells the background.

    Strokes alone on a clear layer (one tone drawn): the backdrop contrasts with them,
    white under dark ink, black under chalk. A sheet with ink on it inside a clear
    margin (both tones drawn): the backdrop is the sheet's tone, the one most drawn.
    """
    drawn = np.asarray(rgba.getchannel("A")) > 127
    if not drawn.any():
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    light_share = float((np.asarray(rgba.convert("L"))[drawn] > 127).mean())
    if min(light_share, 1 - light_share) >= SHEET_INK_SHARE:
        backdrop = "white" if light_share > 0.5 else "black"
    else:
        backdrop = "black" if light_share > 0.5 else "white"
    return Image.alpha_composite(Image.new("RGBA", rgba.size, backdrop), rgba)


def _ink(image: Image.Image) -> np.ndarray | None:
    """float32 (H, W): 0 where the background is, 1 at the strongest ink; None if no ink."""
    gray = _averaged_down(_gray(image))
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
    if len(start) > MAX_RUNS:
        raise ImageError(f"too much scattered ink: {len(start)} stroke runs, limit {MAX_RUNS} (noise, not digits)")
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
    left, top = np.full(count, width), np.full(count, height)
    right, bottom = np.full(count, -1), np.full(count, -1)
    np.minimum.at(left, run_part, start)
    np.maximum.at(right, run_part, stop - 1)
    np.minimum.at(top, run_part, row)
    np.maximum.at(bottom, run_part, row)
    area = np.bincount(run_part, weights=length, minlength=count)
    return _Parts(labels, area, left, right, top, bottom)


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
    fitted: np.ndarray = scaled / scaled.max()
    return fitted


def _mnist_field(ink: np.ndarray, parts: _Parts, members: np.ndarray) -> np.ndarray:
    """The digit made of the parts `members` (indices) scaled into the box and centred by mass."""
    # Only the digit's own box, widened by the edge radius, is looked at: the work per digit
    # does not grow with the image, however many digits share it.
    first_row, first_col = (max(int(edge[members].min()) - EDGE_RADIUS, 0) for edge in (parts.top, parts.left))
    end_row, end_col = (int(edge[members].max()) + EDGE_RADIUS + 1 for edge in (parts.bottom, parts.right))
    box = (slice(first_row, end_row), slice(first_col, end_col))
    ink = ink[box]
    strokes = np.isin(parts.labels[box], members + 1)
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
