"""Labelling (mnist_tasks/feedback/labeling.py) on a real S3 server (moto's): the queue, label, discard and
their records.

Review items are put in as mnist_tasks/feedback/review.py leaves them: an image and its JSON beside
it, one directory per batch-prediction run. tests/plugins/test_mnist_review.py drives the
same functions through the page's routes, with Airflow's logins and HTTP's status codes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from mnist_tasks.feedback.labeling import (
    ReviewItemNotFoundError,
    ReviewRemovalError,
    ReviewRequestError,
    content_type,
    discard_image,
    label_image,
    read_review_image,
    review_items,
    review_queue,
)

BUCKET = "review-unit"
URIS = {
    "review_uri": f"s3://{BUCKET}/review/",
    "labeled_uri": f"s3://{BUCKET}/labeled/",
    "review_log_uri": f"s3://{BUCKET}/review-log/",
}
RUN = "manual__2026-11-23T22%3A41%3A07%2B00%3A00"
IMAGE = b"\x89PNG\r\n\x1a\n" + b"pixels" * 20
TOP3 = [[7, 0.61], [1, 0.3], [9, 0.05]]


@pytest.fixture
def store(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def _put_item(s3_client, run: str, name: str, *, facts: Any = None) -> str:
    """A review item as review.py writes it (`facts` replaces its JSON's text); its key."""
    key = f"review/{run}/{name}"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=IMAGE)
    if facts is None:
        facts = json.dumps({
            "source": f"s3://inbox/images/{name}",
            "status": "low_confidence",
            "probability": 0.61,
            "top3": TOP3,
            "model_version": 20261123020000,
            "reviewed_at": "2026-11-23T02:10:00+00:00",
        })  # fmt: skip
    s3_client.put_object(Bucket=BUCKET, Key=f"{key}.json", Body=facts.encode())
    return key


