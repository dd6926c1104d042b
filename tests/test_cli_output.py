"""The CLI's output formats (mnist_tasks/cli/output.py): table for people, JSON and YAML for machines."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from mnist_tasks.cli.output import render, table

ROWS = [
    {"version": 1, "is_latest": False, "accuracy": 0.97123, "data_sha256": "d" * 64, "error": None},
    {"version": 20261205020000, "is_latest": True, "accuracy": None, "data_sha256": None, "error": "damaged"},
]


def test_a_table_has_a_header_a_rule_and_one_aligned_line_per_row():
    lines = table(ROWS, columns=["version", "is_latest"]).splitlines()

    assert lines[0].split() == ["version", "is_latest", "accuracy", "data_sha256", "error"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["1", "False", "0.9712", "d" * 12]
    assert lines[3].split() == ["20261205020000", "True", "damaged"]
    # Every column starts where its header does.
    start = lines[0].index("accuracy")
    assert lines[2][start:].startswith("0.9712")
    assert lines[3][lines[0].index("error") :].startswith("damaged")


def test_json_and_yaml_carry_every_value_as_it_is():
    assert json.loads(render(ROWS, "json")) == ROWS
    assert yaml.safe_load(render(ROWS, "yaml")) == ROWS


def test_json_refuses_nan_rather_than_printing_what_json_readers_reject():
    with pytest.raises(ValueError, match="Out of range float"):
        render({"loss": math.nan}, "json")


def test_a_record_as_a_table_is_one_row():
    assert table([{"version": 3, "files": {"model.keras": "x"}}]).splitlines()[2].split(maxsplit=1) == [
        "3",
        '{"model.keras": "x"}',
    ]
