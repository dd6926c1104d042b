from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks.files import sha256_file
from mnist_tasks.model.train import train_model

TRAIN_COUNT, TEST_COUNT = 300, 100
# Small and short so the whole file runs in seconds; the synthetic digits are easy.
FAST = {"epochs": 3, "hidden_units": 32, "batch_size": 32}


def write_prepared(
    directory: Path, *, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Path:
    """A prepared-dataset directory in the layout data/prepare.py's prepare_dataset writes."""
    directory.mkdir(parents=True)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", array)
    checksums = {name: sha256_file(directory / f"{name}.npy") for name in arrays}
    (directory / "dataset.json").write_text(
        json.dumps(
            {"data_sha256": "0" * 64, "train_count": len(y_train), "test_count": len(y_test), "arrays": checksums}
        )
    )
    return directory


def synthetic_digits(count: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 28, 28) float32 images in [0, 1] and uint8 labels: one fixed random
    pattern of 4x4-pixel blocks per digit, dimmed and covered in noise, so a net learns
    it in a few epochs, through augmentation's small shifts and rotations too."""
    coarse = np.random.default_rng(0).random((10, 7, 7)) < 0.35
    templates = np.kron(coarse, np.ones((4, 4)))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = 0.7 * templates[labels] + 0.3 * rng.random((count, 28, 28))
    return images.astype(np.float32), labels


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x_train, y_train = synthetic_digits(TRAIN_COUNT, seed=1)
    x_test, y_test = synthetic_digits(TEST_COUNT, seed=2)
    return write_prepared(
        tmp_path_factory.mktemp("data") / "prepared", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
    )


@pytest.fixture(scope="module")
def trained(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return train_model(cache_dir=prepared, out_dir=tmp_path_factory.mktemp("run") / "out", seed=1, **FAST)


def _load(path: str):
    import keras

    return keras.models.load_model(path, safe_mode=True)


def test_build_model_is_the_dense_network() -> None:
    import keras

    from mnist_tasks.model.architecture import build_model

    model = build_model(hidden_units=128, learning_rate=0.01)

    flatten, hidden, output = model.layers
    assert isinstance(flatten, keras.layers.Flatten)
    assert model.input_shape == (None, 28, 28)
    assert (hidden.units, hidden.activation.__name__) == (128, "relu")
    assert (output.units, output.activation.__name__) == (10, "softmax")
    assert model.count_params() == 101_770  # 784*128 + 128 + 128*10 + 10
    assert model.loss == "sparse_categorical_crossentropy"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


def test_train_writes_a_loadable_model_and_its_history(trained: dict[str, Any]) -> None:
    out_dir = Path(trained["model_path"]).parent
    # No temp files left.
    assert sorted(p.name for p in out_dir.iterdir()) == ["history.json", "model.keras", "saved_model"]
    assert trained["model_sha256"] == sha256_file(Path(trained["model_path"]))
    assert trained["train_count"] == TRAIN_COUNT
    assert trained["params"] == {
        **FAST,
        "architecture": "dense",
        "augment": "off",  # auto, resolved: off for dense
        "learning_rate": 0.01,
        "lr_schedule": "cosine",
        "adam_beta_2": 0.95,
        "labeled_weight": 10,
        "seed": 1,
        "validation_split": 0.1,
    }
    assert trained["labeled_train_count"] == 0
    assert json.loads(json.dumps(trained)) == trained  # plain JSON types, fit for XCom

    history = json.loads(Path(trained["history_path"]).read_text())
    assert history["params"] == trained["params"]
    assert [row["epoch"] for row in history["history"]] == [1, 2, 3]
    last = history["history"][-1]
    assert trained["final"] == {k: last[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    assert trained["final"]["val_accuracy"] >= 0.9  # the synthetic digits were actually learned

    model = _load(trained["model_path"])
    assert model.count_params() == 784 * 32 + 32 + 32 * 10 + 10
    assert model.optimizer.beta_2 == pytest.approx(0.95)  # adam_beta_2 reached the optimizer


def test_each_epoch_is_logged_at_info_with_its_figures_and_the_scheduled_rate(
    prepared: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.model.train")

    result = train_model(cache_dir=prepared, out_dir=tmp_path / "out", seed=1, **FAST)

    records = [r for r in caplog.records if r.name == "mnist_tasks.model.train"]
    assert [r.levelno for r in records] == [logging.INFO] * 3  # one per epoch
    history = json.loads(Path(result["history_path"]).read_text())["history"]
    # Cosine from 0.01 to 0 over the three epochs' steps: each epoch starts at 0.005 * (1 + cos(pi * epoch / 3)).
    for record, row, rate in zip(records, history, ["0.01", "0.0075", "0.0025"], strict=True):
        figures = ", ".join(f"{name} {row[name]:.4f}" for name in ("loss", "accuracy", "val_loss", "val_accuracy"))
        expected = rf"epoch {row['epoch']}/3: {figures}, learning_rate {rate} \(\d+\.\d s\)"
        assert re.fullmatch(expected, record.getMessage()), record.getMessage()


def test_same_seed_gives_the_same_model(trained: dict[str, Any], prepared: Path, tmp_path: Path) -> None:
    again = train_model(cache_dir=prepared, out_dir=tmp_path / "again", seed=1, **FAST)

    first_history = json.loads(Path(trained["history_path"]).read_text())["history"]
    assert json.loads(Path(again["history_path"]).read_text())["history"] == first_history
    x_test = np.load(prepared / "x_test.npy")
    first, second = _load(trained["model_path"]), _load(again["model_path"])
    assert np.array_equal(first.predict(x_test, verbose=0), second.predict(x_test, verbose=0))


def test_another_seed_gives_other_weights(trained: dict[str, Any], prepared: Path, tmp_path: Path) -> None:
    other = train_model(cache_dir=prepared, out_dir=tmp_path / "other", seed=2, **FAST)

    first, second = _load(trained["model_path"]), _load(other["model_path"])
    assert not np.array_equal(first.layers[-1].get_weights()[0], second.layers[-1].get_weights()[0])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"validation_split": 0.0}, "validation_split must be between 0 and 1 (exclusive), got 0.0"),
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"learning_rate": -1.0}, "learning_rate must be above 0, got -1.0"),
        ({"learning_rate": 1e308}, "learning_rate must be at most 1, got 1e+308"),
        ({"epochs": 1_000_000_000}, "epochs must be at most 100, got 1000000000"),
    ],
)
def test_bad_params_are_refused_before_anything_is_written(
    prepared: Path, tmp_path: Path, override: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        train_model(cache_dir=prepared, out_dir=tmp_path / "out", **{**FAST, **override})
    assert not (tmp_path / "out").exists()


def test_a_diverging_run_stops_with_a_clear_error_and_writes_no_model(tmp_path: Path) -> None:
    from mnist_tasks.model.train import TrainingDivergedError

    # One corrupt pixel is enough to make the loss NaN in the first epoch.
    x, y = synthetic_digits(200, seed=5)
    x[7, 3, 3] = np.inf
    data = write_prepared(tmp_path / "data", x_train=x, y_train=y, x_test=x, y_test=y)

    diverged = r"training diverged in epoch 1 of 3 \(loss nan.*learning_rate 0.001"
    with pytest.raises(TrainingDivergedError, match=diverged):
        train_model(cache_dir=data, out_dir=tmp_path / "out", learning_rate=0.001, **FAST)
    assert not (tmp_path / "out" / "model.keras").exists()
    assert not (tmp_path / "out" / "history.json").exists()


def test_an_integer_learning_rate_trains(prepared: Path, tmp_path: Path) -> None:
    # The trigger form's maximum, 1, arrives as an int; Keras' Adam refuses ints.
    result = train_model(cache_dir=prepared, out_dir=tmp_path / "out", learning_rate=1, epochs=1, hidden_units=8)
    assert Path(result["model_path"]).is_file()


def test_divergence_in_a_later_epoch_is_reported_for_that_epoch() -> None:
    from mnist_tasks.model.train import TrainingDivergedError, _per_epoch

    nan = float("nan")
    history = {"loss": [0.5, nan], "accuracy": [0.8, 0.1], "val_loss": [0.4, nan], "val_accuracy": [0.9, 0.1]}
    params = {"epochs": 5, "learning_rate": 0.9, "batch_size": 32}
    with pytest.raises(TrainingDivergedError, match=r"^training diverged in epoch 2 of 5 \(loss nan, val_loss nan\)"):
        _per_epoch(history, params)
    # Stopped on a batch while the epoch's figures stayed finite: the last epoch run is named.
    finite = {name: values[:1] for name, values in history.items()}
    with pytest.raises(TrainingDivergedError, match=r"^training diverged in epoch 1 of 5 \(a non-finite batch loss"):
        _per_epoch(finite, params)


def test_the_write_up_recipe_trains_with_a_constant_rate(
    prepared: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mnist_tasks.params import WRITE_UP_RECIPE

    caplog.set_level(logging.INFO, logger="mnist_tasks.model.train")
    result = train_model(cache_dir=prepared, out_dir=tmp_path / "out", **{**WRITE_UP_RECIPE, "epochs": 1})
    assert result["params"]["lr_schedule"] == "constant"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "mnist_tasks.model.train"]
    assert line.startswith("epoch 1/1: loss ") and "learning_rate" not in line  # a constant rate is in the Params
    model = _load(result["model_path"])
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001)  # a plain rate, not a schedule
    assert model.optimizer.beta_2 == pytest.approx(0.999)  # Keras' default, as the write-up's plain "adam"


