"""`make bench-handwriting`: how well `predict` reads handwriting that never came from MNIST.

    python scripts/benchmark_handwriting.py --model dense=PATH.keras [--model cnn=PATH.keras ...]
        [--work-dir DIR] [--seed 0] [--samples 2] [--font NAME ...]

1. Renders the digits 0-9 of the handwriting fonts in FONTS (Debian packages, installed by
   scripts/install_system_packages.sh), `--samples` times per font and digit, each time at a
   seeded size, pen width and small rotation. Each of these glyphs is drawn in the four STYLES
   and saved as PNG and JPEG (alpha as PNG only) into `<work-dir>/images/`; a file's name gives
   its style, digit and font, e.g. `light-on-dark_7_humor-sans_1_jpeg.jpg`. The same seed gives
   the same files, and every style shows the same glyphs, so styles and formats compare pairwise.
2. Runs `python -m mnist_tasks predict --json --model REF <images>` once per `--model LABEL=REF`,
   as a user would, and scores the digit predict ranks first against the file's digit (a blank
   or unreadable file counts as wrong).
3. Prints accuracy per style and per file format, models side by side, then a line
   `RESULT {json}` with the same figures, per font and per digit too, the image counts and fonts.

The fonts are test material only: nothing here or in mnist_tasks trains on them.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent


class Font(NamedTuple):
    package: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem.lower()


# Each file was looked at: its digits read as a person's handwriting. Left out: fonts-femkeklaver
# (hollow outlined digits, not pen strokes), fonts-cabinsketch (outlines), fonts-dancingscript,
# fonts-kaushanscript and fonts-ecolier-court (calligraphic or typeset scripts).
FONTS = (
    Font("fonts-dkg-handwriting", Path("/usr/share/fonts/truetype/fifthhorseman/dkg.ttf")),
    Font("fonts-breip", Path("/usr/share/fonts/truetype/breip/Breip.ttf")),
    Font("fonts-bwht", Path("/usr/share/fonts/opentype/bwht/BecauseWeBuild-Regular.otf")),
    Font("fonts-bwht", Path("/usr/share/fonts/opentype/bwht/BecauseWeConnect-Regular.otf")),
    Font("fonts-bwht", Path("/usr/share/fonts/opentype/bwht/BecauseWeCreate-Regular.otf")),
    Font("fonts-bwht", Path("/usr/share/fonts/opentype/bwht/BecauseWeLearn-Regular.otf")),
    Font("fonts-bwht", Path("/usr/share/fonts/opentype/bwht/BecauseWeMentor-Regular.otf")),
    Font("fonts-bwht", Path("/usr/share/fonts/opentype/bwht/BecauseWeOrganize-Regular.otf")),
    Font("fonts-comic-neue", Path("/usr/share/fonts/opentype/comic-neue/ComicNeue-Regular.otf")),
    Font("fonts-humor-sans", Path("/usr/share/fonts/truetype/humor-sans/Humor-Sans.ttf")),
    Font("fonts-sjfonts", Path("/usr/share/fonts/truetype/sjfonts/Delphine.ttf")),
    Font("fonts-sjfonts", Path("/usr/share/fonts/truetype/sjfonts/SteveHand.ttf")),
    Font("fonts-rufscript", Path("/usr/share/fonts/truetype/rufscript/Rufscript010.ttf")),
    Font("fonts-kristi", Path("/usr/share/fonts/truetype/kristi/Kristi.ttf")),
    Font("fonts-kiloji", Path("/usr/share/fonts/truetype/kiloji/kiloji.ttf")),
    Font("fonts-seto", Path("/usr/share/fonts/truetype/seto/setofont.ttf")),
)

STYLES = ("ink-on-white", "offcentre-sheet", "light-on-dark", "alpha")
FORMATS = {"png": "png", "jpeg": "jpg"}  # format -> file suffix
PNG_ONLY = {"alpha"}  # JPEG has no transparency
JPEG_QUALITY = 85

SIZES = (32, 64, 128)  # font size, pixels
# Pen width added on each side of the font's strokes, as a fraction of the digit's height (fonts
# draw digits at different heights for one font size); more turns bold fonts' loops into blobs.
PENS = (0.0, 0.02, 0.04)
MAX_ROTATION = 10.0  # degrees either way
MARGIN = 0.2  # paper around a roughly centred digit, as a fraction of its longer side
SHEET = (6, 8)  # an off-centre sheet's width and height, in digit lengths

INKS = ((0, 0, 0), (25, 35, 110), (70, 70, 70))  # RGB: black, blue-black, pencil grey
LIGHT_INK = (200, 255)  # grey level range of chalk or white pen
DARK_BACKGROUND = (0, 60)  # grey level range of a blackboard or a screen
PAPER = (230, 255)  # grey level range of white paper

# The format is in the stem as well, so that `predict --save-preprocessed` (which names its
# pictures by stem) can run on the whole directory.
NAME = re.compile(
    r"(?P<style>[a-z-]+)_(?P<digit>[0-9])_(?P<font>[a-z0-9-]+)_(?P<sample>[0-9]+)"
    r"_(?P<format>png|jpeg)\.(?P<suffix>png|jpg)"
)


class BenchmarkError(RuntimeError):
    """The benchmark cannot run: fonts missing, or predict failed."""


class Glyph(NamedTuple):
    font: Font
    digit: int
    sample: int
    size: int  # font size, pixels
    pen: float  # one of PENS
    angle: float  # degrees, counter-clockwise


class ImageInfo(NamedTuple):
    style: str
    digit: int
    font: str
    format: str


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    labels = [label for label, _ in args.model]
    if len(set(labels)) < len(labels):
        parser.error(f"each --model needs its own label, got {', '.join(labels)}")
    try:
        fonts = select_fonts(args.font)
        check_fonts(fonts)
        started = time.monotonic()
        glyphs = glyph_specs(fonts=fonts, samples=args.samples, seed=args.seed)
        images = write_images(out_dir=args.work_dir / "images", glyphs=glyphs, seed=args.seed)
        render_seconds = time.monotonic() - started
        scores = {label: score_model(ref=ref, images_dir=args.work_dir / "images") for label, ref in args.model}
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    result = {
        "seed": args.seed,
        "samples": args.samples,
        "images": image_counts(images),
        "render_seconds": round(render_seconds, 1),
        "fonts": [{"package": f.package, "file": str(f.path)} for f in fonts],
        "models": scores,
    }
    print(table(result, images_dir=args.work_dir / "images"))
    print("RESULT " + json.dumps(result))


def _model_pair(text: str) -> tuple[str, str]:
    label, sep, ref = text.partition("=")
    if not sep or not label or not ref:
        raise argparse.ArgumentTypeError(f"expected LABEL=REF, e.g. dense=model.keras, got {text!r}")
    return label, ref


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=_model_pair,
        action="append",
        required=True,
        metavar="LABEL=REF",
        help="a column of the table; REF is anything `predict --model` takes (repeatable)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=REPO / ".data" / "bench-handwriting", help="images/ is rewritten here"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--samples",
        type=int,
        choices=range(1, 11),
        default=2,
        metavar="1-10",
        help="glyphs per font and digit (default %(default)s)",
    )
    parser.add_argument("--font", action="append", metavar="NAME", help="only these fonts, by file name without suffix")
    return parser


def select_fonts(names: Iterable[str] | None) -> list[Font]:
    """FONTS, or those named (case-insensitive file stems); an unknown name is an error."""
    if names is None:
        return list(FONTS)
    wanted = {name.lower() for name in names}
    unknown = wanted - {font.name for font in FONTS}
    if unknown:
        raise BenchmarkError(f"unknown font {', '.join(sorted(unknown))}; known: {', '.join(f.name for f in FONTS)}")
    return [font for font in FONTS if font.name in wanted]


def check_fonts(fonts: Iterable[Font]) -> None:
    """Fail naming every missing font file, its package and how to install it."""
    missing = [font for font in fonts if not font.path.is_file()]
    if missing:
        packages = " ".join(dict.fromkeys(font.package for font in missing))
        files = ", ".join(f"{font.path} ({font.package})" for font in missing)
        raise BenchmarkError(
            f"missing handwriting fonts: {files}; install them with scripts/install_system_packages.sh "
            f"(as root, or with sudo), or: apt-get install {packages}"
        )


def glyph_specs(*, fonts: Iterable[Font], samples: int, seed: int) -> list[Glyph]:
    """`samples` glyphs per font and digit, with seeded size, pen and rotation.

    Each glyph's draw depends only on the seed, its font's place in FONTS, the digit and the
    sample, so choosing fewer fonts leaves the others' images as they were.
    """
    glyphs = []
    for font in fonts:
        for digit in range(10):
            for sample in range(samples):
                rng = np.random.default_rng([seed, FONTS.index(font), digit, sample])
                glyphs.append(
                    Glyph(
                        font=font,
                        digit=digit,
                        sample=sample,
                        size=int(rng.choice(SIZES)),
                        pen=float(rng.choice(PENS)),
                        angle=float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
                    )
                )
    return glyphs


def write_images(*, out_dir: Path, glyphs: Iterable[Glyph], seed: int) -> list[Path]:
    """Every glyph in every style, as PNG and (but alpha) JPEG; out_dir is emptied first."""
    if out_dir.exists():
        shutil.rmtree(out_dir)  # stale images of another seed or font list would be scored too
    out_dir.mkdir(parents=True)
    written = []
    for glyph in glyphs:
        ink = ink_mask(glyph)
        for style in STYLES:
            rng = np.random.default_rng([seed, FONTS.index(glyph.font), glyph.digit, glyph.sample, STYLES.index(style)])
            image = render(ink, style=style, rng=rng)
            for fmt, suffix in FORMATS.items():
                if fmt == "png" or style not in PNG_ONLY:
                    path = out_dir / f"{style}_{glyph.digit}_{glyph.font.name}_{glyph.sample}_{fmt}.{suffix}"
                    image.save(path, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "jpeg" else {}))
                    written.append(path)
    return written


def ink_mask(glyph: Glyph) -> Image.Image:
    """The glyph's ink as an "L" image (255 = full ink), rotated and cropped to the ink."""
    font = ImageFont.truetype(str(glyph.font.path), glyph.size)
    text = str(glyph.digit)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    _, top, _, bottom = measure.textbbox((0, 0), text, font=font)
    stroke = round(glyph.pen * (bottom - top))  # PIL's stroke_width, pixels
    left, top, right, bottom = measure.textbbox((0, 0), text, font=font, stroke_width=stroke)
    mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    rotated = mask.rotate(glyph.angle, resample=Image.Resampling.BICUBIC, expand=True)
    return rotated.crop(rotated.getbbox())


