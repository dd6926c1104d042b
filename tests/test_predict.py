"""Predicting real images with a small real classifier (mnist_tasks/inference/predict.py).

The digits are drawn with test_preprocess.py's helpers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from mnist_tasks.inference.predict import ModelOutputError, PredictError, expand_inputs, predict_files
from mnist_tasks.inference.preprocess import ImageError, preprocess_image, split_digits
from mnist_tasks.params import ParamError
from tests.test_preprocess import PROPERTIES, glyph, on_canvas, pen, png_header_only

# --- files ----------------------------------------------------------------------------------


def test_expand_inputs_takes_files_as_given_and_image_files_from_directories(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ["b.PNG", "a.jpg", "c.webp", "notes.txt", ".hidden.png"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub.png").mkdir()
    single = tmp_path / "odd.name"
    single.write_bytes(b"x")

    assert expand_inputs([single, folder, folder / "a.jpg"]) == [
        single,
        folder / "a.jpg",
        folder / "b.PNG",
        folder / "c.webp",
    ]


def test_expand_inputs_refuses_a_directory_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ImageError, match=f"{tmp_path}: directory has no image files"):
        expand_inputs([tmp_path])


# --- predictions with a small real classifier -----------------------------------------------


@pytest.fixture(scope="module")
def model():
    """The project's dense network, trained for seconds on font glyphs and pen-drawn digits."""
    import keras

    from mnist_tasks.model.architecture import build_model

    keras.utils.set_random_seed(0)
    fields, labels = [], []
    for digit in range(10):
        for size in (20, 32, 48, 72, 110):
            for stroke in (0, 1, 3):
                for angle in (-8, 0, 8):
                    image = glyph(digit, size=size, stroke=stroke * size // 40)
                    fields.append(preprocess_image(image.rotate(angle, expand=True)))
                    labels.append(digit)
        for width in (4, 10, 18):
            for slant in (-0.15, 0, 0.15):
                for half_width in (45, 60, 80):
                    image = pen(digit, width=width, box=(150 - half_width, 50, 150 + half_width, 250))
                    shear = (1, slant, -150 * slant, 0, 1, 0)
                    image = image.transform(image.size, Image.Transform.AFFINE, shear, fillcolor=255)
                    fields.append(preprocess_image(image))
                    labels.append(digit)
    network = build_model(hidden_units=64)
    network.fit(np.stack(fields), np.array(labels), epochs=40, batch_size=32, verbose=0)
    return network


@pytest.mark.slow
@PROPERTIES
@given(digit=st.integers(0, 9), size=st.integers(24, 80), factor=st.floats(1.5, 5))
def test_scaling_a_digit_keeps_its_prediction(model, digit, size, factor):
    small = preprocess_image(glyph(digit, size=size))
    large = preprocess_image(glyph(digit, size=round(size * factor)))
    # Font hinting moves small glyphs' strokes by a pixel, so compare what the model makes of them.
    assert model.predict(np.stack([small, large]), verbose=0).argmax(axis=1).tolist() == [digit, digit]


def write_styles(folder: Path, digit: int) -> list[Path]:
    """The same digit as people photograph, scan and draw it."""
    folder.mkdir(exist_ok=True)
    white_on_black = glyph(digit, size=90)
    black_on_white = Image.eval(white_on_black, lambda v: 255 - v)
    written = []

    def save(image: Image.Image, name: str, **options) -> None:
        written.append(folder / f"{digit}-{name}")
        image.save(written[-1], **options)

    save(black_on_white, "dark-on-light.png")
    save(white_on_black.convert("RGB"), "light-on-dark.jpg", quality=85)
    save(on_canvas(black_on_white, size=(1000, 800), at=(80, 560), paper=255), "off-centre-large.png")
    save(Image.eval(glyph(digit, size=300, stroke=25), lambda v: 255 - v), "marker.jpg", quality=80)
    save(pen(digit, width=3, canvas=(1000, 800), box=(420, 150, 640, 650)).convert("RGB"), "thin-pen.jpg", quality=90)
    rgba = Image.new("RGBA", white_on_black.size, (0, 0, 0, 0))
    rgba.putalpha(white_on_black)
    save(rgba, "transparent.png")
    rng = np.random.default_rng(digit)
    grey = np.asarray(Image.eval(black_on_white, lambda v: 95 + v * 80 // 255), dtype=np.float64)
    photo = np.clip(grey + rng.normal(0, 4, grey.shape), 0, 255).astype(np.uint8)  # pencil on grey paper
    enlarged = Image.fromarray(photo).resize((photo.shape[1] * 3, photo.shape[0] * 3), Image.Resampling.BICUBIC)
    save(enlarged, "pencil.jpg", quality=75)
    return written


@pytest.mark.slow
def test_digits_in_many_styles_are_predicted(model, tmp_path):
    paths = [path for digit in range(10) for path in write_styles(tmp_path, digit)]
    results = predict_files(model=model, paths=paths)
    wrong = [(r["file"], r["digit"], r["top3"]) for r in results if r["digit"] != int(Path(r["file"]).name[0])]
    assert wrong == []
    assert {r["status"] for r in results} == {"ok"}
    assert all(r["error"] is None and r["preprocessed"] is None for r in results)


@pytest.mark.slow
def test_blank_broken_and_huge_files_are_reported_while_the_rest_are_predicted(model, tmp_path):
    Image.new("L", (200, 100), 255).save(tmp_path / "blank.png")
    (tmp_path / "x.png").write_text("this is not an image")
    png_header_only(tmp_path / "huge.png", width=100_000, height=100_000)
    Image.eval(glyph(8, size=60), lambda v: 255 - v).save(tmp_path / "eight.png")
    names = ["blank.png", "x.png", "huge.png", "eight.png", "missing.png"]

    results = predict_files(model=model, paths=[tmp_path / n for n in names])
    by_name = {Path(r["file"]).name: r for r in results}
    assert [Path(r["file"]).name for r in results] == names
    assert by_name["blank.png"] == {
        "file": str(tmp_path / "blank.png"), "digit": None, "probability": None, "top3": [],
        "preprocessed": None, "status": "blank", "error": None,
    }  # fmt: skip
    for name, problem in [("x.png", "not an image"), ("huge.png", "image too large"), ("missing.png", "cannot read")]:
        assert by_name[name]["status"] == "error"
        assert by_name[name]["error"].startswith(f"{tmp_path / name}: {problem}")
        assert by_name[name]["digit"] is None and by_name[name]["top3"] == []
    assert by_name["eight.png"]["status"] == "ok" and by_name["eight.png"]["digit"] == 8

    as_numbers = predict_files(model=model, paths=[tmp_path / n for n in names], multi=True)
    assert [(r["number"], r["status"]) for r in as_numbers] == [
        (None, "blank"), (None, "error"), (None, "error"), ("8", "ok"), (None, "error"),
    ]  # fmt: skip
    assert as_numbers[1]["error"] == by_name["x.png"]["error"]


@pytest.mark.slow
def test_noise_is_not_taken_for_a_digit_when_high_confidence_is_required(model, tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    [result] = predict_files(model=model, paths=[tmp_path / "noise.png"], min_confidence=0.99)
    assert result["status"] in ("low_confidence", "blank")
    assert result["digit"] is None


@pytest.mark.slow
def test_below_min_confidence_the_guesses_are_kept_but_no_digit_is_given(model, tmp_path):
    path = tmp_path / "scribble.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (60, 60), dtype=np.uint8)).save(path)
    [guess] = predict_files(model=model, paths=[path], min_confidence=0.0)
    probability = guess["probability"]
    assert guess["status"] == "ok" and guess["digit"] == guess["top3"][0][0]
    assert guess["top3"][0][1] == probability < 1.0
    assert len(guess["top3"]) == 3 and probability >= guess["top3"][1][1] >= guess["top3"][2][1]

    [at] = predict_files(model=model, paths=[path], min_confidence=probability)
    [above] = predict_files(model=model, paths=[path], min_confidence=(probability + 1) / 2)
    assert at == guess
    assert above == guess | {"digit": None, "status": "low_confidence"}


@pytest.mark.slow
def test_multi_reads_the_number_and_saves_what_the_model_saw(model, tmp_path):
    number = on_canvas(glyph("407", size=90), size=(900, 400), at=(200, 100))
    number.save(tmp_path / "house.png")
    saved = tmp_path / "seen"

    [result] = predict_files(model=model, paths=[tmp_path / "house.png"], multi=True, save_preprocessed=saved)
    assert result["number"] == "407" and result["status"] == "ok" and result["error"] is None
    assert [d["digit"] for d in result["digits"]] == [4, 0, 7]
    assert sorted(p.name for p in saved.iterdir()) == ["house_0.png", "house_1.png", "house_2.png"]
    for field, digit in zip(split_digits(number), result["digits"], strict=True):
        assert digit["preprocessed"] == str(saved / Path(digit["preprocessed"]).name)
        written = np.asarray(Image.open(digit["preprocessed"]), dtype=np.float32) / 255
        np.testing.assert_allclose(written, field, atol=0.5 / 255 + 1e-6)


@pytest.mark.slow
def test_save_preprocessed_names_images_by_stem_and_refuses_collisions(model, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        glyph(5).save(tmp_path / folder / "five.png")
    saved = tmp_path / "seen"
    with pytest.raises(PredictError, match="five.png"):
        predict_files(model=model, paths=[tmp_path / d / "five.png" for d in "ab"], save_preprocessed=saved)
    assert not saved.exists()

    [result] = predict_files(model=model, paths=[tmp_path / "a" / "five.png"], save_preprocessed=saved)
    assert [p.name for p in saved.iterdir()] == ["five.png"]
    assert result["preprocessed"] == str(saved / "five.png")


@pytest.mark.slow
def test_exif_rotated_photo_is_predicted_upright(model, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8  # the viewer must turn the stored pixels 90 degrees anticlockwise
    sideways = Image.eval(glyph(7, size=120), lambda v: 255 - v).transpose(Image.Transpose.ROTATE_270)
    sideways.convert("RGB").save(tmp_path / "photo.jpg", quality=90, exif=exif)
    [result] = predict_files(model=model, paths=[tmp_path / "photo.jpg"])
    assert result["digit"] == 7


def test_min_confidence_must_be_a_probability(tmp_path):
    with pytest.raises(ParamError, match="min_confidence must be at most 1, got 1.5"):
        predict_files(model=None, paths=[], min_confidence=1.5)


@pytest.mark.slow
def test_a_model_without_softmax_output_is_refused(tmp_path):
    import keras

    logits = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10)])
    logits.layers[-1].set_weights([np.full((784, 10), 0.01, np.float32), np.zeros(10, np.float32)])
    glyph(3).save(tmp_path / "three.png")
    with pytest.raises(ModelOutputError, match="not class probabilities"):
        predict_files(model=logits, paths=[tmp_path / "three.png"])
