"""Preprocessing real images the MNIST way (mnist_tasks/inference/preprocess.py).

Digits are drawn here with Pillow: glyphs of Pillow's bundled font (no system fonts needed) and
pen strokes ("hand-drawn" polylines), so that style, size, stroke and placement can be varied.
test_predict.py draws its digits with the same helpers.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageDraw, ImageFont

from mnist_tasks.inference.preprocess import ImageError, load_image, preprocess_image, split_digits

PROPERTIES = settings(max_examples=40, deadline=None)


def glyph(digit: int | str, *, size: int = 80, stroke: int = 0) -> Image.Image:
    """White digit(s) on black ("L"), cropped to the ink with a margin of a quarter of `size`."""
    font = ImageFont.load_default(size=size)
    canvas = Image.new("L", (size * (2 + len(str(digit))), size * 2), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((size, size), str(digit), font=font, fill=255, anchor="lm", stroke_width=stroke, stroke_fill=255)
    left, top, right, bottom = canvas.getbbox()
    margin = size // 4
    return canvas.crop((left - margin, top - margin, right + margin, bottom + margin))


def _arc(cx: float, cy: float, rx: float, ry: float, start: float = 0, end: float = 360, n: int = 24) -> list:
    angles = np.radians(np.linspace(start, end, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


# Pen strokes of each digit in a unit box (x right, y down).
PEN_STROKES = {
    0: [_arc(0.5, 0.5, 0.4, 0.5)],
    1: [[(0.25, 0.2), (0.55, 0), (0.55, 1)]],
    2: [_arc(0.5, 0.28, 0.38, 0.28, 170, 380, 12) + [(0.1, 1), (0.95, 1)]],
    3: [_arc(0.5, 0.25, 0.35, 0.25, 200, 450, 14), _arc(0.5, 0.72, 0.4, 0.28, -90, 160, 14)],
    4: [[(0.7, 1), (0.7, 0), (0.05, 0.7), (0.95, 0.7)]],
    5: [[(0.9, 0), (0.2, 0), (0.15, 0.45)] + _arc(0.5, 0.68, 0.4, 0.32, -130, 150, 14)],
    6: [[(0.75, 0), (0.35, 0.3)] + _arc(0.5, 0.68, 0.38, 0.32, 200, 560, 20)],
    7: [[(0.05, 0), (0.95, 0), (0.35, 1)]],
    8: [_arc(0.5, 0.25, 0.3, 0.25), _arc(0.5, 0.73, 0.38, 0.27)],
    9: [_arc(0.5, 0.32, 0.38, 0.32, 20, 380, 20) + [(0.65, 1)]],
}


def pen(
    digit: int, *, width: int, canvas: tuple[int, int] = (300, 300), box: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """Black pen strokes on white paper ("L"); `box` is (left, top, right, bottom) of the digit."""
    image = Image.new("L", canvas, 255)
    left, top, right, bottom = box or (canvas[0] // 3, canvas[1] // 6, 2 * canvas[0] // 3, 5 * canvas[1] // 6)
    draw = ImageDraw.Draw(image)
    for line in PEN_STROKES[digit]:
        points = [(left + x * (right - left), top + y * (bottom - top)) for x, y in line]
        draw.line(points, fill=0, width=width, joint="curve")
    return image


def on_canvas(tile: Image.Image, *, size: tuple[int, int], at: tuple[int, int], paper: int = 0) -> Image.Image:
    canvas = Image.new("L", size, paper)
    canvas.paste(tile, at)
    return canvas


def centre_of_mass(field: np.ndarray) -> tuple[float, float]:
    mass = field.sum()
    return field.sum(axis=1) @ np.arange(28) / mass, field.sum(axis=0) @ np.arange(28) / mass


def aligned(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(smallest max abs difference, largest correlation) of two fields over one-pixel shifts.

    Whole-pixel centring rounds the centre of mass; when it sits near half a pixel, a change
    in the last bits of the input moves the digit by one pixel, so comparisons allow that.
    """
    shifted = [np.roll(b, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    difference = min(float(np.abs(a - s).max()) for s in shifted)
    correlation = max(float(np.corrcoef(a.ravel(), s.ravel())[0, 1]) for s in shifted)
    return difference, correlation


def mnist_style(digit: int) -> np.ndarray:
    """A 28x28 digit made the way MNIST describes: 20x20 box, anti-aliased, centred by mass."""
    ink = np.asarray(glyph(digit, size=100), dtype=np.float32) / 255
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = 20 / max(ink.shape)
    size = (round(ink.shape[1] * scale), round(ink.shape[0] * scale))
    small = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BOX))
    small = small / small.max()
    row, col = (small.sum(axis=1) @ np.arange(small.shape[0]), small.sum(axis=0) @ np.arange(small.shape[1]))
    top, left = round(14 - row / small.sum()), round(14 - col / small.sum())
    field = np.zeros((28, 28), dtype=np.float32)
    field[top : top + small.shape[0], left : left + small.shape[1]] = small
    return field


