"""The two classes every error this package raises on purpose derives from.

`MnistError`: raised on purpose; its message already names the problem (file, expected,
got), so the CLI prints just the message. `PermanentError`: a failure a retry cannot fix
(wrong bytes, a bad parameter, a failed gate, a registry object a person must mend), so a
DAG task fails at once instead of waiting out its retries (mnist_airflow.wiring.not_retried).
Errors that a later try may not meet (a download, a lost write, a store that is down) derive
from MnistError only, and Airflow retries them.
"""

from __future__ import annotations


class MnistError(Exception):
    """Raised on purpose by mnist_tasks: the message says what is wrong and where."""


class PermanentError(MnistError):
    """Trying again finds the same: the task fails at once, and someone must act."""
