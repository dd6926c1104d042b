"""scripts/benchmark_handwriting.py (`make bench-handwriting`): the images it renders, how it scores them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import benchmark_handwriting as bench  # noqa: E402

FONT = bench.FONTS[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every digit of one font in every style and format, one glyph each."""
    glyphs = bench.glyph_specs(fonts=[FONT], samples=1, seed=0)
    return bench.write_images(out_dir=tmp_path_factory.mktemp("bench") / "images", glyphs=glyphs, seed=0)


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def _border(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])


def _ink_centre(ink: np.ndarray) -> tuple[float, float]:
    """Centre of mass of `ink` (H, W), as fractions of the height and width."""
    rows, cols = np.indices(ink.shape)
    return (rows * ink).sum() / ink.sum() / ink.shape[0], (cols * ink).sum() / ink.sum() / ink.shape[1]


def _of_style(images: list[Path], style: str, fmt: str = "png") -> list[Path]:
    found = [p for p in images if bench.parse_name(p).style == style and bench.parse_name(p).format == fmt]
    assert len(found) == 10
    return found


def test_each_style_and_format_holds_every_digit_once_and_alpha_is_png_only(images):
    infos = [bench.parse_name(path) for path in images]
    for style in bench.STYLES:
        for fmt in bench.FORMATS:
            digits = sorted(i.digit for i in infos if i.style == style and i.format == fmt)
            assert digits == ([] if style == "alpha" and fmt == "jpeg" else list(range(10)))
    assert {i.font for i in infos} == {FONT.name}
    assert {Image.open(path).format for path in images} == {"PNG", "JPEG"}
    assert all(Image.open(p).format == bench.parse_name(p).format.upper() for p in images)


def test_a_files_name_gives_the_digit_it_shows(images):
    # The alpha channel is the glyph's ink, losslessly: the file named 7 holds the 7's glyph.
    glyphs = {g.digit: g for g in bench.glyph_specs(fonts=[FONT], samples=1, seed=0)}
    for path in _of_style(images, "alpha"):
        alpha = Image.open(path).getchannel("A")
        expected = bench.ink_mask(glyphs[bench.parse_name(path).digit])
        assert np.array_equal(np.asarray(alpha.crop(alpha.getbbox())), np.asarray(expected))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_ink_on_white_is_dark_ink_roughly_centred_on_light_paper(images, fmt):
    for path in _of_style(images, "ink-on-white", fmt):
        grey = _grey(path)
        assert _border(grey).min() >= 200, path
        assert grey.min() <= 120, path
        row, col = _ink_centre(255 - grey)
        assert abs(row - 0.5) < 0.15 and abs(col - 0.5) < 0.15, (path, row, col)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_light_on_dark_is_light_ink_on_a_dark_background(images, fmt):
    for path in _of_style(images, "light-on-dark", fmt):
        grey = _grey(path)
        assert _border(grey).max() <= 80, path
        assert grey.max() >= 180, path


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_offcentre_sheet_is_a_large_sheet_with_the_digit_away_from_its_centre(images, fmt):
    for path in _of_style(images, "offcentre-sheet", fmt):
        grey = _grey(path)
        ink = np.clip(_border(grey).mean() - grey, 0, None)
        rows, cols = np.nonzero(ink > 60)
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert grey.shape[0] >= 5 * height and grey.shape[1] >= 4 * width, path
        row, col = _ink_centre(ink)
        assert abs(row - 0.5) >= 0.15 and abs(col - 0.5) >= 0.15, (path, row, col)


def test_alpha_is_ink_on_a_transparent_background(images):
    for path in _of_style(images, "alpha"):
        rgba = np.asarray(Image.open(path))
        assert rgba.shape[2] == 4, path
        assert _border(rgba[..., 3]).max() == 0 and rgba[..., 3].max() == 255, path
        # Only the alpha channel tells ink from background: the colour is the ink's everywhere.
        assert len(np.unique(rgba[..., :3].reshape(-1, 3), axis=0)) == 1, path


def test_the_same_seed_gives_the_same_files_and_another_seed_other_ones(images, tmp_path):
    glyphs = bench.glyph_specs(fonts=[FONT], samples=1, seed=0)
    again = bench.write_images(out_dir=tmp_path / "again", glyphs=glyphs, seed=0)
    assert [p.name for p in again] == [p.name for p in images]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(again, images, strict=True))

    other = bench.write_images(
        out_dir=tmp_path / "other", glyphs=bench.glyph_specs(fonts=[FONT], samples=1, seed=1), seed=1
    )
    assert sum(a.read_bytes() != b.read_bytes() for a, b in zip(other, images, strict=True)) > len(images) / 2


