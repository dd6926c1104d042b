"""What each command runs: one function of the package per command, its result returned for printing.

Heavy libraries are imported by the command that needs them, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from mnist_tasks.params import TRAINING_PARAMS

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from mnist_tasks.data.download import DownloadedMnist
    from mnist_tasks.data.mirror import Mirror
    from mnist_tasks.data.prepare import PreparedCache
    from mnist_tasks.model.evaluate import Evaluation
    from mnist_tasks.model.train import TrainResult
    from mnist_tasks.registry import DownloadedVersion, Manifest, ModelRegistry, Pointer, Sealed, VersionRow


def s3_client_if(needed: bool) -> S3Client | None:
    from mnist_tasks.s3 import s3_client_from_env

    return s3_client_from_env() if needed else None


def mirror(args: argparse.Namespace) -> Mirror:
    from mnist_tasks.data.mirror import build_mirror

    return build_mirror(
        to=args.to,
        work_dir=args.work_dir,
        s3_client=s3_client_if(args.to.startswith("s3://")),
        wheel=args.wheel,
    )


def download(args: argparse.Namespace) -> DownloadedMnist:
    from mnist_tasks.data.download import download_mnist

    return download_mnist(
        mirrors=args.mirror,
        raw_dir=args.data_dir / "raw",
        s3_client=s3_client_if(any(m.startswith("s3://") for m in args.mirror)),
    )


def prepare(args: argparse.Namespace) -> PreparedCache:
    from mnist_tasks.data.prepare import prepare_dataset

    return prepare_dataset(raw_dir=args.data_dir / "raw", cache_root=args.data_dir / "prepared")


def train(args: argparse.Namespace) -> TrainResult:
    from mnist_tasks.data.prepare import check_prepared
    from mnist_tasks.model.train import train_model

    check_prepared(args.cache_dir, "train")
    # Keras prints some verdicts to stdout (TerminateOnNaN's "Invalid loss"); stdout is for the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        return train_model(
            cache_dir=args.cache_dir,
            out_dir=args.out,
            **{spec.name: getattr(args, spec.name) for spec in TRAINING_PARAMS},
        )


def evaluate(args: argparse.Namespace) -> Evaluation:
    from mnist_tasks.data.prepare import check_prepared
    from mnist_tasks.files import sha256_file
    from mnist_tasks.model.evaluate import evaluate_model

    check_prepared(args.cache_dir, "test")
    return evaluate_model(
        model_path=args.model,
        # A model file named on the command line is trusted as given; the DAG
        # instead passes the checksum recorded when the model was trained.
        model_sha256=args.model_sha256 or sha256_file(args.model),
        cache_dir=args.cache_dir,
        out_dir=args.out,
        threshold=args.threshold,
    )


def _registry(args: argparse.Namespace) -> ModelRegistry:
    """The registry at --models-uri, through the S3 client the environment configures."""
    from mnist_tasks.registry import ModelRegistry
    from mnist_tasks.s3 import s3_client_from_env

    return ModelRegistry(s3_client_from_env(), args.models_uri)


def models_list(args: argparse.Namespace) -> list[VersionRow]:
    from mnist_tasks.registry import list_versions

    return list_versions(registry=_registry(args))


def models_show(args: argparse.Namespace) -> Manifest:
    from mnist_tasks.registry import read_manifest

    return read_manifest(registry=_registry(args), version=args.version)


def models_repair(args: argparse.Namespace) -> Pointer:
    from mnist_tasks.registry import repair_latest

    return repair_latest(registry=_registry(args))


def models_seal(args: argparse.Namespace) -> Sealed:
    from mnist_tasks.registry import seal_version

    return seal_version(registry=_registry(args), version=args.version)


def models_promote(args: argparse.Namespace) -> Pointer:
    from mnist_tasks.registry import promote

    return promote(registry=_registry(args), version=args.version, force=args.force, reason=args.reason)


def models_download(args: argparse.Namespace) -> DownloadedVersion:
    from mnist_tasks.registry import download_version

    return download_version(registry=_registry(args), version=args.version, dest_dir=args.out)


def report(args: argparse.Namespace) -> dict[str, Any]:
    from mnist_tasks.model.report import REPORT_FILE, REPORT_FILES
    from mnist_tasks.registry import download_files

    got = download_files(registry=_registry(args), version=args.version, names=REPORT_FILES, dest_dir=args.out)
    return {
        "version": got["version"],
        "report": got["files"][REPORT_FILE]["path"],
        "files": {name: f["path"] for name, f in got["files"].items()},
    }
