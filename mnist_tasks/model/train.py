"""Training: a prepared dataset in, `model.keras` and `history.json` out, reproducibly."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from mnist_tasks.errors import PermanentError
from mnist_tasks.files import atomic_path, sha256_file
from mnist_tasks.model.architecture import MODEL_FILE
from mnist_tasks.model.serving import SavedModelExport
from mnist_tasks.s3 import json_bytes

HISTORY_FILE = "history.json"
MAX_LABELED_PER_EPOCH = 200_000  # labelled images (repeats counted) an epoch trains on at most: about 0.6 GB
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")

# One INFO line per epoch: Airflow's task log shows it at that level, the CLI on stderr.
log = logging.getLogger(__name__)


class TrainingDivergedError(PermanentError, ArithmeticError):
    """The loss became NaN or infinite: the weights are garbage, and a retry with the same Params diverges again."""


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    """The Params cast to their types, each within the bounds the trigger form enforces (ParamError)."""
    from mnist_tasks.params import ParamError, check_params

    checked = check_params({name: value for name, value in params.items() if name != "validation_split"})
    # The result reports validation metrics, so some data must be held out and some trained on.
    if not 0 < params["validation_split"] < 1:
        raise ParamError(f"validation_split must be between 0 and 1 (exclusive), got {params['validation_split']}")
    if checked["augment"] == "auto":
        checked["augment"] = "on" if checked["architecture"] == "cnn" else "off"
    return {**checked, "validation_split": params["validation_split"]}


class TrainResult(TypedDict):
    model_path: str
    model_sha256: str
    history_path: str
    saved_model: SavedModelExport
    """The SavedModel export beside model.keras, for TensorFlow Serving."""
    params: dict[str, Any]
    """The Params as trained with, `augment` resolved to on or off."""
    final: dict[str, float]
    """The last epoch's loss, accuracy, val_loss and val_accuracy."""
    train_count: int
    """MNIST images in the training set, validation part included."""
    labeled_train_count: int
    """Labelled images trained on (each labeled_repeats times an epoch)."""
    seconds: float
    """All of it: loading the arrays, building, fitting and saving the model."""
    fit_seconds: float
    """Keras' fit alone."""


def train_model(
    *,
    cache_dir: Path,
    out_dir: Path,
    architecture: str = "dense",
    augment: str = "auto",
    epochs: int = 4,
    batch_size: int = 256,
    learning_rate: float = 0.01,
    lr_schedule: str = "cosine",
    adam_beta_2: float = 0.95,
    hidden_units: int = 128,
    labeled_weight: int = 10,
    seed: int = 42,
    validation_split: float = 0.1,
    labeled_dir: Path | None = None,
) -> TrainResult:
    """Train on cache_dir's x_train.npy and y_train.npy; write out_dir/model.keras and out_dir/history.json.

    With `labeled_dir` (the users' labelled training split, the same two files), its images
    join the training part, each `labeled_weight` times (oversampling: a weight of 10 shows
    each ten times an epoch; labeled_repeats bounds it for a large set). Validation stays on
    MNIST's held-out part, so its figures compare across runs with and without labelled images.

    The same seed and data give the same weights: all seeds are set from `seed`
    and TensorFlow runs deterministic kernels (a process-wide switch, slightly slower).
    `augment` auto means on for cnn and off for dense (docs/training.md, *Architectures*).
    """
    params = _check_params(
        dict(architecture=architecture, augment=augment, epochs=epochs, batch_size=batch_size,
             learning_rate=learning_rate, lr_schedule=lr_schedule, adam_beta_2=adam_beta_2, hidden_units=hidden_units,
             labeled_weight=labeled_weight, seed=seed, validation_split=validation_split)
    )  # fmt: skip
    from mnist_tasks.data.prepare import load_split

    started = time.monotonic()
    x_train, y_train = load_split(cache_dir, "train")
    labeled = None if labeled_dir is None else load_split(labeled_dir, "train")
    _deterministic(seed)
    fit_started = time.monotonic()
    model, history = _fit(params, np.asarray(x_train), np.asarray(y_train), labeled=labeled)
    fit_seconds = time.monotonic() - fit_started
    per_epoch = _per_epoch(history, params)
    model_path, saved_model, history_path = _save(model, per_epoch, params, out_dir=out_dir, train_count=len(x_train))
    return {
        "model_path": str(model_path),
        "model_sha256": sha256_file(model_path),
        "history_path": str(history_path),
        "saved_model": saved_model,
        "params": params,
        "final": {name: per_epoch[-1][name] for name in METRICS},
        "train_count": len(x_train),
        "labeled_train_count": 0 if labeled is None else len(labeled[1]),
        "seconds": round(time.monotonic() - started, 3),
        "fit_seconds": round(fit_seconds, 3),
    }


