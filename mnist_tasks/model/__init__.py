"""The classifier: its architectures, training, evaluation with the gate, the report and the serving export."""