def render(ink: Image.Image, *, style: str, rng: np.random.Generator) -> Image.Image:
    """The ink mask as a user's image in one of STYLES."""
    coverage = np.asarray(ink, dtype=np.float64) / 255
    if style == "offcentre-sheet":
        return _compose(_off_centre(coverage, rng), paper=_grey(rng, PAPER), ink=INKS[rng.integers(len(INKS))])
    centred = _roughly_centred(coverage, rng)
    if style == "ink-on-white":
        return _compose(centred, paper=_grey(rng, PAPER), ink=INKS[rng.integers(len(INKS))])
    if style == "light-on-dark":
        return _compose(centred, paper=_grey(rng, DARK_BACKGROUND), ink=_grey(rng, LIGHT_INK))
    if style == "alpha":
        # Transparent pixels keep the ink's colour, as drawing programs export them: only the
        # alpha channel tells ink from background.
        ink_colour = np.broadcast_to(np.array(INKS[rng.integers(len(INKS))], dtype=np.uint8), (*centred.shape, 3))
        rgba = np.dstack([ink_colour, np.round(centred * 255).astype(np.uint8)])
        return Image.fromarray(rgba)  # (H, W, 4) uint8: RGBA
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def _grey(rng: np.random.Generator, levels: tuple[int, int]) -> tuple[int, int, int]:
    level = int(rng.integers(levels[0], levels[1] + 1))
    return (level, level, level)


