from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from mnist_tasks.augment import MAX_SHIFT, augment_batch  # noqa: E402


def _dot(row: int, col: int) -> np.ndarray:
    image = np.zeros((28, 28), np.float32)
    image[row - 1 : row + 2, col - 1 : col + 2] = 1.0
    return image


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / image.sum()), float((cols * image).sum() / image.sum())


def test_the_same_seed_gives_the_same_batch_and_another_seed_another() -> None:
    images = tf.constant(np.stack([_dot(10, 12), _dot(16, 15)]))

    first = augment_batch(images, tf.constant([3, 4], tf.int64)).numpy()
    again = augment_batch(images, tf.constant([3, 4], tf.int64)).numpy()
    other = augment_batch(images, tf.constant([3, 5], tf.int64)).numpy()

    assert first.shape == (2, 28, 28) and first.dtype == np.float32
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_a_digit_moves_a_little_and_keeps_its_ink() -> None:
    # A dot at the centre: rotation, slant and scale keep it there, so only the shift moves it.
    images = tf.constant(np.stack([_dot(14, 14)] * 64))

    moved = augment_batch(images, tf.constant([1, 2], tf.int64)).numpy()

    centres = np.array([_centre_of_mass(image) for image in moved])
    offsets = np.abs(centres - 13.5 - 0.5)  # the 3x3 dot's centre is (14, 14)
    assert offsets.max() <= MAX_SHIFT + 0.5
    assert offsets.max() > 0.5  # some were shifted
    assert moved.min() >= 0.0 and moved.max() <= 1.0 + 1e-6
    ink = moved.sum(axis=(1, 2))
    assert ink.min() > 3 and ink.max() < 30  # thinner or thicker, never gone or smeared everywhere
