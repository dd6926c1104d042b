"""The users' labelled set (mnist_tasks/feedback/labeled.py) on a real S3 server (moto's),
and what `prepare` makes of it."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_tasks.feedback.labeled import is_test_image, read_labeled_set, split_arrays, summary
from tests.test_preprocess import png_with_a_broken_chunk

BUCKET = "inbox"
LABELED_URI = f"s3://{BUCKET}/labeled/"


def stroke_png(seed: int, *, size: int = 64) -> bytes:
    """Dark strokes on white paper, different for each seed: an image predict's preprocessing reads."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    points = [tuple(int(v) for v in rng.integers(8, size - 8, 2)) for _ in range(4)]
    draw.line(points, fill=0, width=5)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def blank_png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (40, 40), 255).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def inbox(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)

    def put(relative: str, body: bytes) -> None:
        s3_client.put_object(Bucket=BUCKET, Key=f"labeled/{relative}", Body=body)

    return put


def test_a_set_with_bad_files_keeps_the_good_ones_and_counts_the_rest_by_reason(s3_client, inbox):
    for i in range(20):
        inbox(f"{i % 10}/good-{i}.png", stroke_png(i))
    inbox("10/ten.png", stroke_png(100))
    inbox("x/what.png", stroke_png(101))
    inbox("at-the-root.png", stroke_png(102))
    inbox("3/deeper/nested.png", stroke_png(103))
    inbox("4/notes.txt", b"not an image")
    inbox("5/corrupt.png", b"\x89PNG\r\n\x1a\n but not really")
    inbox("5/broken-chunk.png", png_with_a_broken_chunk(stroke_png(300)))  # Pillow raises SyntaxError on it
    inbox("5/", b"")  # a folder's marker object, as S3 consoles make them: not a file
    inbox("6/blank.png", blank_png())
    inbox("7/again.png", stroke_png(7))  # good-7.png again, under its own digit
    inbox("8/disputed.png", stroke_png(200))
    inbox("9/disputed.png", stroke_png(200))

    images, excluded = read_labeled_set(s3_client=s3_client, labeled_uri=LABELED_URI)
    found = summary(labeled_uri=LABELED_URI, images=images, excluded=excluded)

    # Of two copies under one digit, the first by name is kept.
    assert sorted(i.uri.removeprefix(LABELED_URI) for i in images) == sorted(
        ["7/again.png", *(f"{i % 10}/good-{i}.png" for i in range(20) if i != 7)]
    )
    assert found["excluded"] == {
        "not_a_digit_folder": 4,
        "not_an_image": 1,
        "unreadable": 2,
        "blank": 1,
        "conflicting_labels": 2,
        "duplicate": 1,
    }
    reasons = {file["uri"].removeprefix(LABELED_URI): file["reason"] for file in found["excluded_files"]}
    assert reasons["10/ten.png"] == reasons["x/what.png"] == "not_a_digit_folder"
    assert reasons["5/corrupt.png"] == "unreadable"
    assert reasons["8/disputed.png"] == reasons["9/disputed.png"] == "conflicting_labels"
    details = {file["uri"].removeprefix(LABELED_URI): file["detail"] for file in found["excluded_files"]}
    assert details["8/disputed.png"] == "the same image is labelled 8 and 9 (2 copies)"
    assert found["train_count"] + found["test_count"] == 20
    assert {i.field.shape for i in images} == {(28, 28)}
    good = {i.uri.removeprefix(LABELED_URI + "0/"): i for i in images if i.digit == 0}
    assert good["good-10.png"].sha256 == hashlib.sha256(stroke_png(10)).hexdigest()


def test_the_split_is_by_content_so_a_file_keeps_its_split_as_the_set_grows(s3_client, inbox):
    for i in range(40):
        inbox(f"{i % 10}/{i}.png", stroke_png(i))
    before, _ = read_labeled_set(s3_client=s3_client, labeled_uri=LABELED_URI)
    for i in range(40, 200):
        inbox(f"{i % 10}/{i}.png", stroke_png(i))
    after, _ = read_labeled_set(s3_client=s3_client, labeled_uri=LABELED_URI)

    split_of = {i.uri: is_test_image(i.sha256) for i in after}
    assert all(split_of[i.uri] == is_test_image(i.sha256) for i in before)
    share = sum(split_of.values()) / len(split_of)
    assert 0.1 < share < 0.3  # about 1 in 5
    arrays = split_arrays(after)
    assert len(arrays["y_test"]) == sum(split_of.values())
    assert arrays["x_train"].dtype == np.float32 and arrays["y_train"].dtype == np.uint8


def test_the_identity_follows_content_and_labels_not_names(s3_client, inbox):
    def identity() -> str | None:
        images, excluded = read_labeled_set(s3_client=s3_client, labeled_uri=LABELED_URI)
        return summary(labeled_uri=LABELED_URI, images=images, excluded=excluded)["sha256"]

    assert identity() is None  # an empty set is the normal first state
    inbox("1/a.png", stroke_png(1))
    inbox("2/b.png", stroke_png(2))
    first = identity()
    s3_client.delete_object(Bucket=BUCKET, Key="labeled/2/b.png")
    inbox("2/renamed.png", stroke_png(2))
    assert identity() == first
    s3_client.delete_object(Bucket=BUCKET, Key="labeled/2/renamed.png")
    inbox("3/renamed.png", stroke_png(2))  # relabelled
    assert identity() not in (first, None)


def test_an_image_that_lands_in_the_test_split_leaves_the_training_identity_as_it_was(s3_client, inbox):
    def identities() -> tuple[str | None, str | None]:
        images, excluded = read_labeled_set(s3_client=s3_client, labeled_uri=LABELED_URI)
        found = summary(labeled_uri=LABELED_URI, images=images, excluded=excluded)
        return found["sha256"], found["train_sha256"]

    for i in range(10):
        inbox(f"{i}/{i}.png", stroke_png(i))
    whole, trained = identities()
    seeds = range(100, 300)
    tested = next(seed for seed in seeds if is_test_image(hashlib.sha256(stroke_png(seed)).hexdigest()))
    inbox(f"4/{tested}.png", stroke_png(tested))
    assert identities() == (identities()[0], trained) and identities()[0] != whole
    trains = next(seed for seed in seeds if not is_test_image(hashlib.sha256(stroke_png(seed)).hexdigest()))
    inbox(f"4/{trains}.png", stroke_png(trains))
    assert identities()[1] != trained


def test_a_missing_bucket_is_an_empty_set(s3_client):
    assert read_labeled_set(s3_client=s3_client, labeled_uri="s3://no-such-inbox/labeled/") == ([], [])
