"""Run a DAG once in this process (`dag.test()`) and end with one JSON line about the run.

    python scripts/run_dag.py [--dag-id mnist_retraining] [--conf '{"epochs": 1}']

Airflow's own log goes before the summary; the last line of stdout is the JSON.
The exit code is 0 only when the run succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def run_and_summarize(dag_id: str, conf: dict) -> dict:
    from airflow.configuration import conf as airflow_conf
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=airflow_conf.get("core", "dags_folder"))
    if bag.import_errors:
        raise SystemExit(f"the DAG folder has import errors: {json.dumps(bag.import_errors, indent=2)}")
    dag = bag.dags[dag_id]
    # dag.test() crashes at the end of a successful run of a DAG with a deadline
    # (apache/airflow#73428); its runs are never queued, so a deadline counted
    # from queueing would not be created anyway.
    dag.deadline = None
    started = time.monotonic()
    dag_run = dag.test(run_conf=conf)
    seconds = round(time.monotonic() - started, 1)

    with create_session() as session:
        task_states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
        xcoms = {
            (row.task_id, row.key): XComModel.deserialize_value(row)
            for row in session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id))
        }
    # evaluate returns its metrics when the gate passes and pushes them as
    # "evaluation" when it fails the run, so both outcomes report the accuracy.
    evaluation = xcoms.get(("evaluate", "return_value")) or xcoms.get(("evaluate", "evaluation")) or {}
    published = xcoms.get(("publish", "return_value")) or {}
    return {
        "dag_id": dag_id,
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "failed_tasks": sorted(t for t, s in task_states.items() if s == "failed"),
        "test_accuracy": evaluation.get("accuracy"),
        "accuracy_threshold": evaluation.get("threshold"),
        "champion_accuracy": evaluation.get("champion_accuracy"),
        "gate": None if "passed" not in evaluation else ("passed" if evaluation["passed"] else "failed"),
        "model_version": published.get("version"),
        "model_uri": published.get("model_uri"),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dag-id", default="mnist_retraining")
    parser.add_argument("--conf", type=json.loads, default={}, help="DAG Params as a JSON object")
    args = parser.parse_args()
    summary = run_and_summarize(args.dag_id, args.conf)
    print(json.dumps(summary), flush=True)
    sys.exit(0 if summary["state"] == "success" else 1)


if __name__ == "__main__":
    main()