def _deterministic(seed: int) -> None:
    """Every seed set from `seed`, and TensorFlow's deterministic kernels (a process-wide switch, slightly slower)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _fit(
    params: dict[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    labeled: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Any, dict[str, list[float]]]:
    """The model built and fitted with `params`: (model, Keras' history)."""
    import keras

    from mnist_tasks.model.architecture import build_model

    # Like Keras' validation_split: the *last* part of the arrays is held out, before
    # shuffling; MNIST's training file is not ordered by class, so that tail is a fair sample.
    held_out = math.floor(len(images) * (1 - params["validation_split"]))
    validation = (images[held_out:], labels[held_out:])
    images, labels = images[:held_out], labels[:held_out]
    if labeled is not None:
        repeats = labeled_repeats(params["labeled_weight"], len(labeled[1]))
        images = np.concatenate([images, np.repeat(labeled[0], repeats, axis=0)])
        labels = np.concatenate([labels, np.repeat(labeled[1], repeats, axis=0)])
    train_count = len(images)
    steps_per_epoch = math.ceil(train_count / params["batch_size"])
    model = build_model(
        architecture=params["architecture"],
        hidden_units=params["hidden_units"],
        learning_rate=_learning_rate(params, total_steps=steps_per_epoch * params["epochs"]),
        adam_beta_2=params["adam_beta_2"],
        # One call per epoch: Keras' per-call overhead, not the arithmetic, is what a small step costs.
        steps_per_execution=steps_per_epoch,
    )
    if params["augment"] == "on":
        training = {
            "x": _augmented(params, images, labels),
            "steps_per_epoch": steps_per_epoch,
            "shuffle": False,  # the stream shuffles itself, seeded
        }
    else:
        training = {
            "x": images,
            "y": labels,
            "batch_size": params["batch_size"],
            "shuffle": True,
        }
    history = model.fit(
        **training,
        epochs=params["epochs"],
        validation_data=validation,
        # verbose=0: Keras prints its progress to stdout, not through logging; _epoch_logger logs it instead.
        verbose=0,
        callbacks=[
            _epoch_logger(model, epochs=params["epochs"], scheduled_rate=params["lr_schedule"] != "constant"),
            # Stops at the first non-finite batch loss rather than training on garbage for the other epochs.
            keras.callbacks.TerminateOnNaN(),
        ],
    ).history
    return model, history


def _epoch_logger(model: Any, *, epochs: int, scheduled_rate: bool) -> Any:
    """A Keras callback that logs each epoch as one INFO line: its METRICS, the rate it started at when a
    schedule moves it, and its seconds (validation included), e.g.
    `epoch 2/4: loss 0.2113, accuracy 0.9391, val_loss 0.1385, val_accuracy 0.9597, learning_rate 0.00854 (1.3 s)`.
    """
    import keras

    started: dict[str, float] = {}  # of the epoch under way: "at" (time.monotonic()), "learning_rate"

    def on_epoch_begin(epoch: int, logs: dict[str, float]) -> None:
        started["at"] = time.monotonic()
        if scheduled_rate:
            # The optimizer evaluates its schedule at the steps taken so far: the rate this epoch starts with.
            started["learning_rate"] = float(model.optimizer.learning_rate)

    def on_epoch_end(epoch: int, logs: dict[str, float]) -> None:
        figures = [f"{name} {logs[name]:.4f}" for name in METRICS]
        if scheduled_rate:
            figures.append(f"learning_rate {started['learning_rate']:.3g}")
        log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, epochs, ", ".join(figures), time.monotonic() - started["at"])

    return keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end)


