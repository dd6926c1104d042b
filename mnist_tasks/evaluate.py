"""Evaluation: test-set metrics, the confusion matrix and the accuracy gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tasks.model import NUM_CLASSES
from mnist_tasks.storage import atomic_path, sha256_file

METRICS_FILE = "metrics.json"


class ModelChecksumError(ValueError):
    """The model file is not the one we were told to evaluate."""


def gate_verdict(*, accuracy: float, threshold: float) -> tuple[bool, str]:
    """(passed, message) of the accuracy gate; an accuracy equal to the threshold passes."""
    if accuracy >= threshold:
        return True, f"accuracy gate passed: test accuracy {accuracy:.4f} meets the threshold {threshold:.4f}"
    return False, f"accuracy gate failed: test accuracy {accuracy:.4f} is below the threshold {threshold:.4f}"


def confusion_matrix(*, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """(10, 10) int64 counts; rows are the true digit, columns the predicted one."""
    flat = labels.astype(np.int64) * NUM_CLASSES + predictions.astype(np.int64)
    return np.bincount(flat, minlength=NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)


def per_class_metrics(confusion: np.ndarray) -> dict[str, dict[str, float | int]]:
    """{"0": {"precision", "recall", "support"}, ..., "9": {...}} from a confusion matrix.

    A digit the model never predicts has no precision to speak of; it is
    reported as 0.0 rather than dividing by zero, which is also what a reader
    should conclude about it. Likewise recall is 0.0 for a digit absent from the labels.
    """
    correct = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    return {
        str(digit): {
            "precision": float(correct[digit] / predicted[digit]) if predicted[digit] else 0.0,
            "recall": float(correct[digit] / actual[digit]) if actual[digit] else 0.0,
            "support": int(actual[digit]),
        }
        for digit in range(NUM_CLASSES)
    }


def evaluate_model(
    *, model_path: Path, model_sha256: str, cache_dir: Path, out_dir: Path, threshold: float
) -> dict[str, Any]:
    """Evaluate the model on the test set in cache_dir; write out_dir/metrics.json.

    The model is loaded only if its sha256 is model_sha256 (else ModelChecksumError,
    and nothing is written). A failed gate is reported, not raised: the caller
    decides what failing means.

    Returns {"metrics_path", "accuracy", "loss", "threshold", "passed", "message", "test_count"}.
    """
    actual_sha256 = sha256_file(model_path)
    if actual_sha256 != model_sha256:
        raise ModelChecksumError(
            f"checksum mismatch for {model_path}: expected {model_sha256}, got {actual_sha256}"
        )

    import keras

    from mnist_tasks.dataset import load_prepared

    model = keras.models.load_model(model_path, safe_mode=True)
    _, _, x_test, y_test = load_prepared(cache_dir)
    labels = np.asarray(y_test)
    probabilities = model.predict(np.asarray(x_test), verbose=0)  # (N, 10) softmax outputs
    confusion = confusion_matrix(labels=labels, predictions=probabilities.argmax(axis=1))

    test_count = len(labels)
    accuracy = float(np.trace(confusion) / test_count)
    # Mean cross-entropy from the one set of predictions the other metrics use.
    # Probabilities are clipped at Keras' epsilon (1e-7), so a confidently wrong
    # prediction costs about 16 rather than infinity.
    true_class = probabilities[np.arange(test_count), labels].astype(np.float64)
    loss = float(-np.log(np.clip(true_class, keras.config.epsilon(), 1.0)).mean())
    passed, message = gate_verdict(accuracy=accuracy, threshold=threshold)

    metrics = {
        "model_sha256": model_sha256,
        "test_count": test_count,
        "accuracy": accuracy,
        "loss": loss,
        "per_class": per_class_metrics(confusion),
        "confusion_matrix": confusion.tolist(),
        "gate": {"threshold": threshold, "passed": passed, "message": message},
    }
    metrics_path = out_dir / METRICS_FILE
    with atomic_path(metrics_path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")

    return {
        "metrics_path": str(metrics_path),
        "accuracy": accuracy,
        "loss": loss,
        "threshold": threshold,
        "passed": passed,
        "message": message,
        "test_count": test_count,
    }
