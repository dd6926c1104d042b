"""The plugin that registers the DAGs' timetable and the scheduler's listener (mnist_airflow/schedules.py)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mnist_airflow.schedules import FutureRunFailer, PastCronTimetable


class MnistSchedulesPlugin(AirflowPlugin):
    """Registers PastCronTimetable (only registered custom timetables can be deserialized) and FutureRunFailer."""

    name = "mnist_schedules"
    timetables = [PastCronTimetable]
    listeners = [FutureRunFailer()]
