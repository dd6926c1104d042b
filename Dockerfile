# The Airflow image for docker compose: the official image plus the pinned stack
# and this project's code.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt constraints.txt pyproject.toml /opt/mnist/
COPY --chown=airflow:root mnist_tasks /opt/mnist/mnist_tasks
RUN pip install --no-cache-dir -r /opt/mnist/requirements.txt -c /opt/mnist/constraints.txt \
 && pip install --no-cache-dir --no-deps /opt/mnist