def labeled_repeats(weight: int, count: int) -> int:
    """How many times each of `count` labelled images is trained on per epoch: `weight`, but at most as many as
    keep MAX_LABELED_PER_EPOCH, and at least once.

    Oversampling (copies), not a sample weight: on the boxed digits of tests/e2e/test_airflow_ui.py, 160
    labelled images repeated 10 times lifted the dense model from 0.23 to 0.85 on their test split, and
    weighted 10 only to 0.46, since each was then in 4 gradient steps, not 40. The bound keeps the copies'
    memory (3 KB an image) and the epoch's length in check for a large labelled set, which needs less help.
    """
    return max(1, min(weight, MAX_LABELED_PER_EPOCH // max(count, 1)))


def _augmented(params: dict[str, Any], images: np.ndarray, labels: np.ndarray) -> Any:
    """An endless tf.data stream of shuffled, augmented training batches (augment.py), seeded by params["seed"].

    Endless, with fit's steps_per_epoch, so that each epoch continues the stream:
    every epoch gets a new shuffle and new random transforms, yet the run is reproducible.
    """
    import tensorflow as tf

    from mnist_tasks.data.augment import augment_batch

    seed = params["seed"]
    batches = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(params["batch_size"])
    )
    # One stateless seed per batch, drawn from the run's seed.
    batch_seeds = tf.data.Dataset.random(seed=seed).batch(2)
    return (
        tf.data.Dataset.zip(batches, batch_seeds)
        .map(
            lambda batch, batch_seed: (augment_batch(batch[0], batch_seed), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .prefetch(tf.data.AUTOTUNE)
    )


def _save(
    model: Any, per_epoch: list[dict[str, float]], params: dict[str, Any], *, out_dir: Path, train_count: int
) -> tuple[Path, SavedModelExport, Path]:
    """out_dir/model.keras, its SavedModel export in out_dir/saved_model/ and out_dir/history.json."""
    from mnist_tasks.model.serving import SAVED_MODEL_DIR, export_saved_model

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    with atomic_path(model_path, suffix=".keras") as tmp:  # Keras writes only files named *.keras
        model.save(tmp)
    # Here, while the model is in memory: TensorFlow Serving loads a SavedModel, not model.keras.
    saved_model = export_saved_model(model, out_dir / SAVED_MODEL_DIR)
    history_path = out_dir / HISTORY_FILE
    with atomic_path(history_path) as tmp:
        tmp.write_bytes(json_bytes({"params": params, "train_count": train_count, "history": per_epoch}))
    return model_path, saved_model, history_path


def _learning_rate(params: dict[str, Any], *, total_steps: int) -> Any:
    """Adam's rate: constant, or cosine-decayed from `learning_rate` to 0 over all the steps.

    learning_rate is a float here (_check_params casts): Keras refuses an int, and the form's 1 is one.
    """
    import keras

    if params["lr_schedule"] == "constant":
        return params["learning_rate"]
    return keras.optimizers.schedules.CosineDecay(params["learning_rate"], decay_steps=total_steps)


def _per_epoch(history: dict[str, list[float]], params: dict[str, Any]) -> list[dict[str, float]]:
    """Keras' history as one row per epoch; TrainingDivergedError (so no model) if a figure is not finite."""
    rows = [
        {"epoch": i + 1, **{name: float(history[name][i]) for name in METRICS}} for i in range(len(history["loss"]))
    ]
    diverged = next((row for row in rows if not all(math.isfinite(v) for v in row.values())), None)
    if diverged is None and len(rows) < params["epochs"]:
        diverged = rows[-1]  # TerminateOnNaN stopped it on a batch; the epoch's mean may still look finite
    if diverged is not None:
        bad = [f"{name} {value}" for name, value in diverged.items() if not math.isfinite(value)]
        raise TrainingDivergedError(
            f"training diverged in epoch {diverged['epoch']} of {params['epochs']} "
            f"({', '.join(bad) or 'a non-finite batch loss stopped it'}) with learning_rate "
            f"{params['learning_rate']} and batch_size {params['batch_size']}; no model was written"
        )
    return rows
