"""The users' labelled digits: images under `MNIST_LABELED_URI`, one folder per digit, turned into training data.

The layout is Keras' `image_dataset_from_directory`'s: `<labeled_uri><digit>/<image>`, in any
format `predict` reads. The review page files what people label there, and anyone may add
images by hand. Every night `prepare` reads the whole set:

- each image goes through `predict`'s own preprocessing (preprocess.py), so what trains is
  what predicts;
- it lands in the test split when the first 32 bits of its sha256 are divisible by 5 (about
  1 in 5), else in the training split. The split is a function of the content alone, so a
  file never changes split as the set grows, and no image is tested that was trained on;
- a file that cannot be used is left out and counted by reason (EXCLUSION_REASONS), never
  failing the night: `not_a_digit_folder` (not in a folder 0-9 directly below the set),
  `not_an_image` (by its name), `too_large` (beyond predict's limits), `unreadable`, `blank`
  (no ink), `conflicting_labels` (the same image under two digits: left out under both, since
  nobody knows which label is right) and `duplicate` (the same image again under one digit:
  one copy is used).

The set's identity (`sha256`) covers each image's sha256 and label, not its name: renaming
a file changes nothing, relabelling one changes the data. What a model trained on it is a
function of is the training split's (`train_sha256`): images that only join the test split
change the gate's figures, not the model, so they do not make a night train again.
An empty or missing set is the normal first state: no arrays, no identity.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple, TypedDict

from mnist_tasks.model.architecture import IMAGE_SHAPE
from mnist_tasks.s3 import directory_uri, s3_error_code, split_s3_dir

if TYPE_CHECKING:  # the DAG's tasks import this module's types for their XCom, without numpy
    import numpy as np
    from mypy_boto3_s3 import S3Client

TEST_SHARE_DIVISOR = 5  # 1 in 5 images (by content hash) is for testing: the "about 80/20" split
FETCHERS = 8  # GETs in flight: the set is many small objects, so latency, not bandwidth, is the cost
FETCHED_AHEAD = 2 * FETCHERS  # files held at most while this thread decodes
EXCLUDED_FILES_SHOWN = 100  # the summary names this many excluded files; the counts cover all
DETAIL_CHARS = 300  # of an excluded file's URI and detail: what a person reads, not a whole error
# Why a file was left out (see the module's docstring); the summary counts each, in this order.
EXCLUSION_REASONS = (
    "not_a_digit_folder", "not_an_image", "too_large", "unreadable", "blank", "conflicting_labels", "duplicate",
)


class LabeledImage(NamedTuple):
    uri: str
    digit: int
    sha256: str
    field: np.ndarray
    """float32 (28, 28) in [0, 1], as predict's preprocessing makes it."""


class ExcludedFile(TypedDict):
    uri: str
    reason: str
    detail: str


class LabeledSet(TypedDict):
    uri: str | None
    sha256: str | None
    """Of the images' sha256s and labels; None for an empty set."""
    train_sha256: str | None
    """The same of the training split alone: what a model trained on the set is a function of."""
    train_count: int
    test_count: int
    excluded: dict[str, int]
    """Reason -> files left out for it (only reasons that occurred)."""
    excluded_files: list[ExcludedFile]
    """The first EXCLUDED_FILES_SHOWN of them, by URI."""


def is_test_image(sha256: str) -> bool:
    """Whether an image (by the sha256 of its file) belongs to the test split."""
    return int(sha256[:8], 16) % TEST_SHARE_DIVISOR == 0


def set_sha256(images: list[LabeledImage]) -> str | None:
    """The set's identity: sha256 of "<image sha256>  <digit>" lines in order; None when there are none."""
    if not images:
        return None
    lines = "".join(f"{image.sha256}  {image.digit}\n" for image in sorted(images, key=lambda i: (i.sha256, i.digit)))
    return hashlib.sha256(lines.encode()).hexdigest()


def combined_data_sha256(mnist_data_sha256: str, labeled_sha256: str | None) -> str:
    """The dataset's identity: MNIST's alone while the labelled set is empty (so models trained before there was
    one still count as trained on today's data), else the sha256 of both."""
    if labeled_sha256 is None:
        return mnist_data_sha256
    return hashlib.sha256(f"{mnist_data_sha256}  mnist\n{labeled_sha256}  labeled\n".encode()).hexdigest()


def _digit_of(relative_key: str) -> int | None:
    """The digit a key below the set's prefix is labelled with, from its folder; None when it has no such folder."""
    folder, _, name = relative_key.partition("/")
    if len(folder) != 1 or not folder.isdigit() or not name or "/" in name:
        return None
    return int(folder)