def test_glyphs_vary_within_bounds_and_do_not_depend_on_which_other_fonts_are_drawn():
    glyphs = bench.glyph_specs(fonts=bench.FONTS, samples=2, seed=0)
    assert len(glyphs) == len(bench.FONTS) * 10 * 2
    assert {g.size for g in glyphs} == set(bench.SIZES)
    assert {g.pen for g in glyphs} == set(bench.PENS)
    assert all(abs(g.angle) <= bench.MAX_ROTATION for g in glyphs)
    last = bench.FONTS[-1]
    assert bench.glyph_specs(fonts=[last], samples=2, seed=0) == [g for g in glyphs if g.font == last]


def test_writing_images_replaces_what_an_earlier_run_left(tmp_path):
    out = tmp_path / "images"
    out.mkdir()
    (out / "ink-on-white_3_old_9_png.png").write_bytes(b"stale")
    written = bench.write_images(out_dir=out, glyphs=bench.glyph_specs(fonts=[FONT], samples=1, seed=0), seed=0)
    assert sorted(out.iterdir()) == sorted(written)


def test_the_install_script_installs_every_font_file_the_benchmark_reads():
    script = (REPO / "scripts" / "install_system_packages.sh").read_text()
    listed = set(re.findall(r"^\s+(fonts-[a-z0-9-]+):(/\S+)$", script, flags=re.MULTILINE))
    assert listed == {(font.package, str(font.path)) for font in bench.FONTS}


def test_font_names_are_unique_and_fit_the_image_names():
    names = [font.name for font in bench.FONTS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9-]+", name) for name in names)


def test_the_fonts_are_never_training_data():
    # The product's code and DAGs do not read any font the benchmark scores with.
    sources = [*(REPO / "mnist_tasks").rglob("*.py"), *(REPO / "dags").rglob("*.py")]
    needles = {str(font.path.parent) for font in bench.FONTS} | {font.package for font in bench.FONTS}
    found = [(path.name, needle) for path in sources for needle in needles if needle in path.read_text()]
    assert found == []


def test_missing_fonts_fail_with_the_package_and_how_to_install_it(tmp_path, monkeypatch, capsys):
    missing = bench.Font("fonts-nothing-here", tmp_path / "Nothing.ttf")
    monkeypatch.setattr(bench, "FONTS", (FONT, missing))
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--model", "dense=model.keras", "--work-dir", str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: missing handwriting fonts: {missing.path} (fonts-nothing-here); ")
    assert "scripts/install_system_packages.sh" in err and "apt-get install fonts-nothing-here" in err
    assert not (tmp_path / "images").exists()


def test_an_unknown_font_name_is_refused_naming_the_known_ones():
    with pytest.raises(bench.BenchmarkError, match=r"unknown font comic-sans; known: dkg, breip, "):
        bench.select_fonts(["DKG", "comic-sans"])
    assert bench.select_fonts(["DKG"]) == [FONT]


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (["dense"], "expected LABEL=REF"),
        (["=model.keras"], "expected LABEL=REF"),
        (["dense="], "expected LABEL=REF"),
        (["a=one.keras", "a=two.keras"], "each --model needs its own label, got a, a"),
    ],
)
def test_models_are_given_as_label_equals_ref_with_distinct_labels(models, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.main([arg for model in models for arg in ("--model", model)])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["photo.png", "ink-on-white_3_dkg_0_png.jpg", "sideways_3_dkg_0_png.png", "alpha_12_dkg_0_png.png"]
)
def test_names_the_benchmark_did_not_write_are_refused(name):
    with pytest.raises(ValueError, match="not a benchmark image name"):
        bench.parse_name(Path("/images") / name)


def _row(name: str, top: int | None) -> dict:
    """A row of predict's JSON: top is the digit ranked first, None for a blank image."""
    top3 = [] if top is None else [[top, 0.9], [(top + 1) % 10, 0.05], [(top + 2) % 10, 0.05]]
    return {"file": f"/images/{name}", "digit": top, "top3": top3, "status": "ok" if top3 else "blank"}


