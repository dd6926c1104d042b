"""How commands print their results, as Airflow's own CLI does: `--output table|json|yaml`.

A listing (rows of the same keys) prints as a table for people by default; a record that
scripts read (a manifest, a training result) prints as JSON by default. JSON and YAML
carry every value as it is; the table shortens sha256s to 12 characters, like git's
short hashes, so a row fits a terminal.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

FORMATS = ("table", "json", "yaml")
SHORT_SHA256 = 12
_SHA256 = re.compile(r"[0-9a-f]{64}")


def add_output_argument(parser: argparse.ArgumentParser, *, default: str) -> None:
    """`-o/--output`, defaulting to `default` (table for listings, json for records)."""
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=default,
        help="how to print the result (default: %(default)s)",
    )


def render(result: object, output: str, *, columns: Sequence[str] = ()) -> str:
    """`result` as `output`: JSON (strict: no NaN), YAML, or a table of `columns` (all keys when empty)."""
    if output == "json":
        return json.dumps(result, indent=2, allow_nan=False) + "\n"
    if output == "yaml":
        import yaml

        return yaml.safe_dump(result, sort_keys=False, allow_unicode=True)
    # Every command's result is a JSON record, or a list of them.
    rows = cast("list[Mapping[str, Any]]", result if isinstance(result, list) else [result])
    return table(rows, columns=columns)


def table(rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] = ()) -> str:
    """Left-aligned columns under a header and a rule; `columns` first, then any other key in order."""
    names = list(columns) + [key for row in rows for key in row if key not in columns]
    names = list(dict.fromkeys(names))
    cells = [[_cell(row.get(name)) for name in names] for row in rows]
    widths = [max([len(name), *(len(line[i]) for line in cells)]) for i, name in enumerate(names)]
    lines = [names, ["-" * width for width in widths], *cells]
    return "".join("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip() + "\n"
                   for line in lines)  # fmt: skip


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, str) and _SHA256.fullmatch(value):
        return value[:SHORT_SHA256]
    if isinstance(value, dict | list):
        return json.dumps(value, allow_nan=False)
    return str(value)


def print_result(result: object, output: str, *, columns: Sequence[str] = ()) -> None:
    sys.stdout.write(render(result, output, columns=columns))