def test_build_model_cnn_is_two_convolutions_then_the_dense_head() -> None:
    import keras

    from mnist_tasks.model.architecture import build_model

    model = build_model(architecture="cnn", hidden_units=128)

    assert model.name == "mnist_cnn"
    assert model.input_shape == (None, 28, 28)
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convolutions] == [(32, (3, 3)), (64, (3, 3))]
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [128, 10]
    assert model.count_params() == 225_034  # 320 + 18,496 + 1600*128 + 128 + 1,290


def test_an_unknown_architecture_is_refused(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("architecture must be one of dense, cnn, got 'resnet'")):
        train_model(cache_dir=prepared, out_dir=tmp_path / "out", architecture="resnet", **FAST)


@pytest.fixture(scope="module")
def trained_cnn(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return train_model(
        cache_dir=prepared, out_dir=tmp_path_factory.mktemp("cnn") / "out", architecture="cnn", seed=1, **FAST
    )


def test_cnn_trains_with_augmentation_by_default_and_loads_in_safe_mode(trained_cnn: dict[str, Any]) -> None:
    assert trained_cnn["params"]["architecture"] == "cnn"
    assert trained_cnn["params"]["augment"] == "on"  # auto, resolved: on for cnn
    assert json.loads(Path(trained_cnn["history_path"]).read_text())["params"]["augment"] == "on"
    assert trained_cnn["final"]["val_accuracy"] >= 0.9  # learned through the augmentation
    assert _load(trained_cnn["model_path"]).name == "mnist_cnn"


def test_augmented_training_is_reproducible(trained_cnn: dict[str, Any], prepared: Path, tmp_path: Path) -> None:
    again = train_model(cache_dir=prepared, out_dir=tmp_path / "again", architecture="cnn", seed=1, **FAST)

    x_test = np.load(prepared / "x_test.npy")
    first, second = _load(trained_cnn["model_path"]), _load(again["model_path"])
    assert np.array_equal(first.predict(x_test, verbose=0), second.predict(x_test, verbose=0))


def test_augmentation_changes_what_the_cnn_learns(
    trained_cnn: dict[str, Any], prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mnist_tasks.data.augment

    # The same run, stream and shuffling, with every batch passed through unchanged.
    monkeypatch.setattr(mnist_tasks.data.augment, "augment_batch", lambda images, seed: images)
    unchanged = train_model(cache_dir=prepared, out_dir=tmp_path / "same", architecture="cnn", seed=1, **FAST)

    first, second = _load(trained_cnn["model_path"]), _load(unchanged["model_path"])
    assert not np.array_equal(first.layers[-1].get_weights()[0], second.layers[-1].get_weights()[0])


def test_augment_off_trains_cnn_on_the_images_as_they_are(prepared: Path, tmp_path: Path) -> None:
    plain = train_model(
        cache_dir=prepared, out_dir=tmp_path / "plain", architecture="cnn", augment="off", seed=1, **FAST
    )
    assert plain["params"]["augment"] == "off"
    assert plain["final"]["val_accuracy"] >= 0.9


def test_labelled_images_repeat_labeled_weight_times_up_to_the_epochs_bound() -> None:
    from mnist_tasks.model.train import MAX_LABELED_PER_EPOCH, labeled_repeats

    assert labeled_repeats(10, 300) == 10
    assert labeled_repeats(100, 100_000) == MAX_LABELED_PER_EPOCH // 100_000
    assert labeled_repeats(100, 10 * MAX_LABELED_PER_EPOCH) == 1  # every image still trains, once
