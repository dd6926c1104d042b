"""Deployment settings, read once from the environment.

Everything that differs between a laptop, CI and production lives here; the
training hyperparameters do not (they are DAG Params, chosen per run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Tried in order; both serve the canonical gzip files.
PUBLIC_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    """Local working area: raw downloads, prepared arrays, per-run outputs."""
    mirrors: tuple[str, ...]
    """MNIST mirrors (https://, s3://bucket/prefix/ or file://), tried in order."""
    models_uri: str
    """Where models are published: s3://bucket/prefix/."""
    aws_conn_id: str
    """Airflow connection that carries the S3 endpoint, region and credentials."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        mirrors = tuple(env.get("MNIST_MIRRORS", "").replace(",", " ").split()) or PUBLIC_MIRRORS
        return cls(
            data_dir=Path(env.get("MNIST_DATA_DIR") or Path.home() / ".cache" / "mnist-retraining"),
            mirrors=mirrors,
            models_uri=env.get("MNIST_MODELS_URI", "s3://mnist-models/mnist/"),
            aws_conn_id=env.get("MNIST_AWS_CONN_ID", "aws_default"),
        )
