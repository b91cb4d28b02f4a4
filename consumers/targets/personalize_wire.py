"""PutEvents on the wire: the REST-JSON request built, signed and sent without boto3's client.

Why: boto3's ``put_events`` costs about 1.1 to 1.4 ms of CPU per call here (parameter validation,
serialisation, the event hooks, signing, urllib3, response parsing), and the target's threads
share one GIL, so 500 calls/s did not fit in a core. Built here, a call costs about 0.3 to 0.4 ms:
the body is encoded by msgspec and sent over keep-alive ``http.client`` connections (measured:
httpx costs ~0.9 ms a call, urllib3 ~0.45 ms, http.client ~0.25 ms).

Measured again with ``bench.consume`` (8,000 one-event calls, ``--rate 1000``, Personalize's
quota per dataset group; 2 shared cores, so noisy): this client 1,022 calls/s at 2.8 CPU-s
(0.35 ms a call), the same client with its transport swapped for httpx 887 calls/s at 5.5
CPU-s (0.69 ms a call). At ``--rate 500`` both keep up (504 and 524/s) with 0.39 and 0.91 ms
of CPU a call. So httpx would not use the full quota; this transport stays.

What stays botocore's, so nothing about configuration changes: the endpoint, region and signing
name come from a client built once in ``open`` (the target's ``endpointUrl``,
``AWS_ENDPOINT_URL_PERSONALIZE_EVENTS``, ``AWS_ENDPOINT_URL``, the config file, else
``https://personalize-events.{region}.amazonaws.com``); credentials come from the standard chain
and are refreshed when refreshable; requests are signed with ``SigV4Auth``; TLS is verified
against botocore's CA bundle (or ``AWS_CA_BUNDLE``). Proxies are not used.

The wire format is what botocore writes for the ``personalize-events`` 2018-03-22 model:
``POST {endpoint}/events``, ``Content-Type: application/json``, the ``PutEventsRequest``
members as JSON, ``sentAt`` as a JSON number of epoch seconds (``epoch_seconds``) and
``properties`` as a JSON string.

Errors: an error answer's code is read as botocore's rest-json parser reads it (the
``x-amzn-ErrorType`` header, else the body's ``code`` or ``__type``, namespace and suffix
stripped, else the HTTP status) and becomes the p13n error ``aws.errors.from_code`` gives it,
exactly as a ``ClientError`` did; a failure to connect, send or read is ``Unavailable``.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any
from urllib.parse import SplitResult, urlsplit

import msgspec

from aws.errors import from_code
from consumers.targets import aws_client
from schemas.config import TargetConfig
from schemas.errors import OperatorError, P13nError, Unavailable

OPERATION_PATH = "/events"
_ENCODE = msgspec.json.Encoder().encode


def epoch_seconds(millis: int) -> int | float:
    """Epoch milliseconds as botocore serialises a ``timestamp`` in a JSON body: whole seconds
    as an integer, anything else as a float with the milliseconds (one rounding, as botocore)."""
    seconds, rest = divmod(millis, 1000)
    return seconds if rest == 0 else millis / 1000


def host_header(parts: SplitResult) -> str:
    """The ``Host`` value SigV4 signs for an endpoint: the host lowercased (``hostname`` is),
    an IPv6 literal in brackets, the port only when it is not the scheme's default."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def error_for(status: int, error_type: str | None, body: bytes, what: str) -> P13nError:
    """The p13n error for an error answer (its status, ``x-amzn-ErrorType`` header and body),
    its code found the way botocore's rest-json parser finds it, so the classification is the
    one ``aws.errors.translate`` gave the ``ClientError``."""
    if status >= 500 and (not body.strip() or body.lstrip().startswith(b"<html>")):
        # A proxy's or load balancer's page, not the service's answer: botocore names it by
        # its status alone.
        return from_code(str(status), http.client.responses.get(status, ""), what, status)
    try:
        document = json.loads(body) if body else {}
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    code = (
        error_type
        or document.get("code")
        or document.get("Code")
        or document.get("__type")
        or str(status)
    )
    code = str(code).split(":", 1)[0].rsplit("#", 1)[-1]
    message = str(document.get("message") or document.get("Message") or "")
    return from_code(code, message, what, status)


