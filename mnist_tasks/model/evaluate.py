"""Evaluation: test-set metrics, the confusion matrix, report pictures and the gate.

The gate has two parts. The candidate must reach an absolute accuracy
threshold, and it must not be worse than the champion (the model `latest`
points at, evaluated on the same test set) by more than `max_regression`.
Before the first publish there is no champion and the threshold alone decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

import numpy as np

from mnist_tasks.files import atomic_path
from mnist_tasks.model.loading import load_keras_model
from mnist_tasks.model.metrics import confusion_matrix, per_class_metrics
from mnist_tasks.params import PARAMS
from mnist_tasks.registry import ModelRegistry, NothingPublishedError, download_model
from mnist_tasks.s3 import json_bytes

if TYPE_CHECKING:
    import keras

METRICS_FILE = "metrics.json"
PREDICT_BATCH = 2048
DEFAULT_MAX_REGRESSION = 0.005
DEFAULT_LABELED_MAX_REGRESSION = 0.02
# Accuracies are counts over the same test set, so a difference of exactly the
# tolerance is common, yet 0.98 - 0.975 is 0.0050000000000000044 in floating
# point. This absorbs that rounding and nothing a test set could measure.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class Champion:
    """The published model a candidate is compared with (the one `latest` points at)."""

    version: int
    model_path: Path
    model_sha256: str
    latest_etag: str | None = None
    """The ETag of the `latest.json` that pointed at it: publish moves `latest` only from that state."""


def fetch_champion(*, registry: ModelRegistry, dest_dir: Path) -> Champion | None:
    """Download the `latest` model into dest_dir, sha256-verified; None when nothing is published yet.

    Anything else that goes wrong (bucket unreachable or missing, access denied,
    a damaged latest version) raises: skipping the comparison would let a worse
    model replace the champion.
    """
    try:
        got = download_model(registry=registry, version=None, dest_dir=dest_dir)
    except NothingPublishedError:
        return None
    return Champion(
        version=got["version"],
        model_path=Path(got["model_path"]),
        model_sha256=got["model_sha256"],
        latest_etag=got["latest_etag"],
    )


def gate_verdict(
    *,
    accuracy: float,
    threshold: float,
    champion_accuracy: float | None = None,
    max_regression: float = DEFAULT_MAX_REGRESSION,
    loss: float = 0.0,
    gate: str = "accuracy gate",
    measure: str = "test accuracy",
    test_set: str = "test set",
) -> tuple[bool, str]:
    """(passed, message) of the gate; `gate`, `measure` and `test_set` name it, what it judges and on what.

    Passes when the test loss is finite, accuracy >= threshold and, if there is
    a champion, accuracy >= champion_accuracy - max_regression; both boundaries
    pass. The message names the accuracy, the threshold and the champion's
    accuracy when there is one.
    """
    PARAMS["max_regression"].check(max_regression)
    if not math.isfinite(loss):
        # NaN outputs argmax to digit 0, so accuracy alone could still look plausible.
        return False, (
            f"{gate} failed: the {measure.replace('accuracy', 'loss')} is {loss}, not a finite number: "
            "the model's outputs are broken"
        )
    meets_threshold = accuracy >= threshold
    if champion_accuracy is None:
        if meets_threshold:
            return True, f"{gate} passed: {measure} {accuracy:.4f} meets the threshold {threshold:.4f}"
        return False, f"{gate} failed: {measure} {accuracy:.4f} is below the threshold {threshold:.4f}"

    champion = f"the champion's {champion_accuracy:.4f}"
    if not meets_threshold:
        return False, (
            f"{gate} failed: {measure} {accuracy:.4f} is below the threshold {threshold:.4f} "
            f"({champion} on the same {test_set})"
        )
    if champion_accuracy - accuracy > max_regression + _ROUNDING:
        return False, (
            f"{gate} failed: {measure} {accuracy:.4f} is more than {max_regression:.4f} below "
            f"{champion} on the same {test_set} (threshold {threshold:.4f} met)"
        )
    return True, (
        f"{gate} passed: {measure} {accuracy:.4f} meets the threshold {threshold:.4f} "
        f"and is within {max_regression:.4f} of {champion}"
    )


class Evaluation(TypedDict):
    """What evaluate_model returns (pipeline.evaluate stores the files and passes the rest on)."""

    metrics_path: str
    accuracy: float
    loss: float | None
    """Mean cross-entropy; None when it is not finite (standard JSON has no NaN; the message says what it was)."""
    threshold: float
    max_regression: float
    champion_version: int | None
    champion_accuracy: float | None
    """Both None without a champion."""
    passed: bool
    message: str
    test_count: int
    labeled: LabeledEvaluation | None
    """On the users' labelled test split; None when it has no images."""
    pictures: dict[str, str]
    """The report pictures: {file name: path}."""


