"""The logic of the MNIST retraining pipeline, importable and testable without Airflow."""

import os

# TensorFlow's C++ core writes to fd 2 at start-up (CPU features, oneDNN, absl's notice) and on
# every fit a harmless ERROR ("NodeDef mentions attribute use_unbounded_threadpool ... This may be
# expected"); Airflow's task log tags all of fd 2 ERROR. TensorFlow reads this variable when it
# first logs. Here, because every path that imports TensorFlow imports this package first: the DAG
# files (at parse time, in each task's process), the plugins and `python -m mnist_tasks`; only the
# modules of this package import TensorFlow, and only inside functions. 3 leaves FATAL alone: the
# errors that matter reach Python as exceptions, logged with the task's failure. setdefault: an
# operator who sets it (0 shows everything) keeps their value.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
