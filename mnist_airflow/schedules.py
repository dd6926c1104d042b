"""The DAGs' schedule: a cron timetable that refuses runs dated in the future, and its listener.

PastCronTimetable must be registered by a plugin (plugins/mnist_schedules.py) for
the scheduler and the API server to rebuild it from the serialized DAGs; the
listener fails a run dated in the future as it starts.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from airflow.listeners import hookimpl
from airflow.timetables.trigger import CronTriggerTimetable

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.timetables.base import DataInterval
    from pendulum import DateTime

log = logging.getLogger(__name__)

# How far ahead of the API server's clock a manual run's logical date may be: the
# browser that filled in the trigger form's "now" may run a little ahead.
CLOCK_SKEW = timedelta(minutes=5)


class PastCronTimetable(CronTriggerTimetable):
    """A cron schedule whose manual runs may not have a logical date in the future.

    Airflow 3.3.2 accepts any logical date on a trigger, but its scheduler does not
    schedule the tasks of a running run whose logical date is still ahead: it logs
    "Logical date is in future" every loop, and with max_active_runs=1 every later
    run, the nightly included, queues behind it until dagrun_timeout fails it.
    Where Airflow asks the timetable for a manual run's data interval from its
    logical date (the REST API, so the UI's Trigger button, unless the request
    brings its own interval; dag.test()), such a run is refused: 400 with this
    message, nothing created, the person reads why at once. The other ways in
    (`airflow dags trigger`, which asks with the current time, a REST request with
    its own interval) are failed as they start, by FutureRunFailer.
    """

    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        if (problem := future_date_problem(run_after)) is not None:
            raise ValueError(problem)
        return super().infer_manual_data_interval(run_after=run_after)


def future_date_problem(logical_date: DateTime | None) -> str | None:
    """Why a run with this logical date must not run now, or None when it may."""
    from airflow.sdk import timezone

    now = timezone.utcnow()
    if logical_date is None or logical_date <= now + CLOCK_SKEW:
        return None
    return (
        f"logical date {logical_date.isoformat()} is in the future (now {now.isoformat(timespec='seconds')}): "
        "Airflow would hold the run, and every later run of this DAG behind it, until then. "
        "Trigger without a logical date, or with one that has passed"
    )


class FutureRunFailer:
    """A scheduler listener: a run of a PastCronTimetable DAG dated in the future fails as it starts.

    The backstop for the triggers the timetable never sees. Failed at once, the
    run frees the DAG's one running slot; its note in the UI and the scheduler's
    log say why. (Listeners are told of a state change; this one makes another.
    It is the only hook Airflow 3.3.2 runs as a queued run starts, and a failure
    in it is logged by Airflow and changes nothing.)
    """

    @hookimpl
    def on_dag_run_running(self, dag_run: DagRun, msg: str) -> None:
        timetable = getattr(dag_run.dag, "timetable", None)
        if not isinstance(getattr(timetable, "timetable", timetable), PastCronTimetable):
            return  # not one of ours (an AssetOrTimeSchedule holds its cron timetable)
        if (problem := future_date_problem(dag_run.logical_date)) is None:
            return
        from airflow.utils.state import DagRunState

        log.error("failing %s run %s: %s", dag_run.dag_id, dag_run.run_id, problem)
        dag_run.set_state(DagRunState.FAILED)
        dag_run.note = (f"Failed as it started: {problem}.", None)
