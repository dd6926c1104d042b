"""The SavedModel export `train` makes for TensorFlow Serving, loaded with TensorFlow alone, as a server does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks.files import sha256_file
from mnist_tasks.model.serving import export_saved_model

# Fixtures: synthetic digits, and models trained on them.
from tests.test_train import prepared, trained, trained_cnn  # noqa: F401


@pytest.mark.parametrize("architecture", ["dense", "cnn"])
def test_the_export_loads_without_keras_and_predicts_what_the_keras_model_does(
    architecture: str, request: pytest.FixtureRequest, prepared: Path  # noqa: F811
) -> None:
    import keras
    import tensorflow as tf

    model = request.getfixturevalue("trained" if architecture == "dense" else "trained_cnn")

    loaded = tf.saved_model.load(model["saved_model"]["path"])
    images = np.load(prepared / "x_test.npy")[:16]

    expected = keras.models.load_model(model["model_path"], safe_mode=True).predict(images, verbose=0)
    served = loaded.signatures["serve"](images=tf.constant(images))["output_0"].numpy()
    assert served.shape == (16, 10)
    assert np.allclose(served, expected, atol=1e-5)
    # What TensorFlow Serving calls when a request names no signature.
    default = loaded.signatures["serving_default"](images=tf.constant(images))["output_0"].numpy()
    assert np.allclose(default, expected, atol=1e-5)


def test_the_export_is_described_by_its_files_and_its_signature(trained: dict[str, Any]) -> None:  # noqa: F811
    export = trained["saved_model"]
    root = Path(export["path"])

    assert root == Path(trained["model_path"]).parent / "saved_model"
    assert export["signature"] == {
        "signature": "serving_default",
        "input": {"name": "images", "shape": [None, 28, 28], "dtype": "float32"},
        "output": {"name": "output_0", "shape": [None, 10], "dtype": "float32"},
    }
    on_disk = {path.relative_to(root).as_posix(): sha256_file(path) for path in root.rglob("*") if path.is_file()}
    assert export["files"] == on_disk
    assert {"saved_model.pb", "variables/variables.index"} <= set(on_disk)
    assert export["seconds"] > 0


def test_an_export_into_an_earlier_one_replaces_it_whole(trained: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    import keras

    dest = tmp_path / "saved_model"
    (dest / "variables").mkdir(parents=True)
    (dest / "variables" / "stale.index").write_bytes(b"from an earlier attempt")

    export = export_saved_model(keras.models.load_model(trained["model_path"], safe_mode=True), dest)

    assert not (dest / "variables" / "stale.index").exists()
    assert set(export["files"]) == {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert [p.name for p in tmp_path.iterdir()] == ["saved_model"]  # no temp directory left
