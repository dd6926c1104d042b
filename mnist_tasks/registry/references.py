"""Version numbers and model references: what a user or a run names a model by.

A version is a canonical positive integer, the run's logical date as YYYYMMDDHHMMSS.
A model reference (`predict --model`) names a version of a registry or a local .keras file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from mnist_tasks.model.architecture import MODEL_FILE
from mnist_tasks.registry.errors import ModelReferenceError
from mnist_tasks.registry.layout import LATEST_FILE, VERSION_DIR
from mnist_tasks.s3 import split_s3_uri


class ModelReference(NamedTuple):
    """A model as a user names it: a version of a registry, or a local .keras file."""

    text: str
    """The reference as given."""
    models_uri: str | None
    """The registry (s3://bucket/prefix/); None for a local file."""
    version: int | None
    """None: whatever the registry's `latest` points at (or a local file)."""
    path: Path | None
    """A local .keras file; None for a model in a registry."""


def version_for(logical_date: datetime) -> int:
    """The version number of a run: its logical date in UTC as YYYYMMDDHHMMSS.

    2026-11-23T02:00:00Z -> 20261123020000. Later runs get larger numbers, and
    a retry of the same run gets the same one.
    """
    if logical_date.tzinfo is None or logical_date.utcoffset() is None:
        raise ValueError(f"logical_date must be timezone-aware, got naive {logical_date.isoformat()}")
    return int(logical_date.astimezone(UTC).strftime("%Y%m%d%H%M%S"))


def parse_version(text: str) -> int:
    """A version number as users and directory names write it: a canonical positive integer."""
    if not VERSION_DIR.fullmatch(text):
        raise ValueError(
            f"a version is a positive whole number without leading zeros, like 20261123020000; got {text!r}"
        )
    return int(text)


def parse_version_or_latest(text: str) -> int | None:
    """A version number (parse_version's rule), or None for `latest`."""
    if text == "latest":
        return None
    try:
        return parse_version(text)
    except ValueError:
        raise ValueError(f"expected a version number or latest, got {text!r}") from None


def parse_model_reference(text: str, *, models_uri: str) -> ModelReference:
    """What a model reference names; ModelReferenceError for anything else.

      "latest"                 the version `latest.json` in `models_uri` points at;
      "<version>"              that version in `models_uri` (parse_version's rule);
      "s3://…/<version>/", "s3://…/<version>/model.keras", "s3://…/latest.json"
                               the same, in the registry that URI is in (locate_model);
      "PATH.keras"             a local file.
    """
    if text.endswith(".keras") and not text.startswith("s3://"):
        return ModelReference(text, None, None, Path(text))
    try:
        if text.startswith("s3://"):
            return ModelReference(text, *locate_model(text), None)
        return ModelReference(text, models_uri, parse_version_or_latest(text), None)
    except ValueError as exc:
        if text.startswith("s3://"):
            raise ModelReferenceError(str(exc)) from exc
        raise ModelReferenceError(
            f"model {text!r}: expected latest, a version number, an s3:// URI or a local .keras file"
        ) from exc


def locate_model(uri: str) -> tuple[str, int | None]:
    """(models_uri, version) of an s3:// URI naming a model inside a registry.

    s3://b/p/<version>/ and s3://b/p/<version>/model.keras give ("s3://b/p/", version);
    s3://b/p/latest.json gives ("s3://b/p/", None): whatever `latest` points at.
    Any other URI raises ValueError naming the accepted forms.
    """
    bucket, key = split_s3_uri(uri)
    *parents, last = key.split("/")
    version = None
    if last != LATEST_FILE:
        if last in ("", MODEL_FILE) and parents:
            last = parents.pop()
        if not VERSION_DIR.fullmatch(last):
            raise ValueError(
                f"{uri} names no model: expected s3://bucket/prefix/<version>/, "
                f".../<version>/{MODEL_FILE} or .../{LATEST_FILE}"
            )
        version = int(last)
    return f"s3://{bucket}/" + "".join(f"{p}/" for p in parents), version
