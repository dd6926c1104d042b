# The settings every stack shares, once: `make run` and `make airflow` (the Makefile includes
# this file, which exports them), `make cluster` and `make airflow`'s components
# (scripts/local_cluster.py and scripts/local_airflow.py read it through
# scripts/stack_environment.py), and docker-compose.yaml, whose x-airflow-common environment
# begins with them, written by `python scripts/stack_environment.py --write`.
# tests/test_deployment_environment.py fails when any stack disagrees with this file.
#
# Why a fragment of a Makefile: make reads it as it is, and make's two kinds of assignment are
# the two kinds of setting. `NAME = value` is what every stack sets, whatever the caller's
# environment holds (a local stack must never reach a real bucket someone exported);
# `NAME ?= value` is a default that the caller's environment, or compose's .env, changes.
# Compose cannot read it (docker-compose 1.29 does not interpolate an env_file's
# `${NAME:-default}`), so its block is generated. $(PROJECT_DIR) is the directory that holds
# dags/ and plugins/: the checkout locally, /opt/airflow in the image (Dockerfile). No other `$`,
# `#`, quotes or backslashes in a value, and never a secret: secrets have no default (compose
# requires each from .env, the local stacks generate theirs).
# What differs between stacks stays in each stack's own file: the executor, ports, hosts, the
# database, the keys, the login, MNIST_MIRRORS, MNIST_DATA_DIR, and the Celery queues and
# remote task logs of the two CeleryExecutor stacks (make cluster and compose, which a test
# holds to each other).

# No example DAGs: the project's own DAGs and plugins.
export AIRFLOW__CORE__LOAD_EXAMPLES = False
export AIRFLOW__CORE__DAGS_FOLDER = $(PROJECT_DIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER = $(PROJECT_DIR)/plugins
# Log-ins go through the SimpleAuthManager; each stack names its users. Teams needing several
# users, roles or SSO switch to the FAB or Keycloak auth manager (and that provider's settings).
export AIRFLOW__CORE__AUTH_MANAGER = airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
# How long a running task may go without a heartbeat before the scheduler fails it (and
# retries it), and how often it looks: with the TensorFlow tasks' retry delay below, the time a
# dead worker's task takes to come back. A task's supervisor, a process apart from the task,
# heartbeats every 5 s ([workers] min_heartbeat_interval) however busy TensorFlow keeps the
# cores, so 60 s is twelve missed heartbeats: Airflow's 300 s only delays the retry of a dead
# worker's task. The scheduler looks every 10 s (its default).
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT ?= 60
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL ?= 10
# Seconds before a failed task's first retry, doubling after, and the same for the TensorFlow
# tasks (train, evaluate, batch predictions' shards), which a lost worker is what nearly always
# fails. The product's own defaults (mnist_tasks/settings.py), spelled out for every stack.
export MNIST_RETRY_DELAY_SECONDS ?= 300
export MNIST_TRAINING_RETRY_DELAY_SECONDS ?= 15
# Alerts: recipients, separated by spaces or commas (none), whether successful runs are
# announced too, and the minutes after which a run still going alerts. Create the connections
# mnist_alerts_smtp / mnist_alerts_webhook to switch them on.
export MNIST_ALERT_EMAIL_TO ?=
export MNIST_NOTIFY_ON_SUCCESS ?= false
export MNIST_RUN_DEADLINE_MINUTES ?= 120
# The product's places in the project's buckets, which every stack's S3 store has: published
# models, the artifact store tasks hand each other URIs in (they share no disk), batch
# predictions' input and output, the images they were unsure of, the labelled digits (the
# review page files them, mnist_retraining trains on them) and the review log.
export MNIST_MODELS_URI = s3://mnist-models/mnist/
export MNIST_ARTIFACTS_URI = s3://mnist-artifacts/
export MNIST_PREDICT_INPUT_URI = s3://mnist-inbox/images/
export MNIST_PREDICTIONS_URI = s3://mnist-predictions/predictions/
export MNIST_REVIEW_URI = s3://mnist-inbox/review/
export MNIST_LABELED_URI = s3://mnist-inbox/labeled/
export MNIST_REVIEW_LOG_URI = s3://mnist-inbox/review-log/
