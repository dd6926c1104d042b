from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks.evaluate import (
    ModelChecksumError,
    confusion_matrix,
    evaluate_model,
    gate_verdict,
    per_class_metrics,
)
from mnist_tasks.storage import sha256_file
from tests.test_train import write_prepared

# A hand-wired model predicts digit d for an image whose only lit pixel is
# pixel d of the top row, with logit LOGIT for d and 0 for the other nine digits.
LOGIT = 3.0
# Twenty test images, two per digit. Three are misclassified: both 9s are
# predicted as 8 (so 9 is never predicted), and one 3 as a 5.
LABELS = np.array([d % 10 for d in range(20)], dtype=np.uint8)
PREDICTIONS = LABELS.copy()
PREDICTIONS[[9, 19]] = 8
PREDICTIONS[13] = 5
ACCURACY = 17 / 20


def _images_predicted_as(digits: np.ndarray) -> np.ndarray:
    images = np.zeros((len(digits), 28, 28), dtype=np.float32)
    images[np.arange(len(digits)), 0, digits] = 1.0
    return images


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x_test = _images_predicted_as(PREDICTIONS)
    return write_prepared(
        tmp_path_factory.mktemp("data") / "prepared", x_train=x_test, y_train=LABELS, x_test=x_test, y_test=LABELS
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    model = keras.Sequential(
        [keras.Input(shape=(28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    )
    kernel = np.zeros((784, 10), dtype=np.float32)
    kernel[np.arange(10), np.arange(10)] = LOGIT  # flat pixel d is row 0, column d
    model.layers[-1].set_weights([kernel, np.zeros(10, dtype=np.float32)])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def test_gate_passes_at_the_threshold_and_fails_below_it() -> None:
    assert gate_verdict(accuracy=0.93, threshold=0.93) == (
        True,
        "accuracy gate passed: test accuracy 0.9300 meets the threshold 0.9300",
    )
    assert gate_verdict(accuracy=0.9012, threshold=0.93) == (
        False,
        "accuracy gate failed: test accuracy 0.9012 is below the threshold 0.9300",
    )


def test_confusion_matrix_counts_true_rows_against_predicted_columns() -> None:
    confusion = confusion_matrix(labels=np.array([0, 0, 1, 9]), predictions=np.array([0, 1, 1, 0]))

    expected = np.zeros((10, 10), dtype=int)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[9, 0] = 1
    assert np.array_equal(confusion, expected)


def test_evaluate_reports_hand_checked_metrics(model_file: Path, prepared: Path, tmp_path: Path) -> None:
    result = evaluate_model(
        model_path=model_file,
        model_sha256=sha256_file(model_file),
        cache_dir=prepared,
        out_dir=tmp_path / "out",
        threshold=0.5,
    )

    assert result["accuracy"] == ACCURACY
    # softmax over one logit of LOGIT and nine of 0
    p_hit, p_miss = math.exp(LOGIT) / (math.exp(LOGIT) + 9), 1 / (math.exp(LOGIT) + 9)
    expected_loss = -(17 * math.log(p_hit) + 3 * math.log(p_miss)) / 20
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["test_count"] == 20
    assert result["passed"] is True
    assert json.loads(json.dumps(result)) == result

    metrics = json.loads(Path(result["metrics_path"]).read_text())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json"]
    assert (metrics["accuracy"], metrics["loss"], metrics["test_count"]) == (
        result["accuracy"], result["loss"], 20
    )
    assert metrics["gate"] == {"threshold": 0.5, "passed": True, "message": result["message"]}

    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 20
    assert np.array_equal(confusion, confusion_matrix(labels=LABELS, predictions=PREDICTIONS))
    assert (confusion[9, 8], confusion[3, 5], confusion[3, 3], confusion[9, 9]) == (2, 1, 1, 0)

    per_class = metrics["per_class"]
    assert list(per_class) == [str(d) for d in range(10)]
    assert per_class["8"] == {"precision": 0.5, "recall": 1.0, "support": 2}
    assert per_class["5"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "support": 2}
    assert per_class["3"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert per_class["9"] == {"precision": 0.0, "recall": 0.0, "support": 2}  # never predicted
    assert per_class["0"] == {"precision": 1.0, "recall": 1.0, "support": 2}


@pytest.mark.parametrize(("threshold", "passed"), [(ACCURACY, True), (0.86, False)])
def test_failed_gate_is_reported_not_raised(
    model_file: Path, prepared: Path, tmp_path: Path, threshold: float, passed: bool
) -> None:
    result = evaluate_model(
        model_path=model_file,
        model_sha256=sha256_file(model_file),
        cache_dir=prepared,
        out_dir=tmp_path,
        threshold=threshold,
    )

    assert (result["passed"], result["threshold"]) == (passed, threshold)
    assert result["message"] == gate_verdict(accuracy=ACCURACY, threshold=threshold)[1]
    assert json.loads(Path(result["metrics_path"]).read_text())["gate"]["passed"] is passed


def test_a_model_with_the_wrong_checksum_is_not_loaded(model_file: Path, prepared: Path, tmp_path: Path) -> None:
    expected = "ab" * 32

    with pytest.raises(ModelChecksumError) as caught:
        evaluate_model(
            model_path=model_file, model_sha256=expected, cache_dir=prepared, out_dir=tmp_path / "out", threshold=0.5
        )

    assert str(caught.value) == f"checksum mismatch for {model_file}: expected {expected}, got {sha256_file(model_file)}"
    assert not (tmp_path / "out").exists()


def test_a_never_predicted_digit_has_zero_precision() -> None:
    confusion = np.zeros((10, 10), dtype=np.int64)
    confusion[7, 1] = 4  # every 7 taken for a 1; nothing is ever called a 7

    per_class = per_class_metrics(confusion)

    assert per_class["7"] == {"precision": 0.0, "recall": 0.0, "support": 4}
    assert per_class["1"] == {"precision": 0.0, "recall": 0.0, "support": 0}
