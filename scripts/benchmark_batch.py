"""Batch predictions' speed and memory on the embedded store, beside the model's own speed (`make bench-batch`).

    python scripts/benchmark_batch.py --cache-dir DIR --model PATH.keras --store-pid-file FILE
                                      [--sizes 10000 100000] [--rounds 2]
                                      [--baseline-checkout DIR --baseline-size 10000]

Run under the embedded store's credentials (`make bench-batch` does: `scripts/local_s3.py exec`).
MNIST's 10,000 test digits, from a `prepare`d --cache-dir, are stored as PNGs under
s3://mnist-inbox/bench-batch/<size>/ (repeated under new keys up to each size; kept
between runs), and --model is published to a registry of the benchmark's own
(s3://mnist-artifacts/bench-batch/models/), never the product's.

Each round and size, in a child process of its own (which reports its own peak RSS,
VmHWM): the DAG's three steps, list_shards, score_shard on one
shard of every image, combine, on the default settings (FETCHES, BATCH_SIZE).
Printed: end-to-end images/s (the three steps' wall time, the model's load included),
the shard's own images/s, the model's bare images/s on the same arrays (predict_on_batch
on the preprocessed test digits, batches of BATCH_SIZE), their ratio, the peak RSS, and
the CPU time per image of the shard and of the store's server while the shard scores
(--store-pid-file: the store shares this machine's cores), with the rate those allow on
all the machine's cores; medians and ranges over the rounds. Then the same images in two shards, scored by
two processes side by side (what two workers on this machine do), and their speedup over
one process. Before that, where a shard's time goes: the
GETs alone through signed_get and through boto3's get_object (the client's and the
store's CPU per GET), preprocessing alone, and a profile of a shard's work by library.
With --baseline-checkout (e.g. `git worktree add /tmp/baseline <commit>` of a version
before shards), the same images are scored there too, with its predict_prefix, in the
same run. The machines are shared: read ratios
and ranges, not single times.

The same on `make cluster`, through the DAG itself: scripts/benchmark_batch_cluster.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INBOX = "mnist-inbox"
BENCH_PREFIX = "bench-batch/"
MODELS_URI = "s3://mnist-artifacts/bench-batch/models/"
OUTPUT_URI = "s3://mnist-predictions/bench-batch/"
REVIEW_URI = "s3://mnist-inbox/bench-batch-review/"
VERSION = 1
CORES = os.cpu_count() or 1  # what the shard and the store share: the bound a run's CPU per image allows

# The child's work: the DAG's three steps on one shard, timed; one JSON line on stdout. The CPU
# figures are the shard's own and the store's while the shard scored (its model loaded first).
OURS = """
import json, os, sys, time
from pathlib import Path
import boto3
from mnist_tasks.inference.batch import combine_shards, list_shards
from mnist_tasks.inference.shard import score_shard
size, input_uri, output_uri, review_uri, models_uri, store_pid, work = sys.argv[1:8]
def store_cpu():
    fields = Path(f"/proc/{store_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
s3 = boto3.client("s3")
started = time.perf_counter()
shards = list_shards(s3_client=s3, input_uri=input_uri, output_uri=output_uri, review_uri=review_uri,
                     models_uri=models_uri, work_dir=Path(work), max_images=int(size), shard_size=int(size))
cpu, store = time.process_time(), store_cpu()
scored = [score_shard(s3_client=s3, shard=shard, min_confidence=0.5, review_uri=review_uri, work_dir=Path(work))
          for shard in shards]
cpu, store = time.process_time() - cpu, store_cpu() - store
result = combine_shards(s3_client=s3, shards=shards, scored=scored, min_confidence=0.5,
                        max_low_confidence_share=1.0, review_uri=review_uri, work_dir=Path(work))
peak = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"seconds": time.perf_counter() - started, "shard_seconds": scored[0]["seconds"],
                  "cpu_seconds": cpu, "store_cpu_seconds": store, "images": result["images"],
                  "counts": result["counts"], "peak_rss": peak}))
"""

# One shard of a run listed in more, scored in a process of its own: what one of several workers does.
SHARD = """
import json, sys, time
from pathlib import Path
import boto3
from mnist_tasks.inference.shard import score_shard
shard, review_uri, work = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
scored = score_shard(s3_client=boto3.client("s3"), shard=shard, min_confidence=0.5, review_uri=review_uri,
                     work_dir=Path(work))
