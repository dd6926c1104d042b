from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from mnist_tasks.data.augment import MAX_SHIFT, _affine_transforms, augment_batch  # noqa: E402


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


def test_the_transform_maps_each_output_pixel_back_to_where_it_came_from() -> None:
    """An off-centre point moved forward (slant, rotate, scale about the centre, then shift) maps back through it."""
    rotation, shear, scale, shift = np.radians(10.0), np.radians(-12.0), 1.08, np.array([1.5, -2.0])
    a0, a1, a2, b0, b1, b2, *_ = _affine_transforms(
        rotation=tf.constant([rotation], tf.float32),
        shear=tf.constant([shear], tf.float32),
        scale=tf.constant([scale], tf.float32),
        shift=tf.constant([shift], tf.float32),
    ).numpy()[0]

    centre = 13.5
    source = np.array([20.0, 6.0])  # (x, y): column, row
    cos, sin = np.cos(rotation), np.sin(rotation)
    slanted = np.array([[1.0, np.tan(shear)], [0.0, 1.0]]) @ (source - centre)
    moved = centre + shift + scale * (np.array([[cos, -sin], [sin, cos]]) @ slanted)

    x, y = moved
    assert np.allclose([a0 * x + a1 * y + a2, b0 * x + b1 * y + b2], source, atol=1e-4)
