"""scripts/benchmark_batch.py (`make bench-batch`) on the embedded store, at a size that takes seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.test_cli import model_file  # noqa: F401  (fixture)
from tests.test_predict import model  # noqa: F401  (fixture)
from tests.test_train import synthetic_digits

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_it_prints_throughput_beside_the_models_own_and_the_peak_memory(embedded_store, model_file, tmp_path):  # noqa: F811
    embedded_store.empty()
    np.save(tmp_path / "x_test.npy", synthetic_digits(30, seed=3)[0])
    command = [
        sys.executable, "scripts/benchmark_batch.py", "--cache-dir", tmp_path, "--model", model_file,
        "--store-pid-file", embedded_store.state_dir / "s3" / "weed.pid", "--sizes", "12", "30", "--rounds", "2",
    ]  # fmt: skip
    env = {**os.environ, **embedded_store.client_environment()}

    printed = subprocess.run(list(map(str, command)), cwd=REPO, env=env, capture_output=True, text=True, check=True)

    out = printed.stdout
    assert re.search(r"the model alone \(predict_on_batch, batches of 256, 30 images\): [\d,]+ images/s", out), out
    for client in ("signed_get", "boto3 get_object"):
        assert re.search(
            rf"GETs alone, {client} \(10 threads, 12 images\): [\d,]+ images/s; CPU per GET [\d,]+ µs here, "
            r"[\d,]+ µs in the store", out
        ), out
    assert re.search(r"decode \+ preprocess alone \(one thread\): [\d,]+ images/s, [\d,]+ µs CPU per image", out), out
    assert re.search(r"a shard's work on 12 images in one thread, own CPU time by library \(cProfile\): \w+ \d+%", out)
    for size in (12, 30):
        # images, then end to end, the shard alone, the ratio to the model, the peak RSS, the shard's
        # and the store's CPU per image, and the rate those allow: median (range)
        assert re.search(rf"^ +{size}( +[\d,.]+ \([\d,.]+–[\d,.]+\)){{7}}$", out, re.MULTILINE), out
        # two shard processes side by side, and their speedup over one: median (range)
        assert re.search(rf"^ +{size}( +[\d,.]+ \([\d,.]+–[\d,.]+\)){{2}}$", out, re.MULTILINE), out
    stored = embedded_store.client().list_objects_v2(Bucket="mnist-inbox", Prefix="bench-batch/30/")
    assert stored["KeyCount"] == 30
