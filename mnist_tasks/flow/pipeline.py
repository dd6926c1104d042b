"""The retraining DAG's steps, each one call from its task, on the artifact store.

Each step reads its inputs through `ArtifactStore.get` (this worker's verified
copy), leaves its outputs in the store and returns what XCom carries: refs
(URI, sha256, size), checksums and small metrics, never a local path. So any
step may run on any worker. The functions underneath (data/, model/, registry/)
work on local files and the registry, and are what the CLI calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_tasks.files import sha256_file
from mnist_tasks.flow.artifacts import ArtifactStore, dataset_key, run_key
from mnist_tasks.flow.lineage import TrainingIdentity
from mnist_tasks.flow.results import (
    Downloaded,
    DownloadedFile,
    MnistInfo,
    Novelty,
    Prepared,
    PreparedLabeled,
    PreparedMnist,
    Trained,
)
from mnist_tasks.model.serving import SAVED_MODEL_DIR
from mnist_tasks.params import PARAMS

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from mnist_tasks.feedback.labeled import ExcludedFile, LabeledImage
    from mnist_tasks.registry import ModelRegistry, Published

DATASET_INFO = "dataset.json"


def download(
    *, store: ArtifactStore, mirrors: Sequence[str], raw_dir: Path, s3_client: S3Client | None = None
) -> Downloaded:
    """Verified MNIST files in raw_dir (fetched from a mirror only when missing or damaged), and in the store."""
    from mnist_tasks.data.download import download_mnist

    got = download_mnist(mirrors=mirrors, raw_dir=raw_dir, s3_client=s3_client)
    files: dict[str, DownloadedFile] = {}
    for name, checked in got["files"].items():
        key = dataset_key(got["data_sha256"], "raw", name)
        local = raw_dir / name
        stored = store.find(key)
        if stored is None or stored["sha256"] != sha256_file(local):
            stored = store.put(local, key)
        files[name] = {**checked, "artifact": stored}
    return {"data_sha256": got["data_sha256"], "files": files, "downloaded": got["downloaded"]}


def prepare(
    *,
    store: ArtifactStore,
    downloaded: Downloaded,
    cache_root: Path,
    s3_client: S3Client | None = None,
    labeled_uri: str | None = None,
) -> Prepared:
    """The prepared arrays of MNIST and of the users' labelled set (labeled.py) in the store, and their identity.

    Without `labeled_uri` (the CLI, the benchmarks) the labelled set is empty.

    MNIST's are found in the store, or decoded in `prepare_dataset`'s local cache
    under cache_root and uploaded. The labelled set is read whole each time (it is small,
    and only its content tells whether it changed); its arrays are stored by its identity.
    """
    from mnist_tasks.feedback.labeled import combined_data_sha256

    mnist = _prepare_mnist(store=store, downloaded=downloaded, cache_root=cache_root)
    labeled = _prepare_labeled(store=store, s3_client=s3_client, labeled_uri=labeled_uri, cache_root=cache_root)
    return {
        **mnist,
        "data_sha256": combined_data_sha256(mnist["data_sha256"], labeled["sha256"]),
        "training_data_sha256": combined_data_sha256(mnist["data_sha256"], labeled["train_sha256"]),
        "mnist_data_sha256": mnist["data_sha256"],
        "labeled": labeled,
    }


def _prepare_mnist(*, store: ArtifactStore, downloaded: Downloaded, cache_root: Path) -> PreparedMnist:
    """MNIST's prepared arrays in the store: found there (cache_hit), or decoded here and put there."""
    data_sha256 = downloaded["data_sha256"]
    info_key = dataset_key(data_sha256, "prepared", DATASET_INFO)
    found = store.find(info_key)
    if found is not None:
        info: MnistInfo = store.get_json(found)
        # An array replaced or deleted in the store since would fail every later run
        # (the check on read is not retried): rebuild instead. One HEAD request each.
        if info["data_sha256"] == data_sha256 and all(
            store.find(store.key_of(ref)) == ref for ref in info["arrays"].values()
        ):
            return {**info, "cache_hit": True}

    from mnist_tasks.data.prepare import ARRAY_NAMES, prepare_dataset

    raw_paths = [store.get(f["artifact"]) for f in downloaded["files"].values()]
    # The raw files' keys share one directory, so their local copies do too.
    local = prepare_dataset(raw_dir=raw_paths[0].parent, cache_root=cache_root)
    cache_dir = Path(local["cache_dir"])
    arrays = {
        name: store.put(cache_dir / f"{name}.npy", dataset_key(data_sha256, "prepared", f"{name}.npy"))
        for name in ARRAY_NAMES
    }
    info = {
        "data_sha256": data_sha256,
        "train_count": local["train_count"],
        "test_count": local["test_count"],
        "arrays": arrays,
    }
    store.put_json(info, info_key)  # last: its presence means the arrays above are all there
    return {**info, "cache_hit": False}