def _roughly_centred(coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ink on a square canvas with MARGIN around it, moved by up to half the margin."""
    height, width = coverage.shape
    margin = max(4, round(MARGIN * max(height, width)))
    side = max(height, width) + 2 * margin
    top = (side - height) // 2 + int(rng.integers(-margin // 2, margin // 2 + 1))
    left = (side - width) // 2 + int(rng.integers(-margin // 2, margin // 2 + 1))
    return _placed(coverage, (side, side), top=top, left=left)


def _off_centre(coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ink in one corner region of a sheet SHEET digit-lengths large: centre at 10-30% from two edges."""
    length = max(coverage.shape)
    sheet_height, sheet_width = SHEET[1] * length, SHEET[0] * length
    centre_row = rng.uniform(0.1, 0.3) * sheet_height
    centre_col = rng.uniform(0.1, 0.3) * sheet_width
    if rng.integers(2):
        centre_row = sheet_height - centre_row
    if rng.integers(2):
        centre_col = sheet_width - centre_col
    top = round(centre_row - coverage.shape[0] / 2)
    left = round(centre_col - coverage.shape[1] / 2)
    return _placed(coverage, (sheet_height, sheet_width), top=top, left=left)


def _placed(coverage: np.ndarray, shape: tuple[int, int], *, top: int, left: int) -> np.ndarray:
    canvas = np.zeros(shape)
    canvas[top : top + coverage.shape[0], left : left + coverage.shape[1]] = coverage
    return canvas


def _compose(coverage: np.ndarray, *, paper: tuple[int, int, int], ink: tuple[int, int, int]) -> Image.Image:
    """An RGB image: `ink` laid on `paper`, `coverage` (H, W) in [0, 1] of it at each pixel."""
    a = coverage[..., None]
    rgb = np.array(paper) * (1 - a) + np.array(ink) * a
    return Image.fromarray(np.round(rgb).astype(np.uint8))  # (H, W, 3) uint8: RGB


def parse_name(path: Path | str) -> ImageInfo:
    """Style, true digit, font and format of an image written by write_images, from its name."""
    match = NAME.fullmatch(Path(path).name)
    if match is None or match["style"] not in STYLES or FORMATS[match["format"]] != match["suffix"]:
        raise ValueError(f"{path}: not a benchmark image name (style_digit_font_sample_png.png or …_jpeg.jpg)")
    return ImageInfo(style=match["style"], digit=int(match["digit"]), font=match["font"], format=match["format"])


def score_model(*, ref: str, images_dir: Path) -> dict:
    """predict's reading of every image in images_dir, scored; with predict's wall time."""
    command = [sys.executable, "-m", "mnist_tasks", "predict", "--json", "--model", ref, str(images_dir)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.monotonic() - started
    # Exit status 1: some file could not be read, and the JSON still has every file's row.
    if done.returncode not in (0, 1):
        raise BenchmarkError(f"predict --model {ref} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    rows = json.loads(done.stdout)["predictions"]
    return {"model": ref, "predict_seconds": round(seconds, 1), **score(rows)}


def score(rows: Sequence[dict]) -> dict:
    """Accuracy overall and by style, format, font and digit, from predict's JSON rows.

    A row is right when the digit predict ranks first (top3[0]) is the file's; a blank or
    unreadable file has no top3 and is wrong. "unread" counts those.
    """
    scored = []  # (what the file is, whether predict read it right)
    for row in rows:
        info = parse_name(row["file"])
        scored.append((info, bool(row["top3"]) and row["top3"][0][0] == info.digit))

    def accuracy_by(field: str) -> dict[str, float]:
        groups: dict[str, list[bool]] = defaultdict(list)
        for info, right in scored:
            groups[str(getattr(info, field))].append(right)
        return {key: _mean(groups[key]) for key in sorted(groups)}

    return {
        "accuracy": _mean([right for _, right in scored]),
        **{f"by_{field}": accuracy_by(field) for field in ("style", "format", "font", "digit")},
        "unread": sum(not row["top3"] for row in rows),
    }


def _mean(values: list[bool]) -> float:
    return round(sum(values) / len(values), 4)


def image_counts(images: Iterable[Path]) -> dict:
    infos = [parse_name(path) for path in images]
    return {
        "total": len(infos),
        "by_style": {style: sum(i.style == style for i in infos) for style in STYLES},
        "by_format": {fmt: sum(i.format == fmt for i in infos) for fmt in FORMATS},
    }


def table(result: dict, *, images_dir: Path) -> str:
    """Accuracy per style and per format, one column per model."""
    models = result["models"]
    counts = result["images"]
    width = max(10, *(len(label) for label in models))
    lines = [
        f"Handwriting benchmark: {counts['total']} images of {len(result['fonts'])} fonts, seed {result['seed']}, "
        f"rendered in {result['render_seconds']} s ({images_dir})",
        f"{'accuracy':<26}" + "".join(f"{label:>{width + 2}}" for label in models),
    ]
    rows = [(style, counts["by_style"][style], [m["by_style"][style] for m in models.values()]) for style in STYLES]
    rows += [(fmt, counts["by_format"][fmt], [m["by_format"][fmt] for m in models.values()]) for fmt in FORMATS]
    rows.append(("all", counts["total"], [m["accuracy"] for m in models.values()]))
    for name, count, values in rows:
        lines.append(f"  {f'{name} ({count})':<24}" + "".join(f"{value:>{width + 2}.1%}" for value in values))
    seconds = "".join(f"{m['predict_seconds']:>{width + 2}.1f}" for m in models.values())
    lines.append(f"  {'predict seconds':<24}{seconds}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
