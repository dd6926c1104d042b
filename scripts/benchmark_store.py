"""How long the embedded object store takes to start and stop, beside moto's server, which it replaced;
and, given a checkout from before the change, a warm `make run` there and here.

    python scripts/benchmark_store.py [--rounds 5] [--baseline-checkout DIR]

Each round, alternating: moto's server started until it answers (the old `make
run`'s store, in memory), then the embedded store (scripts/local_s3.py start,
as `make run` calls it) from an empty state dir, then again from the data the
first start left (a restart, as after `make stop`), and its stop.

With --baseline-checkout (e.g. `git worktree add /tmp/baseline 3a3cef1`), each
round also runs a warm `make run` in that checkout (with this checkout's .venv,
its store on port 9300) and then here, after one unmeasured run in each.

Wall times of the whole commands, Python's start-up included; medians and
ranges. The machines are shared: read ratios and ranges, not single times.
moto's server comes with the test requirements (`make test` installs them).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PORT = 9400  # and the seven after it; not `make run`'s 9000 or `make cluster`'s 9180


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def moto_start(port: int) -> float:
    """moto's server from launch until it answers, then stopped (the time to stop is not counted)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=5):
                    break
            except urllib.error.HTTPError:
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None:
                    raise SystemExit("moto_server exited") from None
                time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait()


def store_round(state_dir: Path) -> dict[str, float]:
    script = [sys.executable, "scripts/local_s3.py"]
    state = ["--state-dir", str(state_dir)]
    fresh = timed([*script, "start", "--port", str(PORT), *state])
    stop = timed([*script, "stop", *state])
    restart = timed([*script, "start", "--port", str(PORT), *state])
    timed([*script, "stop", *state])
    return {"fresh start": fresh, "restart": restart, "stop": stop}


def make_run(checkout: Path) -> float:
    """A whole `make run` in `checkout` with this checkout's virtualenv (warm: its store and caches are up)."""
    extra = [] if checkout == REPO else [f"VENV={REPO / '.venv'}", "S3_PORT=9300"]
    return timed(["make", "--no-print-directory", "-C", str(checkout), "run", *extra])


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-checkout", type=Path, help="a checkout from before the change, for `make run`")
    args = parser.parse_args()
    if not all(_free(port) for port in range(PORT, PORT + 9)):
        sys.exit(f"ports {PORT}-{PORT + 8} are in use")
    times: dict[str, list[float]] = {}
    checkouts = {}
    if args.baseline_checkout:
        checkouts = {"make run (before)": args.baseline_checkout.resolve(), "make run (after)": REPO}
    for checkout in checkouts.values():
        make_run(checkout)  # warm-up: the store, the mirror, the prepared arrays
    for _ in range(args.rounds):
        for name, checkout in checkouts.items():
            times.setdefault(name, []).append(make_run(checkout))
        times.setdefault("moto start (before)", []).append(moto_start(PORT + 8))
        state_dir = Path(tempfile.mkdtemp(prefix="mnist-bench-store-"))
        try:
            for name, seconds in store_round(state_dir).items():
                times.setdefault(f"store {name}", []).append(seconds)
        finally:
            shutil.rmtree(state_dir)
    for name, values in times.items():
        print(f"{name:22s} median {statistics.median(values):5.2f} s  range {min(values):5.2f}-{max(values):5.2f} s")
    moto = statistics.median(times["moto start (before)"])
    for name in ("store fresh start", "store restart"):
        print(f"{name} / moto start: {statistics.median(times[name]) / moto:.2f}")
    if checkouts:
        ratio = statistics.median(times["make run (after)"]) / statistics.median(times["make run (before)"])
        print(f"make run after / before: {ratio:.2f}")


if __name__ == "__main__":
    main()