print(json.dumps(scored))
"""

# The same images through a checkout from before shards: one call of its predict_prefix.
BASELINE = """
import json, sys, time
from pathlib import Path
import boto3
from mnist_tasks.inference.batch import predict_prefix
size, input_uri, output_uri, models_uri, work = sys.argv[1:6]
started = time.perf_counter()
result = predict_prefix(s3_client=boto3.client("s3"), input_uri=input_uri, output_uri=output_uri,
                        models_uri=models_uri, work_dir=Path(work), max_images=int(size))
peak = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"seconds": time.perf_counter() - started, "images": result["images"], "peak_rss": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True, help="a directory `prepare` wrote")
    parser.add_argument("--model", type=Path, required=True, help="the .keras model to score with")
    parser.add_argument("--store-pid-file", type=Path, required=True, help="the store server's pid file")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-checkout", type=Path)
    parser.add_argument("--baseline-size", type=int, default=10_000)
    args = parser.parse_args()

    import boto3

    s3 = boto3.client("s3")
    store = StoreCpu(int(args.store_pid_file.read_text()))
    publish(s3, args.model)
    for size in sorted({*args.sizes, args.baseline_size if args.baseline_checkout else args.sizes[0]}):
        store_images(s3, args.cache_dir, size)
    bare = bare_model_rate(args.model, args.cache_dir)
    print(f"the model alone (predict_on_batch, batches of 256, {bare['images']:,} images): "
          f"{bare['rate']:,.0f} images/s")  # fmt: skip
    where_time_goes(s3, store, min(args.sizes))
    profile_shard(s3, min(args.sizes), args.model)
    baseline = None
    if args.baseline_checkout is not None:
        baseline = run_child(args.baseline_checkout, BASELINE, [
            args.baseline_size, input_uri(args.baseline_size), OUTPUT_URI + "baseline/", MODELS_URI,
        ])  # fmt: skip
    rows = []
    for size in args.sizes:
        runs = [
            run_child(REPO, OURS, [size, input_uri(size), OUTPUT_URI + f"{size}/", REVIEW_URI, MODELS_URI, store.pid])
            for _ in range(args.rounds)
        ]
        rows.append((size, runs))
    side_by_side = {size: [two_shard_processes(s3, size) for _ in range(args.rounds)] for size in args.sizes}
    report(rows, bare, baseline, args.baseline_size)
    report_side_by_side(rows, side_by_side)


def two_shard_processes(s3, size: int) -> float:
    """images/s of a run of `size` images in two shards, each scored by a process of its own at the same
    time; listing and combining in this process. Timed like a one-process round: from listing to combined."""
    from mnist_tasks.inference.batch import combine_shards, list_shards

    output_uri = OUTPUT_URI + f"{size}-two/"
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as work:
        started = time.perf_counter()
        shards = list_shards(
            s3_client=s3, input_uri=input_uri(size), output_uri=output_uri, review_uri=REVIEW_URI,
            models_uri=MODELS_URI, work_dir=Path(work), max_images=size, shard_size=-(-size // 2),
        )  # fmt: skip
        with ThreadPoolExecutor(len(shards)) as pool:
            scored = list(pool.map(lambda shard: run_child(REPO, SHARD, [json.dumps(shard), REVIEW_URI]), shards))
        result = combine_shards(
            s3_client=s3, shards=shards, scored=scored, min_confidence=0.5, max_low_confidence_share=1.0,
            review_uri=REVIEW_URI, work_dir=Path(work),
        )  # fmt: skip
        return result["images"] / (time.perf_counter() - started)


def input_uri(size: int) -> str:
    return f"s3://{INBOX}/{BENCH_PREFIX}{size}/"


def publish(s3, model: Path) -> None:
    """--model as version 1 of the benchmark's own registry (once; a published version never changes)."""
    from mnist_tasks.registry import ModelRegistry, VersionConflictError, build_manifest, publish_model, read_latest

    registry = ModelRegistry(s3, MODELS_URI)
    if read_latest(registry=registry) is not None:
        return
    manifest = build_manifest(
        version=VERSION, run_id="bench-batch", dag_id="bench-batch", params={}, data={},
        metrics={"passed": True}, started_at=None,
    )  # fmt: skip
    with contextlib.suppress(VersionConflictError):  # an earlier run's model: the benchmark scores with it
        publish_model(registry=registry, version=VERSION, files={"model.keras": model}, manifest=manifest)


def store_images(s3, cache_dir: Path, size: int) -> None:
    """MNIST's test digits as PNGs under the size's prefix, repeated under new keys up to `size` (once)."""
    import numpy as np
    from PIL import Image

    prefix = f"{BENCH_PREFIX}{size}/"
    present = sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=INBOX, Prefix=prefix))  # fmt: skip
    if present == size:
        return
    digits = np.load(cache_dir / "x_test.npy")

    def put(i: int) -> None:
        png = io.BytesIO()
        Image.fromarray(np.round(digits[i % len(digits)] * 255).astype(np.uint8)).save(png, format="PNG")
        s3.put_object(Bucket=INBOX, Key=f"{prefix}{i:07d}.png", Body=png.getvalue())

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(size)))
    print(f"stored {size:,} PNGs under s3://{INBOX}/{prefix} in {time.perf_counter() - started:.0f} s", flush=True)


