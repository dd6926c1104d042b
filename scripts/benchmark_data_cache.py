"""How much the verified-download and prepared-array caches save, measured.

    python scripts/benchmark_data_cache.py --mirror file:///path/to/mirror/ [--repeat 3]

Times, on the same machine and in the same run:
- seed-style: what the original MNIST write-up does on every run, decode the
  gzip IDX files and scale to float32 in memory (no verification, no cache);
- cold: our download (fetch + sha256 verify) and prepare (decode, validate,
  write the .npy cache) into an empty directory;
- warm: the same two calls again (verified copy reused, cache hit) and
  opening the arrays memory-mapped, which is what every later run does.
Build a mirror first with `python -m mnist_tasks mirror --to DIR`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path


def _seed_style(raw_dir: Path) -> None:
    from mnist_tasks.data.idx import read_idx_images, read_idx_labels

    for split in ("train", "t10k"):
        images = read_idx_images(raw_dir / f"{split}-images-idx3-ubyte.gz").astype("float32") / 255.0
        read_idx_labels(raw_dir / f"{split}-labels-idx1-ubyte.gz")
        images.sum()  # touch every value, as training would


def _ours(mirror: str, data_dir: Path) -> dict:
    from mnist_tasks.data.download import download_mnist
    from mnist_tasks.data.prepare import load_prepared, prepare_dataset

    download_mnist(mirrors=[mirror], raw_dir=data_dir / "raw")
    prepared = prepare_dataset(raw_dir=data_dir / "raw", cache_root=data_dir / "prepared")
    x_train, _, x_test, _ = load_prepared(Path(prepared["cache_dir"]))
    x_train.sum(), x_test.sum()
    return prepared


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True, help="file://, https:// or http:// base URL of an MNIST mirror")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    seed, cold, warm = [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp)
            cold.append(_timed(functools.partial(_ours, args.mirror, data_dir)))
            warm.append(_timed(functools.partial(_ours, args.mirror, data_dir)))
            seed.append(_timed(functools.partial(_seed_style, data_dir / "raw")))

    print(f"{'variant':<34}{'median s':>10}{'min s':>8}   (n={args.repeat})")
    for name, times in [
        ("seed-style decode + scale", seed),
        ("ours, cold (fetch+verify+cache)", cold),
        ("ours, warm (verify + cache hit)", warm),
    ]:
        print(f"{name:<34}{statistics.median(times):>10.2f}{min(times):>8.2f}")


if __name__ == "__main__":
    main()