def _prepare_labeled(
    *, store: ArtifactStore, s3_client: S3Client | None, labeled_uri: str | None, cache_root: Path
) -> PreparedLabeled:
    """The labelled set's summary, with its arrays in the store under `datasets/labeled/<their sha256>/`.

    Keyed by the arrays' own content, not the set's: the same files make other arrays once the
    preprocessing changes, and a key never names two contents.
    """
    import hashlib

    import numpy as np

    from mnist_tasks.feedback.labeled import read_labeled_set, split_arrays, summary
    from mnist_tasks.files import atomic_path

    images: list[LabeledImage] = []
    excluded: list[ExcludedFile] = []
    if labeled_uri:
        if s3_client is None:
            raise ValueError(f"reading the labelled set at {labeled_uri} needs an S3 client")
        images, excluded = read_labeled_set(s3_client=s3_client, labeled_uri=labeled_uri)
    found = summary(labeled_uri=labeled_uri, images=images, excluded=excluded)
    if found["sha256"] is None:
        return {**found, "arrays": {}}
    local_dir = cache_root / "labeled" / found["sha256"][:16]
    local_dir.mkdir(parents=True, exist_ok=True)
    local = {}
    for name, array in split_arrays(images).items():
        with atomic_path(local_dir / f"{name}.npy", suffix=".npy") as tmp:
            np.save(tmp, array, allow_pickle=False)
        local[name] = local_dir / f"{name}.npy"
    content = hashlib.sha256("".join(sha256_file(path) for _, path in sorted(local.items())).encode()).hexdigest()
    arrays = {}
    for name, path in local.items():
        key = dataset_key("labeled", content, f"{name}.npy")
        stored = store.find(key)
        arrays[name] = stored if stored is not None else store.put(path, key)
    return {**found, "arrays": arrays}


def novelty(*, registry: ModelRegistry, prepared: Prepared, params: Mapping[str, Any], force: bool) -> Novelty:
    """Whether this run has anything new to train: its identity (the data, the training Params, the code
    and the libraries) against the one of the version `latest` points at. See lineage.py."""
    from mnist_tasks.flow.lineage import compare_with_latest, training_identity

    if not prepared["labeled"]["train_count"]:
        # Without labelled images to weigh it changes nothing, so it is not part of what the model is a function of.
        params = {name: value for name, value in params.items() if name != "labeled_weight"}
    identity = training_identity(data_sha256=prepared["training_data_sha256"], params=params)
    comparison = compare_with_latest(registry=registry, identity=identity)
    latest, changed = comparison["latest_version"], comparison["changed"]
    unchanged_since = latest if latest is not None and not changed else None
    if latest is None:
        reason = "nothing is published yet: training"
    elif changed:
        reason = f"changed since version {latest} ({', '.join(changed)}): training"
    elif force:
        reason = f"unchanged since version {latest}, and force is set: training anyway"
    else:
        reason = f"unchanged since version {latest}: the same data, training Params, code and libraries"
    return {
        "train": unchanged_since is None or force,
        "reason": reason,
        "unchanged_since": unchanged_since,
        "identity": identity,
    }


def _labeled_dir(store: ArtifactStore, prepared: Prepared, split: str) -> Path | None:
    """The labelled set's copy of one split, as ArtifactStore.split_dir; None when that split has no images."""
    labeled = prepared["labeled"]
    if not (labeled["train_count"] if split == "train" else labeled["test_count"]):
        return None
    return store.split_dir(labeled["arrays"], split)


def train(
    *, store: ArtifactStore, prepared: Prepared, dag_id: str, run_id: str, params: Mapping[str, Any]
) -> Trained:
    """Train on the prepared training split; the model, its export and its history go to the run's place in the store.

    The SavedModel export is a directory; the store holds files, so each of its
    files is stored (and later checked) on its own, under `saved_model/<path>`.
    """
    from mnist_tasks.model.architecture import MODEL_FILE
    from mnist_tasks.model.train import HISTORY_FILE, train_model

    out_dir = store.local_path(run_key(dag_id, run_id, ""))
    result = train_model(
        cache_dir=store.split_dir(prepared["arrays"], "train"),
        labeled_dir=_labeled_dir(store, prepared, "train"),
        out_dir=out_dir,
        **params,
    )
    export = result["saved_model"]
    return {
        "model": store.put(Path(result["model_path"]), run_key(dag_id, run_id, MODEL_FILE)),
        "history": store.put(Path(result["history_path"]), run_key(dag_id, run_id, HISTORY_FILE)),
        "saved_model": {
            "files": {
                name: store.put(Path(export["path"]) / name, run_key(dag_id, run_id, f"{SAVED_MODEL_DIR}/{name}"))
                for name in export["files"]
            },
            "signature": export["signature"],
        },
        "params": result["params"],
        "final": result["final"],
        "train_count": result["train_count"],
        "labeled_train_count": result["labeled_train_count"],
        "seconds": result["seconds"],
    }


