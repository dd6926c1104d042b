"""The retraining pipeline's steps, the run's artifact store they share, and a model's lineage."""
