"""The run's Params: one definition of each one's type, default, bounds and meaning.

The DAG's trigger form (mnist_airflow/wiring.py builds Airflow Params from these),
the CLI's options and `train_model` all check values against the same bounds,
so every value the form accepts trains, and the CLI refuses what the form refuses.
NaN and infinity are never accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mnist_tasks.errors import PermanentError
from mnist_tasks.model.architecture import ARCHITECTURES


class ParamError(PermanentError, ValueError):
    """A Param's value is of the wrong type, not finite, or out of its bounds."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: type[int] | type[float] | type[str]  # str: then one of `choices`
    default: int | float | str
    description: str
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> int | float | str:
        """The value as this Param's type, or ParamError naming the Param, the bound and the value."""
        if self.choices:
            if value not in self.choices:
                raise ParamError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return str(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(f"{self.name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ParamError(f"{self.name} must be a finite number, got {value!r}")
        if self.type is int and value != int(value):
            raise ParamError(f"{self.name} must be a whole number, got {value!r}")
        for holds, words in self._bounds():
            if not holds(value):
                raise ParamError(f"{self.name} must be {words}, got {value!r}")
        return self.type(value)

    def parse(self, text: str) -> int | float | str:
        """`check` for a command-line string (argparse's `type`)."""
        if self.choices:
            return self.check(text)
        try:
            value = int(text) if self.type is int else float(text)
        except ValueError:
            kind = "whole number" if self.type is int else "number"
            raise ParamError(f"{self.name} must be a {kind}, got {text!r}") from None
        return self.check(value)

    @property
    def allowed(self) -> str:
        """The bounds in words: "at least 1, at most 100", or "cosine or constant"."""
        if self.choices:
            return " or ".join(self.choices)
        return ", ".join(words for _, words in self._bounds())

    def json_schema(self) -> dict[str, Any]:
        """The bounds for Airflow's Param: JSON Schema, with NaN refused too.

        NaN compares false with everything, so it passes `minimum` and `maximum`;
        `not: {exclusiveMinimum: M}` holds for every number up to M and fails only for NaN.
        """
        if self.choices:
            return {"enum": list(self.choices)}
        bounds: dict[str, float] = {}
        if self.minimum is not None:
            bounds["minimum"] = self.minimum
        if self.exclusive_minimum is not None:
            bounds["exclusiveMinimum"] = self.exclusive_minimum
        if self.maximum is not None:
            bounds["maximum"] = self.maximum
        if self.maximum is None:
            # No upper bound to hang the NaN guard on; every Param here has one.
            raise ValueError(f"{self.name} needs a maximum: without one the form would accept NaN")
        return {"allOf": [bounds, {"not": {"exclusiveMinimum": self.maximum}}]}

    def _bounds(self) -> list[tuple[Any, str]]:
        bounds = []
        if self.minimum is not None:
            bounds.append((lambda v: v >= self.minimum, f"at least {self.minimum}"))
        if self.exclusive_minimum is not None:
            bounds.append((lambda v: v > self.exclusive_minimum, f"above {self.exclusive_minimum}"))
        if self.maximum is not None:
            bounds.append((lambda v: v <= self.maximum, f"at most {self.maximum}"))
        return bounds


# The defaults train in a fraction of the write-up's time to a higher accuracy (docs/training.md,
# *Training speed*; `make bench` measures both). The write-up's own recipe is
# WRITE_UP_RECIPE below, one trigger away.
TRAINING_PARAMS = (
    ParamSpec(
        "architecture",
        str,
        "dense",
        "dense: the original write-up's Flatten -> Dense(hidden_units) -> Dense(10). cnn: two convolutions "
        "before that hidden layer; slower to train, and reads real handwriting better (docs: Training).",
        choices=ARCHITECTURES,
    ),
    ParamSpec(
        "augment",
        str,
        "auto",
        "Randomly rotate, slant, scale, shift and thicken or thin the training images (never the test set). "
        "auto: on for cnn, off for dense.",
        choices=("auto", "on", "off"),
    ),
    ParamSpec("epochs", int, 4, "Passes over the training set.", minimum=1, maximum=100),
    ParamSpec("batch_size", int, 256, "Examples per gradient step.", minimum=1, maximum=8192),
    ParamSpec(
        "learning_rate",
        float,
        0.01,
        "Adam's learning rate: the peak of the cosine schedule, or the constant rate.",
        exclusive_minimum=0,
        maximum=1,
    ),
    ParamSpec(
        "lr_schedule",
        str,
        "cosine",
        "How the learning rate changes over training: cosine decays it to 0 by the last step; "
        "constant keeps it (the original write-up's recipe).",
        choices=("cosine", "constant"),
    ),
    ParamSpec(
        "adam_beta_2",
        float,
        0.95,
        "Adam's decay rate for its running mean of squared gradients (Keras' beta_2). 0.95 forgets old "
        "gradients sooner than Keras' 0.999 (the original write-up's), which suits the short, high-rate "
        "default schedule.",
        minimum=0,
        maximum=0.9999,
    ),
    ParamSpec("hidden_units", int, 128, "Width of the hidden Dense(relu) layer.", minimum=1, maximum=4096),
    ParamSpec(
        "labeled_weight",
        int,
        10,
        "How many times each image of the users' labelled set (MNIST_LABELED_URI) is trained on per epoch, "
        "against once for an MNIST image: a few hundred labelled digits among 54,000 of MNIST's need it to "
        "count. At most 200,000 labelled images an epoch in all. Without labelled images it changes nothing.",
        minimum=1,
        maximum=100,
    ),
    ParamSpec(
        "seed",
        int,
        42,
        "Random seed for weights and shuffling; the same seed and data give the same model.",
        minimum=0,
        maximum=2**31 - 1,
    ),
)

GATE_PARAMS = (
    ParamSpec(
        "accuracy_threshold",
        float,
        0.93,
        "The gate: the model is published only if its test accuracy is at least this.",
        minimum=0,
        maximum=1,
    ),
    ParamSpec(
        "max_regression",
        float,
        0.005,
        "The gate against the champion (the model `latest` points at, evaluated on the same test set): the "
        "model is published only if its test accuracy is at most this much below the champion's. The first "
        "run, with no champion, is judged by accuracy_threshold alone.",
        minimum=0,
        maximum=1,
    ),
    ParamSpec(
        "labeled_accuracy_threshold",
        float,
        # The default dense model reads about 82% of handwriting from writers outside MNIST before it has
        # learnt from any (issue 18): a model trained on the users' digits must do at least about as well.
        0.8,
        "The gate on the users' own digits: the model is published only if its accuracy on the labelled set's "
        "test split is at least this (when that split has labeled_min_test_images or more).",
        minimum=0,
        maximum=1,
    ),
    ParamSpec(
        "labeled_max_regression",
        float,
        # The labelled test split is small: in 50 images one more mistake is 0.02, so MNIST's 0.005
        # would fail a challenger for one image's noise.
        0.02,
        "The gate against the champion on the labelled test split: the model is published only if its "
        "accuracy there is at most this much below the champion's on the same images.",
        minimum=0,
        maximum=1,
    ),
    ParamSpec(
        "labeled_min_test_images",
        int,
        50,
        "Below this many images, the labelled test split's accuracy is reported but does not gate: a handful "
        "of images cannot judge a model.",
        minimum=1,
        maximum=100_000,
    ),
)

# The original MNIST write-up's training: Adam with Keras' defaults (rate 1e-3, beta_2 0.999), batch 32,
# 5 epochs. Trigger with this conf to reproduce it.
WRITE_UP_RECIPE = {
    "epochs": 5,
    "batch_size": 32,
    "learning_rate": 0.001,
    "lr_schedule": "constant",
    "adam_beta_2": 0.999,
}

# mnist_batch_predict's, and `predict --min-confidence`.
BATCH_PREDICT_PARAMS = (
    ParamSpec(
        "max_images",
        int,
        10_000,
        "Score at most this many images (the first by key); the rest are counted as skipped.",
        minimum=1,
        maximum=1_000_000,
    ),
    ParamSpec(
        "min_confidence",
        float,
        0.5,
        "Below this probability an image gets no digit and the status low_confidence.",
        minimum=0,
        maximum=1,
    ),
    ParamSpec(
        "shard_size",
        int,
        10_000,
        "Images per shard: each shard is one task, on any worker, and writes its own part of the results.",
        minimum=1,
        maximum=100_000,
    ),
    ParamSpec(
        "max_low_confidence_share",
        float,
        0.2,
        "Alert (email, webhook) when a larger share of the images scored is low_confidence: the inputs moved "
        "away from what the model knows. The run still succeeds.",
        minimum=0,
        maximum=1,
    ),
)

PARAMS = {spec.name: spec for spec in (*TRAINING_PARAMS, *GATE_PARAMS, *BATCH_PREDICT_PARAMS)}


def check_params(values: dict[str, Any]) -> dict[str, int | float | str]:
    """Each named value checked against its Param (ParamError on the first that fails), cast to its type."""
    return {name: PARAMS[name].check(value) for name, value in values.items()}
