"""report.py: the pictures (rendered and looked at as pixels), report.html, and `python -m mnist_tasks report`."""

from __future__ import annotations

import base64
import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_tasks.model.report import (
    CONFUSION_FILE,
    CURVES_FILE,
    MISCLASSIFIED_FILE,
    PICTURES,
    PREDICTIONS_FILE,
    REPORT_FILE,
    REPORT_FILES,
    WRONG,
    most_confident_mistakes,
    plot_predictions,
    render_pictures,
    write_report,
)
from mnist_tasks.registry import FileNotPublishedError, ModelRegistry, build_manifest, download_files, publish_model

COUNT = 40


def _probabilities(predictions: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(N, 10) rows with `confidence` on the predicted digit and the rest spread evenly."""
    probabilities = np.repeat(((1 - confidence) / 9)[:, None], 10, axis=1)
    probabilities[np.arange(len(predictions)), predictions] = confidence
    return probabilities.astype(np.float32)


def _digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((count, 28, 28), dtype=np.float32)
    labels = (np.arange(count) % 10).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 4:24, 8 + label : 12 + label] = 1.0  # a bar whose position tells the digit
    return images, labels


def _confusion(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    return np.bincount(labels * 10 + predictions, minlength=100).reshape(10, 10)


def _has_wrong_colour(png: Path) -> bool:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = np.array([int(WRONG[i : i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(pixels - red).sum(axis=2) < 30).any())


@pytest.fixture
def history(tmp_path: Path) -> Path:
    rows = [
        {"epoch": e, "loss": 1 / e, "accuracy": 1 - 0.1 / e, "val_loss": 1.1 / e, "val_accuracy": 1 - 0.12 / e}
        for e in (1, 2, 3)
    ]
    path = tmp_path / "history.json"
    path.write_text(json.dumps({"params": {}, "train_count": 100, "history": rows}))
    return path


def test_most_confident_mistakes_come_first_and_ties_keep_test_order() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5], dtype=np.uint8)
    predictions = np.array([0, 7, 7, 3, 7, 7])
    confidence = np.array([0.99, 0.6, 0.9, 0.99, 0.6, 0.95])

    picked = most_confident_mistakes(labels=labels, probabilities=_probabilities(predictions, confidence), count=3)

    assert picked.tolist() == [5, 2, 1]


def test_render_pictures_writes_the_four_pngs(tmp_path: Path, history: Path) -> None:
    images, labels = _digits(COUNT)
    predictions = labels.copy()
    predictions[[3, 30]] = 9  # one wrong in the predictions grid (the first 25), one after it
    probabilities = _probabilities(predictions, np.linspace(0.5, 0.99, COUNT))

    pictures = render_pictures(
        images=images,
        labels=labels,
        probabilities=probabilities,
        confusion=_confusion(labels, predictions),
        history_path=history,
        out_dir=tmp_path / "out",
    )

    assert pictures == {name: str(tmp_path / "out" / name) for name in PICTURES}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(PICTURES)  # no temp files left
    for path in pictures.values():
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 600 and image.height >= 200, path
    assert _has_wrong_colour(tmp_path / "out" / PREDICTIONS_FILE)
    assert _has_wrong_colour(tmp_path / "out" / MISCLASSIFIED_FILE)

    # The same inputs give the same bytes, so a re-run publishes identical files.
    again = plot_predictions(images=images, labels=labels, probabilities=probabilities, path=tmp_path / "again.png")
    assert Path(again).read_bytes() == Path(pictures[PREDICTIONS_FILE]).read_bytes()


def test_no_mistakes_no_red_and_no_history_no_curves(tmp_path: Path) -> None:
    images, labels = _digits(7)  # fewer digits than a grid holds
    probabilities = _probabilities(labels, np.full(7, 0.9))

    pictures = render_pictures(
        images=images,
        labels=labels,
        probabilities=probabilities,
        confusion=_confusion(labels, labels),
        history_path=None,
        out_dir=tmp_path,
    )

    assert set(pictures) == {PREDICTIONS_FILE, MISCLASSIFIED_FILE, CONFUSION_FILE}
    assert not (tmp_path / CURVES_FILE).exists()
    assert not _has_wrong_colour(tmp_path / PREDICTIONS_FILE)
    assert not _has_wrong_colour(tmp_path / MISCLASSIFIED_FILE)


# ---- report.html ----------------------------------------------------------------------------------

DATA = {
    "raw_dir": "/data/raw",
    "data_sha256": "d" * 64,
    "files": {"t10k-labels-idx1-ubyte.gz": {"sha256": "e" * 64, "bytes": 10008, "source": "cache"}},
    "downloaded": [],
}


def _metrics(champion: dict | None) -> dict:
    return {
        "model_sha256": "a" * 64,
        "test_count": 10000,
        "accuracy": 0.9731,
        "loss": 0.0912,
        "per_class": {str(d): {"precision": 0.97, "recall": 0.96, "support": 1000} for d in range(10)},
        "confusion_matrix": np.eye(10, dtype=int).tolist(),
        "champion": champion,
        "gate": {
            "threshold": 0.93,
            "max_regression": 0.005,
            "champion_accuracy": None if champion is None else champion["accuracy"],
            "passed": True,
            "message": "accuracy gate passed: test accuracy 0.9731 meets the threshold 0.9300",
        },
    }


def _manifest(run_id: str = "scheduled__2026-11-23T02:00:00+00:00") -> dict:
    return build_manifest(
        version=20261123020000,
        run_id=run_id,
        dag_id="mnist_retraining",
        params={"epochs": 5, "hidden_units": 128},
        data=DATA,
        metrics={"accuracy": 0.9731, "passed": True},
        started_at="2026-11-23T02:00:04+00:00",
    )


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text of <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style += data


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    images, labels = _digits(12)
    predictions = labels.copy()
    predictions[5] = 1
    return {
        name: Path(path)
        for name, path in render_pictures(
            images=images,
            labels=labels,
            probabilities=_probabilities(predictions, np.full(12, 0.8)),
            confusion=_confusion(labels, predictions),
            history_path=None,
            out_dir=tmp_path_factory.mktemp("pictures"),
        ).items()
    }


def test_report_html_is_self_contained_and_shows_metrics_gate_lineage_and_pictures(
    tmp_path: Path, pictures: dict[str, Path]
) -> None:
    metrics_path = tmp_path / "metrics.json"
    champion = {"version": 20261122020000, "model_sha256": "b" * 64, "accuracy": 0.9702}
    metrics_path.write_text(json.dumps(_metrics(champion)))
    manifest = _manifest()

    result = write_report(metrics_path=metrics_path, manifest=manifest, pictures=pictures, path=tmp_path / REPORT_FILE)

    assert result == {"report_path": str(tmp_path / REPORT_FILE)}
    text = (tmp_path / REPORT_FILE).read_text(encoding="utf-8")
    parsed = _Elements()
    parsed.feed(text)
    tags = [tag for tag, _ in parsed.tags]
    assert not {"script", "link", "iframe", "object", "embed"} & set(tags)
    assert "url(" not in parsed.style and "@import" not in parsed.style
    for tag, attrs in parsed.tags:
        for name in ("src", "href"):
            assert attrs.get(name) is None or attrs[name].startswith("data:"), (tag, attrs[name])

    embedded = [base64.b64decode(a["src"].split(",", 1)[1]) for t, a in parsed.tags if t == "img"]
    assert embedded == [pictures[name].read_bytes() for name in PICTURES if name in pictures]

    for expected in [
        "accuracy gate passed: test accuracy 0.9731 meets the threshold 0.9300",
        "0.9731 (97.31%)",  # accuracy
        "0.0912",  # loss
        "version 20261122020000, accuracy 0.9702 (97.02%)",  # the champion
        "+0.0029",  # candidate minus champion
        "a" * 64,  # the model's sha256
        "d" * 64,  # data checksum
        "e" * 64,
        "10,008",
        "scheduled__2026-11-23T02:00:00+00:00",
        "hidden_units",
        manifest["libraries"]["keras"],
        manifest["python"],
    ]:
        assert expected in text, expected


def test_report_without_a_champion_says_so_and_escapes_what_it_shows(
    tmp_path: Path, pictures: dict[str, Path]
) -> None:
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text(json.dumps(_metrics(None)))

    write_report(
        metrics_path=metrics_path,
        manifest=_manifest(run_id="manual__<b>x</b>&"),
        pictures=pictures,
        path=tmp_path / REPORT_FILE,
    )

    text = (tmp_path / REPORT_FILE).read_text(encoding="utf-8")
    assert "champion</th><td>none: nothing was published before" in text
    assert "manual__&lt;b&gt;x&lt;/b&gt;&amp;" in text and "<b>x</b>" not in text


def test_report_refuses_pictures_it_does_not_know(tmp_path: Path, pictures: dict[str, Path]) -> None:
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text(json.dumps(_metrics(None)))

    with pytest.raises(ValueError, match=r"unknown report pictures \['holiday.png'\]"):
        write_report(
            metrics_path=metrics_path,
            manifest=_manifest(),
            pictures={**pictures, "holiday.png": pictures[PREDICTIONS_FILE]},
            path=tmp_path / REPORT_FILE,
        )
    assert not (tmp_path / REPORT_FILE).exists()


# ---- python -m mnist_tasks report, against moto's S3 server --------------------------------------

BUCKET = "models"
MODELS_URI = f"s3://{BUCKET}/mnist/"
V1, V2 = 20261123020000, 20261124020000


def _publish(s3_client, directory: Path, version: int, names: tuple[str, ...]) -> dict[str, bytes]:
    directory.mkdir(parents=True)
    contents = {name: f"{name} of {version}".encode() * 20 for name in ("model.keras", *names)}
    for name, body in contents.items():
        (directory / name).write_bytes(body)
    manifest = build_manifest(
        version=version,
        run_id=f"run-{version}",
        dag_id="mnist_retraining",
        params={},
        data=DATA,
        metrics={"accuracy": 0.97, "passed": True},
        started_at=None,
    )
    publish_model(
        registry=ModelRegistry(s3_client, MODELS_URI),
        version=version,
        files={name: directory / name for name in contents},
        manifest=manifest,
    )
    return contents


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, s3_client) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3_client.create_bucket(Bucket=BUCKET)


def _report_command(out: Path, version: str = "latest") -> list[str]:
    return ["report", version, "--out", str(out), "--models-uri", MODELS_URI]


def test_report_command_fetches_the_latest_report_and_pictures(
    cli_env, s3_client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnist_tasks.cli import main

    older = _publish(s3_client, tmp_path / "v1", V1, REPORT_FILES)
    newer = _publish(s3_client, tmp_path / "v2", V2, REPORT_FILES)
    out = tmp_path / "out"

    main(_report_command(out))

    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        "version": V2,
        "report": str(out / REPORT_FILE),
        "files": {name: str(out / name) for name in REPORT_FILES},
    }
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {name: newer[name] for name in REPORT_FILES}

    main(_report_command(tmp_path / "old", str(V1)))
    assert (tmp_path / "old" / REPORT_FILE).read_bytes() == older[REPORT_FILE]


def test_report_command_writes_nothing_if_any_file_does_not_match_its_manifest(
    cli_env, s3_client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnist_tasks.cli import main

    _publish(s3_client, tmp_path / "v1", V1, REPORT_FILES)
    s3_client.put_object(Bucket=BUCKET, Key=f"mnist/{V1}/{CURVES_FILE}", Body=b"not the picture")
    out = tmp_path / "out"
    out.mkdir()
    (out / REPORT_FILE).write_text("an earlier report")

    with pytest.raises(SystemExit) as exited:
        main(_report_command(out))

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: checksum mismatch for s3://{BUCKET}/mnist/{V1}/{CURVES_FILE}: expected ")
    assert error.rstrip().endswith(f"got {hashlib.sha256(b'not the picture').hexdigest()}")

    # Earlier files untouched, nothing new, not even temp files.
    assert {p.name: p.read_text() for p in out.iterdir()} == {REPORT_FILE: "an earlier report"}


def test_a_version_without_a_report_is_named_with_what_it_lacks(s3_client, tmp_path: Path) -> None:
    s3_client.create_bucket(Bucket=BUCKET)
    _publish(s3_client, tmp_path / "v1", V1, ("metrics.json",))

    with pytest.raises(FileNotPublishedError) as caught:
        download_files(
            registry=ModelRegistry(s3_client, MODELS_URI), version=V1, names=REPORT_FILES, dest_dir=tmp_path / "out"
        )

    assert str(caught.value) == (
        f"version {V1} in {MODELS_URI} has no report.html, predictions.png, misclassified.png, "
        "confusion_matrix.png, training_curves.png: its manifest lists metrics.json, model.keras"
    )
    assert not (tmp_path / "out").exists()


def test_report_command_refuses_a_version_that_is_not_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    from mnist_tasks.cli import main

    with pytest.raises(SystemExit):
        main(["report", "newest", "--out", "x"])
    assert "expected a version number or latest, got 'newest'" in capsys.readouterr().err