def _listed(s3_client: S3Client, labeled_uri: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under the set's prefix; nothing when its bucket does not exist yet."""
    from botocore.exceptions import ClientError

    bucket, prefix = split_s3_dir(labeled_uri)
    try:
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"], item["Size"]
    except ClientError as err:
        if s3_error_code(err) != "NoSuchBucket":  # no set yet; anything else (access, network) is retried
            raise


def read_labeled_set(*, s3_client: S3Client, labeled_uri: str) -> tuple[list[LabeledImage], list[ExcludedFile]]:
    """Every usable image of the set (sorted by sha256, duplicates and conflicts resolved) and what was left out.

    FETCHERS threads only fetch; the images are decoded one at a time in this thread, with at
    most FETCHED_AHEAD files held, so memory and CPU stay bounded whatever the files are.
    """
    from mnist_tasks.inference.preprocess import ImageError, ImageTooLargeError, check_file_size, digits_in_bytes

    bucket, _ = split_s3_dir(labeled_uri)
    wanted, excluded = _candidates(s3_client, directory_uri(labeled_uri))
    images: list[LabeledImage] = []
    with ThreadPoolExecutor(FETCHERS) as pool:
        for (key, digit), data in _fetched(pool, s3_client, bucket, wanted):
            uri = f"s3://{bucket}/{key}"
            if data is None:  # deleted since it was listed: no longer part of the set
                continue
            try:
                check_file_size(uri, len(data))  # it may have grown since it was listed
                fields = digits_in_bytes(data, name=uri)
            except ImageError as err:
                reason = "too_large" if isinstance(err, ImageTooLargeError) else "unreadable"
                excluded.append(_excluded(uri, reason, str(err)))
                continue
            if not fields:
                excluded.append(_excluded(uri, "blank", "no ink"))
            else:
                images.append(LabeledImage(uri, digit, hashlib.sha256(data).hexdigest(), fields[0]))
    kept, left_out = _resolve_duplicates(images)
    return kept, excluded + left_out


def _candidates(s3_client: S3Client, labeled_uri: str) -> tuple[list[tuple[str, int]], list[ExcludedFile]]:
    """((key, digit) of each file that may be a labelled image, the files the listing alone rules out)."""
    from mnist_tasks.inference.preprocess import MAX_FILE_BYTES, is_image_name

    bucket, prefix = split_s3_dir(labeled_uri)
    wanted: list[tuple[str, int]] = []
    excluded: list[ExcludedFile] = []
    for key, size in _listed(s3_client, labeled_uri):
        uri, relative = f"s3://{bucket}/{key}", key.removeprefix(prefix)
        digit = _digit_of(relative)
        if key.endswith("/"):
            continue  # a folder's marker object, as S3 consoles make them
        if digit is None:
            excluded.append(_excluded(uri, "not_a_digit_folder", relative))
        elif not is_image_name(relative.rpartition("/")[2]):
            excluded.append(_excluded(uri, "not_an_image", relative))
        elif size > MAX_FILE_BYTES:
            excluded.append(_excluded(uri, "too_large", f"{size} bytes, limit {MAX_FILE_BYTES}"))
        else:
            wanted.append((key, digit))
    return wanted, excluded


def _fetched(
    pool: ThreadPoolExecutor, s3_client: S3Client, bucket: str, wanted: list[tuple[str, int]]
) -> Iterator[tuple[tuple[str, int], bytes | None]]:
    """Each wanted file with its bytes (None: gone since the listing), in order, at most FETCHED_AHEAD ahead."""
    from mnist_tasks.s3 import get_bytes

    pending: deque[tuple[tuple[str, int], Future[bytes | None]]] = deque()
    for candidate in wanted:
        if len(pending) >= FETCHED_AHEAD:
            done, future = pending.popleft()
            yield done, future.result()
        pending.append((candidate, pool.submit(get_bytes, s3_client, bucket, candidate[0])))
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


def _excluded(uri: str, reason: str, detail: str) -> ExcludedFile:
    """A file left out, its URI and detail cut to DETAIL_CHARS: the summary travels in XCom and the manifest."""
    def cut(text: str) -> str:
        return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"

    return {"uri": cut(uri), "reason": reason, "detail": cut(detail)}


def _resolve_duplicates(images: list[LabeledImage]) -> tuple[list[LabeledImage], list[ExcludedFile]]:
    """One image per content: conflicting labels leave out every copy, repeats under one digit all but the first."""
    by_content: dict[str, list[LabeledImage]] = defaultdict(list)
    for image in sorted(images, key=lambda i: i.uri):
        by_content[image.sha256].append(image)
    kept: list[LabeledImage] = []
    excluded: list[ExcludedFile] = []
    for _, copies in sorted(by_content.items()):
        digits = sorted({copy.digit for copy in copies})
        if len(digits) > 1:
            detail = f"the same image is labelled {' and '.join(map(str, digits))} ({len(copies)} copies)"
            excluded += [_excluded(c.uri, "conflicting_labels", detail) for c in copies]
            continue
        first, *repeats = copies
        kept.append(first)
        excluded += [_excluded(c.uri, "duplicate", f"the same image as {first.uri}") for c in repeats]
    return kept, excluded


def split_arrays(images: list[LabeledImage]) -> dict[str, np.ndarray]:
    """{"x_train", "y_train", "x_test", "y_test"}: float32 (N, 28, 28) and uint8 (N,), in `images`' order."""
    import numpy as np

    arrays: dict[str, np.ndarray] = {}
    for split, members in (
        ("train", [i for i in images if not is_test_image(i.sha256)]),
        ("test", [i for i in images if is_test_image(i.sha256)]),
    ):
        fields = np.stack([image.field for image in members]) if members else np.zeros((0, *IMAGE_SHAPE))
        arrays[f"x_{split}"] = fields.astype(np.float32)
        arrays[f"y_{split}"] = np.array([image.digit for image in members], dtype=np.uint8)
    return arrays


def summary(*, labeled_uri: str | None, images: list[LabeledImage], excluded: list[ExcludedFile]) -> LabeledSet:
    """What the run's summary, the report and the manifest say about the set (`labeled_uri` None: there is none)."""
    counts = Counter(file["reason"] for file in excluded)
    test_count = sum(is_test_image(image.sha256) for image in images)
    return {
        "uri": None if labeled_uri is None else directory_uri(labeled_uri),
        "sha256": set_sha256(images),
        "train_sha256": set_sha256([image for image in images if not is_test_image(image.sha256)]),
        "train_count": len(images) - test_count,
        "test_count": test_count,
        "excluded": {reason: counts[reason] for reason in EXCLUSION_REASONS if counts[reason]},
        "excluded_files": sorted(excluded, key=lambda file: file["uri"])[:EXCLUDED_FILES_SHOWN],
    }
