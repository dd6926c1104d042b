"""`make bench-handwriting`'s second table: what labelling N digits of a handwriting style teaches the model.

    python scripts/benchmark_handwriting_labeled.py --prepared DIR [--architecture dense --architecture cnn]
        [--labeled 0 --labeled 10 --labeled 30] [--work-dir DIR] [--seed 0]

The handwriting fonts of benchmark_handwriting.py are split by Debian package into two
groups that share no typeface (LABELED_PACKAGES and the rest). For each N:

1. N glyphs per digit are rendered from the first group's fonts, in each of the four
   styles, as PNG: the digits a user would have labelled in the review page. They are read
   by `predict`'s own preprocessing, as `prepare` reads the labelled set.
2. The model is trained as `mnist_retraining` trains it (default Params, `train_model`),
   on MNIST's training images plus those labelled digits (none for N = 0).
3. `predict` reads the other group's fonts, in every style and format, and is scored as
   benchmark_handwriting.py scores it: fonts the model never trained on.

It prints accuracy per style with one column per architecture and N, then `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import benchmark_handwriting as bench
import numpy as np

from mnist_tasks.params import PARAMS

# Half the packages each, alternating in FONTS' order; the six bwht variants stay together.
LABELED_PACKAGES = ("fonts-dkg-handwriting", "fonts-bwht", "fonts-humor-sans", "fonts-rufscript", "fonts-kiloji")
GOAL = 0.97  # what 30 labelled digits per digit should lift the default model to, on each style (issue 18)


def font_groups() -> tuple[list[bench.Font], list[bench.Font]]:
    """(fonts whose digits are labelled, fonts the model is tested on): no package in both."""
    labeled = [font for font in bench.FONTS if font.package in LABELED_PACKAGES]
    return labeled, [font for font in bench.FONTS if font.package not in LABELED_PACKAGES]


def labeled_glyphs(*, count: int, seed: int) -> list[bench.Glyph]:
    """`count` glyphs per digit, taken round-robin over the labelled fonts (different sizes, pens and angles)."""
    fonts, _ = font_groups()
    per_font = math.ceil(count / len(fonts))
    glyphs = bench.glyph_specs(fonts=fonts, samples=per_font, seed=seed + 1)  # not the held-out images' draws
    chosen = []
    for digit in range(10):
        mine = sorted((g for g in glyphs if g.digit == digit), key=lambda g: (g.sample, bench.FONTS.index(g.font)))
        chosen += mine[:count]
    return chosen


def labeled_arrays(glyphs: Sequence[bench.Glyph], *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (N, 28, 28), y uint8 (N,)): each glyph in every style, as PNG, read by predict's preprocessing."""
    from mnist_tasks.inference.preprocess import digits_in_bytes

    fields, digits = [], []
    for glyph in glyphs:
        ink = bench.ink_mask(glyph)
        for style in bench.STYLES:
            rng = np.random.default_rng([seed, bench.FONTS.index(glyph.font), glyph.digit, glyph.sample, 99])
            png = io.BytesIO()
            bench.render(ink, style=style, rng=rng).save(png, format="png")
            read = digits_in_bytes(png.getvalue(), name=f"{glyph}")
            if read:  # a blank reading would not be labelled either
                fields.append(read[0])
                digits.append(glyph.digit)
    return np.stack(fields).astype(np.float32), np.array(digits, dtype=np.uint8)


