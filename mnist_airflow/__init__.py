"""Airflow glue that is not a plugin: how the DAGs build their tasks, and the alert callbacks.

Installed with the project (pyproject.toml), so every Airflow component imports it by
name: the scheduler and workers parse DAGs with it, and the triggerer imports the
deadline callback `mnist_airflow.alerting.alert_run_overdue` by its dotted path.
mnist_tasks stays free of Airflow; this package is where the two meet.
"""