class StoreCpu:
    """The store server's CPU time so far (user + system, from /proc/<pid>/stat)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def where_time_goes(s3, store: StoreCpu, size: int, count: int = 2_000) -> None:
    """A shard's stages alone on `count` of the size's images: the GETs (signed_get's, as a shard
    does them, and boto3's get_object), each with the client's and the store's CPU per GET; then
    decoding + preprocessing."""
    from mnist_tasks.inference.preprocess import digits_in_bytes
    from mnist_tasks.inference.shard import FETCHES
    from mnist_tasks.signed_get import SignedGetter

    keys = [f"{BENCH_PREFIX}{size}/{i:07d}.png" for i in range(min(count, size))]
    getter = SignedGetter.for_client(s3)
    assert getter.fast, "signed_get cannot take its fast path with this client"
    bodies: list[bytes] = []
    for name, get in (
        ("signed_get", lambda key: getter.get(INBOX, key)),
        ("boto3 get_object", lambda key: s3.get_object(Bucket=INBOX, Key=key)["Body"].read()),
    ):
        started, cpu, store_cpu = time.perf_counter(), time.process_time(), store.seconds()
        with ThreadPoolExecutor(FETCHES) as pool:
            bodies = list(pool.map(get, keys))
        here, there = (time.process_time() - cpu) / len(keys), (store.seconds() - store_cpu) / len(keys)
        print(f"GETs alone, {name} ({FETCHES} threads, {len(keys):,} images): "
              f"{len(keys) / (time.perf_counter() - started):,.0f} images/s; "
              f"CPU per GET {here * 1e6:,.0f} µs here, {there * 1e6:,.0f} µs in the store")  # fmt: skip
    cpu = time.process_time()
    for key, body in zip(keys, bodies, strict=True):
        digits_in_bytes(body, name=key)
    per_image = (time.process_time() - cpu) / len(keys)
    print(f"decode + preprocess alone (one thread): {1 / per_image:,.0f} images/s, "
          f"{per_image * 1e6:,.0f} µs CPU per image")  # fmt: skip


def profile_shard(s3, size: int, model_path: Path, count: int = 2_000) -> None:
    """cProfile of a shard's work on `count` images done in one thread (signed GET, decode and preprocess, the
    model on batches of BATCH_SIZE): its own CPU time by library, largest first. The shard's fetch
    threads overlap only the waits; cProfile sees one thread."""
    import cProfile
    import pstats
    from collections import Counter

    from mnist_tasks.files import sha256_file
    from mnist_tasks.inference.predict import classify
    from mnist_tasks.inference.preprocess import digits_in_bytes
    from mnist_tasks.inference.shard import BATCH_SIZE
    from mnist_tasks.model.loading import load_keras_model
    from mnist_tasks.signed_get import SignedGetter

    model = load_keras_model(model_path, sha256=sha256_file(model_path))
    keys = [f"{BENCH_PREFIX}{size}/{i:07d}.png" for i in range(min(count, size))]
    getter = SignedGetter.for_client(s3)

    def work() -> None:
        fields = []
        for key in keys:
            fields += digits_in_bytes(getter.get(INBOX, key), name=key)
            if len(fields) == BATCH_SIZE:
                classify(model, fields)
                fields = []
        classify(model, fields)

    profiler = cProfile.Profile()
    profiler.runcall(work)
    by_library: Counter[str] = Counter()
    for (filename, _, function), (_, _, own, _, _) in pstats.Stats(profiler).stats.items():
        by_library[_library(filename, function)] += own
    total = sum(by_library.values())
    shares = ", ".join(f"{name} {own / total:.0%}" for name, own in by_library.most_common(8))
    print(f"a shard's work on {len(keys):,} images in one thread, own CPU time by library (cProfile): {shares}")


def _library(filename: str, function: str) -> str:
    """Which library a profiled function belongs to: its package, or for a C function its module or type."""
    import re

    for pattern, text in (
        (r"site-packages/([^/]+)/", filename),
        (r"/(mnist_tasks)/", filename),
        (r"/python3\.\d+/([^/]+?)(?:\.py)?(?:/|$)", filename),  # the standard library
        (r"of '_?([a-zA-Z]+)", function),  # "<method 'recv_into' of '_socket.socket' objects>"
        (r"method ([a-zA-Z]+)", function),  # "<built-in method zlib.decompress>"
    ):
        if found := re.search(pattern, text):
            return found[1]
    return "other built-ins"


def bare_model_rate(model_path: Path, cache_dir: Path) -> dict:
    """The model's own images/s on the preprocessed test digits, in a child (TensorFlow stays out of this one)."""
    code = """
import json, sys, time
import keras, numpy as np
model = keras.models.load_model(sys.argv[1], safe_mode=True)
x = np.load(sys.argv[2]).reshape((-1, *model.input_shape[1:]))
model.predict_on_batch(x[:256])
started = time.perf_counter()
for start in range(0, len(x), 256):
    model.predict_on_batch(x[start:start + 256])
print(json.dumps({"images": len(x), "seconds": time.perf_counter() - started}))
"""
    measured = run_child(REPO, code, [model_path, cache_dir / "x_test.npy"])
    return {"images": measured["images"], "rate": measured["images"] / measured["seconds"]}


