"""scripts/benchmark.py's recipe ladder: from the write-up's recipe to the defaults, each step one group of Params."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mnist_tasks.params import TRAINING_PARAMS, WRITE_UP_RECIPE

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recipe_ladder_goes_from_the_write_up_recipe_to_every_default_it_differs_in():
    steps = _benchmark().recipe_steps()
    defaults = {spec.name: spec.default for spec in TRAINING_PARAMS}

    assert steps[0][1] == WRITE_UP_RECIPE
    # The last step trains with the defaults: no Param the write-up's recipe sets is left at its value.
    assert steps[-1][1] == {name: defaults[name] for name in WRITE_UP_RECIPE}
    for (_, before), (label, after) in zip(steps, steps[1:], strict=False):
        changed = {name for name in after if after[name] != before[name]}
        assert changed, f"{label!r} changes nothing"
        assert all(f"{name} {after[name]}" in label for name in changed), label
