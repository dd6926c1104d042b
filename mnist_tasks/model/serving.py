"""The SavedModel TensorFlow Serving loads: exported beside model.keras, described for the manifest.

TensorFlow Serving cannot read a `.keras` file. `train` exports the model it
has in memory with Keras' `model.export` (a TensorFlow SavedModel) into
`saved_model/` beside `model.keras`. The export travels to publish like any
artifact, one file at a time with its sha256, and is published as
`<version>/saved_model/…`. When a version becomes `latest`, the registry copies
it to `serving/<version>/`, the layout TensorFlow Serving reads (a base path
holding numbered version directories).

TensorFlow is imported only inside `export_saved_model`: publish and the
registry use the names and types here without it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from mnist_tasks.files import atomic_dir, sha256_file

if TYPE_CHECKING:
    import keras

SAVED_MODEL_DIR = "saved_model"
"""The export's directory, beside model.keras in a run and in a published version."""
SERVING_DIR = "serving"
"""TensorFlow Serving's base path under the registry's models_uri: serving/<version>/saved_model.pb, variables/…"""
GRAPH_FILE = "saved_model.pb"
# What TensorFlow Serving's REST and gRPC APIs use when a request names no signature.
SIGNATURE = "serving_default"
# Named here, not left to Keras: its default ("keras_tensor_<n>") depends on how many
# models the process built before, and clients of the gRPC API or the `inputs` JSON form use it.
INPUT_NAME = "images"


class TensorDescription(TypedDict):
    name: str
    shape: list[int | None]
    """None: any size (the batch)."""
    dtype: str


class ServingSignature(TypedDict):
    signature: str
    input: TensorDescription
    output: TensorDescription


class ServingEntry(ServingSignature):
    """The manifest's `serving` (manifest_entry): the signature, and where the export and its copy are."""

    export: str
    """The export in the version, relative to the registry's models_uri: "<version>/saved_model/"."""
    path: str
    """TensorFlow Serving's copy, relative to the same: "serving/<version>/"."""


class SavedModelExport(TypedDict):
    path: str
    files: dict[str, str]
    """Path inside the export ('variables/variables.index') -> sha256."""
    signature: ServingSignature
    seconds: float
    """What model.export took."""


def export_saved_model(model: keras.Model, dest: Path) -> SavedModelExport:
    """Export `model` as a SavedModel in `dest`, replacing whatever is there; describe what was written.

    Its signature takes float32 images shaped like the model's input, batch
    first ([None, 28, 28] for the dense model), named INPUT_NAME, and returns the
    model's output, the 10 class probabilities per image.
    """
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), model.inputs[0].dtype, name=INPUT_NAME)
    if dest.exists():
        shutil.rmtree(dest)  # a retry on this worker: the old export is replaced whole, never merged
    started = time.monotonic()
    with atomic_dir(dest) as tmp:
        model.export(str(tmp), format="tf_saved_model", input_signature=[spec], verbose=False)
    seconds = time.monotonic() - started
    return {
        "path": str(dest),
        "files": {path.relative_to(dest).as_posix(): sha256_file(path) for path in _files(dest)},
        "signature": read_signature(dest),
        "seconds": round(seconds, 3),
    }


def _files(directory: Path) -> list[Path]:
    # Only files: S3 has no empty directories, and TensorFlow needs no empty assets/.
    return sorted(path for path in directory.rglob("*") if path.is_file())


def read_signature(saved_model_dir: Path) -> ServingSignature:
    """SIGNATURE's input and output as saved_model.pb records them: what a TensorFlow Serving client sends."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((saved_model_dir / GRAPH_FILE).read_bytes())
    signature = saved_model.meta_graphs[0].signature_def[SIGNATURE]
    (input_name, input_info), = signature.inputs.items()
    (output_name, output_info), = signature.outputs.items()
    return {
        "signature": SIGNATURE,
        "input": _describe(input_name, input_info),
        "output": _describe(output_name, output_info),
    }


def _describe(name: str, info: Any) -> TensorDescription:
    import tensorflow as tf

    return {
        "name": name,
        "shape": [None if dim.size < 0 else dim.size for dim in info.tensor_shape.dim],
        "dtype": tf.dtypes.as_dtype(info.dtype).name,
    }


def manifest_entry(*, version: int, signature: ServingSignature) -> ServingEntry:
    """The manifest's `serving`: where the export is, where TensorFlow Serving finds it, how to call it.

    Paths are relative to the registry's models_uri. `path` holds the copy only
    once the version has become latest (see registry/serving_copy.py).
    """
    return {"export": f"{version}/{SAVED_MODEL_DIR}/", "path": f"{SERVING_DIR}/{version}/", **signature}