def png_with_a_broken_chunk(png: bytes) -> bytes:
    """`png` with the second half of its pixel data in a chunk whose type is not letters."""
    start = png.index(b"IDAT") - 4
    length = struct.unpack(">I", png[start : start + 4])[0]
    pixels = png[start + 8 : start + 8 + length]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    half = len(pixels) // 2
    broken = chunk(b"IDAT", pixels[:half]) + chunk(b"\x9fTl\xd8", pixels[half:])
    return png[:start] + broken + png[start + 12 + length :]


def png_header_only(path: Path, *, width: int, height: int) -> Path:
    """A valid PNG signature and header claiming width x height, with no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


# --- properties of the preprocessing --------------------------------------------------------


@PROPERTIES
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_preprocessing_gives_a_28x28_float_field_in_unit_range_or_nothing(pixels):
    field = preprocess_image(Image.fromarray(pixels))
    if field is not None:
        assert field.shape == (28, 28)
        assert field.dtype == np.float32
        assert field.min() >= 0 and field.max() == pytest.approx(1.0)


@PROPERTIES
@given(
    digit=st.integers(0, 9),
    size=st.integers(16, 150),
    stroke=st.integers(0, 4),
    dark_on_light=st.booleans(),
)
def test_centre_of_mass_lands_on_14_14(digit, size, stroke, dark_on_light):
    tile = glyph(digit, size=size, stroke=stroke)
    image = Image.eval(tile, lambda v: 255 - v) if dark_on_light else tile
    row, col = centre_of_mass(preprocess_image(image))
    assert abs(row - 14) <= 0.5 + 1e-6 and abs(col - 14) <= 0.5 + 1e-6


@PROPERTIES
@given(
    digit=st.integers(0, 9),
    size=st.integers(20, 120),
    canvas=st.tuples(st.integers(0, 400), st.integers(0, 300)),
    at=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    dark_on_light=st.booleans(),
)
def test_moving_padding_and_inverting_a_digit_leave_the_field_unchanged(digit, size, canvas, at, dark_on_light):
    tile = glyph(digit, size=size)
    width, height = tile.width + canvas[0], tile.height + canvas[1]
    moved = on_canvas(tile, size=(width, height), at=(int(at[0] * canvas[0]), int(at[1] * canvas[1])))
    if dark_on_light:
        moved = Image.eval(moved, lambda v: 255 - v)
    difference, _ = aligned(preprocess_image(tile), preprocess_image(moved))
    assert difference < 1e-3


@PROPERTIES
@given(digit=st.integers(0, 9), width=st.integers(1, 4), canvas=st.integers(500, 1200))
def test_a_thin_pen_on_a_large_canvas_is_drawn_as_boldly_as_mnist(digit, width, canvas):
    box = (canvas // 3, canvas // 8, 2 * canvas // 3, 7 * canvas // 8)
    thin = preprocess_image(pen(digit, width=width, canvas=(canvas, canvas), box=box))
    bold = preprocess_image(pen(digit, width=canvas // 40, canvas=(canvas, canvas), box=box))
    _, correlation = aligned(thin, bold)
    assert correlation > 0.85
    # A hairline scaled down would be a one-pixel trace; MNIST strokes are 2-3 pixels wide.
    assert np.count_nonzero(thin > 0.5) >= 0.7 * np.count_nonzero(bold > 0.5)


@pytest.mark.parametrize("digit", range(10))
def test_an_mnist_like_digit_is_left_almost_unchanged(tmp_path, digit):
    original = mnist_style(digit)
    pixels = Image.fromarray(np.round(original * 255).astype(np.uint8))
    pixels.save(tmp_path / "d.png")

    difference, correlation = aligned(original, preprocess_image(load_image(tmp_path / "d.png")))
    # Only the faintest edge pixels (< 10% ink, as faint as JPEG ringing) may be dropped.
    assert difference < 0.11
    assert correlation > 0.99
    for quality in (90, 75):
        pixels.save(tmp_path / "d.jpg", quality=quality)
        _, correlation = aligned(original, preprocess_image(load_image(tmp_path / "d.jpg")))
        assert correlation > 0.97


def test_specks_away_from_the_digit_are_ignored():
    clean = on_canvas(glyph(4, size=60), size=(300, 200), at=(100, 40))
    dusty = clean.copy()
    for x, y in [(5, 5), (290, 190), (20, 150), (250, 20)]:
        dusty.paste(255, (x, y, x + 3, y + 3))
    difference, _ = aligned(preprocess_image(clean), preprocess_image(dusty))
    assert difference < 1e-3


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (64, 64), 255),
        Image.new("RGB", (300, 200), (250, 250, 250)),
        Image.new("RGBA", (50, 50), (0, 0, 0, 0)),
        Image.fromarray(np.random.default_rng(0).integers(240, 256, (100, 100), dtype=np.uint8)),  # paper grain
    ],
    ids=["white", "light-grey-rgb", "transparent", "paper-grain"],
)
def test_an_image_without_ink_is_blank(image):
    assert preprocess_image(image) is None
    assert split_digits(image) == []


def test_transparency_is_paper_even_when_its_colour_is_black(tmp_path):
    # Black strokes on a transparent background that is black too: read naively, all is ink.
    ink = glyph(3, size=70)
    rgba = Image.new("RGBA", ink.size, (0, 0, 0, 0))
    rgba.putalpha(ink)
    difference, _ = aligned(preprocess_image(Image.eval(ink, lambda v: 255 - v)), preprocess_image(rgba))
    assert difference < 0.02

    strokes = np.asarray(ink) > 127
    gif = Image.frombytes("P", ink.size, strokes.astype(np.uint8).tobytes())
    gif.putpalette([0, 0, 0, 0, 0, 0])  # entry 0 (transparent) and entry 1 (ink) are both black
    gif.save(tmp_path / "three.gif", transparency=0)
    expected = preprocess_image(Image.fromarray(np.where(strokes, 0, 255).astype(np.uint8)))
    difference, _ = aligned(expected, preprocess_image(load_image(tmp_path / "three.gif")))
    assert difference < 1e-3


def test_light_ink_on_a_transparent_layer_is_read_as_ink_not_blank():
    # White chalk on a transparent layer: flattened onto white paper, it would vanish.
    ink = glyph(3, size=70)
    rgba = Image.new("RGBA", ink.size, (255, 255, 255, 0))
    rgba.putalpha(ink)
    field = preprocess_image(rgba)
    assert field is not None
    difference, _ = aligned(preprocess_image(Image.eval(ink, lambda v: 255 - v)), field)
    assert difference < 0.02


def test_a_sheet_inside_a_transparent_margin_is_paper_not_ink():
    # A white card with a dark digit, cut out with a clear margin around it (a sticker, a canvas export).
    card = Image.eval(glyph(1, size=70), lambda v: 255 - v).convert("RGBA")
    rgba = Image.new("RGBA", (card.width + 60, card.height + 60), (0, 0, 0, 0))
    rgba.paste(card, (30, 30))
    difference, _ = aligned(preprocess_image(Image.eval(glyph(1, size=70), lambda v: 255 - v)), preprocess_image(rgba))
    assert difference < 0.02


def test_16_bit_greyscale_is_scaled_not_clipped():
    ink = np.asarray(glyph(6, size=60), dtype=np.uint16) * 257  # 0..65535
    difference, _ = aligned(preprocess_image(glyph(6, size=60)), preprocess_image(Image.fromarray(ink)))
    assert difference < 1e-3


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.eval(glyph(7, size=120), lambda v: 255 - v).convert("RGB")
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer must turn the stored pixels 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.jpg", quality=95, exif=exif)

    expected = preprocess_image(load_image(tmp_path / "upright.jpg"))
    _, correlation = aligned(expected, preprocess_image(load_image(tmp_path / "rotated.jpg")))
    assert correlation > 0.95
    _, ignoring_exif = aligned(expected, preprocess_image(Image.open(tmp_path / "rotated.jpg")))
    assert ignoring_exif < 0.6


def test_split_digits_reads_left_to_right_merges_broken_strokes_and_drops_specks():
    number = Image.eval(glyph("407", size=80), lambda v: 255 - v)
    four_right = glyph(4, size=80).width - 20  # glyph margins are a quarter of the size
    # Cut the 4 in two with a horizontal gap, and sprinkle dust.
    number.paste(255, (0, number.height // 2 - 3, four_right, number.height // 2 + 3))
    assert number.getpixel((four_right + 1, number.height // 2)) == 255  # the 0 is not cut
    for x in (3, number.width - 6):
        number.paste(0, (x, 3, x + 2, 5))
    fields = split_digits(number)
    assert len(fields) == 3
    broken_four = number.crop((0, 0, four_right + 1, number.height))
    for expected, field in zip([broken_four, glyph(0, size=80), glyph(7, size=80)], fields, strict=True):
        _, correlation = aligned(preprocess_image(expected), field)
        assert correlation > 0.95


# --- image files ------------------------------------------------------------------------------


def test_load_image_names_the_file_and_the_problem(tmp_path):
    text = tmp_path / "x.png"
    text.write_text("not a picture")
    good = tmp_path / "good.png"
    glyph(1).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    broken_chunk = tmp_path / "broken-chunk.png"  # Pillow's PNG reader raises SyntaxError on it
    broken_chunk.write_bytes(png_with_a_broken_chunk(good.read_bytes()))

    cases = [
        (tmp_path / "missing.png", {}, "cannot read"),
        (text, {}, "not an image"),
        (truncated, {}, "unreadable image"),
        (broken_chunk, {}, "unreadable image: broken PNG file"),
        (good, {"max_bytes": 100}, f"file too large: {good.stat().st_size} bytes, limit 100"),
        (good, {"max_pixels": 1000}, f"image too large: {glyph(1).width}x{glyph(1).height}"),
    ]
    for path, limits, problem in cases:
        with pytest.raises(ImageError) as raised:
            load_image(path, **limits)
        assert str(raised.value).startswith(f"{path}: {problem}")


@pytest.mark.parametrize("side", [8_000, 100_000])
def test_load_image_refuses_a_huge_canvas_from_its_header_without_decoding(tmp_path, side):
    # Decoding would fail with "unreadable image": the file has no pixel data at all.
    path = png_header_only(tmp_path / "bomb.png", width=side, height=side)
    with pytest.raises(ImageError, match=f"^{path}: image too large"):
        load_image(path)


# --- bounded work (hostile images) -----------------------------------------------------------


def _checkerboard(side: int, square: int) -> Image.Image:
    """A 1-bit checkerboard: a few kilobytes of PNG that decode to side x side pixels."""
    band = (np.arange(side) // square) % 2 == 1
    return Image.fromarray(band[:, None] ^ band[None, :])


def _dots(side: int, spacing: int) -> Image.Image:
    """Black dots on white, one every `spacing` pixels: every dot a separate mark."""
    pixels = np.ones((side, side), dtype=bool)
    pixels[::spacing, ::spacing] = False
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("draw", "multi", "outcome"),
    [
        (lambda: _checkerboard(6000, 1), False, None),  # averaged down, an even grey: blank
        (lambda: _checkerboard(6000, 4), True, "too much scattered ink: 1250000 stroke runs, limit 200000"),
        (lambda: _dots(2000, 8), True, "too many separate marks: more than 100 digits in one image"),
        (lambda: _dots(2000, 4), False, "too much scattered ink"),
    ],
    ids=["checkerboard 6000x6000", "checkerboard of 4-pixel squares", "grid of dots", "dense dots"],
)
def test_a_hostile_image_costs_bounded_memory_and_gets_its_own_answer(tmp_path, draw, multi, outcome):
    """Before the bounds a 6000x6000 checkerboard took 4 GB and a grid of dots minutes (issue 19, case 2)."""
    import tracemalloc

    from mnist_tasks.inference.preprocess import digits_in_file

    path = tmp_path / "hostile.png"
    draw().save(path, optimize=True)
    assert path.stat().st_size < 20_000  # small files: the danger is what they decode to
    tracemalloc.start()  # numpy reports its arrays to tracemalloc
    try:
        if outcome is None:
            assert digits_in_file(path, multi=multi) == []
        else:
            with pytest.raises(ImageError, match=f"^{path}: {outcome}"):
                digits_in_file(path, multi=multi)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The 36-megapixel canvas as float32 is 144 MB: the work stays within a few of that.
    assert peak < 400 * 2**20


def test_a_large_image_is_averaged_down_to_the_working_size_and_reads_the_same():
    from mnist_tasks.inference.preprocess import WORK_PIXELS, _averaged_down

    gray = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert _averaged_down(gray, max_pixels=3).tolist() == [[2.5, 4.5]]  # 2x2 blocks; the last row is dropped
    assert _averaged_down(np.zeros((1, 10**6), dtype=np.float32), max_pixels=10).shape == (1, 10)
    assert _averaged_down(np.zeros((10**6, 2), dtype=np.float32), max_pixels=10).shape == (10, 1)
    assert _averaged_down(gray, max_pixels=12) is gray

    small = pen(3, width=12, canvas=(300, 300))
    large = small.resize((3000, 3000), Image.Resampling.NEAREST)  # 9 megapixels: averaged down by 2
    assert large.width * large.height > WORK_PIXELS
    _, correlation = aligned(preprocess_image(small), preprocess_image(large))
    assert correlation > 0.95


def test_each_digit_of_a_long_number_reads_as_that_digit_alone():
    digits = "3141592653"
    number = glyph(digits, size=60)
    fields = split_digits(number)
    assert len(fields) == len(digits)
    for digit, field in zip(digits, fields, strict=True):
        _, correlation = aligned(preprocess_image(glyph(digit, size=60)), field)
        assert correlation > 0.9