class LabeledEvaluation(TypedDict):
    """The model on the labelled set's test split (metrics.json's "labeled")."""

    test_count: int
    accuracy: float
    loss: float | None
    per_class: dict[str, dict[str, float | int]]
    confusion_matrix: list[list[int]]
    champion_accuracy: float | None
    threshold: float
    max_regression: float
    min_test_images: int
    gated: bool
    """False when the split has fewer than min_test_images: its figure is reported, not judged."""
    passed: bool
    """The labelled part of the gate (True when not gated)."""
    message: str


class _TestMetrics(NamedTuple):
    probabilities: np.ndarray  # (N, NUM_CLASSES) softmax outputs
    confusion: np.ndarray
    accuracy: float
    loss: float


def evaluate_model(
    *,
    model_path: Path,
    model_sha256: str,
    cache_dir: Path,
    out_dir: Path,
    threshold: float,
    max_regression: float = DEFAULT_MAX_REGRESSION,
    champion: Champion | None = None,
    history_path: Path | None = None,
    labeled_dir: Path | None = None,
    labeled_threshold: float = 0.0,
    labeled_max_regression: float = DEFAULT_LABELED_MAX_REGRESSION,
    labeled_min_test_images: int = 1,
) -> Evaluation:
    """Evaluate the model (and the champion, if any) on cache_dir's test set (x_test.npy, y_test.npy); apply the gate.

    With `labeled_dir` (the users' labelled test split, the same two files), both models are
    measured there too, and the gate holds there as well: `labeled_threshold`, and
    `labeled_max_regression` against the champion. A split of fewer than
    `labeled_min_test_images` is measured and reported, not judged.

    Writes out_dir/metrics.json and the report pictures (report.PICTURES; the
    training curves only with the run's history.json). Each model is loaded
    only if its sha256 is the one given (else ModelChecksumError, and nothing
    is written). A failed gate is reported, not raised: the caller decides
    what failing means.
    """
    model = load_keras_model(model_path, sha256=model_sha256)
    champion_model = None if champion is None else load_keras_model(champion.model_path, sha256=champion.model_sha256)

    from mnist_tasks.data.prepare import load_split
    from mnist_tasks.model.report import render_pictures

    x_test, y_test = load_split(cache_dir, "test")
    images, labels = np.asarray(x_test), np.asarray(y_test)
    tested = _test_metrics(model, images, labels)
    champion_accuracy = _champion_accuracy(champion_model, images, labels)
    labeled = _evaluate_labeled(
        model,
        champion_model,
        labeled_dir,
        threshold=labeled_threshold,
        min_test_images=labeled_min_test_images,
        max_regression=labeled_max_regression,
    )
    gate = _gate(
        tested, threshold=threshold, champion_accuracy=champion_accuracy, max_regression=max_regression, labeled=labeled
    )
    pictures = render_pictures(
        images=images,
        labels=labels,
        probabilities=tested.probabilities,
        confusion=tested.confusion,
        history_path=history_path,
        out_dir=out_dir,
    )
    return _evaluation(
        out_dir, pictures, model_sha256=model_sha256, tested=tested, champion=champion, gate=gate, labeled=labeled
    )


def _evaluation(
    out_dir: Path,
    pictures: dict[str, str],
    *,
    model_sha256: str,
    tested: _TestMetrics,
    champion: Champion | None,
    gate: dict[str, Any],
    labeled: LabeledEvaluation | None,
) -> Evaluation:
    """metrics.json written, and what evaluate_model returns."""
    loss = tested.loss if math.isfinite(tested.loss) else None  # standard JSON has no NaN; the message says what it was
    metrics_path = _write_metrics(
        out_dir, model_sha256=model_sha256, tested=tested, loss=loss, champion=champion, gate=gate, labeled=labeled
    )
    return {
        "metrics_path": str(metrics_path),
        "accuracy": tested.accuracy,
        "loss": loss,
        "threshold": gate["threshold"],
        "max_regression": gate["max_regression"],
        "champion_version": None if champion is None else champion.version,
        "champion_accuracy": gate["champion_accuracy"],
        "passed": gate["passed"],
        "message": gate["message"],
        "test_count": int(tested.confusion.sum()),
        "labeled": labeled,
        "pictures": pictures,
    }


def _predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """(N, NUM_CLASSES) softmax outputs."""
    # Keras' default of 32 images a call spends ~1 s of Python overhead on the 10,000 test
    # images; 2,048 a call costs under 0.1 s and the same outputs (inference is per image).
    probabilities: np.ndarray = model.predict(images, batch_size=PREDICT_BATCH, verbose=0)
    return probabilities


