"""An in-process, fault-injecting OCI registry for tests (what a real registry won't do).

``FakeRegistry`` serves manifests and blobs from dicts over plain HTTP on 127.0.0.1 (an ephemeral
port), records every request, and applies ``Fault`` rules: error statuses (500/503 bursts, 429
with Retry-After), a connection cut after N body bytes, Range ignored, slow drip, wrong bytes for
a digest, redirects of blob GETs to another host (a "CDN"). It can require Basic auth or Bearer
tokens, the token realm served by itself or by another ``FakeRegistry`` (``token_server=True``).
It also accepts monolithic uploads and manifest PUTs, so the pusher can be tested against it.

    with FakeRegistry() as reg:
        reg.add_blob(b"hello")
        reg.add_fault(Fault(path_contains="/blobs/", status=503, times=2))
        ... Transport() against reg.host ...
        assert [r.method for r in reg.requests] == [...]
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

import requests
import requests.adapters

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def covered_once(ranges: list[tuple[int, int | None]], size: int) -> bool:
    """Whether ``ranges`` (as ``FakeRegistry.ranges_served`` gives them) cover ``[0, size)``
    exactly: every byte asked for once, none twice, none left out."""
    spans = sorted((a, size - 1 if b is None else b) for a, b in ranges)
    pos = 0
    for a, b in spans:
        if a != pos:
            return False
        pos = b + 1
    return pos == size


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str  # path and query, as sent
    headers: dict[str, str]  # header names lowercased
    body: bytes = b""
    connection: int = 0  # which TCP connection carried it (1 = the first accepted)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class Fault:
    """One misbehaviour, applied to matching requests ``times`` times (-1: forever).

    Matching: ``method`` (None = any) and ``path_contains`` (substring of the path).
    Actions (first set wins, in this order): ``status`` (error JSON with ``code``, optional
    ``retry_after`` header), ``redirect_to`` (base URL; Location = base + same path),
    ``body`` (serve these bytes instead of the blob), then body tweaks that may combine:
    ``ignore_range``, ``cut_after`` (close after N body bytes), ``drip`` (seconds between
    ``drip_chunk``-byte writes; blobs and manifests), ``no_content_length`` (body delimited
    by closing),
    ``content_length`` (a verbatim, possibly malformed header), ``stall_after`` (N body bytes,
    then silence with the connection open) and ``hold_open`` (silence after the whole body).
    ``location`` answers with a redirect to that exact (possibly malformed) ``Location``.
    Ranges: ``range_start`` narrows the match to one ranged request, ``wrong_content_range``
    and ``no_accept_ranges`` break the answer to it.
    """

    path_contains: str = ""
    method: str | None = None
    times: int = 1
    status: int | None = None
    code: str = "UNAVAILABLE"
    retry_after: str | None = None
    redirect_to: str | None = None
    redirect_status: int = 307
    body: bytes | None = None
    content_type: str | None = None
    ignore_range: bool = False
    cut_after: int | None = None
    drip: float | None = None
    drip_chunk: int = 1024
    no_content_length: bool = False  # blob GETs: no Content-Length, body ends at close
    headers: dict[str, str] = field(default_factory=dict)
    location: str | None = None  # a redirect (redirect_status) to exactly this Location
    content_length: str | None = None  # blob and manifest GETs: this Content-Length, verbatim
    stall_after: int | None = None  # blob and manifest GETs: hang after N body bytes
    hold_open: bool = False  # keep the connection open after the body (no close, no EOF)
    # Ranged blob GETs: match only a request whose Range starts at this byte (None: any).
    range_start: int | None = None
    wrong_content_range: bool = False  # answer a range with a Content-Range one byte off
    no_accept_ranges: bool = False  # leave out Accept-Ranges (a 206 to a range still comes)
    # Hold the answer until the fake has accepted this many TCP connections (or
    # ``hold_timeout`` seconds passed: a bound, so a missing connection fails the test rather
    # than hanging it); ``seen_connections`` is then how many it had.
    hold_until_connections: int | None = None
    # Hold the answer until ``hold_count`` requests whose path contains this were received
    # (or the timeout); ``seen_request`` says whether they were.
    hold_until_request: str | None = None
    hold_count: int = 1
    hold_timeout: float = 10.0
    seen_connections: int = 0
    seen_request: bool = False

    def matches(self, method: str, path: str, range_start: int | None = None) -> bool:
        return (
            (self.method is None or self.method == method)
            and self.path_contains in path
            and (self.range_start is None or self.range_start == range_start)
        )


class FakeRegistry:
    """A registry on 127.0.0.1 (or ``bind_host``) for the length of a ``with`` block."""

    def __init__(
        self,
        *,
        auth: str | None = None,  # None | "basic" | "token"
        users: dict[str, str] | None = None,
        anonymous_pull: bool = True,  # token mode: anonymous tokens allowed for pull
        realm: str | None = None,  # token mode: realm URL (default: this server's /token)
        token_issuer: FakeRegistry | None = None,  # whose tokens are valid (default: self)
        identity_tokens: dict[str, str] | None = None,  # refresh token → username
        token_expires_in: int | None = 300,
        hostname: str = "127.0.0.1",
        token_value: str | None = None,  # token mode: hand out this (possibly hostile) token
    ) -> None:
        self.token_value = token_value
        # Set by stop(): releases handlers that hang on purpose (stall_after, hold_open).
        self.stopping = threading.Event()
        self.auth = auth
        self.users = dict(users or {})
        self.anonymous_pull = anonymous_pull
        self._realm = realm
        self.token_issuer = token_issuer
        self.identity_tokens = dict(identity_tokens or {})
        self.token_expires_in = token_expires_in
        self.hostname = hostname
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}  # (repo, tag|digest)
        self.uploads: dict[str, bytearray] = {}
        self.requests: list[Recorded] = []
        self.token_requests: list[Recorded] = []
        self.issued_tokens: dict[str, tuple[str, str]] = {}  # token → (user, scope)
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self.sent: dict[str, int] = {}  # blob digest → body bytes written so far (all requests)
        self._sent_changed = threading.Condition(self._lock)
        self._counter = itertools.count(1)
        self.blob_gets_in_flight = 0
        self.peak_blob_gets = 0  # the most blob GETs served at once
        self.connections = 0  # TCP connections accepted so far
        self._changed = threading.Condition(self._lock)  # a connection or request came in
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> FakeRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        registry = self

        class Handler(_Handler):
            fake = registry

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeRegistry not started"
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (or ``localhost:PORT`` with hostname="localhost"): a distinct
        host name per choice, so two fakes can look like two hosts."""
        return f"{self.hostname}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def realm(self) -> str:
        return self._realm or f"{self.url}/token"

    # --- content ---------------------------------------------------------------------------------
    def add_blob(self, data: bytes) -> str:
        d = digest_of(data)
        self.blobs[d] = data
        return d

    def add_manifest(self, repo: str, data: bytes, media_type: str, tag: str | None = None) -> str:
        d = digest_of(data)
        self.manifests[(repo, d)] = (data, media_type)
        if tag is not None:
            self.manifests[(repo, tag)] = (data, media_type)
        return d

    def add_image(
        self,
        repo: str,
        tag: str | None = "latest",
        layers: list[bytes] | None = None,
        config: bytes | None = None,
        architecture: str = "amd64",
        os: str = "linux",
        variant: str | None = None,
    ) -> tuple[str, bytes]:
        """A minimal OCI image (layers are stored as given, labelled tar+gzip). Returns the
        manifest digest and bytes."""
        layers = layers if layers is not None else [b"layer-one", b"layer-two"]
        if config is None:
            cfg: dict[str, object] = {
                "architecture": architecture,
                "os": os,
                "rootfs": {"type": "layers", "diff_ids": [digest_of(x) for x in layers]},
            }
            if variant:
                cfg["variant"] = variant
            config = json.dumps(cfg).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": self.add_blob(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": self.add_blob(x), "size": len(x)}
                for x in layers
            ],
        }
        data = json.dumps(manifest).encode()
        return self.add_manifest(repo, data, OCI_MANIFEST, tag), data

    def add_index(
        self, repo: str, entries: list[tuple[str, bytes, dict[str, str]]], tag: str = "latest"
    ) -> tuple[str, bytes]:
        """An OCI index over (digest, manifest bytes, platform dict) entries."""
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d, "size": len(b), "platform": p}
                for d, b, p in entries
            ],
        }
        data = json.dumps(index).encode()
        return self.add_manifest(repo, data, OCI_INDEX, tag), data

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def take_fault(
        self, method: str, path: str, *, status: bool, range_start: int | None = None
    ) -> Fault | None:
        """The first live fault matching the request, of the status kind or the other kinds
        (status faults act before authentication, like a load balancer; others after it)."""
        with self._lock:
            for f in self.faults:
                if (
                    f.times != 0
                    and (f.status is not None) == status
                    and f.matches(method, path, range_start)
                ):
                    if f.times > 0:
                        f.times -= 1
                    return f
        return None

    def blob_get(self, delta: int) -> None:
        with self._lock:
            self.blob_gets_in_flight += delta
            self.peak_blob_gets = max(self.peak_blob_gets, self.blob_gets_in_flight)

    def ranges_served(self, digest: str) -> list[tuple[int, int | None]]:
        """(start, end inclusive or None for open) of each GET of ``digest``, in order."""
        out: list[tuple[int, int | None]] = []
        for r in self.requests_to(f"/blobs/{digest}", "GET"):
            m = _RANGE_RE.match(r.headers.get("range", "bytes=0-"))
            assert m is not None
            out.append((int(m[1]), int(m[2]) if m[2] else None))
        return out

    def accepted(self) -> int:
        """Count a new TCP connection; returns its number."""
        with self._changed:
            self.connections += 1
            self._changed.notify_all()
            return self.connections

    def hold(self, fault: Fault) -> None:
        """Wait until what ``fault`` holds its answer for happened (or its timeout)."""
        deadline = time.monotonic() + fault.hold_timeout

        def seen() -> bool:
            want = fault.hold_until_request
            return want is not None and (
                sum(want in r.path for r in self.requests) >= fault.hold_count
            )

        def ready() -> bool:
            conns = fault.hold_until_connections
            return (conns is None or self.connections >= conns) and (
                fault.hold_until_request is None or seen()
            )

        with self._changed:
            while not ready() and not self.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.1))
            fault.seen_connections = self.connections
            fault.seen_request = seen()

    def record(self, rec: Recorded, token: bool = False) -> None:
        with self._changed:
            (self.token_requests if token else self.requests).append(rec)
            self._changed.notify_all()

    def count_sent(self, digest: str, n: int) -> None:
        with self._sent_changed:
            self.sent[digest] = self.sent.get(digest, 0) + n
            self._sent_changed.notify_all()

    def wait_sent(self, digest: str, at_least: int, timeout: float = 60) -> bool:
        """Block until ``at_least`` body bytes of ``digest`` were written (a condition, not a
        sleep): lets a test act at a known point of a download."""
        with self._sent_changed:
            return self._sent_changed.wait_for(
                lambda: self.sent.get(digest, 0) >= at_least, timeout
            )

    def requests_to(self, path_contains: str, method: str | None = None) -> list[Recorded]:
        return [
            r
            for r in list(self.requests)
            if path_contains in r.path and (method is None or r.method == method)
        ]

    def issue_token(self, user: str, scope: str) -> str:
        tok = self.token_value or f"tok-{next(self._counter)}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            self.issued_tokens[tok] = (user, scope)
        return tok

    def token_valid(self, token: str) -> bool:
        issuer = self.token_issuer or self
        with issuer._lock:
            return token in issuer.issued_tokens


