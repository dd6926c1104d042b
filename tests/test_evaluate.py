from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks.files import sha256_file
from mnist_tasks.model.evaluate import Champion, evaluate_model, fetch_champion, gate_verdict
from mnist_tasks.model.loading import ModelChecksumError
from mnist_tasks.model.metrics import confusion_matrix, per_class_metrics
from mnist_tasks.params import ParamError
from mnist_tasks.registry import ModelRegistry
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


def _save_dense_model(directory: Path, kernel: np.ndarray) -> Path:
    import keras

    model = keras.Sequential(
        [keras.Input(shape=(28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    )
    model.layers[-1].set_weights([kernel, np.zeros(10, dtype=np.float32)])
    path = directory / "model.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kernel = np.zeros((784, 10), dtype=np.float32)
    kernel[np.arange(10), np.arange(10)] = LOGIT  # flat pixel d is row 0, column d
    return _save_dense_model(tmp_path_factory.mktemp("model"), kernel)


@pytest.fixture(scope="module")
def weak_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Equal probabilities for every digit, so argmax always says 0: right for the two 0s only."""
    return _save_dense_model(tmp_path_factory.mktemp("weak"), np.zeros((784, 10), dtype=np.float32))


WEAK_ACCURACY = 2 / 20


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
    # No history.json given, so no training curves.
    pictures = ["confusion_matrix.png", "misclassified.png", "predictions.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["metrics.json", *pictures])
    assert result["pictures"] == {name: str(tmp_path / "out" / name) for name in pictures}
    assert (result["champion_version"], result["champion_accuracy"], metrics["champion"]) == (None, None, None)
    assert (metrics["accuracy"], metrics["loss"], metrics["test_count"]) == (
        result["accuracy"], result["loss"], 20
    )
    assert metrics["gate"] == {
        "threshold": 0.5,
        "max_regression": 0.005,
        "champion_accuracy": None,
        "passed": True,
        "message": result["message"],
    }

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

    got = sha256_file(model_file)
    assert str(caught.value) == f"checksum mismatch for {model_file}: expected {expected}, got {got}"
    assert not (tmp_path / "out").exists()


def test_a_never_predicted_digit_has_zero_precision() -> None:
    confusion = np.zeros((10, 10), dtype=np.int64)
    confusion[7, 1] = 4  # every 7 taken for a 1; nothing is ever called a 7

    per_class = per_class_metrics(confusion)

    assert per_class["7"] == {"precision": 0.0, "recall": 0.0, "support": 4}
    assert per_class["1"] == {"precision": 0.0, "recall": 0.0, "support": 0}


# ---- champion/challenger ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accuracy", "champion", "max_regression", "passed"),
    [
        (0.975, 0.980, 0.005, True),  # exactly the tolerance below: passes despite float rounding
        (0.9749, 0.980, 0.005, False),  # just beyond it
        (0.9701, 0.9751, 0.005, True),
        (0.990, 0.980, 0.005, True),  # better than the champion
        (0.980, 0.980, 0.0, True),  # no tolerance: a tie still passes
        (0.9799, 0.980, 0.0, False),
        (0.93, 1.0, 0.07, True),
    ],
)
def test_gate_against_the_champion_boundaries(
    accuracy: float, champion: float, max_regression: float, passed: bool
) -> None:
    verdict, message = gate_verdict(
        accuracy=accuracy, threshold=0.93, champion_accuracy=champion, max_regression=max_regression
    )

    assert verdict is passed
    assert message.startswith("accuracy gate passed" if passed else "accuracy gate failed")
    assert f"{accuracy:.4f}" in message and f"the champion's {champion:.4f}" in message


def test_gate_messages_name_both_accuracies_and_the_threshold() -> None:
    assert gate_verdict(accuracy=0.95, threshold=0.93, champion_accuracy=0.98) == (
        False,
        "accuracy gate failed: test accuracy 0.9500 is more than 0.0050 below the champion's 0.9800 "
        "on the same test set (threshold 0.9300 met)",
    )
    assert gate_verdict(accuracy=0.90, threshold=0.93, champion_accuracy=0.85) == (
        False,
        "accuracy gate failed: test accuracy 0.9000 is below the threshold 0.9300 "
        "(the champion's 0.8500 on the same test set)",
    )
    assert gate_verdict(accuracy=0.977, threshold=0.93, champion_accuracy=0.98, max_regression=0.01) == (
        True,
        "accuracy gate passed: test accuracy 0.9770 meets the threshold 0.9300 and is within 0.0100 "
        "of the champion's 0.9800",
    )


def test_without_a_champion_max_regression_does_not_matter() -> None:
    assert gate_verdict(accuracy=0.94, threshold=0.93, max_regression=0.0) == gate_verdict(
        accuracy=0.94, threshold=0.93
    )


@pytest.mark.parametrize("max_regression", [-0.001, 1.5])
def test_gate_refuses_a_max_regression_outside_0_to_1(max_regression: float) -> None:
    bound = "at least 0" if max_regression < 0 else "at most 1"
    with pytest.raises(ParamError, match=f"max_regression must be {bound}, got {max_regression}"):
        gate_verdict(accuracy=0.95, threshold=0.93, champion_accuracy=0.95, max_regression=max_regression)


def _champion(path: Path, version: int = 20261122020000) -> Champion:
    return Champion(version=version, model_path=path, model_sha256=sha256_file(path))


def test_a_champion_much_better_than_the_candidate_fails_the_gate(
    model_file: Path, weak_model_file: Path, prepared: Path, tmp_path: Path
) -> None:
    result = evaluate_model(
        model_path=weak_model_file,
        model_sha256=sha256_file(weak_model_file),
        cache_dir=prepared,
        out_dir=tmp_path,
        threshold=0.0,
        champion=_champion(model_file),
    )

    assert (result["accuracy"], result["champion_accuracy"], result["passed"]) == (WEAK_ACCURACY, ACCURACY, False)
    assert result["champion_version"] == 20261122020000
    assert result["message"] == gate_verdict(accuracy=WEAK_ACCURACY, threshold=0.0, champion_accuracy=ACCURACY)[1]
    metrics = json.loads(Path(result["metrics_path"]).read_text())
    assert metrics["champion"] == {
        "version": 20261122020000,
        "model_sha256": sha256_file(model_file),
        "accuracy": ACCURACY,
    }
    assert (metrics["gate"]["champion_accuracy"], metrics["gate"]["passed"]) == (ACCURACY, False)


def test_a_candidate_as_good_as_the_champion_passes(model_file: Path, prepared: Path, tmp_path: Path) -> None:
    result = evaluate_model(
        model_path=model_file,
        model_sha256=sha256_file(model_file),
        cache_dir=prepared,
        out_dir=tmp_path,
        threshold=0.5,
        max_regression=0.0,
        champion=_champion(model_file),
    )

    assert (result["accuracy"], result["champion_accuracy"], result["passed"]) == (ACCURACY, ACCURACY, True)


def test_a_champion_with_the_wrong_checksum_is_not_loaded(model_file: Path, prepared: Path, tmp_path: Path) -> None:
    champion = Champion(version=1, model_path=model_file, model_sha256="cd" * 32)

    with pytest.raises(ModelChecksumError, match=f"checksum mismatch for {model_file}: expected {'cd' * 32}"):
        evaluate_model(
            model_path=model_file,
            model_sha256=sha256_file(model_file),
            cache_dir=prepared,
            out_dir=tmp_path / "out",
            threshold=0.5,
            champion=champion,
        )
    assert not (tmp_path / "out").exists()


# Against moto's S3 server: the champion comes from the registry.

MODELS_URI = "s3://models/mnist/"
CHAMPION_VERSION = 20261122020000


def _bucket_objects(s3_client) -> dict[str, bytes]:
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="models").get("Contents", [])]
    return {key: s3_client.get_object(Bucket="models", Key=key)["Body"].read() for key in keys}


def test_no_champion_before_the_first_publish(s3_client, tmp_path: Path) -> None:
    s3_client.create_bucket(Bucket="models")
    assert fetch_champion(registry=ModelRegistry(s3_client, MODELS_URI), dest_dir=tmp_path) is None


def test_a_missing_models_bucket_fails_loudly_instead_of_skipping_the_champion(s3_client, tmp_path: Path) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="NoSuchBucket"):
        fetch_champion(registry=ModelRegistry(s3_client, MODELS_URI), dest_dir=tmp_path)


def test_a_published_champion_keeps_a_worse_challenger_from_being_published(
    s3_client, model_file: Path, weak_model_file: Path, prepared: Path, tmp_path: Path
) -> None:
    from mnist_tasks.registry import GateFailedError, build_manifest, publish_model

    def manifest(version: int, metrics: dict) -> dict:
        return build_manifest(
            version=version, run_id=f"run-{version}", dag_id="mnist_retraining", params={},
            data={"data_sha256": "0" * 64}, metrics=metrics, started_at=None,
        )

    s3_client.create_bucket(Bucket="models")
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=CHAMPION_VERSION,
        files={"model.keras": model_file},
        manifest=manifest(CHAMPION_VERSION, {"accuracy": ACCURACY, "passed": True}),
    )
    before = _bucket_objects(s3_client)

    champion = fetch_champion(registry=ModelRegistry(s3_client, MODELS_URI), dest_dir=tmp_path / "champion")
    latest = s3_client.get_object(Bucket="models", Key="mnist/latest.json")
    assert champion == Champion(
        version=CHAMPION_VERSION,
        model_path=tmp_path / "champion" / "model.keras",
        model_sha256=sha256_file(model_file),
        latest_etag=latest["ETag"],  # the state publish may move latest from
    )
    # The challenger clears the absolute threshold, but falls far behind the champion.
    result = evaluate_model(
        model_path=weak_model_file,
        model_sha256=sha256_file(weak_model_file),
        cache_dir=prepared,
        out_dir=tmp_path / "run",
        threshold=0.05,
        champion=champion,
    )
    assert result["passed"] is False
    assert "0.1000" in result["message"] and "the champion's 0.8500" in result["message"]

    with pytest.raises(GateFailedError):
        publish_model(
            registry=ModelRegistry(s3_client, MODELS_URI),
            version=CHAMPION_VERSION + 1,
            files={"model.keras": weak_model_file},
            manifest=manifest(CHAMPION_VERSION + 1, result),
        )
    assert _bucket_objects(s3_client) == before


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_the_gate_fails_a_model_whose_test_loss_is_not_finite(loss: float) -> None:
    passed, message = gate_verdict(accuracy=0.98, threshold=0.0, loss=loss)
    assert passed is False
    assert message == (
        f"accuracy gate failed: the test loss is {loss}, not a finite number: the model's outputs are broken"
    )


def test_a_model_with_nan_weights_fails_the_gate_and_its_metrics_stay_standard_json(
    prepared: Path, tmp_path: Path
) -> None:
    (tmp_path / "nan").mkdir()
    nan_model = _save_dense_model(tmp_path / "nan", np.full((784, 10), np.nan, dtype=np.float32))
    result = evaluate_model(
        model_path=nan_model,
        model_sha256=sha256_file(nan_model),
        cache_dir=prepared,
        out_dir=tmp_path / "out",
        threshold=0.0,
    )

    assert result["passed"] is False
    assert "the test loss is nan, not a finite number" in result["message"]
    metrics = json.loads(Path(result["metrics_path"]).read_text(), parse_constant=pytest.fail)
    assert metrics["loss"] is None and metrics["gate"]["passed"] is False