def _champion_accuracy(champion_model: keras.Model | None, images: np.ndarray, labels: np.ndarray) -> float | None:
    """The champion's accuracy on the same images; None without a champion."""
    if champion_model is None:
        return None
    return float((_predict(champion_model, images).argmax(axis=1) == labels).mean())


def _test_metrics(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> _TestMetrics:
    """The model's outputs on the test set, its confusion matrix, accuracy and mean cross-entropy."""
    import keras

    probabilities = _predict(model, images)
    confusion = confusion_matrix(labels=labels, predictions=probabilities.argmax(axis=1))
    test_count = len(labels)
    accuracy = float(np.trace(confusion) / test_count)
    # Mean cross-entropy from the one set of predictions the other metrics use.
    # Probabilities are clipped at Keras' epsilon (1e-7), so a confidently wrong
    # prediction costs about 16 rather than infinity.
    true_class = probabilities[np.arange(test_count), labels].astype(np.float64)
    loss = float(-np.log(np.clip(true_class, keras.config.epsilon(), 1.0)).mean())
    return _TestMetrics(probabilities, confusion, accuracy, loss)


def _gate(
    tested: _TestMetrics,
    *,
    threshold: float,
    champion_accuracy: float | None,
    max_regression: float,
    labeled: LabeledEvaluation | None = None,
) -> dict[str, Any]:
    """metrics.json's "gate": the verdict (gate_verdict, on MNIST and the labelled split) and what it was decided on."""
    passed, message = gate_verdict(
        accuracy=tested.accuracy,
        threshold=threshold,
        champion_accuracy=champion_accuracy,
        max_regression=max_regression,
        loss=tested.loss,
    )
    if labeled is not None:
        passed = passed and labeled["passed"]
        message = f"{message}; {labeled['message']}"
    return {
        "threshold": threshold,
        "max_regression": max_regression,
        "champion_accuracy": champion_accuracy,
        "passed": passed,
        "message": message,
    }


def _evaluate_labeled(
    model: keras.Model,
    champion_model: keras.Model | None,
    labeled_dir: Path | None,
    *,
    threshold: float,
    min_test_images: int,
    max_regression: float,
) -> LabeledEvaluation | None:
    """Both models on the labelled test split, and that split's part of the gate; None without one."""
    from mnist_tasks.data.prepare import load_split

    if labeled_dir is None:
        return None

    images, labels = (np.asarray(array) for array in load_split(labeled_dir, "test"))
    tested = _test_metrics(model, images, labels)
    champion_accuracy = _champion_accuracy(champion_model, images, labels)
    gated = len(labels) >= min_test_images
    if gated:
        passed, message = gate_verdict(
            accuracy=tested.accuracy,
            threshold=threshold,
            champion_accuracy=champion_accuracy,
            max_regression=max_regression,
            loss=tested.loss,
            gate="labelled-set gate",
            measure="labelled test accuracy",
            test_set="labelled test split",
        )
    else:
        passed, message = True, (
            f"labelled set: {len(labels)} test images, fewer than labeled_min_test_images {min_test_images}: "
            f"its accuracy {tested.accuracy:.4f} is reported, not gated"
        )
    return {
        "test_count": len(labels),
        "accuracy": tested.accuracy,
        "loss": tested.loss if math.isfinite(tested.loss) else None,
        "per_class": per_class_metrics(tested.confusion),
        "confusion_matrix": tested.confusion.tolist(),
        "champion_accuracy": champion_accuracy,
        "threshold": threshold,
        "max_regression": max_regression,
        "min_test_images": min_test_images,
        "gated": gated,
        "passed": passed,
        "message": message,
    }


def _write_metrics(
    out_dir: Path,
    *,
    model_sha256: str,
    tested: _TestMetrics,
    loss: float | None,
    champion: Champion | None,
    gate: dict[str, Any],
    labeled: LabeledEvaluation | None,
) -> Path:
    """out_dir/metrics.json, written atomically: the figures, per-digit metrics, the confusion matrix and the gate."""
    metrics = {
        "model_sha256": model_sha256,
        "test_count": int(tested.confusion.sum()),
        "accuracy": tested.accuracy,
        "loss": loss,
        "per_class": per_class_metrics(tested.confusion),
        "confusion_matrix": tested.confusion.tolist(),
        "champion": None if champion is None else {
            "version": champion.version,
            "model_sha256": champion.model_sha256,
            "accuracy": gate["champion_accuracy"],
        },
        "labeled": labeled,
        "gate": gate,
    }
    metrics_path = out_dir / METRICS_FILE
    with atomic_path(metrics_path) as tmp:
        tmp.write_bytes(json_bytes(metrics))
    return metrics_path