def test_scores_per_style_format_font_and_digit():
    rows = [
        _row("ink-on-white_3_dkg_0_png.png", 3),
        _row("ink-on-white_3_dkg_0_jpeg.jpg", 5),
        _row("light-on-dark_1_kristi_0_png.png", 1),
        _row("light-on-dark_1_kristi_0_jpeg.jpg", 1),
        _row("alpha_1_kristi_0_png.png", None),
    ]
    # The first-ranked digit counts even when predict gives none for low confidence.
    rows.append({**_row("offcentre-sheet_8_dkg_1_png.png", 8), "digit": None, "status": "low_confidence"})
    assert bench.score(rows) == {
        "accuracy": round(4 / 6, 4),
        "by_style": {"alpha": 0.0, "ink-on-white": 0.5, "light-on-dark": 1.0, "offcentre-sheet": 1.0},
        "by_format": {"jpeg": 0.5, "png": 0.75},
        "by_font": {"dkg": round(2 / 3, 4), "kristi": round(2 / 3, 4)},
        "by_digit": {"1": round(2 / 3, 4), "3": 0.5, "8": 1.0},
        "unread": 1,
    }


def _constant_model(path: Path, digit: int) -> Path:
    """A model that reads every image as `digit`: its scores are known exactly."""
    import keras

    model = keras.Sequential([keras.Input(shape=(28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])
    bias = np.zeros(10, dtype=np.float32)
    bias[digit] = 20
    model.layers[-1].set_weights([np.zeros((784, 10), dtype=np.float32), bias])
    model.save(path)
    return path


@pytest.mark.slow
def test_the_script_scores_models_side_by_side_through_predict(tmp_path):
    threes, sevens = _constant_model(tmp_path / "threes.keras", 3), _constant_model(tmp_path / "sevens.keras", 7)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_handwriting.py"), "--work-dir", str(tmp_path / "work"),
         "--font", FONT.name, "--samples", "1", "--model", f"threes={threes}", "--model", f"sevens={sevens}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"accuracy\s+threes\s+sevens", lines[1])
    assert re.fullmatch(r"\s+ink-on-white \(20\)\s+10\.0%\s+10\.0%", lines[2])
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["images"] == {
        "total": 70,
        "by_style": {"ink-on-white": 20, "offcentre-sheet": 20, "light-on-dark": 20, "alpha": 10},
        "by_format": {"png": 40, "jpeg": 30},
    }
    assert result["fonts"] == [{"package": FONT.package, "file": str(FONT.path)}]
    for label, digit in (("threes", 3), ("sevens", 7)):
        scores = result["models"][label]
        assert scores["accuracy"] == 0.1 and scores["unread"] == 0
        assert set(scores["by_style"].values()) == set(scores["by_format"].values()) == {0.1}
        assert scores["by_digit"] == {str(d): float(d == digit) for d in range(10)}


def test_the_labelled_benchmark_trains_on_fonts_it_never_tests_on():
    import benchmark_handwriting_labeled as labeled_bench

    labeled, held_out = labeled_bench.font_groups()
    assert labeled and held_out
    assert not {font.package for font in labeled} & {font.package for font in held_out}
    assert set(labeled) | set(held_out) == set(bench.FONTS)

    glyphs = labeled_bench.labeled_glyphs(count=3, seed=0)
    assert sorted(g.digit for g in glyphs) == sorted(list(range(10)) * 3)
    assert {g.font for g in glyphs} <= set(labeled)
    x, y = labeled_bench.labeled_arrays(glyphs, seed=0)
    assert x.shape == (len(y), 28, 28) and x.dtype == np.float32
    assert len(y) == 3 * 10 * len(bench.STYLES)  # every style of every glyph reads as a digit
    assert sorted(set(y.tolist())) == list(range(10))


def test_the_labelled_benchmark_table_says_whether_30_digits_met_the_goal():
    import benchmark_handwriting_labeled as labeled_bench

    def column(low: float, n: int) -> dict:
        return {
            "by_style": {style: low if i == 0 else 0.99 for i, style in enumerate(bench.STYLES)},
            "accuracy": 0.98, "labeled_images": n, "train_seconds": 1.0,
        }  # fmt: skip

    result = {
        "labeled_weight": 10, "labeled_fonts": ["a"], "held_out_fonts": ["b"],
        "images": {"total": 8, "by_style": dict.fromkeys(bench.STYLES, 2)},
        "models": {"dense N=0": column(0.9, 0), "dense N=30": column(0.975, 1200), "cnn N=30": column(0.96, 1200)},
    }  # fmt: skip
    printed = labeled_bench.table(result)
    assert "dense N=30: met, lowest style 97.5%" in printed
    assert "cnn N=30: not met, lowest style 96.0%" in printed
    assert "dense N=0: " not in printed
