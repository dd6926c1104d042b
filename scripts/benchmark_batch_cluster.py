"""Batch predictions on `make cluster`: the DAG on its Celery workers, one shard against a shard per task slot.

    python scripts/benchmark_batch_cluster.py --cache-dir DIR --cluster STATE_DIR [--sizes 10000 100000]
                                              [--rounds 2]

`make bench-batch` runs it after scripts/benchmark_batch.py, on the cluster `make cluster`
started (STATE_DIR, running). Through the REST API, on the same images as
benchmark_batch.py stored in the cluster's own store (once), each round runs
mnist_batch_predict with one shard (one worker scores everything) and cut into as many
shards as the workers serving the scoring queue have task slots, each run timed by its
own start and end as the API reports them. It prints both rates, the speedup, and
where the shards ran. The model is the cluster's own `latest` (a retraining run publishes
one first if there is none), and mnist_batch_predict is unpaused for the benchmark, then
paused again if it was. The machines are shared: read ratios and ranges, not single times.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import local_airflow
import local_cluster
import local_s3
from benchmark_batch import input_uri, spread, store_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True, help="a directory `prepare` wrote")
    parser.add_argument("--cluster", type=Path, required=True, help="the state dir of a running `make cluster`")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    on_cluster(args.cluster, args.cache_dir, args.sizes, args.rounds)


class ClusterApi:
    """The REST API of a running `make cluster`, logged in as its admin."""

    def __init__(self, state_dir: Path) -> None:
        import requests

        port = json.loads((state_dir / "cluster.json").read_text())["ports"]["api"]
        self.url = f"http://127.0.0.1:{port}/api/v2"
        passwords = state_dir / "airflow" / "simple_auth_manager_passwords.json.generated"
        login = {"username": local_airflow.USER, "password": json.loads(passwords.read_text())[local_airflow.USER]}
        token = requests.post(f"http://127.0.0.1:{port}/auth/token", json=login, timeout=60)
        token.raise_for_status()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, f"{self.url}/{path}", timeout=60, **kwargs)
        if response.status_code != 200:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def run(self, dag_id: str, conf: dict, timeout: float = 3600) -> dict:
        """Trigger a run and wait for it to end; the run, with its task instances."""
        run_id = self.call("POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})["dag_run_id"]
        deadline = time.monotonic() + timeout
        while (run := self.call("GET", f"dags/{dag_id}/dagRuns/{run_id}"))["state"] not in ("success", "failed"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f} s")
            time.sleep(2)
        if run["state"] != "success":
            raise SystemExit(f"{dag_id} run {run_id} failed: see its task logs in the UI")
        run["task_instances"] = self.call("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return run


def on_cluster(state_dir: Path, cache_dir: Path, sizes: list[int], rounds: int) -> None:
    """The DAG on `make cluster`'s workers: one shard against as many as they have slots for."""
    import boto3

    from mnist_tasks.registry import ModelRegistry, read_latest

    env = local_s3.client_environment(local_s3.credentials(state_dir))
    s3 = boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    api = ClusterApi(state_dir)
    if read_latest(registry=ModelRegistry(s3, local_cluster.MODELS_URI)) is None:
        print("the cluster has no published model: a retraining run publishes one first", flush=True)
        api.run("mnist_retraining", {})
    slots = sum(w.concurrency for w in local_cluster.WORKERS if local_cluster.SCORING_QUEUE in w.queues)
    for size in sizes:
        store_images(s3, cache_dir, size)
    was_paused = api.call("GET", "dags/mnist_batch_predict")["is_paused"]
    api.call("PATCH", "dags/mnist_batch_predict", json={"is_paused": False})
    rates: dict[tuple[int, int], list[float]] = {}
    ran_on: dict[int, list[list[str]]] = {}
    # Task instances report their worker's address; the table names the worker.
    worker_at = {w.address: w.name for w in local_cluster.WORKERS}
    try:
        for size in sizes:
            for _ in range(rounds):
                for shards in (1, slots):
                    run = api.run("mnist_batch_predict", {
                        "input_uri": input_uri(size), "max_images": size, "shard_size": -(-size // shards),
                        "max_low_confidence_share": 1.0,
                    })  # fmt: skip
                    seconds = (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"]))
                    rates.setdefault((size, shards), []).append(size / seconds.total_seconds())
                    if shards > 1:
                        shards_ran = [ti for ti in run["task_instances"] if ti["task_id"] == "score"]
                        hosts = sorted(worker_at.get(ti["hostname"], ti["hostname"]) for ti in shards_ran)
                        ran_on.setdefault(size, []).append(hosts)
    finally:
        api.call("PATCH", "dags/mnist_batch_predict", json={"is_paused": was_paused})
    workers = ", ".join(f"{w.name} ({w.concurrency})" for w in local_cluster.WORKERS)
    print(f"\nmake cluster: mnist_batch_predict's runs on the workers serving the scoring queue, {workers} "
          f"task slots; each run timed from its start to its end")  # fmt: skip
    print(f"{'images':>8}  {'one shard, images/s':>22}  {f'{slots} shards, images/s':>22}  {'speedup':>18}  "
          "shards ran on")  # fmt: skip
    for size in sizes:
        one, many = rates[(size, 1)], rates[(size, slots)]
        speedups = [b / a for a, b in zip(one, many, strict=True)]
        where = "; ".join(", ".join(hosts) for hosts in ran_on[size])
        print(f"{size:>8,}  {spread(one, ',.0f'):>22}  {spread(many, ',.0f'):>22}  "
              f"{spread(speedups, '.2f'):>18}  {where}")  # fmt: skip


if __name__ == "__main__":
    main()
