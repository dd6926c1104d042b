"""`python -m mnist_tasks <command>`: the pipeline's steps without Airflow.

Records (a training result, a manifest) print as JSON, listings as a table; `-o` chooses
(cli/output.py). The commands are in cli/parser.py, what they run in cli/commands.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mnist_tasks.cli.output import print_result
from mnist_tasks.cli.parser import build_parser
from mnist_tasks.errors import MnistError
from mnist_tasks.settings import Settings


def main(argv: Sequence[str] | None = None) -> None:
    _log_to_stderr()
    # Read before parsing: a bad setting fails the parser's defaults too.
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
        args = build_parser(settings).parse_args(argv)
        if getattr(args, "mirror", ()) is None:
            args.mirror = list(settings.mirrors)
        _print_result(args.run(args), args)
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


def _print_result(result: object, args: argparse.Namespace) -> None:
    if result is None:
        return  # the command wrote its own output
    print_result(result, args.output, columns=args.columns)
    if isinstance(result, dict) and result.get("passed") is False:
        sys.exit(1)  # the gate failed: scripts see it in the exit code
