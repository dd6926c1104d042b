"""Real MNIST test digits, saved as image files the way people make them, read back by `predict`.

The model is the project's own, trained for two epochs on the real training set. What is under
test is the preprocessing: a digit turned into a PNG or JPEG in some style and read back must get
the prediction the model makes on the original 28x28 array.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_tasks.inference.predict import predict_files

pytestmark = pytest.mark.slow

DIGITS = 500  # test digits per style


@pytest.fixture(scope="module")
def trained(real_mnist_prepared, tmp_path_factory):
    """(model, x_test, y_test): two epochs on the real training set, ~97% test accuracy."""
    import keras

    from mnist_tasks.data.prepare import load_prepared
    from mnist_tasks.model.train import train_model

    out = tmp_path_factory.mktemp("real-model")
    result = train_model(cache_dir=real_mnist_prepared, out_dir=out, epochs=2, seed=0)
    _, _, x_test, y_test = load_prepared(real_mnist_prepared)
    return keras.models.load_model(result["model_path"], safe_mode=True), np.asarray(x_test), np.asarray(y_test)


def _morph(values: np.ndarray, radius: int, reduce: Callable) -> np.ndarray:
    """Dilation (reduce=np.max) or erosion (np.min) over a (2 * radius + 1)-pixel square."""
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in (0, 1)]
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(values, pad), 2 * radius + 1, axis=axis)
        values = reduce(windows, axis=-1)
    return values


def _enlarged(digit: np.ndarray, factor: int) -> np.ndarray:
    """The 28x28 digit (ink 1 on 0) at `factor` times the size, smoothly, as a scan would be."""
    size = (28 * factor, 28 * factor)
    return np.clip(np.asarray(Image.fromarray(digit.astype(np.float32)).resize(size, Image.Resampling.BICUBIC)), 0, 1)


def _on_canvas(ink: np.ndarray, size: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros((size[1], size[0]), dtype=np.float32)
    canvas[at[1] : at[1] + ink.shape[0], at[0] : at[0] + ink.shape[1]] = ink
    return canvas


def _grey(ink: np.ndarray, *, dark_on_light: bool = True) -> Image.Image:
    return Image.fromarray(np.round((1 - ink if dark_on_light else ink) * 255).astype(np.uint8))


def _with_alpha(digit: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    # Black everywhere; only the alpha channel draws the digit. Read naively, all would be ink.
    image = Image.new("RGBA", (112, 112), (0, 0, 0, 0))
    image.putalpha(_grey(_enlarged(digit, 4), dark_on_light=False))
    return image, {}


# name (its suffix decides the format) -> (digit, rng) -> (image, save options)
STYLES: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[Image.Image, dict]]] = {
    "dark-on-light.png": lambda d, rng: (_grey(_enlarged(d, 4)), {}),
    "dark-on-light.jpg": lambda d, rng: (_grey(_enlarged(d, 4)), {"quality": 85}),
    "light-on-dark.jpg": lambda d, rng: (_grey(_enlarged(d, 3), dark_on_light=False), {"quality": 75}),
    "off-centre.png": lambda d, rng: (
        _grey(_on_canvas(_enlarged(d, 3), (400, 300), (int(rng.integers(0, 316)), int(rng.integers(0, 216))))),
        {},
    ),
    "large-canvas.jpg": lambda d, rng: (_grey(_on_canvas(_enlarged(d, 6), (640, 480), (400, 40))), {"quality": 85}),
    # MNIST strokes are 2-3 pixels of 28: about 10 at 4x, 20 at 8x.
    "thick-strokes.png": lambda d, rng: (_grey(_morph(_enlarged(d, 4), 2, np.max)), {}),  # ~14 at 4x
    "thin-strokes.png": lambda d, rng: (_grey(_morph(_enlarged(d, 8), 5, np.min)), {}),  # ~10 at 8x
    "thin-strokes.jpg": lambda d, rng: (_grey(_morph(_enlarged(d, 8), 5, np.min)), {"quality": 90}),
    "with-alpha.png": _with_alpha,
}


def test_digits_saved_in_many_styles_get_the_prediction_of_the_original_array(trained, tmp_path):
    model, x_test, _ = trained
    digits = x_test[:DIGITS]
    expected = model.predict(digits, verbose=0).argmax(axis=1)
    rng = np.random.default_rng(0)

    agreement = {}
    for style, render in STYLES.items():
        paths = []
        for i, digit in enumerate(digits):
            image, options = render(digit, rng)
            paths.append(tmp_path / f"{i:03d}-{style}")
            image.save(paths[-1], **options)
        # min_confidence 0: every file gets the model's best guess, to compare with the arrays'.
        results = predict_files(model=model, paths=paths, min_confidence=0.0)
        assert {r["status"] for r in results} == {"ok"}, style
        agreement[style] = float(np.mean(np.array([r["digit"] for r in results]) == expected))

    assert np.mean(list(agreement.values())) >= 0.97, agreement
    # No single style may be much worse: that would be a preprocessing step gone wrong.
    assert min(agreement.values()) >= 0.95, agreement


def test_numbers_written_with_test_digits_are_read_as_the_right_number(trained, tmp_path):
    model, x_test, y_test = trained
    # Digits the model reads right as arrays, so that what is measured is the splitting.
    right = np.flatnonzero(model.predict(x_test[:2000], verbose=0).argmax(axis=1) == y_test[:2000])
    rng = np.random.default_rng(1)
    paths, numbers = [], []
    for n in range(100):
        chosen = rng.choice(right, size=int(rng.integers(2, 6)), replace=False)
        tiles = []
        for i in chosen:
            ink = _enlarged(x_test[i], 4)
            columns = np.flatnonzero(ink.max(axis=0) > 0.1)
            tiles += [ink[:, columns[0] : columns[-1] + 1], np.zeros((ink.shape[0], 12), np.float32)]
        paths.append(tmp_path / f"number-{n:03d}.png")
        _grey(np.pad(np.concatenate(tiles[:-1], axis=1), 40)).save(paths[-1])
        numbers.append("".join(str(y_test[i]) for i in chosen))

    results = predict_files(model=model, paths=paths, multi=True, min_confidence=0.0)
    misread = [(Path(r["file"]).name, number, r["number"]) for r, number in zip(results, numbers, strict=True)
               if r["number"] != number]  # fmt: skip
    # MNIST has a few digits drawn in two separate strokes side by side (some 5s); those split.
    assert len(misread) <= 7, misread
