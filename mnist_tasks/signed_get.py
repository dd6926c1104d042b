"""S3 GETs at the speed batch predictions need: botocore's signer, plain keep-alive connections.

A botocore `get_object` costs about 1.8 ms of CPU in the caller (its event hooks, endpoint
rules, parameter validation, response parsing), more than twice the work of preprocessing
the small image it fetches, and all of it holds the GIL. `SignedGetter` signs each GET with
the client's own credentials and SigV4 signer and sends it on a keep-alive `http.client`
connection per thread, with the client's timeouts, TLS verification and retry budget, for
about 0.5 ms (`make bench-batch` prints both).

Each bucket's URL is the one the client itself would use: botocore builds it once (a
presigned URL's, with the key taken off), so virtual-hosted or path-style addressing,
regional, FIPS and accelerate endpoints, and an endpoint's own path all stay the client's.
As botocore does (without its optional CRT), the object's CRC32, SHA-1, SHA-256 or SHA-512
checksum is asked for and checked when the store keeps one.

It handles the plain case only: a GET of a whole object, with an optional If-Match.
Anything else goes through the client itself, so the error a caller sees is botocore's own:
- every GET of a client this module cannot read the settings of (another botocore, no
  credentials, a client certificate, a proxy configured or in the environment);
- every GET of a bucket that answered with a redirect (another region than the client's);
- a GET answered with anything but 200, NoSuchKey (404), PreconditionFailed (412) or a
  5xx retried within the client's budget (a missing bucket, 403, 400, …).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import random
import select
import ssl
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError, ConnectionClosedError, FlexibleChecksumError, ReadTimeoutError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectRequestTypeDef

RETRIED_STATUSES = frozenset({500, 502, 503, 504})  # what botocore's standard mode retries too
ANSWERED = {(404, "NoSuchKey"), (412, "PreconditionFailed")}  # raised as botocore raises them
REDIRECTS = frozenset({301, 307})  # the bucket lives in another region: the client knows how to follow
BACKOFF_SECONDS = 1.0  # first retry waits up to this (random), doubling: botocore's standard mode
MAX_BACKOFF_SECONDS = 20.0
DEFAULT_ATTEMPTS = {"legacy": 5, "standard": 3, "adaptive": 3}  # botocore's, when its config names none
PROBE_KEY = "k"  # the key of the presigned URL a bucket's base URL is cut from


def _crc32(body: bytes) -> bytes:
    return zlib.crc32(body).to_bytes(4, "big")


# The checksums botocore checks without its optional CRT extension, by header name, in its order.
CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "x-amz-checksum-crc32": _crc32,
    "x-amz-checksum-sha1": lambda body: hashlib.sha1(body).digest(),
    "x-amz-checksum-sha256": lambda body: hashlib.sha256(body).digest(),
    "x-amz-checksum-sha512": lambda body: hashlib.sha512(body).digest(),
}


@dataclass(frozen=True)
class _Transport:
    tls: ssl.SSLContext | None
    connect_timeout: float
    read_timeout: float
    attempts: int


class SignedGetter:
    """`get(bucket, key, if_match=None) -> bytes` through `s3_client`; safe to share between threads.

    Use it as a context manager: leaving it closes the connections its threads opened.
    """

    def __init__(self, s3_client: S3Client, transport: _Transport | None) -> None:
        self._client = s3_client
        self._transport = transport
        self._local = threading.local()
        self._lock = threading.Lock()
        self._bases: dict[str, str | None] = {}  # bucket -> base URL, or None: through the client
        self._connections: list[http.client.HTTPConnection] = []

    @classmethod
    def for_client(cls, s3_client: S3Client) -> SignedGetter:
        return cls(s3_client, _transport_of(s3_client))

    def __enter__(self) -> SignedGetter:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    @property
    def fast(self) -> bool:
        """Whether GETs may take the fast path (False: every GET goes through the client)."""
        return self._transport is not None

    def get(self, bucket: str, key: str, *, if_match: str | None = None) -> bytes:
        """The object's bytes; a botocore error (ClientError NoSuchKey, PreconditionFailed, …) otherwise."""
        transport, base = self._transport, self._base(bucket)
        if transport is None or base is None:
            return self._through_client(bucket, key, if_match)
        url = base + urllib.parse.quote(key)
        for attempt in range(1, transport.attempts + 1):
            try:
                status, headers, body = self._send(transport, url, if_match)
            except (OSError, http.client.HTTPException) as err:
                self._drop_connection()
                if attempt == transport.attempts:
                    raise _connection_error(err, url) from err
            else:
                code = _error_code(body) if status != 200 else None
                if status == 200:
                    return _checked(body, headers, url)
                if (status, code) in ANSWERED:
                    raise _client_error(status, code or str(status), bucket, key)
                if status in REDIRECTS:
                    with self._lock:
                        self._bases[bucket] = None  # its region's endpoint is the client's to find
                if status not in RETRIED_STATUSES:
                    return self._through_client(bucket, key, if_match)
                if attempt == transport.attempts:
                    raise _client_error(status, code or str(status), bucket, key)
            time.sleep(random.uniform(0, min(BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _base(self, bucket: str) -> str | None:
        """The bucket's URL up to the key, as the client builds it (cut from a presigned URL), once."""
        with self._lock:
            if bucket in self._bases:
                return self._bases[bucket]
        presigned = self._client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": PROBE_KEY})
        path = urllib.parse.urlsplit(presigned)
        base = None
        if path.path.endswith("/" + PROBE_KEY):
            base = f"{path.scheme}://{path.netloc}{path.path.removesuffix(PROBE_KEY)}"
        with self._lock:
            self._bases[bucket] = base
        return base

    def _send(
        self, transport: _Transport, url: str, if_match: str | None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One signed GET: (status, headers, body), on this thread's kept-alive connection."""
        from botocore.awsrequest import AWSRequest

        headers = {"x-amz-checksum-mode": "ENABLED"}
        if if_match:
            headers["If-Match"] = if_match
        request = AWSRequest(method="GET", url=url, headers=headers)
        _internals(self._client)._request_signer.sign("GetObject", request)
        prepared = request.prepare()
        target = urllib.parse.urlsplit(prepared.url)
        connection = self._local.__dict__.get("connection")
        if connection is not None and (connection.host, connection.port) != _host_port(target):
            self._drop_connection()  # another bucket's host (virtual-hosted addressing)
            connection = None
        if connection is not None and _closed_by_server(connection):
            self._drop_connection()
            connection = None
        if connection is None:
            connection = self._local.connection = _connect(transport, target)
            with self._lock:
                self._connections.append(connection)
        path = target.path + (f"?{target.query}" if target.query else "")
        connection.request("GET", path, headers=dict(prepared.headers))
        response = connection.getresponse()
        body = response.read()
        if response.will_close:
            self._drop_connection()
        return response.status, response.headers, body

    def _drop_connection(self) -> None:
        connection = self._local.__dict__.pop("connection", None)
        if connection is not None:
            connection.close()
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)

    def _through_client(self, bucket: str, key: str, if_match: str | None) -> bytes:
        request: GetObjectRequestTypeDef = {"Bucket": bucket, "Key": key}
        if if_match:
            request["IfMatch"] = if_match
        return self._client.get_object(**request)["Body"].read()


def _transport_of(s3_client: S3Client) -> _Transport | None:
    """What the fast path needs of the client, or None when it cannot take it (see the module's docstring)."""
    client = _internals(s3_client)
    try:
        signer = client._request_signer
        verify = client._endpoint.http_session._verify
        config = client.meta.config
        endpoint = urllib.parse.urlsplit(client.meta.endpoint_url)
    except AttributeError:
        return None
    if signer._credentials is None or config.proxies or config.client_cert:
        return None
    if urllib.request.getproxies().get(endpoint.scheme) and not urllib.request.proxy_bypass(endpoint.hostname or ""):
        return None
    tls = None
    if endpoint.scheme == "https":
        from botocore.httpsession import get_cert_path

        if verify is False:
            tls = ssl.create_default_context()  # the client was told not to verify (verify=False); nor does this
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        else:
            tls = ssl.create_default_context(cafile=get_cert_path(verify))
    retries: dict[str, Any] = config.retries or {}  # botocore's: mode, max_attempts or total_max_attempts
    attempts = retries.get("total_max_attempts") or (
        retries["max_attempts"] + 1 if "max_attempts" in retries else DEFAULT_ATTEMPTS.get(retries.get("mode", ""), 3)
    )
    return _Transport(
        tls=tls, connect_timeout=config.connect_timeout, read_timeout=config.read_timeout, attempts=max(1, attempts)
    )


def _internals(s3_client: S3Client) -> Any:
    """The client untyped: its private attributes (_request_signer, _endpoint) and its Config's settings
    (proxies, retries, timeouts), which botocore's stubs leave out."""
    return cast(Any, s3_client)


def _host_port(url: urllib.parse.SplitResult) -> tuple[str, int]:
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def _connect(transport: _Transport, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
    host, port = _host_port(url)
    if url.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=transport.connect_timeout, context=transport.tls
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=transport.connect_timeout)
    connection.connect()
    connection.sock.settimeout(transport.read_timeout)
    return connection


def _closed_by_server(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server (readable at rest means EOF), as
    urllib3 checks before reusing one: a GET is never sent on it, so a failure later is a real one."""
    if connection.sock is None:
        return True
    poller = select.poll()  # not select.select: it cannot watch a descriptor above 1023
    poller.register(connection.sock, select.POLLIN)
    return bool(poller.poll(0))


def _checked(body: bytes, headers: http.client.HTTPMessage, url: str) -> bytes:
    """body, once it matches the first checksum the store sent that botocore would check too."""
    for header, digest in CHECKSUMS.items():
        expected = headers.get(header)
        if expected is None or "-" in expected:  # "-N": a multipart upload's checksum of checksums
            continue
        if digest(body) != base64.b64decode(expected):
            raise FlexibleChecksumError(
                error_msg=f"{url}: expected {header} {expected}, got {base64.b64encode(digest(body)).decode()}"
            )
        break
    return body


def _error_code(body: bytes) -> str | None:
    """The <Code> of an S3 error document, if the body is one."""
    try:
        return ET.fromstring(body).findtext("Code")
    except ET.ParseError:
        return None


def _client_error(status: int, code: str, bucket: str, key: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"s3://{bucket}/{key}: HTTP {status}"},
         # Only the status is known here; the stubs require every ResponseMetadata key, botocore none.
         "ResponseMetadata": {"HTTPStatusCode": status}},  # type: ignore[typeddict-item]
        "GetObject",
    )  # fmt: skip


def _connection_error(err: Exception, url: str) -> Exception:
    """The botocore error a get_object would have raised after its last attempt, naming the URL."""
    if isinstance(err, TimeoutError):
        return ReadTimeoutError(endpoint_url=url, error=err)
    return ConnectionClosedError(endpoint_url=url, error=err)
