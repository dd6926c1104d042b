"""Training: a prepared dataset in, `model.keras` and `history.json` out, reproducibly."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tasks.storage import atomic_path, sha256_file

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


class TrainingDivergedError(ArithmeticError):
    """The loss became NaN or infinite: the weights are garbage, and a retry with the same Params diverges again."""


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    """The Params cast to their types, each within the bounds the trigger form enforces (ParamError)."""
    from mnist_tasks.params import ParamError, check_params

    checked = check_params({name: value for name, value in params.items() if name != "validation_split"})
    # The result reports validation metrics, so some data must be held out and some trained on.
    if not 0 < params["validation_split"] < 1:
        raise ParamError(f"validation_split must be between 0 and 1 (exclusive), got {params['validation_split']}")
    return {**checked, "validation_split": params["validation_split"]}


def train_model(
    *,
    cache_dir: Path,
    out_dir: Path,
    epochs: int = 6,
    batch_size: int = 384,
    learning_rate: float = 8e-3,
    lr_schedule: str = "cosine",
    hidden_units: int = 128,
    seed: int = 42,
    validation_split: float = 0.1,
) -> dict[str, Any]:
    """Train on cache_dir's x_train.npy and y_train.npy; write out_dir/model.keras and out_dir/history.json.

    The same seed and data give the same weights: all seeds are set from `seed`
    and TensorFlow runs deterministic kernels (a process-wide switch, slightly slower).

    Returns {"model_path", "model_sha256", "history_path", "params", "final"
    (last epoch's loss, accuracy, val_loss, val_accuracy), "train_count"
    (images in the training set, validation part included), "seconds" (all of it)
    and "fit_seconds" (Keras' fit alone)}.
    """
    params = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_schedule": lr_schedule,
        "hidden_units": hidden_units,
        "seed": seed,
        "validation_split": validation_split,
    }
    params = _check_params(params)
    epochs, batch_size, learning_rate = params["epochs"], params["batch_size"], params["learning_rate"]

    import keras
    import tensorflow as tf

    from mnist_tasks.dataset import load_split
    from mnist_tasks.model import build_model

    started = time.monotonic()
    x_train, y_train = load_split(cache_dir, "train")

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    # Keras holds out the last validation_split of the arrays (below), so this many train.
    steps_per_epoch = math.ceil(len(x_train) * (1 - validation_split) / batch_size)
    model = build_model(
        hidden_units=params["hidden_units"],
        learning_rate=_learning_rate(params, total_steps=steps_per_epoch * epochs),
        # One call per epoch: Keras' per-call overhead, not the arithmetic, is what a small step costs.
        steps_per_execution=steps_per_epoch,
    )
    # Keras holds out the *last* validation_split of the arrays, before shuffling;
    # MNIST's training file is not ordered by class, so that tail is a fair sample.
    # verbose=2: one line per epoch, readable in Airflow's task log.
    fit_started = time.monotonic()
    history = model.fit(
        np.asarray(x_train),
        np.asarray(y_train),
        epochs=epochs,
        batch_size=batch_size,
        validation_split=validation_split,
        shuffle=True,
        verbose=2,
        # Stops at the first non-finite batch loss rather than training on garbage for the other epochs.
        callbacks=[keras.callbacks.TerminateOnNaN()],
    ).history
    fit_seconds = time.monotonic() - fit_started
    per_epoch = _per_epoch(history, params)

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    with atomic_path(model_path, suffix=".keras") as tmp:  # Keras writes only files named *.keras
        model.save(tmp)

    history_path = out_dir / HISTORY_FILE
    with atomic_path(history_path) as tmp:
        tmp.write_text(
            json.dumps({"params": params, "train_count": len(x_train), "history": per_epoch}, indent=2, allow_nan=False)
            + "\n"
        )

    return {
        "model_path": str(model_path),
        "model_sha256": sha256_file(model_path),
        "history_path": str(history_path),
        "params": params,
        "final": {name: per_epoch[-1][name] for name in METRICS},
        "train_count": len(x_train),
        "seconds": round(time.monotonic() - started, 3),
        "fit_seconds": round(fit_seconds, 3),
    }


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
    rows = [{"epoch": i + 1, **{name: float(history[name][i]) for name in METRICS}} for i in range(len(history["loss"]))]
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
