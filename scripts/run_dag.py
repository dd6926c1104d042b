"""Run a DAG once in this process (`dag.test()`) and end with one JSON line about the run.

    python scripts/run_dag.py [--dag-id mnist_retraining] [--conf '{"epochs": 1}']

Airflow's own log goes before the summary; the last line of stdout is the JSON.
The exit code is 0 only when the run succeeded.

The run happens in a child process: Airflow's task runner replaces the SIGTERM
handler of the process it runs tasks in (and keeps it while `dag.test()` waits
for a retry), so this process stays the one that answers SIGTERM and Ctrl-C:
it interrupts the child, kills it if it has not stopped within GRACE_SECONDS,
and exits with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time

# Set in the child that runs the DAG.
CHILD = "MNIST_RUN_DAG_CHILD"
# How long the child gets to stop after SIGTERM or SIGINT before it is killed.
GRACE_SECONDS = 10


def run_and_summarize(dag_id: str, conf: dict) -> dict:
    from airflow.configuration import conf as airflow_conf
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=airflow_conf.get("core", "dags_folder"))
    if bag.import_errors:
        raise SystemExit(f"the DAG folder has import errors: {json.dumps(bag.import_errors, indent=2)}")
    dag = bag.dags[dag_id]
    _retire_unreferenced_assets(bag)
    # dag.test() crashes at the end of a successful run of a DAG with a deadline
    # (apache/airflow#73428); its runs are never queued, so a deadline counted
    # from queueing would not be created anyway.
    dag.deadline = None
    started = time.monotonic()
    dag_run = dag.test(run_conf=conf)
    seconds = round(time.monotonic() - started, 1)

    with create_session() as session:
        task_instances = dag_run.get_task_instances(session=session)
        task_states = {ti.task_id: str(ti.state) for ti in task_instances}
        task_seconds = {ti.task_id: round(ti.duration or 0.0, 2) for ti in task_instances}
        xcoms = {
            (row.task_id, row.key): XComModel.deserialize_value(row)
            for row in session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id))
        }
    # evaluate returns its metrics when the gate passes and pushes them as
    # "evaluation" when it fails the run, so both outcomes report the accuracy.
    evaluation = xcoms.get(("evaluate", "return_value")) or xcoms.get(("evaluate", "evaluation")) or {}
    published = xcoms.get(("publish", "return_value")) or {}
    labeled_set = (xcoms.get(("prepare", "return_value")) or {}).get("labeled") or {}
    labeled_evaluation = evaluation.get("labeled") or {}
    return {
        "dag_id": dag_id,
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "failed_tasks": sorted(t for t, s in task_states.items() if s == "failed"),
        "test_accuracy": evaluation.get("accuracy"),
        "accuracy_threshold": evaluation.get("threshold"),
        "champion_accuracy": evaluation.get("champion_accuracy"),
        "gate": None if "passed" not in evaluation else ("passed" if evaluation["passed"] else "failed"),
        "gate_message": evaluation.get("message"),
        # The users' labelled set: how much of it trained and tested, what was left out and why, and the accuracy.
        "labeled": {
            "train_count": labeled_set.get("train_count"),
            "test_count": labeled_set.get("test_count"),
            "excluded": labeled_set.get("excluded"),
            "accuracy": labeled_evaluation.get("accuracy"),
            "champion_accuracy": labeled_evaluation.get("champion_accuracy"),
            "gated": labeled_evaluation.get("gated"),
        },
        "model_version": published.get("version"),
        # Set when nothing changed since the version latest points at: the run trained nothing.
        "unchanged_since": xcoms.get(("anything_new", "unchanged_since")),
        "model_uri": published.get("model_uri"),
        "serving_uri": published.get("serving_uri"),
        "seconds": seconds,
        "task_seconds": task_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dag-id", default="mnist_retraining")
    parser.add_argument("--conf", type=json.loads, default={}, help="DAG Params as a JSON object")
    args = parser.parse_args()
    if os.environ.get(CHILD) != "1":
        sys.exit(_run_in_child())
    summary = run_and_summarize(args.dag_id, args.conf)
    print(json.dumps(summary), flush=True)
    # This process ends here. Without the freeze, Python's shutdown spends about 3 s
    # garbage-collecting what Airflow, TensorFlow and SQLAlchemy left behind (seen with
    # py-spy in gc_collect_main; `make bench` times the whole run). atexit handlers still run.
    gc.freeze()
    sys.exit(0 if summary["state"] == "success" else 1)


def _run_in_child() -> int:
    child: subprocess.Popen | None = None
    stopped_by: list[int] = []
    killers: list[threading.Timer] = []

    def stop(signum: int, _frame) -> None:
        # Only signals here: the main thread may be inside child.wait(), whose lock
        # a second wait() in this handler would wait for forever.
        stopped_by.append(signum)
        if child is not None and not killers:
            # SIGINT, as Ctrl-C would: Airflow's task runner answers SIGTERM only by
            # killing the task, while KeyboardInterrupt ends dag.test() at once.
            _signal_group(child.pid, signal.SIGINT)
            killers.append(threading.Timer(GRACE_SECONDS, _signal_group, args=(child.pid, signal.SIGKILL)))
            killers[0].daemon = True
            killers[0].start()

    # Installed first: a signal that arrives while the child starts is not lost.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    child = subprocess.Popen([sys.executable, *sys.argv], env={**os.environ, CHILD: "1"}, start_new_session=True)
    if stopped_by:
        stop(stopped_by[0], None)
    code = child.wait()
    for killer in killers:
        killer.cancel()
    if stopped_by:
        print(f"stopped by {signal.Signals(stopped_by[0]).name}", file=sys.stderr, flush=True)
        return 128 + stopped_by[0]
    return code


def _retire_unreferenced_assets(bag) -> None:
    """The scheduler's asset housekeeping, which dag.test() does not do: with only `make run`, nothing else would.

    An Airflow home made by an earlier version of these DAGs can hold an Asset of
    another name for the same URI (`mnist_model`, before the Asset was named by
    its URI). It stays active until the scheduler sees that no DAG refers to it,
    and while it holds the URI the new Asset cannot be activated: publish fails
    with AirflowInactiveAssetInInletOrOutletException. So: record the DAGs as
    parsed now, then retire what they no longer refer to and activate what they do.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import sync_bag_to_db
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)  # what dag.test() does first, too
    sync_bag_to_db(bag, bundle_name="dags-folder", bundle_version=None)
    with create_session() as session:
        # Its steps are static methods, so the class stands in for a running scheduler.
        SchedulerJobRunner._update_asset_orphanage(SchedulerJobRunner, session=session)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, sig)

if __name__ == "__main__":
    main()