def stored_keys(s3_client, prefix: str = "") -> list[str]:
    return sorted(item["Key"] for item in s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def audit_records(s3_client) -> list[tuple[str, dict]]:
    return [
        (key, json.loads(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        for key in stored_keys(s3_client, "review-log/")
    ]


def next_second() -> None:
    """Until the clock's second changes: S3 listings give LastModified in whole seconds."""
    start = int(time.time())
    deadline = time.monotonic() + 5
    while int(time.time()) == start:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_queue_is_the_images_newest_run_first_then_by_key(store):
    # Named so that the runs' names alone would put the old one first.
    old = [_put_item(store, "a-old", name) for name in ("2.png", "1.png", "deeper/0.png")]
    next_second()
    new = [_put_item(store, "b-new", name) for name in ("z.jpg", "a.png")]
    store.put_object(Bucket=BUCKET, Key="review/b-new/notes.txt", Body=b"not an image")
    store.put_object(Bucket=BUCKET, Key="review/b-new/._a.png", Body=b"macOS' copy")

    queue = review_queue(s3_client=store, review_uri=URIS["review_uri"])

    assert queue == [*sorted(new), *sorted(old)]


def test_an_empty_queue_is_empty(store):
    assert review_queue(s3_client=store, review_uri=URIS["review_uri"]) == []


def test_an_item_carries_its_facts_and_its_runs_id(store):
    key = _put_item(store, RUN, "sub/a.png")

    [item] = review_items(s3_client=store, review_uri=URIS["review_uri"], keys=[key])

    assert item == {
        "key": key,
        "name": "a.png",
        "run": "manual__2026-11-23T22:41:07+00:00",
        "top3": [
            {"digit": 7, "probability": 0.61},
            {"digit": 1, "probability": 0.3},
            {"digit": 9, "probability": 0.05},
        ],
        "problem": None,
        "status": "low_confidence",
        "probability": 0.61,
        "model_version": 20261123020000,
        "source": "s3://inbox/images/sub/a.png",
        "reviewed_at": "2026-11-23T02:10:00+00:00",
    }


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is not a JSON object"),
        (json.dumps({"top3": [["seven", 0.5]]}), "is not a list of [digit, probability] pairs"),
        (json.dumps({"top3": [[True, 0.5]]}), "is not a list of [digit, probability] pairs"),
        (json.dumps({"top3": "7"}), "is not a list of [digit, probability] pairs"),
    ],
)
def test_damaged_facts_are_the_items_problem_not_an_error(store, facts, problem):
    key = _put_item(store, RUN, "a.png", facts=facts)

    [item] = review_items(s3_client=store, review_uri=URIS["review_uri"], keys=[key])

    assert problem in item["problem"]
    assert item["top3"] == []


def test_missing_facts_are_the_items_problem_and_the_order_is_kept(store):
    keys = [_put_item(store, RUN, f"{i}.png") for i in range(20)]
    store.delete_object(Bucket=BUCKET, Key=f"{keys[3]}.json")

    items = review_items(s3_client=store, review_uri=URIS["review_uri"], keys=keys[::-1])

    assert [item["key"] for item in items] == keys[::-1]
    assert items[16]["problem"] == f"no {keys[3]}.json: the model's guesses are unknown"
    assert items[16]["status"] is None and items[16]["top3"] == []


def test_label_files_the_image_by_its_content_records_it_and_takes_it_out_of_review(store):
    key = _put_item(store, RUN, "sub/Digit.PNG")

    labeled = label_image(s3_client=store, **URIS, key=key, digit=4, user="ada")

    labeled_key = f"labeled/4/{hashlib.sha256(IMAGE).hexdigest()}.png"
    assert labeled == {"review_key": key, "labeled_key": labeled_key, "digit": 4}
    filed = store.get_object(Bucket=BUCKET, Key=labeled_key)
    assert filed["Body"].read() == IMAGE
    assert filed["ContentType"] == "image/png"
    assert stored_keys(store, "review/") == []
    [(record_key, record)] = audit_records(store)
    assert re.fullmatch(r"review-log/\d{4}-\d\d-\d\d/\d{8}T\d{6}\.\d{6}Z-[0-9a-f-]{36}\.json", record_key)
    assert record_key.startswith(f"review-log/{record['at'][:10]}/")
    assert record == {
        "action": "label",
        "user": "ada",
        "at": record["at"],
        "review_key": key,
        "labeled_key": labeled_key,
        "digit": 4,
        "model_top3": TOP3,
        "model_version": 20261123020000,
        "source": "s3://inbox/images/sub/Digit.PNG",
    }


def test_an_image_without_facts_is_labelled_and_its_record_says_nothing_of_the_model(store):
    store.put_object(Bucket=BUCKET, Key=f"review/{RUN}/lone.png", Body=IMAGE)

    label_image(s3_client=store, **URIS, key=f"review/{RUN}/lone.png", digit=0, user="ada")

    [(_, record)] = audit_records(store)
    assert (record["model_top3"], record["model_version"], record["source"]) == (None, None, None)


def test_discard_takes_the_image_out_unlabelled_and_records_it(store):
    key = _put_item(store, RUN, "a.png")

    discarded = discard_image(
        s3_client=store, review_uri=URIS["review_uri"], review_log_uri=URIS["review_log_uri"], key=key, user="ada"
    )

    assert discarded == {"review_key": key}
    assert stored_keys(store, "review/") == [] and stored_keys(store, "labeled/") == []
    [(_, record)] = audit_records(store)
    assert (record["action"], record["user"], record["review_key"]) == ("discard", "ada", key)
    assert record["model_top3"] == TOP3
    assert "labeled_key" not in record and "digit" not in record


@pytest.mark.parametrize("action", ["label", "discard"])
def test_an_image_taken_out_already_is_not_found_and_nothing_is_recorded_again(store, action):
    key = _put_item(store, RUN, "a.png")
    act = {
        "label": lambda: label_image(s3_client=store, **URIS, key=key, digit=2, user="ada"),
        "discard": lambda: discard_image(
            s3_client=store, review_uri=URIS["review_uri"], review_log_uri=URIS["review_log_uri"], key=key, user="ada"
        ),
    }[action]
    act()

    with pytest.raises(ReviewItemNotFoundError) as raised:
        act()

    assert str(raised.value) == f"s3://{BUCKET}/{key} is not waiting for review (labelled or discarded)"
    assert len(audit_records(store)) == 1


@pytest.mark.parametrize(
    ("key", "digit", "message"),
    [
        (f"review/{RUN}/a.png", 10, '"digit" must be a whole number from 0 to 9, got 10'),
        (f"review/{RUN}/a.png", True, "got True"),
        (f"review/{RUN}/a.png", 3.0, "got 3.0"),
        (f"review/{RUN}/a.png", None, "got None"),
        (None, 3, f'"key" must be the key of an image under {URIS["review_uri"]}, got None'),
        ("labeled/3/a.png", 3, f"s3://{BUCKET}/labeled/3/a.png is not under the review prefix ({URIS['review_uri']})"),
        ("review/", 3, "is not under the review prefix"),
        (f"review/{RUN}/a.png.json", 3, "is the facts beside an image, not the image"),
        (f"review/{RUN}/notes.txt", 3, "is not an image's name"),
    ],
)
def test_a_bad_key_or_digit_is_a_request_error_and_changes_nothing(store, key, digit, message):
    _put_item(store, RUN, "a.png")
    store.put_object(Bucket=BUCKET, Key="labeled/3/a.png", Body=IMAGE)
    before = stored_keys(store)

    with pytest.raises(ReviewRequestError, match=re.escape(message)):
        label_image(s3_client=store, **URIS, key=key, digit=digit, user="ada")

    assert stored_keys(store) == before


def test_a_waiting_image_is_read_and_nothing_else_is(store):
    key = _put_item(store, RUN, "a.png")
    store.put_object(Bucket=BUCKET, Key="labeled/7/secret.png", Body=b"labelled bytes")

    assert read_review_image(s3_client=store, review_uri=URIS["review_uri"], key=key) == IMAGE
    with pytest.raises(ReviewRequestError):
        read_review_image(s3_client=store, review_uri=URIS["review_uri"], key="labeled/7/secret.png")
    with pytest.raises(ReviewItemNotFoundError):
        read_review_image(s3_client=store, review_uri=URIS["review_uri"], key=f"review/{RUN}/gone.png")


def test_a_store_that_refuses_the_label_raises_botocores_error_naming_the_object_and_the_image_waits(store):
    key = _put_item(store, RUN, "a.png")
    uris = {**URIS, "labeled_uri": "s3://no-such-bucket/labeled/"}

    with pytest.raises(ClientError) as raised:
        label_image(s3_client=store, **uris, key=key, digit=3, user="ada")

    labeled_uri = f"s3://no-such-bucket/labeled/3/{hashlib.sha256(IMAGE).hexdigest()}.png"
    assert raised.value.__notes__ == [f"cannot write {labeled_uri}"]
    assert stored_keys(store, "review/") == [key, f"{key}.json"]
    # Recorded first: the label that did not happen has a record, which the image's next action outdates.
    assert [record["action"] for _, record in audit_records(store)] == ["label"]


def test_an_unreadable_review_prefix_raises_botocores_error_naming_it(store):
    with pytest.raises(ClientError) as raised:
        review_queue(s3_client=store, review_uri="s3://no-such-bucket/review/")

    assert raised.value.__notes__ == ["cannot list s3://no-such-bucket/review/"]


class _KeepsObjects:
    """The moto client, but its DeleteObjects reports every key as kept, as a store with a deny policy does."""

    def __init__(self, s3_client) -> None:
        self._s3 = s3_client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def delete_objects(self, *, Bucket: str, Delete: dict) -> dict:  # boto3's argument names
        kept = {"Code": "AccessDenied", "Message": "Access Denied"}
        return {"Errors": [{"Key": item["Key"], **kept} for item in Delete["Objects"]]}


def test_a_delete_the_store_answers_but_refuses_is_a_removal_error_naming_the_object(store):
    key = _put_item(store, RUN, "a.png")

    with pytest.raises(ReviewRemovalError) as raised:
        discard_image(
            s3_client=_KeepsObjects(store),
            review_uri=URIS["review_uri"],
            review_log_uri=URIS["review_log_uri"],
            key=key,
            user="ada",
        )

    assert str(raised.value) == f"cannot delete s3://{BUCKET}/{key}: AccessDenied Access Denied"
    assert stored_keys(store, "review/") == [key, f"{key}.json"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a/b.PNG", "image/png"),
        ("x.jpeg", "image/jpeg"),
        ("x.TIF", "image/tiff"),
        ("x.html", "application/octet-stream"),
    ],
)
def test_an_images_content_type_is_by_its_suffix(key, expected):
    assert content_type(key) == expected
