"""Training-time augmentation: each image slightly rotated, slanted, scaled, shifted, its strokes thickened or thinned.

MNIST's digits were written by a few hundred people with similar pens and then
size-normalised and centred, so a model trained on them alone learns a narrow idea
of a digit. Real handwriting leans more, sits off-centre within its box after
`predict`'s preprocessing, and comes from thicker or thinner pens. These ranges
stay within what a reader still sees as the same digit (a 6 rotated 180 degrees is
a 9, so rotations stay small).

Applied per batch inside the tf.data pipeline, on the CPU, with stateless random
ops: the seed of each batch comes from the run's seed, so a run is reproducible.
Only the training batches change; the validation and test sets never do.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mnist_tasks.model.architecture import IMAGE_SHAPE

if TYPE_CHECKING:
    import tensorflow as tf

MAX_ROTATION = math.radians(12)
MAX_SHEAR = math.radians(15)  # slant: handwriting leans more, and both ways, than MNIST does
SCALE_RANGE = (0.85, 1.1)  # MNIST digits fill their 20x20 box; smaller is the commoner mistake
MAX_SHIFT = 2.0  # pixels of the 28x28 field
# A fraction t of a 3x3 dilation (t > 0) or erosion (t < 0) blended in:
# about a pixel thicker or thinner at the extremes.
MAX_THICKNESS = 0.6


def augment_batch(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """images (batch, 28, 28) float32 in [0, 1] -> the same shape, each image transformed differently.

    `seed` is a stateless seed, shape (2,) int64: the same seed and images give the same output.
    """
    import tensorflow as tf

    count = tf.shape(images)[0]
    rotation_seed, shear_seed, scale_seed, shift_seed, thickness_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5)
    )
    transforms = _affine_transforms(
        rotation=tf.random.stateless_uniform([count], rotation_seed, -MAX_ROTATION, MAX_ROTATION),
        shear=tf.random.stateless_uniform([count], shear_seed, -MAX_SHEAR, MAX_SHEAR),
        scale=tf.random.stateless_uniform([count], scale_seed, *SCALE_RANGE),
        shift=tf.random.stateless_uniform([count, 2], shift_seed, -MAX_SHIFT, MAX_SHIFT),
    )
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images[..., None],
        transforms=transforms,
        output_shape=tf.constant(IMAGE_SHAPE, tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    thickness = tf.random.stateless_uniform([count, 1, 1, 1], thickness_seed, -MAX_THICKNESS, MAX_THICKNESS)
    thicker = tf.nn.max_pool2d(moved, 3, 1, "SAME")
    thinner = -tf.nn.max_pool2d(-moved, 3, 1, "SAME")
    stroked = moved + tf.maximum(thickness, 0.0) * (thicker - moved) + tf.maximum(-thickness, 0.0) * (thinner - moved)
    return stroked[..., 0]


def _affine_transforms(*, rotation: tf.Tensor, shear: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """(batch, 8) projective transforms about the field's centre, in the form ImageProjectiveTransformV3 takes.

    That op maps each *output* pixel (x, y) to the input pixel (a0 x + a1 y + a2,
    b0 x + b1 y + b2), so this is the inverse of rotate-shear-scale-then-shift.
    """
    import tensorflow as tf

    centre = (IMAGE_SHAPE[0] - 1) / 2
    cos, sin, slant = tf.cos(rotation), tf.sin(rotation), tf.tan(shear)
    # Forward: out = centre + shift + scale * R(rotation) @ [[1, slant], [0, 1]] @ (in - centre).
    # Inverse: in = centre + [[1, -slant], [0, 1]] @ R(-rotation) @ (out - centre - shift) / scale.
    a0 = (cos + slant * sin) / scale
    a1 = (sin - slant * cos) / scale
    b0 = -sin / scale
    b1 = cos / scale
    x0, y0 = centre + shift[:, 0], centre + shift[:, 1]  # where the input's centre lands
    a2 = centre - a0 * x0 - a1 * y0
    b2 = centre - b0 * x0 - b1 * y0
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