def train(*, prepared: Path, architecture: str, count: int, weight: int, work_dir: Path, seed: int) -> dict:
    """A model of `architecture` trained on MNIST plus `count` labelled digits per digit; its path and figures."""
    from mnist_tasks.model.train import train_model

    labeled_dir = None
    labeled_count = 0
    if count:
        x, y = labeled_arrays(labeled_glyphs(count=count, seed=seed), seed=seed)
        labeled_dir = work_dir / "labeled" / str(count)
        labeled_dir.mkdir(parents=True, exist_ok=True)
        np.save(labeled_dir / "x_train.npy", x, allow_pickle=False)
        np.save(labeled_dir / "y_train.npy", y, allow_pickle=False)
        labeled_count = len(y)
    started = time.monotonic()
    result = train_model(
        cache_dir=prepared,
        out_dir=work_dir / "models" / f"{architecture}-{count}",
        architecture=architecture,
        labeled_dir=labeled_dir,
        labeled_weight=weight,
    )
    return {
        "model_path": result["model_path"],
        "labeled_images": labeled_count,
        "train_seconds": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    architectures = args.architecture or ["dense", "cnn"]
    counts = args.labeled or [0, 10, 30]
    labeled_fonts, held_out = font_groups()
    try:
        bench.check_fonts(bench.FONTS)
    except bench.BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    images_dir = args.work_dir / "held-out-images"
    images = bench.write_images(
        out_dir=images_dir, glyphs=bench.glyph_specs(fonts=held_out, samples=args.samples, seed=args.seed),
        seed=args.seed,
    )  # fmt: skip
    columns = {}
    for architecture in architectures:
        for count in counts:
            print(f"training {architecture} with {count} labelled digits per digit", file=sys.stderr, flush=True)
            trained = train(
                prepared=args.prepared, architecture=architecture, count=count, weight=args.labeled_weight,
                work_dir=args.work_dir, seed=args.seed,
            )  # fmt: skip
            scored = bench.score_model(ref=trained["model_path"], images_dir=images_dir)
            columns[f"{architecture} N={count}"] = {**trained, **scored}
    result = {
        "seed": args.seed,
        "labeled_weight": args.labeled_weight,
        "labeled_fonts": [font.path.name for font in labeled_fonts],
        "held_out_fonts": [font.path.name for font in held_out],
        "images": bench.image_counts(images),
        "models": columns,
    }
    print(table(result))
    print("RESULT " + json.dumps(result))


def table(result: dict) -> str:
    """Accuracy per style on the held-out fonts, one column per architecture and N, and whether N=30 met GOAL."""
    models = result["models"]
    width = max(12, *(len(label) for label in models))
    lines = [
        f"Labelled digits: N per digit from {len(result['labeled_fonts'])} fonts, in each style, each trained on "
        f"{result['labeled_weight']} times an epoch; "
        f"scored on {result['images']['total']} images of {len(result['held_out_fonts'])} other fonts",
        f"{'accuracy':<26}" + "".join(f"{label:>{width + 2}}" for label in models),
    ]
    counts = result["images"]["by_style"]
    for style in bench.STYLES:
        values = "".join(f"{m['by_style'][style]:>{width + 2}.1%}" for m in models.values())
        lines.append(f"  {f'{style} ({counts[style]})':<24}{values}")
    lines.append(f"  {'all':<24}" + "".join(f"{m['accuracy']:>{width + 2}.1%}" for m in models.values()))
    lines.append(f"  {'labelled images':<24}" + "".join(f"{m['labeled_images']:>{width + 2}}" for m in models.values()))
    lines.append(f"  {'train seconds':<24}" + "".join(f"{m['train_seconds']:>{width + 2}.1f}" for m in models.values()))
    for label, m in models.items():
        if label.endswith("N=30"):
            low = min(m["by_style"].values())
            verdict = "met" if low >= GOAL else "not met"
            lines.append(f"goal (every style >= {GOAL:.0%} with N=30), {label}: {verdict}, lowest style {low:.1%}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, required=True, help="MNIST's prepared arrays (`prepare`'s cache_dir)")
    parser.add_argument("--architecture", action="append", choices=("dense", "cnn"), help="default: dense and cnn")
    parser.add_argument("--labeled", action="append", type=int, metavar="N", help="default: 0, 10 and 30")
    parser.add_argument(
        "--work-dir", type=Path, default=bench.REPO / ".data" / "bench-handwriting-labeled", help="images and models"
    )
    parser.add_argument(
        "--labeled-weight", type=int, default=PARAMS["labeled_weight"].default, help="the Param (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=2, help="held-out glyphs per font and digit (default 2)")
    return parser


if __name__ == "__main__":
    main()
