"""The logic of the MNIST retraining pipeline, importable and testable without Airflow."""
