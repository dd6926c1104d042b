"""The settings every stack shares (deploy/environment.mk): read for the local stacks, written into docker-compose.yaml.

    python scripts/stack_environment.py --check    # does docker-compose.yaml hold what the file says?
    python scripts/stack_environment.py --write    # write it there

deploy/environment.mk says why it is a fragment of a Makefile and what its two
kinds of line mean. `shared_environment` applies it as make does, for
scripts/local_airflow.py and scripts/local_cluster.py: its defaults under the
caller's environment, the rest over it. docker-compose.yaml gets the same
settings as the block between BEGIN and END in its x-airflow-common
environment: a default as `${NAME:-default}`, so .env changes it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "deploy" / "environment.mk"
COMPOSE = REPO / "docker-compose.yaml"
# Stands for the directory that holds dags/ and plugins/; in the image, where the Dockerfile copies them.
PROJECT_DIR = "$(PROJECT_DIR)"
IMAGE_PROJECT_DIR = "/opt/airflow"
LINE = re.compile(r"export (?P<name>[A-Z][A-Z0-9_]*) (?P<operator>\?=|=)(?: (?P<value>.*))?")
# Make would read these differently (`$` expands, `#` starts a comment) or keep them where the
# environment does not (quotes, backslashes); Python refuses them rather than disagree.
UNSAFE = re.compile(r"[$#\"'\\]")
# docker-compose.yaml's block, under `environment: &airflow-common-env` (4 spaces).
INDENT = "    "
BEGIN = f"{INDENT}# BEGIN deploy/environment.mk, the settings every stack shares: edit them there, then"
BEGIN_NOTE = f"{INDENT}# `python scripts/stack_environment.py --write` writes them here (a test checks it did)."
END = f"{INDENT}# END deploy/environment.mk"


@dataclass(frozen=True)
class Setting:
    name: str
    value: str
    """As the file has it, $(PROJECT_DIR) and all."""
    default: bool
    """`?=`: the caller's environment (compose: .env) may change it."""
    comment: tuple[str, ...]
    """The comment lines right above it, without their `# `: compose's block repeats them."""

    def resolved(self, project_dir: Path | str) -> str:
        return self.value.replace(PROJECT_DIR, str(project_dir))


def shared_environment(environ: Mapping[str, str], *, project_dir: Path = REPO) -> dict[str, str]:
    """`environ` with the shared settings, as `make` exports them: the defaults under it, the others over it."""
    settings = read_settings()
    return {
        **{s.name: s.resolved(project_dir) for s in settings if s.default},
        **environ,
        **{s.name: s.resolved(project_dir) for s in settings if not s.default},
    }


def read_settings(path: Path = SOURCE) -> list[Setting]:
    """Every `export NAME = value` and `export NAME ?= value` after the file's opening comment, in order."""
    lines = path.read_text().splitlines()
    body_starts = lines.index("") + 1 if "" in lines else len(lines)  # the opening comment ends at a blank line
    settings: list[Setting] = []
    comment: list[str] = []
    for number, line in enumerate(lines[body_starts:], start=body_starts + 1):
        if not line:
            comment = []
        elif line.startswith("#"):
            comment.append(line.removeprefix("#").removeprefix(" "))
        else:
            settings.append(_setting(line, tuple(comment), where=f"{path}:{number}"))
            comment = []
    names = [s.name for s in settings]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"{path}: set more than once: {', '.join(repeated)}")
    return settings


def _setting(line: str, comment: tuple[str, ...], *, where: str) -> Setting:
    match = LINE.fullmatch(line)
    if match is None:
        raise ValueError(f"{where}: not `export NAME = value` or `export NAME ?= value`: {line!r}")
    value = match["value"] or ""
    if value != value.strip() or UNSAFE.search(value.replace(PROJECT_DIR, "")):
        raise ValueError(
            f"{where}: {match['name']}'s value has surrounding spaces or a $ (other than {PROJECT_DIR}), "
            f"#, quote or backslash, which make and Python would read differently: {value!r}"
        )
    return Setting(match["name"], value, default=match["operator"] == "?=", comment=comment)


def compose_block(settings: list[Setting]) -> str:
    """The lines docker-compose.yaml holds between BEGIN and END (those two included)."""
    lines = [BEGIN, BEGIN_NOTE]
    for setting in settings:
        lines += [f"{INDENT}# {text}".rstrip() for text in setting.comment]
        value = setting.resolved(IMAGE_PROJECT_DIR)
        if setting.default:
            value = f"${{{setting.name}:-{value}}}"
        # A JSON string is a YAML double-quoted scalar: "False" and "60" stay strings.
        lines.append(f"{INDENT}{setting.name}: {json.dumps(value)}")
    return "\n".join([*lines, END]) + "\n"


def with_block(compose_text: str, block: str) -> str:
    """`compose_text` with its block replaced by `block`."""
    begin, end = compose_text.find(BEGIN + "\n"), compose_text.find(END + "\n")
    if begin < 0 or end < begin:
        raise ValueError(f"docker-compose.yaml has no block from {BEGIN.strip()!r} to {END.strip()!r}")
    return compose_text[:begin] + block + compose_text[end + len(END) + 1 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 when docker-compose.yaml's block differs")
    action.add_argument("--write", action="store_true", help="write the block into docker-compose.yaml")
    args = parser.parse_args()
    current = COMPOSE.read_text()
    wanted = with_block(current, compose_block(read_settings()))
    if args.write:
        if wanted != current:
            COMPOSE.write_text(wanted)
        print(f"{COMPOSE.name}: {'written' if wanted != current else 'unchanged'}")
    elif wanted != current:
        sys.exit(
            f"{COMPOSE.name} differs from {SOURCE.relative_to(REPO)}: run `python scripts/stack_environment.py --write`"
        )


if __name__ == "__main__":
    main()
