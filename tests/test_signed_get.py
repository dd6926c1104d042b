"""signed_get: batch predictions' lean S3 GETs, against moto's S3 server and the fault proxy."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from mnist_tasks.s3 import is_condition_failed, is_missing
from mnist_tasks.signed_get import SignedGetter
from tests.faults.conftest import Fault, FaultProxy


def _client(endpoint: str, **config: object):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing", config=Config(**config),
    )  # fmt: skip


class CallsCounted:
    """Counts the GETs that go through the boto3 client itself (its before-call event)."""

    def __init__(self, s3_client) -> None:
        self.count = 0
        s3_client.meta.events.register("before-call.s3.GetObject", self._called)

    def _called(self, **_: object) -> None:
        self.count += 1


@pytest.fixture
def stored(s3_client):
    s3_client.create_bucket(Bucket="inbox")
    s3_client.put_object(Bucket="inbox", Key="scans/a b+c.png", Body=b"first")
    return s3_client.head_object(Bucket="inbox", Key="scans/a b+c.png")["ETag"]


def test_the_pinned_botocore_takes_the_fast_path_and_reads_the_objects_bytes(s3_client, stored):
    getter = SignedGetter.for_client(s3_client)
    through_client = CallsCounted(s3_client)

    assert getter.fast
    assert [getter.get("inbox", "scans/a b+c.png", if_match=stored) for _ in range(3)] == [b"first"] * 3
    assert through_client.count == 0


def test_a_missing_or_replaced_object_raises_what_botocore_raises(s3_client, stored):
    getter = SignedGetter.for_client(s3_client)
    with pytest.raises(ClientError) as missing:
        getter.get("inbox", "scans/none.png")
    assert is_missing(missing.value)
    through_client = CallsCounted(s3_client)
    with pytest.raises(ClientError) as no_bucket:  # a 404 of another kind: botocore's own error
        getter.get("no-such-bucket", "scans/a b+c.png")
    assert no_bucket.value.response["Error"]["Code"] == "NoSuchBucket" and through_client.count == 1

    s3_client.put_object(Bucket="inbox", Key="scans/a b+c.png", Body=b"second")
    with pytest.raises(ClientError) as replaced:
        getter.get("inbox", "scans/a b+c.png", if_match=stored)
    assert is_condition_failed(replaced.value)


def test_a_5xx_is_retried_within_the_clients_attempts_and_then_raised(s3_endpoint, stored, monkeypatch):
    monkeypatch.setattr("mnist_tasks.signed_get.BACKOFF_SECONDS", 0.01)
    with FaultProxy(s3_endpoint) as proxy:
        getter = SignedGetter.for_client(_client(proxy.url, retries={"total_max_attempts": 3}))
        proxy.faults.append(Fault(method="GET", path=r"/inbox/scans/", action="503", times=2))
        assert getter.get("inbox", "scans/a b+c.png") == b"first"
        assert proxy.faults[0].hits == 2

        proxy.faults.append(Fault(method="GET", path=r"/inbox/scans/", action="503", times=3))
        with pytest.raises(ClientError) as failed:
            getter.get("inbox", "scans/a b+c.png")
        assert failed.value.response["Error"]["Code"] == "SlowDown"
        assert proxy.faults[1].hits == 3


def test_a_dropped_connection_is_a_failed_attempt_never_a_silent_resend(s3_endpoint, stored):
    with FaultProxy(s3_endpoint) as proxy:
        getter = SignedGetter.for_client(_client(proxy.url, retries={"total_max_attempts": 1}))
        assert getter.get("inbox", "scans/a b+c.png") == b"first"  # the connection is now kept alive
        proxy.faults.append(Fault(method="GET", path=r"/inbox/scans/", action="drop", times=1))
        with pytest.raises(ConnectionClosedError, match=r"/inbox/scans/a%20b%2Bc\.png"):
            getter.get("inbox", "scans/a b+c.png")
        assert proxy.faults[0].hits == 1
        assert getter.get("inbox", "scans/a b+c.png") == b"first"  # on a new connection


def test_an_answer_it_does_not_handle_goes_through_the_client_whose_error_the_caller_sees(s3_endpoint, stored):
    with FaultProxy(s3_endpoint) as proxy:
        s3_client = _client(proxy.url, retries={"total_max_attempts": 1})
        getter = SignedGetter.for_client(s3_client)
        through_client = CallsCounted(s3_client)
        proxy.faults.append(Fault(method="GET", path=r"/inbox/scans/", action="403", times=2))
        with pytest.raises(ClientError) as denied:
            getter.get("inbox", "scans/a b+c.png")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        assert (proxy.faults[0].hits, through_client.count) == (2, 1)  # the fast GET, then the client's


def test_a_proxy_in_the_environment_sends_every_get_through_the_client(s3_client, stored, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("no_proxy", "")
    getter = SignedGetter.for_client(s3_client)
    assert not getter.fast
    monkeypatch.delenv("http_proxy")  # the client reads its proxies per request: let it reach moto
    through_client = CallsCounted(s3_client)
    assert getter.get("inbox", "scans/a b+c.png") == b"first"
    assert through_client.count == 1


KEYS = ["plain.png", "a b+c%~é.png", "dir//x;=@:!*'()?#.png", "/leading-slash.png"]


@pytest.mark.slow
def test_the_store_that_checks_signatures_serves_every_key_and_its_checksum_is_checked(embedded_store):
    """SeaweedFS checks each request's SigV4 signature (moto's server does not), and keeps the CRC32
    boto3 uploads with: the fast path's signature and the checksum it checks are the real thing."""
    embedded_store.empty()
    s3_client = embedded_store.client()
    bodies = {key: f"body of {key}".encode() for key in KEYS}
    for key, body in bodies.items():
        s3_client.put_object(Bucket="mnist-inbox", Key=key, Body=body)
    getter = SignedGetter.for_client(s3_client)
    through_client = CallsCounted(s3_client)

    assert {key: getter.get("mnist-inbox", key) for key in KEYS} == bodies
    assert through_client.count == 0
    assert s3_client.head_object(Bucket="mnist-inbox", Key=KEYS[1], ChecksumMode="ENABLED")["ChecksumCRC32"]

    forged = SignedGetter.for_client(
        _client(embedded_store.client_environment()["AWS_ENDPOINT_URL"], retries={"total_max_attempts": 1})
    )
    with pytest.raises(ClientError) as refused:  # the test's made-up credentials: the store says no
        forged.get("mnist-inbox", "plain.png")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_body_that_does_not_match_the_stores_checksum_is_refused(monkeypatch, s3_client, stored):
    from botocore.exceptions import FlexibleChecksumError

    import mnist_tasks.signed_get

    getter = SignedGetter.for_client(s3_client)
    sent = mnist_tasks.signed_get.SignedGetter._send

    def crc_of_other_bytes(self, transport, url, if_match):
        status, headers, body = sent(self, transport, url, if_match)
        del headers["x-amz-checksum-crc32"]
        headers["x-amz-checksum-crc32"] = "AAAAAA=="
        return status, headers, body

    monkeypatch.setattr(mnist_tasks.signed_get.SignedGetter, "_send", crc_of_other_bytes)
    with pytest.raises(FlexibleChecksumError, match="expected x-amz-checksum-crc32 AAAAAA=="):
        getter.get("inbox", "scans/a b+c.png")
