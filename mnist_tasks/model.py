"""The classifier: the small dense network of the original Keras MNIST write-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)


def build_model(
    *,
    hidden_units: int = 128,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    steps_per_execution: int = 1,
) -> keras.Model:
    """Input (28, 28) in [0, 1] -> Flatten -> Dense(hidden_units, relu) -> Dense(10, softmax).

    Compiled with Adam, sparse categorical cross-entropy (labels are the digits
    0-9, not one-hot) and accuracy. With 128 hidden units it has 101,770 weights.
    `steps_per_execution` steps run per call: a step of this small network costs
    little more than Keras' overhead of starting one, so fewer calls is where
    training time goes. (XLA, `jit_compile`, is not used: Keras turns it off
    when TensorFlow's deterministic ops are on, which reproducible training needs.)
    """
    # Imported here so that the constants above (used by evaluate.py) do not pull in TensorFlow.
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden_units, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="mnist_dense",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model
