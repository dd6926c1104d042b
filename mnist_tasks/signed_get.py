"""S3 GETs at the speed batch predictions need: botocore's signer, plain keep-alive connections.

A botocore `get_object` costs about 1.7 ms of CPU in the caller (its event hooks, endpoint
rules, parameter validation, response parsing), three times the work of preprocessing the
small image it fetches, and all of it holds the GIL. `SignedGetter` signs each GET with the
client's own credentials and SigV4 signer, sends it on a keep-alive `http.client`
connection per thread, with the client's timeouts, TLS verification and retry budget, and
costs about 0.3 ms (`make bench-batch` prints both).

It handles the plain case only: a GET of a whole object by path-style URL, with an
optional If-Match. Anything else goes through the client itself:
- clients `SignedGetter.for_client` cannot read the settings of (another botocore, a
  client without credentials, a proxy configured or in the environment): every GET;
- an answer other than 200, 404, 412 or a retried 5xx (a redirect to another region,
  403, 400): that GET, so the error a caller sees is botocore's own.
"""

from __future__ import annotations

import http.client
import random
import select
import ssl
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

RETRIED_STATUSES = frozenset({500, 502, 503, 504})  # what botocore's standard mode retries too
ANSWERED = {404: "NoSuchKey", 412: "PreconditionFailed"}  # answers a caller handles: raised as botocore would
BACKOFF_SECONDS = 1.0  # first retry waits up to this (random), doubling: botocore's standard mode
MAX_BACKOFF_SECONDS = 20.0
DEFAULT_ATTEMPTS = {"legacy": 5, "standard": 3, "adaptive": 3}  # botocore's, when its config names none


@dataclass(frozen=True)
class _Endpoint:
    scheme: str
    host: str
    port: int | None
    path: str  # the endpoint's own path prefix, usually ""
    tls: ssl.SSLContext | None
    connect_timeout: float
    read_timeout: float
    attempts: int


class SignedGetter:
    """`get(bucket, key, if_match=None) -> bytes` through `s3_client`'s endpoint; safe to share between threads."""

    def __init__(self, s3_client: Any, endpoint: _Endpoint | None) -> None:
        self._client = s3_client
        self._endpoint = endpoint
        self._local = threading.local()

    @classmethod
    def for_client(cls, s3_client: Any) -> SignedGetter:
        return cls(s3_client, _endpoint_of(s3_client))

    @property
    def fast(self) -> bool:
        """Whether GETs take the fast path (False: every GET goes through the client)."""
        return self._endpoint is not None

    def get(self, bucket: str, key: str, *, if_match: str | None = None) -> bytes:
        """The object's bytes; a ClientError as botocore raises it (NoSuchKey, PreconditionFailed, …) otherwise."""
        endpoint = self._endpoint
        if endpoint is None:
            return self._through_client(bucket, key, if_match)
        url = f"{endpoint.scheme}://{endpoint.host}{_port(endpoint)}{endpoint.path}/{bucket}/{urllib.parse.quote(key)}"
        for attempt in range(1, endpoint.attempts + 1):
            try:
                status, body = self._send(endpoint, url, if_match)
            except (OSError, http.client.HTTPException):
                self._drop_connection()
                if attempt == endpoint.attempts:
                    raise
            else:
                if status == 200:
                    return body
                if status in ANSWERED:
                    raise _client_error(status, ANSWERED[status], bucket, key)
                if status not in RETRIED_STATUSES:
                    return self._through_client(bucket, key, if_match)
                if attempt == endpoint.attempts:
                    raise _client_error(status, _error_code(body) or str(status), bucket, key)
            time.sleep(random.uniform(0, min(BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, endpoint: _Endpoint, url: str, if_match: str | None) -> tuple[int, bytes]:
        """One signed GET: (status, body), on this thread's kept-alive connection."""
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="GET", url=url, headers={"If-Match": if_match} if if_match else {})
        self._client._request_signer.sign("GetObject", request)
        prepared = request.prepare()
        target = urllib.parse.urlsplit(prepared.url)
        connection = self._local.__dict__.get("connection")
        if connection is not None and _closed_by_server(connection):
            self._drop_connection()
            connection = None
        if connection is None:
            connection = self._local.connection = _connect(endpoint)
        path = target.path + (f"?{target.query}" if target.query else "")
        connection.request("GET", path, headers=dict(prepared.headers))
        response = connection.getresponse()
        body = response.read()
        if response.will_close:
            self._drop_connection()
        return response.status, body

    def _drop_connection(self) -> None:
        connection = self._local.__dict__.pop("connection", None)
        if connection is not None:
            connection.close()

    def _through_client(self, bucket: str, key: str, if_match: str | None) -> bytes:
        extra = {"IfMatch": if_match} if if_match else {}
        return self._client.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()


def _endpoint_of(s3_client: Any) -> _Endpoint | None:
    """What the fast path needs of the client, or None when it cannot take it (see the module's docstring)."""
    try:
        signer = s3_client._request_signer
        verify = s3_client._endpoint.http_session._verify
        config = s3_client.meta.config
        url = urllib.parse.urlsplit(s3_client.meta.endpoint_url)
    except AttributeError:
        return None
    if signer._credentials is None or config.proxies or url.scheme not in ("http", "https") or url.query:
        return None
    if urllib.request.getproxies().get(url.scheme) and not urllib.request.proxy_bypass(url.hostname or ""):
        return None
    tls = None
    if url.scheme == "https":
        from botocore.httpsession import get_cert_path

        if verify is False:
            tls = ssl.create_default_context()  # the client was told not to verify (verify=False); nor does this
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        else:
            tls = ssl.create_default_context(cafile=get_cert_path(verify))
    retries = config.retries or {}
    attempts = retries.get("total_max_attempts") or (
        retries["max_attempts"] + 1 if "max_attempts" in retries else DEFAULT_ATTEMPTS.get(retries.get("mode"), 3)
    )
    return _Endpoint(
        scheme=url.scheme,
        host=url.hostname or "",
        port=url.port,
        path=url.path.rstrip("/"),
        tls=tls,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        attempts=max(1, attempts),
    )


def _port(endpoint: _Endpoint) -> str:
    return f":{endpoint.port}" if endpoint.port else ""


def _connect(endpoint: _Endpoint) -> http.client.HTTPConnection:
    if endpoint.tls is not None:
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            endpoint.host, endpoint.port, timeout=endpoint.connect_timeout, context=endpoint.tls
        )
    else:
        connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=endpoint.connect_timeout)
    connection.connect()
    connection.sock.settimeout(endpoint.read_timeout)
    return connection


def _closed_by_server(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server (readable at rest means EOF), as
    urllib3 checks before reusing one: a GET is never sent on it, so a failure later is a real one."""
    return connection.sock is None or bool(select.select([connection.sock], [], [], 0)[0])


def _error_code(body: bytes) -> str | None:
    """The <Code> of an S3 error document, if the body is one."""
    try:
        return ET.fromstring(body).findtext("Code")
    except ET.ParseError:
        return None


def _client_error(status: int, code: str, bucket: str, key: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"s3://{bucket}/{key}: HTTP {status}"},
         "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )  # fmt: skip
