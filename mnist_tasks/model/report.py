"""Report pictures and the self-contained `report.html` of an evaluated model.

Two moments, because they know different things:

- evaluate.py calls `render_pictures` with the predictions it has just made
  (the test set is predicted once, for the metrics and the pictures alike);
- the publish step calls `write_report`, because the report shows the
  manifest's lineage (data checksums, Params, code and library versions, run
  id), which exists only then. The manifest it is given is the one published
  except for `files`: those checksums include report.html itself. The model's
  own sha256 is in metrics.json and shown with the metrics.

report.html's markup is the Jinja2 template templates/report.html.j2, rendered
with autoescaping. Pictures are embedded in it as data URIs and it needs no CSS,
script or font from anywhere else, so it opens the same from S3, a browser
download or a local disk.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np

from mnist_tasks.files import atomic_path
from mnist_tasks.model.architecture import NUM_CLASSES
from mnist_tasks.registry import trained_with

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PREDICTIONS_FILE = "predictions.png"
MISCLASSIFIED_FILE = "misclassified.png"
CONFUSION_FILE = "confusion_matrix.png"
CURVES_FILE = "training_curves.png"
REPORT_FILE = "report.html"
# In the order report.html shows them, with their captions.
PICTURES = {
    PREDICTIONS_FILE: "The first test digits with the predicted digit, its probability and the true digit; "
    "wrong predictions are red.",
    MISCLASSIFIED_FILE: "The misclassified test digits the model was most sure about.",
    CONFUSION_FILE: "Confusion matrix: counts of true digit (row) against predicted digit (column); "
    "shading is the fraction of the row.",
    CURVES_FILE: "Loss and accuracy per epoch, on the training data and the held-out validation split.",
}
# What `python -m mnist_tasks report` fetches from a published version.
REPORT_FILES = (REPORT_FILE, *PICTURES)

GRID_COLUMNS = 5
GRID_COUNT = 25  # digits per grid: the first 25 test images, the 25 most confident mistakes
DPI = 100
WRONG = "#c62828"


def _figure(width: float, height: float) -> Figure:
    """A detached Figure (inches): no pyplot state, so nothing piles up in a long-lived worker."""
    import matplotlib

    # Workers have no display. Chosen here rather than at import time, so that
    # parsing the DAG never loads matplotlib.
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure: Figure, path: Path) -> str:
    with atomic_path(path) as tmp:
        # No "Software" tag (matplotlib's version): the same inputs give the same bytes.
        figure.savefig(tmp, format="png", metadata={"Software": None})
    return str(path)


def most_confident_mistakes(*, labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` misclassified images, most confident first (ties: lower index first)."""
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    confidence = probabilities[wrong, predictions[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def _digit_cell(ax: Axes, image: np.ndarray, *, predicted: int, confidence: float, label: int) -> None:
    # MNIST is light ink on black; shown as dark ink on white, as a digit is usually seen.
    ax.imshow(image, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    right = predicted == label
    colour = "black" if right else WRONG
    ax.set_title(
        f"pred {predicted} ({confidence:.1%})\ntrue {label}",
        fontsize=10,
        color=colour,
        fontweight="normal" if right else "bold",
    )
    for spine in ax.spines.values():
        spine.set_color("#bbbbbb" if right else WRONG)
        spine.set_linewidth(0.8 if right else 2.5)


def _digit_grid(
    *, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, indices: np.ndarray, title: str, path: Path
) -> str:
    rows = math.ceil(len(indices) / GRID_COLUMNS)
    figure = _figure(GRID_COLUMNS * 1.7, rows * 2.0 + 0.5)
    figure.suptitle(title, fontsize=12)  # with no digits to show, the title is the whole picture
    predictions = probabilities.argmax(axis=1)
    for position, i in enumerate(indices):
        _digit_cell(
            figure.add_subplot(rows, GRID_COLUMNS, position + 1),
            np.asarray(images[i]),
            predicted=int(predictions[i]),
            confidence=float(probabilities[i, predictions[i]]),
            label=int(labels[i]),
        )
    return _save(figure, path)


def plot_predictions(*, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, path: Path) -> str:
    """A grid of the first GRID_COUNT test images: predicted digit, its probability, true digit; wrong in red."""
    indices = np.arange(min(GRID_COUNT, len(labels)))
    wrong = int((probabilities[indices].argmax(axis=1) != labels[indices]).sum())
    return _digit_grid(
        images=images,
        labels=labels,
        probabilities=probabilities,
        indices=indices,
        title=f"The first {len(indices)} test digits: predicted (probability) and true digit, {wrong} wrong",
        path=path,
    )


def plot_misclassified(*, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, path: Path) -> str:
    """A grid of the GRID_COUNT misclassified test images with the highest predicted probability."""
    indices = most_confident_mistakes(labels=labels, probabilities=probabilities, count=GRID_COUNT)
    errors = int((probabilities.argmax(axis=1) != labels).sum())
    if errors:
        title = f"The {len(indices)} most confident of {errors} misclassified test digits (of {len(labels)})"
    else:
        title = f"No misclassified test digits (of {len(labels)})"
    return _digit_grid(
        images=images, labels=labels, probabilities=probabilities, indices=indices, title=title, path=path
    )


def plot_confusion_matrix(*, confusion: np.ndarray, path: Path) -> str:
    """Heatmap of a (10, 10) confusion matrix (rows true, columns predicted) with the counts written in."""
    from matplotlib.colors import PowerNorm

    confusion = np.asarray(confusion)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    figure = _figure(7.5, 6.4)
    ax = figure.subplots()
    # Errors are a few percent of a row: a gamma below 1 keeps them visible next to the diagonal.
    norm = PowerNorm(gamma=0.4, vmin=0.0, vmax=1.0)
    image = ax.imshow(rates, cmap="Blues", norm=norm)
    for (row, column), count in np.ndenumerate(confusion):
        dark = norm(float(rates[row, column])) > 0.6
        ax.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=9 if count < 10_000 else 7,
            color="white" if dark else ("black" if count else "#aaaaaa"),
        )
    digits = range(NUM_CLASSES)
    ax.set_xticks(digits)
    ax.set_yticks(digits)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    total, right = int(confusion.sum()), int(np.trace(confusion))
    ax.set_title(f"Confusion matrix: {total} test digits, {total - right} wrong", fontsize=12)
    figure.colorbar(image, ax=ax, label="fraction of the true digit's images", shrink=0.85)
    return _save(figure, path)


def plot_training_curves(*, history: Sequence[Mapping[str, float]], path: Path) -> str:
    """Loss and accuracy, training and validation, per epoch, from history.json's "history" rows."""
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    figure = _figure(10.0, 4.0)
    for ax, metric, label in zip(
        figure.subplots(1, 2), ("loss", "accuracy"), ("loss (cross-entropy)", "accuracy"), strict=True
    ):
        ax.plot(epochs, [row[metric] for row in history], marker="o", label="training")
        ax.plot(epochs, [row[f"val_{metric}"] for row in history], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label.split(" ")[0].capitalize(), fontsize=11)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(figure, path)


def render_pictures(
    *,
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    confusion: np.ndarray,
    history_path: Path | None,
    out_dir: Path,
) -> dict[str, str]:
    """Write the report pictures into out_dir; return {file name: path}.

    images (N, 28, 28) in [0, 1], labels (N,), probabilities (N, 10) softmax
    outputs, confusion (10, 10). Without a history.json there are no training curves.
    """
    pictures = {
        PREDICTIONS_FILE: plot_predictions(
            images=images, labels=labels, probabilities=probabilities, path=out_dir / PREDICTIONS_FILE
        ),
        MISCLASSIFIED_FILE: plot_misclassified(
            images=images, labels=labels, probabilities=probabilities, path=out_dir / MISCLASSIFIED_FILE
        ),
        CONFUSION_FILE: plot_confusion_matrix(confusion=confusion, path=out_dir / CONFUSION_FILE),
    }
    if history_path is not None:
        history = json.loads(Path(history_path).read_text())["history"]
        pictures[CURVES_FILE] = plot_training_curves(history=history, path=out_dir / CURVES_FILE)
    return pictures


# ---- report.html ----------------------------------------------------------------------------------

REPORT_TEMPLATE = "report.html.j2"  # in mnist_tasks/templates/, installed as package data


def write_report(
    *, metrics_path: Path, manifest: Mapping[str, Any], pictures: Mapping[str, Path | str], path: Path
) -> dict[str, str]:
    """Write report.html: metrics and gate verdict from metrics.json, lineage from the manifest, pictures inlined.

    `pictures` maps the file names of PICTURES to PNG files (missing ones are left out).
    Returns {"report_path"}.
    """
    unknown = set(pictures) - set(PICTURES)
    if unknown:
        raise ValueError(f"unknown report pictures {sorted(unknown)}; expected some of {list(PICTURES)}")
    metrics = json.loads(Path(metrics_path).read_text())
    verdict = "passed" if metrics["gate"]["passed"] else "failed"
    document = _templates().get_template(REPORT_TEMPLATE).render(
        title=f"MNIST model {manifest['version']}: test accuracy {metrics['accuracy']:.2%}, gate {verdict}",
        verdict=verdict,
        metrics=metrics,
        gate=metrics["gate"],
        champion=metrics.get("champion"),
        manifest=manifest,
        trained=trained_with(dict(manifest)),
        figures=_figures(pictures),
    )
    with atomic_path(path) as tmp:
        tmp.write_text(document, encoding="utf-8")
    return {"report_path": str(path)}


@cache
def _templates() -> jinja2.Environment:
    """The package's templates, autoescaped: a run id or a Param is text, never markup."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("mnist_tasks", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a missing metric fails the report, as a KeyError would
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        percent=lambda value: f"{value:.2%}",
        accuracy=lambda value: f"{value:.4f} ({value:.2%})",
        thousands=lambda value: f"{value:,}",
    )
    return environment


def _figures(pictures: Mapping[str, Path | str]) -> list[dict[str, str]]:
    """The given pictures in PICTURES' order: {"name", "caption", "base64"} (the PNG's bytes, for a data: URI)."""
    return [
        {
            "name": name,
            "caption": caption,
            "base64": base64.b64encode(Path(pictures[name]).read_bytes()).decode("ascii"),
        }
        for name, caption in PICTURES.items()
        if name in pictures
    ]