def evaluate(
    *,
    store: ArtifactStore,
    registry: ModelRegistry,
    prepared: Prepared,
    trained: Trained,
    dag_id: str,
    run_id: str,
    threshold: float,
    max_regression: float,
    labeled_threshold: float = float(PARAMS["labeled_accuracy_threshold"].default),
    labeled_max_regression: float = float(PARAMS["labeled_max_regression"].default),
    labeled_min_test_images: int = int(PARAMS["labeled_min_test_images"].default),
) -> dict[str, Any]:
    """The gate's verdict on the trained model, against the champion (`latest`) on the same test sets
    (MNIST's, and the labelled set's test split when it has images).

    Returns evaluate_model's result with, instead of its local paths, `artifacts`:
    the refs of metrics.json and the report pictures, and `champion_latest_etag`:
    the state of `latest.json` it compared with (None: nothing was published),
    from which alone publish may move it. A failed gate is returned, not raised.
    """
    import tempfile

    from mnist_tasks.model.evaluate import METRICS_FILE, evaluate_model, fetch_champion

    model_path, history_path = store.get(trained["model"]), store.get(trained["history"])
    with tempfile.TemporaryDirectory(prefix="mnist-champion-") as champion_dir:
        # None before the first publish; an unreachable bucket raises rather than
        # letting the candidate skip the comparison.
        champion = fetch_champion(registry=registry, dest_dir=Path(champion_dir))
        result = evaluate_model(
            model_path=model_path,
            model_sha256=trained["model"]["sha256"],
            cache_dir=store.split_dir(prepared["arrays"], "test"),
            labeled_dir=_labeled_dir(store, prepared, "test"),
            out_dir=store.local_path(run_key(dag_id, run_id, "")),
            threshold=threshold,
            max_regression=max_regression,
            labeled_threshold=labeled_threshold,
            labeled_max_regression=labeled_max_regression,
            labeled_min_test_images=labeled_min_test_images,
            champion=champion,
            history_path=history_path,
        )
    outputs = {METRICS_FILE: result["metrics_path"], **result["pictures"]}
    artifacts = {name: store.put(Path(path), run_key(dag_id, run_id, name)) for name, path in outputs.items()}
    kept = {key: value for key, value in result.items() if key not in ("metrics_path", "pictures")}
    return {**kept, "artifacts": artifacts, "champion_latest_etag": None if champion is None else champion.latest_etag}


def publish(
    *,
    store: ArtifactStore,
    registry: ModelRegistry,
    version: int,
    dag_id: str,
    run_id: str,
    started_at: str | None,
    downloaded: Downloaded,
    prepared: Prepared,
    trained: Trained,
    evaluated: Mapping[str, Any],
    identity: TrainingIdentity,
) -> Published:
    """Render report.html and publish the run's model, SavedModel, history, metrics, pictures and report as `version`.

    The manifest records the data's and the run's artifacts by URI and sha256, and
    the sha256 of every published file. A retry after an earlier attempt of this
    run claimed the version renders the report from that claim, so it publishes
    the same bytes (versions are immutable).
    """
    from mnist_tasks.flow.run_manifest import run_manifest
    from mnist_tasks.model.evaluate import METRICS_FILE
    from mnist_tasks.model.report import REPORT_FILE, write_report
    from mnist_tasks.registry import (
        DamagedObjectError,
        PublishVerificationError,
        UnfinishedPublishError,
        VersionNotFoundError,
        publish_model,
    )

    files = _run_files(store, trained, evaluated)
    manifest = run_manifest(
        registry=registry, version=version, dag_id=dag_id, run_id=run_id, started_at=started_at,
        downloaded=downloaded, prepared=prepared, trained=trained, evaluated=evaluated, identity=identity,
    )  # fmt: skip
    # Rendered here, not in evaluate: the report shows the manifest's lineage.
    report = store.local_path(run_key(dag_id, run_id, REPORT_FILE))
    pictures = {name: path for name, path in files.items() if name.endswith(".png")}
    write_report(metrics_path=files[METRICS_FILE], manifest=manifest, pictures=pictures, path=report)
    try:
        return publish_model(
            registry=registry,
            version=version,
            files={**files, REPORT_FILE: report},
            manifest=manifest,
            compared_latest_etag=evaluated["champion_latest_etag"],
        )
    except (PublishVerificationError, VersionNotFoundError) as err:
        if isinstance(err, DamagedObjectError):
            raise  # latest.json or a manifest a person must mend
        # What failed to verify is this attempt's own work (an upload the store dropped, a serving
        # copy that differs, its earlier attempt's manifest gone): the retry writes it again. Met
        # by a reader (anything_new, evaluate, batch predictions), the same errors fail at once.
        raise UnfinishedPublishError(str(err)) from err


def _run_files(store: ArtifactStore, trained: Trained, evaluated: Mapping[str, Any]) -> dict[str, Path]:
    """The run's files a version holds, report aside: name in the version -> this worker's verified copy."""
    from mnist_tasks.model.architecture import MODEL_FILE
    from mnist_tasks.model.train import HISTORY_FILE

    return {
        MODEL_FILE: store.get(trained["model"]),
        HISTORY_FILE: store.get(trained["history"]),
        **{name: store.get(ref) for name, ref in evaluated["artifacts"].items()},
        **{f"{SAVED_MODEL_DIR}/{name}": store.get(ref) for name, ref in trained["saved_model"]["files"].items()},
    }
