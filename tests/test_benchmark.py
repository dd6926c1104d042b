"""scripts/benchmark.py's recipe ladder: from the write-up's recipe to the defaults, one group of Params a step."""

from __future__ import annotations

import sys
from itertools import pairwise

from mnist_tasks.params import TRAINING_PARAMS, WRITE_UP_RECIPE
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import benchmark  # noqa: E402


def test_the_recipe_ladder_goes_from_the_write_up_recipe_to_the_defaults_changing_something_each_step():
    steps = benchmark.recipe_steps()
    defaults = {spec.name: spec.default for spec in TRAINING_PARAMS}

    assert steps[0][1] == WRITE_UP_RECIPE
    # The last step trains with the defaults (bench_recipe reuses bench_training's runs for it): no Param
    # the write-up's recipe sets is left at its value.
    assert steps[-1][1] == {name: defaults[name] for name in WRITE_UP_RECIPE}
    for (_, before), (label, after) in pairwise(steps):
        assert any(after[name] != before[name] for name in after), f"{label!r} changes nothing"
