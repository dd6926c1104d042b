"""Classification metrics from a confusion matrix: what metrics.json reports per digit."""

from __future__ import annotations

import numpy as np

from mnist_tasks.model.architecture import NUM_CLASSES


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