class PutEventsClient:
    """Sends PutEvents requests; thread-safe once open. ``put`` raises p13n errors only.

    ``pace``, when given, is entered around each exchange — from just before the request is
    written until its answer (or failure) is in — so that a quota can count every call that
    may have reached the service, for as long as it may be arriving there.
    """

    def __init__(
        self,
        config: TargetConfig,
        *,
        pace: Callable[[], AbstractContextManager[object]] | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        idle_connections: int = 16,
    ) -> None:
        self._config = config
        self._pace = pace or nullcontext
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle_limit = idle_connections
        self._what = f"personalize PutEvents ({config.group})"
        self.url = ""
        self.region = ""
        self._signing_name = ""
        self._path = OPERATION_PATH
        self._host = ""
        self._credentials: Any = None
        self._connect: Callable[[], http.client.HTTPConnection] | None = None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        import botocore.session
        from botocore.httpsession import get_cert_path

        # A client resolves the endpoint and region exactly as every other client does; it is
        # used for nothing else.
        resolver = aws_client("personalize-events", self._config)
        try:
            endpoint = resolver.meta.endpoint_url
            self.region = resolver.meta.region_name
            self._signing_name = resolver.meta.service_model.signing_name
        finally:
            resolver.close()
        session = botocore.session.get_session()
        self._credentials = session.get_credentials()
        parts = urlsplit(endpoint)
        self._path = parts.path.rstrip("/") + OPERATION_PATH
        self.url = f"{parts.scheme}://{parts.netloc}{self._path}"
        self._host = host_header(parts)
        host, port, timeout = parts.hostname or "", parts.port, self._connect_timeout
        if parts.scheme == "https":
            cafile = session.get_config_variable("ca_bundle") or get_cert_path(True)
            context = ssl.create_default_context(cafile=cafile)
            self._connect = lambda: http.client.HTTPSConnection(
                host, port, timeout=timeout, context=context
            )
        else:
            self._connect = lambda: http.client.HTTPConnection(host, port, timeout=timeout)

    def put(self, request: Mapping[str, Any]) -> None:
        """One PutEvents call with ``request`` (the ``PutEventsRequest`` members, ``sentAt``
        already in epoch seconds); returns when the service accepted it."""
        if self._connect is None:
            raise Unavailable(f"{self._what}: client is not open")
        body = _ENCODE(request)
        headers = self._signed_headers(body)
        connection = self._take(self._connect)
        try:
            with self._pace():
                if connection.sock is None:
                    self._connect_now(connection)
                connection.request("POST", self._path, body, headers)
                response = connection.getresponse()
                content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            reason = str(exc) or type(exc).__name__
            raise Unavailable(f"{self._what}: {reason}", code=type(exc).__name__) from exc
        if response.will_close:
            connection.close()
        else:
            self._give(connection)
        if not 200 <= response.status < 300:
            error_type = response.getheader("x-amzn-ErrorType")
            raise error_for(response.status, error_type, content, self._what)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        self._connect = None

    def _signed_headers(self, body: bytes) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        if self._credentials is None:
            raise OperatorError(f"{self._what}: no AWS credentials", code="NoCredentialsError")
        request = AWSRequest(
            method="POST", url=self.url, data=body, headers={"Content-Type": "application/json"}
        )
        credentials = self._credentials.get_frozen_credentials()  # refreshes when due
        SigV4Auth(credentials, self._signing_name, self.region).add_auth(request)
        headers = {name: str(value) for name, value in request.headers.items()}
        headers["Host"] = self._host  # the value that was signed
        headers["User-Agent"] = "p13n"
        return headers

    def _connect_now(self, connection: http.client.HTTPConnection) -> None:
        """Connect within the connect timeout, then wait for answers up to the read timeout."""
        connection.connect()
        sock: Any = connection.sock
        sock.settimeout(self._read_timeout)

    def _take(
        self, connect: Callable[[], http.client.HTTPConnection]
    ) -> http.client.HTTPConnection:
        """An idle keep-alive connection that the server has not closed, else a new one
        (connected lazily, inside ``put``'s error handling)."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return connect()
            # Readable while idle means the server closed it (or sent junk): not reusable.
            if connection.sock is not None and not select.select([connection.sock], [], [], 0)[0]:
                return connection
            connection.close()

    def _give(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._idle_limit:
                self._idle.append(connection)
                return
        connection.close()
