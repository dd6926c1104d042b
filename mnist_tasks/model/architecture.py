"""The classifiers: the original Keras MNIST write-up's dense network, or a small convolutional one."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

NUM_CLASSES = 10  # the digits 0-9
IMAGE_SHAPE = (28, 28)  # MNIST's images: rows, columns
MODEL_FILE = "model.keras"  # a trained model's file name, in a run's output and in a published version
ARCHITECTURES = ("dense", "cnn")


def build_model(
    *,
    architecture: str = "dense",
    hidden_units: int = 128,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    adam_beta_2: float = 0.999,
    steps_per_execution: int = 1,
) -> keras.Model:
    """The `architecture`'s network on (28, 28) images in [0, 1], compiled for training.

    dense: Flatten -> Dense(hidden_units, relu) -> Dense(10, softmax), the write-up's
    model; with 128 hidden units it has 101,770 weights.
    cnn: two 3x3 convolutions (32 and 64 filters, each followed by 2x2 max-pooling),
    then Dropout(0.5) -> Dense(hidden_units, relu) -> Dense(10, softmax), in the spirit
    of Keras' mnist_convnet example plus a hidden layer; 225,034 weights with 128 units.
    Convolutions see a stroke's shape wherever it sits, which is what carries over to
    handwriting that never came from MNIST (docs/training.md, *Architectures*).

    Both compile with Adam (Keras' defaults unless given), sparse categorical
    cross-entropy (labels are the digits 0-9, not one-hot) and accuracy.
    `steps_per_execution` steps run per call: a step of a small network costs little
    more than Keras' overhead of starting one, so fewer calls is where training time
    goes. (XLA, `jit_compile`, is not used: Keras turns it off when TensorFlow's
    deterministic ops are on, which reproducible training needs.)
    """
    # Imported here so that the constants above (used by evaluate.py) do not pull in TensorFlow.
    import keras

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    layers = keras.layers
    if architecture == "dense":
        features = [layers.Flatten()]
    else:
        features = [
            layers.Reshape((*IMAGE_SHAPE, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.5),
        ]
    model = keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE),
            *features,
            layers.Dense(hidden_units, activation="relu"),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name=f"mnist_{architecture}",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, beta_2=adam_beta_2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model
