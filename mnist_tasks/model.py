"""The classifier: the small dense network of the original Keras MNIST write-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)


def build_model(*, hidden_units: int = 128, learning_rate: float = 1e-3) -> keras.Model:
    """Input (28, 28) in [0, 1] -> Flatten -> Dense(hidden_units, relu) -> Dense(10, softmax).

    Compiled with Adam, sparse categorical cross-entropy (labels are the digits
    0-9, not one-hot) and accuracy. With 128 hidden units it has 101,770 weights.
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
    )
    return model
