# The Airflow image for docker compose: the official image plus the pinned stack,
# this project's code, its DAGs and its plugins. Every host of the cluster runs this
# same image, so they all run the same code; after a change, `docker compose build`.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt constraints.txt pyproject.toml /opt/mnist/
COPY --chown=airflow:root mnist_tasks /opt/mnist/mnist_tasks
COPY --chown=airflow:root mnist_airflow /opt/mnist/mnist_airflow
RUN pip install --no-cache-dir -r /opt/mnist/requirements.txt -c /opt/mnist/constraints.txt \
 && pip install --no-cache-dir --no-deps /opt/mnist
COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
# Mount point of the named volume that holds the UI's passwords file: a new volume takes
# this directory's owner and mode, so airflow-init writes it as the airflow user, not root.
RUN mkdir -p -m 700 /opt/airflow/auth
