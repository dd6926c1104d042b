"""Report pictures and the self-contained `report.html` of an evaluated model.

Two moments, because they know different things:

- evaluate.py calls `render_pictures` with the predictions it has just made
  (the test set is predicted once, for the metrics and the pictures alike);
- the publish step calls `write_report`, because the report shows the
  manifest's lineage (data checksums, Params, code and library versions, run
  id), which exists only then. The manifest it is given is the one published
  except for `files`: those checksums include report.html itself. The model's
  own sha256 is in metrics.json and shown with the metrics.

Pictures are embedded in report.html as data URIs and it needs no CSS, script
or font from anywhere else, so it opens the same from S3, a browser download
or a local disk.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_tasks.model import NUM_CLASSES
from mnist_tasks.registry import trained_with
from mnist_tasks.storage import atomic_path

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
    image = ax.imshow(rates, cmap="Blues", norm=PowerNorm(gamma=0.4, vmin=0.0, vmax=1.0))
    for (row, column), count in np.ndenumerate(confusion):
        dark = image.norm(rates[row, column]) > 0.6
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

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1040px; margin: 2rem auto; padding: 0 1.2rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
.verdict { padding: .7rem 1rem; border-radius: 6px; font-weight: 600; }
.passed { background: #e7f5ea; border-left: 6px solid #2e7d32; }
.failed { background: #fdecea; border-left: 6px solid #c62828; }
table { border-collapse: collapse; margin: .6rem 0 1rem; }
th, td { text-align: left; padding: .25rem .8rem .25rem 0; border-bottom: 1px solid #eee; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
td:first-child code { word-break: normal; white-space: nowrap; }
figure { margin: 1.2rem 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; }
.kpi { display: flex; gap: 2.5rem; flex-wrap: wrap; margin: 1rem 0; }
.kpi div { font-size: .85rem; color: #666; } .kpi b { display: block; font-size: 1.5rem; color: #1d1d1f; }
"""


def _text(value: Any) -> str:
    return "—" if value is None else html.escape(str(value))


def _code(value: Any) -> str:
    return "—" if value is None else f"<code>{html.escape(str(value))}</code>"


def _rows(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table of already-escaped (label, HTML) pairs."""
    body = "".join(f"<tr><th>{html.escape(label)}</th><td>{cell}</td></tr>" for label, cell in rows)
    return f"<table>{body}</table>"


def _accuracy(value: float) -> str:
    return f"{value:.4f} ({value:.2%})"


def _metrics_section(metrics: Mapping[str, Any]) -> str:
    gate, champion = metrics["gate"], metrics.get("champion")
    kpis = [
        ("test accuracy", f"{metrics['accuracy']:.2%}"),
        ("test loss", f"{metrics['loss']:.4f}"),
        ("test images", f"{metrics['test_count']:,}"),
    ]
    if champion is not None:
        kpis.append((f"champion {champion['version']}", f"{champion['accuracy']:.2%}"))
    rows = [
        ("test accuracy", _accuracy(metrics["accuracy"])),
        ("test loss (cross-entropy)", f"{metrics['loss']:.4f}"),
        ("test images", str(metrics["test_count"])),
        ("accuracy threshold", _accuracy(gate["threshold"])),
    ]
    if champion is None:
        rows.append(("champion", "none: nothing was published before, so only the threshold applies"))
    else:
        rows += [
            (
                "champion (current latest)",
                f"version {_text(champion['version'])}, accuracy {_accuracy(champion['accuracy'])}",
            ),
            ("allowed regression", f"{gate['max_regression']:.4f}"),
            ("difference to champion", f"{metrics['accuracy'] - champion['accuracy']:+.4f}"),
        ]
    rows.append(("model sha256", _code(metrics["model_sha256"])))
    per_digit = "".join(
        f"<tr><td>{digit}</td><td class=num>{m['precision']:.4f}</td><td class=num>{m['recall']:.4f}</td>"
        f"<td class=num>{m['support']}</td></tr>"
        for digit, m in metrics["per_class"].items()
    )
    return (
        '<section><h2>Metrics</h2><div class="kpi">'
        + "".join(f"<div><b>{value}</b>{html.escape(label)}</div>" for label, value in kpis)
        + "</div>"
        + _rows(rows)
        + "<h3>Per digit</h3><table><tr><th>digit</th><th>precision</th><th>recall</th><th>test images</th></tr>"
        + per_digit
        + "</table></section>"
    )


def _pictures_section(pictures: Mapping[str, Path | str]) -> str:
    figures = []
    for name, caption in PICTURES.items():
        if name not in pictures:
            continue
        data = base64.b64encode(Path(pictures[name]).read_bytes()).decode("ascii")
        figures.append(
            f'<figure id="{name}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)} (<code>{name}</code>)</figcaption></figure>"
        )
    return "<section><h2>Pictures</h2>" + "".join(figures) + "</section>"


def _trained_with(manifest: Mapping[str, Any]) -> str:
    trained = trained_with(dict(manifest))
    augmented = "with augmented training images" if trained["augment"] == "on" else "without augmentation"
    return f"the <code>{html.escape(trained['architecture'])}</code> model, trained {augmented}"


def _lineage_section(manifest: Mapping[str, Any]) -> str:
    data, code = manifest["data"], manifest["code"]
    run = _rows(
        [
            ("version", _text(manifest["version"])),
            ("DAG", _code(manifest["dag_id"])),
            ("run id", _code(manifest["run_id"])),
            ("run started", _text(manifest["started_at"])),
            ("manifest created", _text(manifest["created_at"])),
        ]
    )
    params = _rows([(name, _code(value)) for name, value in manifest["params"].items()])
    data_files = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{_code(f['sha256'])}</td>"
        f"<td class=num>{f['bytes']:,}</td><td>{_text(f['source'])}</td></tr>"
        for name, f in data["files"].items()
    )
    code_rows = [
        ("package", f"{_text(code['package'])} {_text(code['version'])}"),
        ("git commit", _code(code["git_commit"]) + (" (with uncommitted changes)" if code["git_dirty"] else "")),
        ("python", _text(manifest["python"])),
        *((name, _text(version)) for name, version in manifest["libraries"].items()),
    ]
    return "".join(
        [
            "<section><h2>Lineage</h2>",
            "<h3>Run</h3>",
            run,
            "<h3>Params</h3>",
            params,
            "<h3>Data</h3>",
            _rows([("data sha256", _code(data["data_sha256"]))]),
            "<table><tr><th>file</th><th>sha256 (decompressed)</th><th>bytes</th><th>source</th></tr>",
            data_files,
            "</table>",
            "<h3>Code and libraries</h3>",
            _rows(code_rows),
            "<p class=sub>The sha256 of every published file, this report included, is in "
            "<code>manifest.json</code> beside it.</p></section>",
        ]
    )


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
    gate = metrics["gate"]
    verdict = "passed" if gate["passed"] else "failed"
    title = f"MNIST model {manifest['version']}: test accuracy {metrics['accuracy']:.2%}, gate {verdict}"
    document = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>MNIST model {_text(manifest['version'])}</h1>"
        f"<p class=sub>run <code>{html.escape(str(manifest['run_id']))}</code> of "
        f"<code>{html.escape(str(manifest['dag_id']))}</code>, {_text(manifest['created_at'])}; "
        f"{_trained_with(manifest)}</p>"
        f'<p class="verdict {verdict}">{html.escape(gate["message"])}</p>'
        + _metrics_section(metrics)
        + _pictures_section(pictures)
        + _lineage_section(manifest)
        + "</body></html>\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(document, encoding="utf-8")
    return {"report_path": str(path)}
