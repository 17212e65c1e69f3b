"""A read-only OCI registry over the local store (``fastdist serve``): the pull side of the
distribution spec, answered from verified content, so hosts can mirror each other.

What is served (distribution-spec ``spec.md#pull``):

- ``GET/HEAD /v2/``; ``/v2/<name>/manifests/<tag|digest>`` (the index or manifest as stored, byte
  for byte, chosen by ``Accept``); ``/v2/<name>/blobs/<digest>`` (zero-copy ``sendfile`` from the
  content store, ``Range`` → 206/416); ``/v2/<name>/tags/list`` (``n``/``last`` pagination).
- Names: with ``?ns=<registry>`` (containerd's ``hosts.toml`` mirror requests) ``<name>`` is
  looked up under that registry: ``/v2/library/redis/manifests/7?ns=docker.io`` is the image
  pulled as ``docker.io/library/redis:7``. Without ``ns`` the name is read as a docker reference
  (``library/redis`` and ``redis`` → ``docker.io/library/redis``, ``ghcr.io/org/app`` →
  ``ghcr.io/org/app``); if no image is stored under that, the repository path under whichever
  registry holds it, if exactly one does (``test/app`` → ``127.0.0.1:5000/test/app``).
  Manifests and blobs by digest are served whatever the (valid) name: content is addressed by
  digest and clients verify it.
- Every write method is refused (405 ``UNSUPPORTED``); nothing here writes to the store.

It faces the network (design.md §7): the request head is read by this module with a byte budget
(URL and headers) and a deadline, a connection that sends nothing is dropped, at most
``max_connections`` are served at once (the rest get 503), names and digests are parsed
strictly before anything is looked up, blobs are opened by fd relative to the store root with no
symlink followed, and errors are distribution-spec JSON without internals. Client strings that
reach the log are escaped (``_safe``).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import re
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from . import oci
from .errors import FastdistError, InvalidReferenceError, ServeError
from .metadata import ImageRecord
from .oci import Digest, parse_digest, sha256_digest
from .reference import NAME_TOTAL_LENGTH_MAX, Reference
from .termsafe import sanitize

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger(__name__)
access_log = logging.getLogger("fastdist.serve.access")

DEFAULT_LISTEN = "127.0.0.1:5000"
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")

# distribution-spec: a repository name is path components joined by '/', each
# [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*; a tag is [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
_NAME_RE = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_DOCKER_HUB_ALIASES = {"registry-1.docker.io": "docker.io", "index.docker.io": "docker.io"}
_RANGE_RE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token (methods, header names)
_LOG_MAX = 200
READ_METHODS = frozenset({"GET", "HEAD"})


#: The kernel's accept queue (clamped by ``net.core.somaxconn``). Not tied to
#: ``max_connections``: a connection over the cap must still be accepted to get its 503, and a
#: queue that a burst overflows makes the kernel drop the handshake's last ACK (the client
#: believes it is connected, the server never sees it, nothing answers; a flood test hung that
#: way under load when the queue was 2 x max_connections).
LISTEN_BACKLOG = 4096


@dataclass(frozen=True)
class ServeConfig:
    """How ``fastdist serve`` listens and what it tolerates from clients (all bounded)."""

    listen: str = DEFAULT_LISTEN  # HOST:PORT, [v6]:PORT; port 0 picks a free one
    tls_cert: str | None = None
    tls_key: str | None = None
    htpasswd: str | None = None  # basic auth: {SHA} or bcrypt ($2y$) lines, as htpasswd -s/-B
    token: str | None = None  # or a static token: Authorization: Bearer <token>
    max_connections: int = 256
    head_timeout: float = 10.0  # a whole request head (line + headers) must arrive in this
    idle_timeout: float = 30.0  # a kept-alive connection may wait this long for its next request
    io_timeout: float = 30.0  # a response write may make no progress for this long
    max_url_bytes: int = 4096
    max_header_bytes: int = 16384  # request line + headers
    grace: float = 10.0  # stop(): how long in-flight requests may take to finish


# --- requests and responses -------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent: path and query, undecoded
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    client: str = ""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    blob_fd: int | None = None  # a blob to send from: (offset, count) bytes of it
    offset: int = 0
    count: int = 0
    close: bool = False  # close the connection after this response

    @property
    def length(self) -> int:
        return self.count if self.blob_fd is not None else len(self.body)

    def release(self) -> None:
        if self.blob_fd is not None:
            os.close(self.blob_fd)
            self.blob_fd = None


_REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


def error_response(status: int, code: str, message: str, **extra: str) -> Response:
    """A distribution-spec error body (``spec.md#error-codes``)."""
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": extra or None}]})
    return Response(
        status,
        [("Content-Type", "application/json"), API_VERSION],
        body.encode(),
    )


def _safe(text: str) -> str:
    """A client string fit for the log: cut, and through the one terminal sanitiser."""
    return sanitize(text[:_LOG_MAX]) + ("…" if len(text) > _LOG_MAX else "")


# --- authentication ---------------------------------------------------------------------------
class Authenticator:
    """Basic auth from an htpasswd file (``{SHA}`` or bcrypt lines) and/or one static token.

    Debian's ``htpasswd`` writes bcrypt with ``-B`` (distribution's registry accepts only that)
    and salted-less SHA-1 with ``-s``; MD5 (``$apr1$``), crypt and plain lines are refused when
    the file is loaded, not at request time. bcrypt needs the ``bcrypt`` package (``pip install
    bcrypt``): it is imported only when the file has a bcrypt line, so a server without auth, or
    with ``{SHA}`` or a token, needs nothing beyond the standard library."""

    def __init__(self, htpasswd: str | None = None, token: str | None = None) -> None:
        self._users: dict[str, str] = {}
        self._token = token.encode() if token else None
        self._bcrypt: object = None
        if htpasswd is not None:
            self._load(Path(htpasswd))

    @property
    def enabled(self) -> bool:
        return bool(self._users) or self._token is not None

    def challenge(self) -> str:
        return 'Basic realm="fastdist"' if self._users else 'Bearer realm="fastdist"'

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ServeError(f"cannot read htpasswd file {path}: {e}") from e
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise ServeError(f"{path}:{n}: not a user:hash line")
            if hashed.startswith("{SHA}"):
                pass
            elif hashed.startswith(("$2y$", "$2b$", "$2a$")):
                if self._bcrypt is None:
                    try:
                        import bcrypt  # type: ignore[import-not-found,unused-ignore]
                    except ImportError:
                        raise ServeError(
                            f"{path}:{n}: user {user!r} has a bcrypt hash, which needs the "
                            "bcrypt package",
                            hint="pip install bcrypt, or write the file with htpasswd -s",
                        ) from None
                    self._bcrypt = bcrypt
            else:
                raise ServeError(
                    f"{path}:{n}: user {user!r}: only bcrypt ($2y$) and {{SHA}} hashes are "
                    "accepted",
                    hint="write the file with htpasswd -B (bcrypt) or htpasswd -s",
                )
            self._users[user] = hashed
        if not self._users:
            raise ServeError(f"htpasswd file {path} has no users")

    def check(self, header: str | None) -> bool:
        """Whether ``Authorization: header`` is allowed in (always, without auth configured)."""
        if not self.enabled:
            return True
        if not header:
            return False
        scheme, _, cred = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self._token is not None:
            return hmac.compare_digest(cred.strip().encode(), self._token)
        if scheme != "basic" or not self._users:
            return False
        try:
            user, sep, password = (
                base64.b64decode(cred.strip(), validate=True).decode().partition(":")
            )
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        if not sep or hashed is None:
            return False
        if hashed.startswith("{SHA}"):
            mine = "{SHA}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
            return hmac.compare_digest(mine.encode(), hashed.encode())
        checkpw = getattr(self._bcrypt, "checkpw", None)
        if checkpw is None:
            return False
        try:
            return bool(checkpw(password.encode(), hashed.encode()))
        except ValueError:
            return False


# --- the registry (no sockets) ----------------------------------------------------------------
@dataclass(frozen=True)
class _Stored:
    """A stored image, its name parsed: repository (``docker.io/library/redis``) and tag."""

    repo: str
    tag: str | None
    pinned: bool  # pulled by digest (``name@sha256:…``): a tag request prefers the unpinned one
    record: ImageRecord


class Registry:
    """Answers distribution-spec pull requests from one store; thread-safe, never writes."""

    def __init__(self, client: Client, auth: Authenticator | None = None) -> None:
        self.client = client
        self.auth = auth or Authenticator()

    def handle(self, req: Request) -> Response:
        if not self.auth.check(req.headers.get("authorization")):
            r = error_response(401, "UNAUTHORIZED", "authentication required")
            r.headers.append(("WWW-Authenticate", self.auth.challenge()))
            return r
        if req.method not in READ_METHODS:
            r = error_response(
                405, "UNSUPPORTED", "this registry is read-only: only GET and HEAD are served"
            )
            r.headers.append(("Allow", "GET, HEAD"))
            r.close = True  # a body may follow that we do not read
            return r
        path = req.path
        if path in ("/v2", "/v2/"):
            return Response(200, [("Content-Type", "application/json"), API_VERSION], b"{}")
        if not path.startswith("/v2/"):
            return error_response(404, "NOT_FOUND", "not a registry API path")
        rest = path[len("/v2/") :]
        try:
            query = parse_qs(req.query, max_num_fields=8, strict_parsing=bool(req.query))
        except ValueError:
            return error_response(400, "UNSUPPORTED", "malformed query string")
        for kind in ("/manifests/", "/blobs/"):
            name, sep, obj = rest.rpartition(kind)
            if sep and "/" not in obj:  # a repository may have a "blobs" or "manifests" part
                bad = self._check_name(name)
                if bad is not None:
                    return bad
                if kind == "/blobs/":
                    return self._blob(req, name, obj)
                return self._manifest(req, name, obj, _one(query, "ns"))
        if rest.endswith("/tags/list"):
            name = rest[: -len("/tags/list")]
            bad = self._check_name(name)
            return bad or self._tags(name, _one(query, "ns"), query)
        return error_response(404, "NOT_FOUND", "not a registry API path")

    @staticmethod
    def _check_name(name: str) -> Response | None:
        if len(name) > NAME_TOTAL_LENGTH_MAX or not _NAME_RE.fullmatch(name):
            return error_response(400, "NAME_INVALID", "invalid repository name")
        return None

    # --- names ----------------------------------------------------------------------------
    def _stored(self) -> list[_Stored]:
        out = []
        for rec in self.client.metadata.images.list():
            try:
                ref = Reference.parse(rec.name)
            except InvalidReferenceError:
                continue
            out.append(_Stored(ref.name, ref.tag, ref.digest is not None, rec))
        return out

    def _repository(self, name: str, ns: str | None, stored: Sequence[_Stored]) -> str | Response:
        """The stored repository ``name`` means (see the module docstring), or a 404/400."""
        repos = {s.repo for s in stored}
        if ns is not None:
            ns = _DOCKER_HUB_ALIASES.get(ns.lower(), ns.lower())
            try:
                repo = Reference.parse(f"{ns}/{name}").name
            except InvalidReferenceError:
                return error_response(400, "NAME_INVALID", "invalid ns (a registry host)")
            if repo in repos:
                return repo
            return error_response(404, "NAME_UNKNOWN", "repository not known to this registry")
        try:
            repo = Reference.parse(name).name
        except InvalidReferenceError:
            repo = ""
        if repo in repos:
            return repo
        under = sorted(r for r in repos if r.split("/", 1)[1] == name)
        if len(under) == 1:
            return under[0]
        if under:
            return error_response(
                404,
                "NAME_UNKNOWN",
                "repository pulled from several registries: add ?ns=<registry> or use the "
                "full name (<registry>/<path>)",
            )
        return error_response(404, "NAME_UNKNOWN", "repository not known to this registry")

    # --- manifests ------------------------------------------------------------------------
    def _manifest(self, req: Request, name: str, obj: str, ns: str | None) -> Response:
        accept = _accepted(req.headers.get("accept", ""))
        stored = self._stored()
        if ":" in obj:
            try:
                digest = parse_digest(obj)
            except FastdistError:
                return error_response(400, "DIGEST_INVALID", "invalid digest")
            for s in stored:
                rec = s.record
                if digest == rec.target.digest:
                    return self._document(req, digest, rec.target.media_type, accept)
                if digest == rec.manifest_digest:
                    return self._document(req, digest, None, accept)
            return error_response(404, "MANIFEST_UNKNOWN", "manifest unknown", digest=digest)
        if not _TAG_RE.fullmatch(obj):
            return error_response(400, "MANIFEST_INVALID", "invalid tag")
        repo = self._repository(name, ns, stored)
        if isinstance(repo, Response):
            return repo
        tagged = [s for s in stored if s.repo == repo and s.tag == obj]
        if not tagged:
            return error_response(404, "MANIFEST_UNKNOWN", "manifest unknown", tag=obj)
        rec = min(tagged, key=lambda s: (s.pinned, -s.record.updated)).record
        if _accepts(accept, rec.target.media_type):
            return self._document(req, rec.target.digest, rec.target.media_type, accept)
        if rec.manifest_digest != rec.target.digest:
            # An index the client cannot take: its platform manifest, if that is acceptable
            # (distribution answers a client that takes no lists with one of its manifests).
            return self._document(req, rec.manifest_digest, None, accept)
        return _not_acceptable(rec.target.media_type)

    def _document(
        self, req: Request, digest: Digest, media_type: str | None, accept: frozenset[str] | None
    ) -> Response:
        data = self._read_document(digest)
        if data is None:
            return error_response(404, "MANIFEST_UNKNOWN", "manifest unknown", digest=digest)
        if media_type is None:
            media_type = _document_media_type(data)
        if not _accepts(accept, media_type):
            return _not_acceptable(media_type)
        headers = [
            ("Content-Type", media_type),
            ("Docker-Content-Digest", digest),
            ("ETag", f'"{digest}"'),
            API_VERSION,
        ]
        return Response(200, headers, data)

    def _read_document(self, digest: Digest) -> bytes | None:
        """A manifest or index from the content store, hashed again (the disk is not trusted)."""
        fd = self.client.content.open_blob(digest)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(oci.MAX_MANIFEST_BYTES + 1)
        if len(data) > oci.MAX_MANIFEST_BYTES or sha256_digest(data) != digest:
            log.error("serve: stored document %s is corrupt or oversized; not served", digest)
            return None
        return data

    # --- blobs ----------------------------------------------------------------------------
    def _blob(self, req: Request, name: str, obj: str) -> Response:
        try:
            digest = parse_digest(obj)
        except FastdistError:
            return error_response(400, "DIGEST_INVALID", "invalid digest")
        fd = self.client.content.open_blob(digest)
        if fd is None:
            return error_response(404, "BLOB_UNKNOWN", "blob unknown", digest=digest)
        try:
            size = os.fstat(fd).st_size
            headers = [
                ("Content-Type", "application/octet-stream"),
                ("Docker-Content-Digest", digest),
                ("ETag", f'"{digest}"'),
                ("Accept-Ranges", "bytes"),
                API_VERSION,
            ]
            try:
                rng = _parse_range(req.headers.get("range"), size)
            except _Unsatisfiable:
                os.close(fd)
                r = error_response(416, "BLOB_UNKNOWN", "requested range not satisfiable")
                r.headers.append(("Content-Range", f"bytes */{size}"))
                return r
            if rng is None:
                return Response(200, headers, blob_fd=fd, offset=0, count=size)
            start, end = rng
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            return Response(206, headers, blob_fd=fd, offset=start, count=end - start + 1)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    # --- tags -----------------------------------------------------------------------------
    def _tags(self, name: str, ns: str | None, query: Mapping[str, list[str]]) -> Response:
        stored = self._stored()
        repo = self._repository(name, ns, stored)
        if isinstance(repo, Response):
            return repo
        tags = sorted({s.tag for s in stored if s.repo == repo and s.tag and not s.pinned})
        last = _one(query, "last")
        if last is not None:
            tags = [t for t in tags if t > last]
        n = _one(query, "n")
        if n is not None:
            if not n.isdigit() or len(n) > 6:
                return error_response(400, "UNSUPPORTED", "n must be a number")
            tags = tags[: int(n)]
        body = json.dumps({"name": name, "tags": tags}).encode()
        return Response(200, [("Content-Type", "application/json"), API_VERSION], body)


def _one(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _accepted(header: str) -> frozenset[str] | None:
    """The media types an ``Accept`` header takes; None means anything (absent, or a wildcard)."""
    types = set()
    for part in header.split(","):
        mt, *params = (p.strip() for p in part.split(";"))
        if not mt:
            continue
        if any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            continue
        if mt in ("*/*", "application/*"):
            return None
        types.add(mt.lower())
    return frozenset(types) if types else None


def _accepts(accept: frozenset[str] | None, media_type: str) -> bool:
    return accept is None or media_type in accept


def _not_acceptable(media_type: str) -> Response:
    return error_response(
        404,
        "MANIFEST_UNKNOWN",
        "the manifest is stored as a media type the request's Accept header does not take",
        mediaType=media_type,
    )


def _document_media_type(data: bytes) -> str:
    """A stored manifest's own ``mediaType`` (OCI manifests may omit it: then by shape)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return oci.OCI_MANIFEST
    mt = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(mt, str) and mt:
        return mt
    return oci.OCI_INDEX if isinstance(doc, dict) and "manifests" in doc else oci.OCI_MANIFEST


class _Unsatisfiable(Exception):
    """A Range no byte of the blob satisfies (416)."""


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """RFC 9110 §14.2 for one byte range: ``(first, last)``, or None to send the whole blob (no
    Range, or one we may ignore: malformed or several ranges); ``_Unsatisfiable`` for a 416."""
    if header is None:
        return None
    m = _RANGE_RE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise _Unsatisfiable
        if not size:
            raise _Unsatisfiable
        return max(0, size - n), size - 1
    first = int(m.group(1))
    if m.group(2) and int(m.group(2)) < first:
        return None  # invalid: ignore the header
    if first >= size:
        raise _Unsatisfiable
    last = int(m.group(2)) if m.group(2) else size - 1
    return first, min(last, size - 1)


# --- HTTP/1.1 connections ---------------------------------------------------------------------
class _HeadError(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _Connection:
    """One client connection: request heads read with a budget and a deadline, keep-alive."""

    def __init__(self, server: RegistryServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.buf = b""
        self.busy = False

    def serve(self) -> None:
        cfg = self.server.config
        first = True
        while not self.server.stopping:
            try:
                head = self._read_head(cfg.head_timeout if first else cfg.idle_timeout)
            except _HeadError as e:
                self._send(error_response(e.status, "UNSUPPORTED", str(e)), head=False)
                access_log.info('%s "-" %d (%s)', self.peer, e.status, e)
                return
            if head is None:
                return
            first = False
            self.busy = True
            try:
                keep = self._one(head)
            finally:
                self.busy = False
            if not keep:
                return

    def _read_head(self, wait: float) -> bytes | None:
        """The next request head; None when the client closed or stayed silent for ``wait``.

        The first byte may take ``wait``; from then on the whole head must arrive within
        ``head_timeout`` and ``max_header_bytes`` (a slow-loris client is cut off)."""
        cfg = self.server.config
        deadline: float | None = None
        while True:
            end = self.buf.find(b"\r\n\r\n")
            head = self.buf if end < 0 else self.buf[:end]
            line_end = head.find(b"\r\n")
            if (line_end < 0 and len(head) > cfg.max_url_bytes) or line_end > cfg.max_url_bytes:
                raise _HeadError(414, "request line too long")
            if len(head) > cfg.max_header_bytes:
                raise _HeadError(431, "request headers too large")
            if end >= 0:
                self.buf = self.buf[end + 4 :]
                return head
            now = time.monotonic()
            if deadline is None and self.buf.strip(b"\r\n"):
                deadline = now + cfg.head_timeout
            timeout = wait if deadline is None else deadline - now
            if timeout <= 0:
                raise _HeadError(408, "request head not received in time")
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if deadline is None:
                    return None  # an idle connection: close it quietly
                raise _HeadError(408, "request head not received in time") from None
            except OSError:
                return None
            if not data:
                return None
            if deadline is None and not self.buf and data.startswith(b"\x16"):
                # A TLS ClientHello (record type 0x16) on a plain-HTTP port: answer at once,
                # as Go's net/http (docker-registry) does, so a client that tries https first
                # (fastdist does on loopback) falls back now, not after head_timeout.
                raise _HeadError(400, "TLS handshake sent to a plain-HTTP server")
            self.buf += data
            if deadline is None and not self.buf.strip(b"\r\n"):
                self.buf = b""  # RFC 9112 §2.2: ignore empty lines before a request

    def _one(self, head: bytes) -> bool:
        """Handle one request; whether the connection may carry another."""
        try:
            req, keep = self._parse(head)
        except _HeadError as e:
            self._send(error_response(e.status, "UNSUPPORTED", str(e)), head=False)
            access_log.info('%s "-" %d (%s)', self.peer, e.status, e)
            return False
        try:
            resp = self.server.registry.handle(req)
        except FastdistError as e:
            log.error("serve: %s %s: %s", req.method, _safe(req.target), e.message)
            resp = error_response(500, "UNKNOWN", "internal error: see the server's log")
            resp.close = True
        try:
            sent = self._send(resp, head=req.method == "HEAD", keep=keep and not resp.close)
        finally:
            resp.release()
        access_log.info(
            '%s "%s %s" %d %d', self.peer, req.method, _safe(req.target), resp.status, sent
        )
        return keep and not resp.close and sent >= 0

    def _parse(self, head: bytes) -> tuple[Request, bool]:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise _HeadError(400, "undecodable request head") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not _TOKEN_RE.fullmatch(parts[0]) or not parts[1].startswith("/"):
            raise _HeadError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _HeadError(505, "only HTTP/1.0 and HTTP/1.1 are served")
        if any(not (" " < c <= "~") for c in target):
            raise _HeadError(400, "malformed request target")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if not sep or not _TOKEN_RE.fullmatch(key):  # also refuses obs-fold (RFC 9112 §5.2)
                raise _HeadError(400, "malformed header line")
            k, v = key.lower(), value.strip(" \t")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        conn = headers.get("connection", "").lower()
        keep = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
        has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
        if has_body and method in READ_METHODS:
            raise _HeadError(400, "a GET or HEAD request carries no body here")
        return Request(method, target, headers, self.peer), keep and not has_body

    def _send(self, resp: Response, *, head: bool, keep: bool = False) -> int:
        """Write ``resp``; the body bytes sent, or -1 if the client went away."""
        lines = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in resp.headers]
        lines.append(f"Content-Length: {resp.length}")
        lines.append("Connection: keep-alive" if keep else "Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.sock.settimeout(self.server.config.io_timeout)
            if head or resp.length == 0:
                self.sock.sendall(data)
                return 0
            if resp.blob_fd is None:
                self.sock.sendall(data + resp.body)
                return len(resp.body)
            self.sock.sendall(data)
            return self._sendfile(resp.blob_fd, resp.offset, resp.count)
        except OSError as e:
            log.debug("serve: %s: send failed: %s", self.peer, e)
            return -1

    def _sendfile(self, fd: int, offset: int, count: int) -> int:
        """``count`` bytes of ``fd`` from ``offset``. On a plain socket: zero-copy
        ``os.sendfile`` on the socket in blocking mode with ``SO_SNDTIMEO`` = ``io_timeout``,
        so the kernel moves the whole range in one call (GIL released) and a client that takes
        nothing for that long ends it (socket.sendfile on a socket with a Python timeout
        polls and calls sendfile once per socket buffer: a third of docker-registry's speed).
        TLS: socket.sendfile's read+send. A short file is an error: the connection is closed
        rather than a truncated body passed off as whole."""
        if isinstance(self.sock, ssl.SSLSocket):
            with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
                sent = self.sock.sendfile(f, offset, count)
        else:
            sent = 0
            timeout = self.server.config.io_timeout
            sec = int(timeout)
            self.sock.settimeout(None)
            self.sock.setsockopt(
                socket.SOL_SOCKET,
                socket.SO_SNDTIMEO,
                struct.pack("ll", sec, int((timeout - sec) * 1_000_000)),
            )
            while sent < count:
                try:
                    n = os.sendfile(self.sock.fileno(), fd, offset + sent, count - sent)
                except BlockingIOError:  # SO_SNDTIMEO passed with nothing taken
                    raise TimeoutError(errno.ETIMEDOUT, "client took no bytes in time") from None
                if n == 0:
                    break
                sent += n
        if sent != count:
            raise OSError(errno.EIO, f"blob ended after {sent} of {count} bytes")
        return sent


# --- the server -------------------------------------------------------------------------------
def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ServeError(
            f"invalid listen address {listen!r}", hint="use HOST:PORT, e.g. 127.0.0.1:5000"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class RegistryServer:
    """``fastdist serve`` as an object: ``start()`` binds and serves in threads, ``stop()`` drains.

    A thread per connection, at most ``config.max_connections`` of them; the accept loop answers
    the rest with 503 at once. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, client: Client, config: ServeConfig | None = None) -> None:
        self.config = config or ServeConfig()
        if self.config.max_connections < 1:
            raise ServeError("max_connections must be at least 1")
        self.client = client
        self.registry = Registry(client, Authenticator(self.config.htpasswd, self.config.token))
        self._tls = self._tls_context()
        self._sock: socket.socket | None = None
        self._address: str | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[_Connection, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r: socket.socket | None = None  # wakes the accept loop on stop()
        self._wake_w: socket.socket | None = None

    def _tls_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if cfg.tls_cert is None and cfg.tls_key is None:
            return None
        if cfg.tls_cert is None:
            raise ServeError("--tls-key needs --tls-cert")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ServeError(
                f"cannot load TLS certificate {cfg.tls_cert}: {e}",
                hint="pass a PEM certificate (chain) and its private key",
            ) from e
        return ctx

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def address(self) -> str:
        """``host:port`` actually bound (the port chosen when the config said 0)."""
        if self._address is None:
            raise ServeError("the server is not started")
        return self._address

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.address}"

    def start(self) -> RegistryServer:
        host, port = parse_listen(self.config.listen)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
        except OSError as e:
            raise ServeError(f"cannot listen on {self.config.listen}: {e.strerror or e}") from e
        sock.setblocking(False)
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        bound_host, bound_port = sock.getsockname()[:2]
        self._address = (
            f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        )
        self._thread = threading.Thread(
            target=self._accept_loop, name="fastdist-serve", daemon=True
        )
        self._thread.start()
        log.info("serving %s read-only on %s", self.client.root, self.url)
        return self

    def _accept_loop(self) -> None:
        assert self._sock is not None
        assert self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        conn, addr = self._sock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:  # EMFILE and friends: keep serving the others
                        log.warning("serve: accept failed: %s", e)
                        # Back off: the pending connection keeps the socket readable, so
                        # retrying at once would spin until an fd is free.
                        self._stop.wait(0.1)
                        continue
                    self._admit(conn, addr)

    def _admit(self, sock: socket.socket, addr: tuple[object, ...]) -> None:
        peer = f"{addr[0]}:{addr[1]}" if len(addr) >= 2 else "?"
        sock.setblocking(True)
        with self._lock:
            full = len(self._conns) >= self.config.max_connections
        if full:
            # Over the cap: one non-blocking 503 and close (no thread, no TLS handshake).
            if self._tls is None:
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
                    r = error_response(503, "TOOMANYREQUESTS", "too many connections")
                    sock.send(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                        + str(len(r.body)).encode()
                        + b"\r\n\r\n"
                        + r.body
                    )
                    sock.shutdown(socket.SHUT_WR)
                    sock.recv(65536)  # what already came: closing on unread data would reset
            sock.close()
            access_log.info("%s refused: %d connections open", peer, self.config.max_connections)
            return
        conn = _Connection(self, sock, peer)
        t = threading.Thread(
            target=self._run, args=(conn,), name=f"fastdist-serve-{peer}", daemon=True
        )
        with self._lock:
            self._conns[conn] = t
        t.start()

    def _run(self, conn: _Connection) -> None:
        try:
            if self._tls is not None:
                conn.sock.settimeout(self.config.head_timeout)
                try:
                    conn.sock = self._tls.wrap_socket(conn.sock, server_side=True)
                except (OSError, ssl.SSLError) as e:
                    log.debug("serve: %s: TLS handshake failed: %s", conn.peer, e)
                    return
            conn.serve()
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()
            with self._lock:
                self._conns.pop(conn, None)
            self.client.metadata.close()  # this thread's SQLite connection

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` seconds), close the rest.

        Idle kept-alive connections are closed at once."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()
        deadline = time.monotonic() + (self.config.grace if grace is None else grace)
        with self._lock:
            conns = dict(self._conns)
        for conn in conns:
            if not conn.busy:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        for conn, t in conns.items():
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
                t.join(1.0)
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        log.info("stopped serving %s", self.client.root)

    def __enter__(self) -> RegistryServer:
        return self.start() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "Authenticator",
    "Registry",
    "RegistryServer",
    "Request",
    "Response",
    "ServeConfig",
    "ServeError",
    "parse_listen",
]