_BLOB_RE = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_MANIFEST_RE = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_UPLOAD_START_RE = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/?$")
_UPLOAD_RE = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/(?P<id>[0-9a-f-]+)$")
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.conn_id = self.fake.accepted()

    def handle_one_request(self) -> None:
        # A TLS ClientHello (record type 0x16) sent to this plain-HTTP server is answered with
        # a plain-HTTP 400, as Go's net/http (the real registry) answers it, instead of
        # waiting for a request line that never comes.
        try:
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if first == b"\x16":
            self.wfile.write(b"HTTP/1.0 400 Bad Request\r\n\r\nplain HTTP server\n")
            self.close_connection = True
            return
        super().handle_one_request()

    # --- plumbing ----------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        hdrs = {"Content-Length": str(len(body)), **(headers or {})}
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _error(
        self, status: int, code: str, message: str = "", headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message or code.lower()}]}).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _dispatch(self, method: str) -> None:
        fake = self.fake
        body = self._read_body() if method in ("PUT", "POST", "PATCH") else b""
        path = urlsplit(self.path).path
        rec = Recorded(
            method,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            self.conn_id,
        )
        if path == "/token":
            fake.record(rec, token=True)
            fault = fake.take_fault(method, path, status=True)
            if fault is not None:
                self._error(fault.status or 500, fault.code)
                return
            self._token(method, body)
            return
        fake.record(rec)
        rm = _RANGE_RE.match(self.headers.get("Range", "").strip())
        range_start = int(rm[1]) if rm else None
        fault = fake.take_fault(method, path, status=True, range_start=range_start)
        if fault is not None:
            hdrs = dict(fault.headers)
            if fault.retry_after is not None:
                hdrs["Retry-After"] = fault.retry_after
            self._error(fault.status, fault.code, headers=hdrs)
            return
        if not self._authorized(method):
            return
        fault = fake.take_fault(method, path, status=False, range_start=range_start)
        if fault is not None and (
            fault.hold_until_connections is not None or fault.hold_until_request is not None
        ):
            fake.hold(fault)
        if fault is not None and fault.location is not None:
            self._send(fault.redirect_status, headers={"Location": fault.location})
            return
        if fault is not None and fault.redirect_to is not None:
            self._send(fault.redirect_status, headers={"Location": fault.redirect_to + self.path})
            return
        if path in ("/v2", "/v2/"):
            self._send(200, b"{}", {"Content-Type": "application/json"})
            return
        m = _BLOB_RE.match(path)
        if m and method in ("GET", "HEAD"):
            fake.blob_get(1)
            try:
                self._blob(m["digest"], method == "HEAD", fault)
            finally:
                fake.blob_get(-1)
            return
        m = _MANIFEST_RE.match(path)
        if m:
            self._manifest(method, m["repo"], m["ref"], body, fault)
            return
        m = _UPLOAD_START_RE.match(path)
        if m and method == "POST":
            uid = str(uuid.uuid4())
            fake.uploads[uid] = bytearray()
            self._send(
                202,
                headers={
                    "Location": f"/v2/{m['repo']}/blobs/uploads/{uid}?_state=x",
                    "Docker-Upload-UUID": uid,
                },
            )
            return
        m = _UPLOAD_RE.match(path)
        if m and method in ("PUT", "PATCH", "GET"):
            self._upload(method, m["id"], body, fault)
            return
        self._error(404, "NAME_UNKNOWN", "no route")

    def _authorized(self, method: str) -> bool:
        fake = self.fake
        header = self.headers.get("Authorization", "")
        if fake.auth is None:
            return True
        if fake.auth == "basic":
            if header.startswith("Basic "):
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                if fake.users.get(user) == pw:
                    return True
            self._error(401, "UNAUTHORIZED", headers={"WWW-Authenticate": 'Basic realm="fake"'})
            return False
        # token
        if header.startswith("Bearer ") and fake.token_valid(header[7:]):
            return True
        path = urlsplit(self.path).path
        repo = path[4:].split("/blobs/")[0].split("/manifests/")[0]
        action = "pull" if method in ("GET", "HEAD") else "pull,push"
        challenge = (
            f'Bearer realm="{fake.realm}",service="fake-registry",'
            f'scope="repository:{repo}:{action}"'
        )
        self._error(401, "UNAUTHORIZED", headers={"WWW-Authenticate": challenge})
        return False

    def _token(self, method: str, body: bytes) -> None:
        fake = self.fake
        user = ""
        if method == "POST":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            if form.get("grant_type") != "refresh_token" or form.get("refresh_token") not in (
                fake.identity_tokens
            ):
                self._error(401, "UNAUTHORIZED", "bad refresh token")
                return
            user = fake.identity_tokens[form["refresh_token"]]
            scope = form.get("scope", "")
            tok = fake.issue_token(user, scope)
            out: dict[str, object] = {"access_token": tok}
        else:
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                u, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                if fake.users.get(u) != pw:
                    self._error(401, "UNAUTHORIZED", "bad credentials")
                    return
                user = u
            elif not fake.anonymous_pull:
                self._error(401, "UNAUTHORIZED", "login required")
                return
            scope = " ".join(parse_qs(urlsplit(self.path).query).get("scope", []))
            out = {"token": fake.issue_token(user, scope)}
        if fake.token_expires_in is not None:
            out["expires_in"] = fake.token_expires_in
        self._send(200, json.dumps(out).encode(), {"Content-Type": "application/json"})

    def _blob(self, digest: str, head: bool, fault: Fault | None) -> None:
        data = self.fake.blobs.get(digest)
        if fault is not None and fault.body is not None:
            data = fault.body
        if data is None:
            self._error(404, "BLOB_UNKNOWN", f"blob {digest} unknown")
            return
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        if not (fault is not None and (fault.no_accept_ranges or fault.ignore_range)):
            headers["Accept-Ranges"] = "bytes"
        start = 0
        stop = len(data)
        status = 200
        rng = self.headers.get("Range")
        if rng and not (fault is not None and fault.ignore_range):
            m = _RANGE_RE.match(rng.strip())
            if m and int(m[1]) <= len(data):
                start = int(m[1])
                if m[2]:
                    stop = min(len(data), int(m[2]) + 1)
                status = 206
                shown = start + 1 if fault is not None and fault.wrong_content_range else start
                headers["Content-Range"] = f"bytes {shown}-{stop - 1}/{len(data)}"
        payload = data[start:stop]
        if head:
            self._send(200, b"", {**headers, "Content-Length": str(len(data))}, head=True)
            return
        self.send_response(status)
        if fault is not None and fault.no_content_length:
            headers["Connection"] = "close"
            self.close_connection = True
        else:
            headers["Content-Length"] = str(len(payload))
        if fault is not None and fault.content_length is not None:
            headers["Content-Length"] = fault.content_length
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self._hang(fault, payload):
            return
        if fault is not None and fault.cut_after is not None:
            self.wfile.write(payload[: fault.cut_after])
            self.wfile.flush()
            self.fake.count_sent(digest, len(payload[: fault.cut_after]))
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault is not None and fault.drip is not None:
            for i in range(0, len(payload), fault.drip_chunk):
                piece = payload[i : i + fault.drip_chunk]
                self.wfile.write(piece)
                self.wfile.flush()
                self.fake.count_sent(digest, len(piece))
                time.sleep(fault.drip)  # the fault itself: a slow server, not synchronisation
            return
        self.wfile.write(payload)
        self.fake.count_sent(digest, len(payload))

    def _hang(self, fault: Fault | None, payload: bytes) -> bool:
        """``stall_after`` / ``hold_open``: write the body (or its first N bytes), then stay
        silent with the connection open until the registry stops. True if it did."""
        if fault is None or (fault.stall_after is None and not fault.hold_open):
            return False
        n = len(payload) if fault.stall_after is None else fault.stall_after
        self.wfile.write(payload[:n])
        self.wfile.flush()
        self.fake.stopping.wait()  # the fault itself: a server that never finishes
        self.close_connection = True
        return True

    def _manifest(self, method: str, repo: str, ref: str, body: bytes, fault: Fault | None) -> None:
        fake = self.fake
        if method == "PUT":
            media_type = self.headers.get("Content-Type", "")
            d = digest_of(body)
            if ref.startswith("sha256:") and ref != d:
                self._error(400, "DIGEST_INVALID", "manifest digest mismatch")
                return
            fake.manifests[(repo, d)] = (body, media_type)
            fake.manifests[(repo, ref)] = (body, media_type)
            self._send(
                201, headers={"Docker-Content-Digest": d, "Location": f"/v2/{repo}/manifests/{d}"}
            )
            return
        found = fake.manifests.get((repo, ref))
        if found is None:
            self._error(404, "MANIFEST_UNKNOWN", f"manifest {ref} unknown")
            return
        data, media_type = found
        if fault is not None and fault.body is not None:
            data = fault.body
        if fault is not None and fault.content_type is not None:
            media_type = fault.content_type
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest_of(data)}
        if fault is not None:
            headers.update(fault.headers)
        if fault is not None and (fault.stall_after is not None or fault.hold_open):
            self.send_response(200)
            headers["Content-Length"] = fault.content_length or str(len(data))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self._hang(fault, data)
            return
        if fault is not None and fault.content_length is not None:
            headers["Content-Length"] = fault.content_length
        if fault is not None and fault.drip is not None and method == "GET":
            self.send_response(200)
            headers["Content-Length"] = str(len(data))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            for i in range(0, len(data), fault.drip_chunk):
                self.wfile.write(data[i : i + fault.drip_chunk])
                self.wfile.flush()
                if self.fake.stopping.wait(fault.drip):  # the fault: a slow server
                    break
            return
        if fault is not None and fault.cut_after is not None:
            self.send_response(200)
            headers["Content-Length"] = str(len(data))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data[: fault.cut_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._send(200, data, headers, head=method == "HEAD")

    def _upload(self, method: str, uid: str, body: bytes, fault: Fault | None) -> None:
        """An upload session, as distribution's: PATCH appends (a ``Content-Range`` must start
        where the session is, else 416), GET reports ``Range: 0-<end>`` (``0-0`` when empty),
        PUT appends and closes. ``cut_after`` on a PATCH keeps that many bytes of the chunk
        and drops the connection without an answer (a cut upload)."""
        fake = self.fake
        buf = fake.uploads.get(uid)
        if buf is None:
            self._error(404, "BLOB_UPLOAD_UNKNOWN")
            return
        loc = {"Location": self.path, "Docker-Upload-UUID": uid}
        if method == "GET":
            self._send(204, headers={"Range": f"0-{max(len(buf) - 1, 0)}", **loc})
            return
        if method == "PATCH":
            start = (self.headers.get("Content-Range") or "").partition("-")[0]
            if start and int(start) != len(buf):
                self._error(416, "BLOB_UPLOAD_INVALID", "range mismatch")
                return
            if fault is not None and fault.cut_after is not None:
                buf += body[: fault.cut_after]
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            buf += body
            self._send(202, headers={"Range": f"0-{len(buf) - 1}", **loc})
            return
        buf += body
        want = parse_qs(urlsplit(self.path).query).get("digest", [""])[0]
        if digest_of(bytes(buf)) != want:
            self._error(400, "DIGEST_INVALID", "digest mismatch")
            return
        fake.blobs[want] = bytes(buf)
        del fake.uploads[uid]
        self._send(201, headers={"Docker-Content-Digest": want, "Location": f"/v2/blobs/{want}"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")


class _RewriteAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, prefix: str, target: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.target = target

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def,override]
        assert request.url is not None
        assert request.url.startswith(self.prefix)
        request.url = self.target + request.url[len(self.prefix) :]
        kwargs["verify"] = True
        return super().send(request, **kwargs)


def route_https(session: requests.Session, host: str, fake: FakeRegistry) -> None:
    """Make ``https://<host>`` on ``session`` reach ``fake`` (plain HTTP underneath), so tests
    can exercise the rules for a non-loopback, https-only registry host."""
    session.mount(f"https://{host}", _RewriteAdapter(f"https://{host}", fake.url))
