"""The published-model registry in S3: numbered versions, their manifests, the `latest` pointer.

A `ModelRegistry(client, models_uri)` names one; every operation takes it as `registry=`:

    layout.py         ModelRegistry, the bucket's keys and file names (the layout is drawn there)
    references.py     version numbers, and the model references users type (`predict --model`)
    manifest.py       the typed manifest, its seal and the claim before it: written once, read checked
    provenance.py     build_manifest: where a model came from (data, params, code, libraries)
    publish.py        the publish sequence: claim, upload, seal, verify, move `latest`
    verify.py         a version read back against its manifest; sealing an old one
    pointer.py        latest.json: read, moved only forward and to a verified version, promote, repair
    serving_copy.py   TensorFlow Serving's copy of the export of the version made latest
    listing.py        one row per version
    download.py       files fetched and checked before they appear; model references fetched
    errors.py         what all of these raise

`<version>` is a plain integer. A directory without a manifest is an unfinished
publish and is not a version; `latest` only ever points at a version whose
every file matches its manifest (`verify_version`).
"""

from mnist_tasks.registry.download import (
    DownloadedFiles,
    DownloadedModel,
    DownloadedVersion,
    ModelSource,
    download_files,
    download_model,
    download_version,
    fetch_model,
)
from mnist_tasks.registry.errors import (
    DamagedObjectError,
    FileNotPublishedError,
    GateFailedError,
    GateNotPassedError,
    LatestMovedError,
    ModelReferenceError,
    NothingPublishedError,
    PointerMissingError,
    PublishVerificationError,
    UnfinishedPublishError,
    VersionConflictError,
    VersionNotFoundError,
)
from mnist_tasks.registry.layout import LATEST_FILE, MANIFEST_FILE, ModelRegistry
from mnist_tasks.registry.listing import VersionRow, list_versions
from mnist_tasks.registry.manifest import (
    Claim,
    Manifest,
    claim_version,
    gate_passed,
    read_claim,
    read_manifest,
    read_manifest_and_sha256,
    trained_with,
    training_label,
)
from mnist_tasks.registry.pointer import (
    Pointer,
    move_latest,
    promote,
    read_latest,
    read_latest_manifest,
    read_latest_state,
    repair_latest,
)
from mnist_tasks.registry.provenance import build_manifest
from mnist_tasks.registry.publish import Published, publish_model
from mnist_tasks.registry.references import (
    ModelReference,
    parse_model_reference,
    parse_version,
    parse_version_or_latest,
    version_for,
)
from mnist_tasks.registry.serving_copy import serving_copy_complete
from mnist_tasks.registry.verify import Sealed, seal_version, verify_version

__all__ = [  # by module, as imported above
    "DownloadedFiles", "DownloadedModel", "DownloadedVersion", "ModelSource", "download_files", "download_model",
    "download_version", "fetch_model",
    "DamagedObjectError", "FileNotPublishedError", "GateFailedError", "GateNotPassedError", "LatestMovedError",
    "ModelReferenceError", "NothingPublishedError", "PointerMissingError", "PublishVerificationError",
    "UnfinishedPublishError", "VersionConflictError", "VersionNotFoundError",
    "LATEST_FILE", "MANIFEST_FILE", "ModelRegistry",
    "VersionRow", "list_versions",
    "Claim", "Manifest", "claim_version", "gate_passed", "read_claim", "read_manifest", "read_manifest_and_sha256",
    "trained_with", "training_label",
    "Pointer", "move_latest", "promote", "read_latest", "read_latest_manifest", "read_latest_state", "repair_latest",
    "build_manifest",
    "Published", "publish_model",
    "ModelReference", "parse_model_reference", "parse_version", "parse_version_or_latest", "version_for",
    "serving_copy_complete",
    "Sealed", "seal_version", "verify_version",
]  # fmt: skip