def run_child(checkout: Path, code: str, args: list) -> dict:
    """The JSON line a child Python prints last.

    A child reports its own peak RSS from /proc/self/status (VmHWM): the kernel's
    ru_maxrss of a child starts from its parent's at fork, which it would then report.
    """
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as work:
        env = {**os.environ, "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args), work], cwd=checkout, env=env,
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child in {checkout} failed with status {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def report(rows: list, bare: dict, baseline: dict | None, baseline_size: int) -> None:
    print()
    print(f"{'images':>8}  {'end to end, images/s':>22}  {'shard alone, images/s':>22}  "
          f"{'vs the model alone':>20}  {'peak RSS, GB':>18}  {'CPU/image, shard µs':>20}  "
          f"{'CPU/image, store µs':>20}  {f'{CORES} cores allow, images/s':>24}")  # fmt: skip
    for size, runs in rows:
        end_to_end = [run["images"] / run["seconds"] for run in runs]
        shard = [run["images"] / run["shard_seconds"] for run in runs]
        ratio = [rate / bare["rate"] for rate in end_to_end]
        rss = [run["peak_rss"] / 2**30 for run in runs]
        shard_cpu = [run["cpu_seconds"] / run["images"] * 1e6 for run in runs]
        store_cpu = [run["store_cpu_seconds"] / run["images"] * 1e6 for run in runs]
        allowed = [CORES * 1e6 / (ours + theirs) for ours, theirs in zip(shard_cpu, store_cpu, strict=True)]
        print(f"{size:>8,}  {spread(end_to_end, ',.0f'):>22}  {spread(shard, ',.0f'):>22}  "
              f"{spread(ratio, '.3f'):>20}  {spread(rss, '.2f'):>18}  {spread(shard_cpu, ',.0f'):>20}  "
              f"{spread(store_cpu, ',.0f'):>20}  {spread(allowed, ',.0f'):>24}")  # fmt: skip
    if baseline is not None:
        rate = baseline["images"] / baseline["seconds"]
        ours = [r["images"] / r["seconds"] for size, runs in rows if size == baseline_size for r in runs]
        speedup = f", {statistics.median(ours) / rate:.1f}x faster here" if ours else ""
        print(f"baseline (one predict_prefix call, {baseline_size:,} images): {rate:,.0f} images/s, "
              f"peak RSS {baseline['peak_rss'] / 2**30:.2f} GB{speedup}")  # fmt: skip


def report_side_by_side(rows: list, side_by_side: dict[int, list[float]]) -> None:
    print()
    print(f"{'images':>8}  {'two shard processes side by side, images/s':>44}  {'speedup over one process':>26}")
    for size, runs in rows:
        one = statistics.median(run["images"] / run["seconds"] for run in runs)
        two = side_by_side[size]
        print(f"{size:>8,}  {spread(two, ',.0f'):>44}  {spread([rate / one for rate in two], '.2f'):>26}")


if __name__ == "__main__":
    main()
