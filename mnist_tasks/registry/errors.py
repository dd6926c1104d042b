"""What the registry raises: each a PermanentError (a person must act) or an MnistError (a retry may pass)."""

from __future__ import annotations

from mnist_tasks.errors import MnistError, PermanentError
from mnist_tasks.files import ChecksumMismatchError


class VersionNotFoundError(PermanentError, LookupError):
    """The version has no manifest, or nothing has been published yet."""


class NothingPublishedError(VersionNotFoundError):
    """There is no `latest.json`: no model has been published yet."""


class FileNotPublishedError(PermanentError, LookupError):
    """The version exists, but its manifest lists no file of that name."""


class PublishVerificationError(PermanentError, RuntimeError):
    """An object in the bucket is missing or differs from what its manifest records: the version stays damaged."""


class PublishChecksumError(ChecksumMismatchError, PublishVerificationError):
    """An object's bytes are not the ones its manifest (or `latest.json`, for a manifest) records."""


class DamagedObjectError(PublishVerificationError):
    """A registry object (a manifest, latest.json) a person must mend: a retry meets it the same.

    Raised as such for one that cannot be parsed; PointerMissingError for latest.json gone.
    """


class UnfinishedPublishError(MnistError, RuntimeError):
    """A publish attempt's own writes did not verify (raised by the pipeline's publish step): its retry
    writes them again. The PublishVerificationError it stands for is its __cause__."""


class PointerMissingError(DamagedObjectError):
    """latest.json is gone while versions are published: who the champion is, is unknown until it is repaired."""


class VersionConflictError(PermanentError, RuntimeError):
    """The version belongs to another run, or was published with other bytes: versions are immutable."""


class LatestMovedError(PermanentError, RuntimeError):
    """`latest.json` is not what the caller last saw: someone else moved it in between."""


class GateNotPassedError(PermanentError, ValueError):
    """A version whose manifest does not record a passed gate may become `latest` only by force."""


class GateFailedError(PermanentError, ValueError):
    """The manifest's metrics do not record a passed accuracy gate (publish refuses it)."""


class ModelReferenceError(PermanentError, ValueError):
    """A model reference (`predict --model`) that names no model that can be loaded."""
