"""HTTP to registries: TLS policy, authentication, redirects, typed errors and retries.

One pooled ``requests.Session`` shared by every stage (safe for concurrent blob fetches). This is
the only place that retries (design.md §4): temporary failures (connection errors, 5xx, 429) are
retried with exponential backoff and jitter; 429's ``Retry-After`` is honoured within a bounded
total wait. Authentication follows distribution's token spec: on a 401 the ``WWW-Authenticate``
challenge is answered once (Bearer token, or Basic), tokens are cached per (host, scope).
Redirects are followed by hand so credentials never travel to another host (security rule §7).
Plain HTTP is spoken to hosts the user named, and to loopback (and ``--tls-verify=false``) hosts
only after TLS failed and the server was seen answering in plain HTTP, as containerd's
``HTTPFallback`` and docker do; never after a certificate error, never to any other host.
Every URL and header value that comes from the network is checked before use, and every
exception requests or urllib3 raise on such input becomes a typed ``RegistryError``. A request
has a total deadline (headers, retries and, for small documents, the body); blob bodies have a
stall timeout instead, since their size bounds nothing about their time.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Union
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import requests.adapters
import requests.utils
import urllib3
import urllib3.exceptions

from .auth import (
    Challenge,
    Credentials,
    CredentialStore,
    Token,
    TokenCache,
    parse_token_response,
)
from .auth import parse_www_authenticate as _parse_challenges
from .errors import (
    AuthenticationError,
    InvalidArgumentError,
    ManifestError,
    NotFoundError,
    RegistryError,
)
from .termsafe import sanitize

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

log = logging.getLogger(__name__)
# One DEBUG line per HTTP exchange (``fastdist --debug``): method, redacted URL, status, bytes,
# duration. URLs are redacted (no userinfo, no query) and headers are never logged.
http_log = logging.getLogger("fastdist.http")

MAX_REDIRECTS = 5
# Blob requests in flight per registry host, across every pull of the process (HostBudget).
# 32, measured (ARCHITECTURE.md, "Round trips"): an image of many small layers costs
# one round trip per wave of requests, and real images carry 10-40 layers, so 32 sends nearly
# every image's layers in one wave (the 36-layer many-layers fixture: 2 waves, against 5 with
# 8); and 32 connections x 10 MB/s (a slow CDN connection) fill a 300 MB/s link. On loopback
# the CPU time of a pull did not change (32 vs 8). Ranged chunks of big layers share the same
# budget, their read-ahead bounded apart (fetcher.READ_AHEAD_LIMIT), so memory does not grow
# with it. For comparison: docker and containerd's ctr fetch 3 layers at once (one connection
# each); Go's HTTP client, which registries and CDNs serve every day, sets no per-host cap.
# The urllib3 pool of each host holds as many, so they are reused rather than reopened, and
# ``Transport.preconnect`` opens them ahead of need.
DEFAULT_MAX_CONNECTIONS = 32
MAX_ERROR_BODY = 64 << 10
MAX_TOKEN_BODY = 1 << 20
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TEMPORARY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_TEMPORARY_CODES = frozenset({"TOOMANYREQUESTS", "UNAVAILABLE"})
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")

# A request body: bytes, or a factory opening a fresh stream (so a retry can resend a file).
Body = Union[bytes, Callable[[], BinaryIO]]
# Called before sleeping for a retry: (error, attempt number starting at 1, delay in seconds).
RetryHook = Callable[[RegistryError, int, float], None]


@dataclass(frozen=True)
class HostTLS:
    """Per-host settings from a mirror's hosts.toml: trust, client certificate, plain http."""

    verify: bool | str = True  # False: skip verification; a path: that CA bundle
    cert: tuple[str, str] | str | None = None  # (cert, key) or one PEM holding both
    plain_http: bool = False  # the admin configured an http:// URL for this host


@dataclass(frozen=True)
class TransportConfig:
    """Network policy.

    ``plain_http_hosts``: spoken to in plain HTTP from the start (``host`` or ``host:port``).
    Loopback hosts and ``insecure_skip_verify_hosts`` are tried over TLS first and fall back to
    plain HTTP only when the server answers in plain HTTP (never after a certificate error).
    ``ca_file`` is trusted for every host; ``host_ca_files`` (``host[:port]`` → PEM file) for
    one host each. ``insecure_skip_verify_hosts`` skip certificate verification.
    ``request_deadline``: seconds one request may take in all (connection, headers, retries
    and, for manifests, configs and tokens, the body). ``stall_timeout``: seconds a blob body
    may go without a byte. ``max_connections``: blob requests in flight per registry host (one
    budget shared by every pull in the process, ``HostBudget``). ``limit_rate``: bytes/s for all
    blob bodies of the process together (one token bucket, ``RateLimiter``), None for no cap.
    """

    plain_http_hosts: frozenset[str] = frozenset()
    ca_file: str | None = None
    insecure_skip_verify_hosts: frozenset[str] = frozenset()
    host_ca_files: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 10
    read_timeout: float = 60
    stall_timeout: float = 30
    request_deadline: float = 300
    max_retries: int = 5
    backoff_base: float = 0.2
    backoff_max: float = 10
    max_retry_after: float = 60
    allow_foreign_urls: bool = False
    user_agent: str = "fastdist/0.1"
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    limit_rate: int | None = None


def redact_url(url: str) -> str:
    """Drop userinfo and the query (signed CDN URLs carry credentials there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "<unparseable url>"
    out = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return out + ("?…" if parts.query else "")


def hostname_of(host: str) -> str:
    """``host:5000`` → ``host``; ``[::1]:5000`` → ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_loopback(host: str) -> bool:
    name = hostname_of(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _netloc(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1].lower()


def _host_in(netloc: str, hosts: Collection[str]) -> bool:
    """``host:port`` is listed as itself or by its bare host name."""
    names = {x.lower() for x in hosts}
    h = netloc.lower()
    return h in names or hostname_of(h) in names


_BAD_URL_HINT = "the registry sent a malformed URL; report it to the registry's operator"


def checked_url(url: str, base: str | None = None, *, what: str) -> str:
    """A URL from the network (a redirect's ``Location``, a token realm, an upload location),
    resolved against ``base`` and parsed strictly before use: an http(s) scheme, a host, a port
    in range, no whitespace or control characters. Anything else is a RegistryError here, not a
    ValueError or InvalidURL from deep inside requests."""
    try:
        full = urljoin(base, url) if base is not None else url
        parts = urlsplit(full)
        _ = parts.port  # ValueError when out of range or not a number
        host = parts.hostname
    except ValueError as e:
        raise RegistryError(
            f"{what} '{_clean(url, 120)}' is not a valid URL: {_clean(str(e), 80)}",
            hint=_BAD_URL_HINT,
        ) from None
    if parts.scheme not in ("http", "https") or not host:
        raise RegistryError(
            f"{what} '{_clean(url, 120)}' is not an http(s) URL with a host", hint=_BAD_URL_HINT
        )
    if _CONTROL_RE.search(full) or any(c.isspace() for c in full):
        raise RegistryError(
            f"{what} '{_clean(url, 120)}' holds whitespace or control characters",
            hint=_BAD_URL_HINT,
        )
    return full


def _chain(e: BaseException) -> list[BaseException]:
    """An exception and what it wraps (requests → urllib3 ``reason`` → ``__cause__``...)."""
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(out) < 16 and all(cur is not c for c in out):
        out.append(cur)
        nxt = getattr(cur, "reason", None)
        if not isinstance(nxt, BaseException):
            args = getattr(cur, "args", ())
            nxt = next((a for a in args if isinstance(a, BaseException)), None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    return out


def _is_certificate_error(e: BaseException) -> bool:
    return any(isinstance(c, ssl.SSLCertVerificationError) for c in _chain(e))


def answers_plain_http(netloc: str, timeout: float) -> bool:
    """Whether the server at ``host:port`` answers a plain-HTTP request with an HTTP status
    line. The request (``OPTIONS *``) names no resource, so it touches no registry state."""
    host, port = hostname_of(netloc), netloc.rsplit(":", 1)[-1]
    if not port.isdigit():
        return False
    head = b""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            host_header = netloc.encode("latin-1", "replace")
            s.sendall(b"OPTIONS * HTTP/1.0\r\nHost: " + host_header + b"\r\n\r\n")
            # Read the whole (HTTP/1.0: closed) answer, bounded: closing on unread bytes
            # would reset the connection under the server's feet.
            while len(head) < 8192:
                piece = s.recv(8192)
                if not piece:
                    break
                head += piece
    except OSError:
        pass
    return head.startswith(b"HTTP/")


def speaks_plain_http(netloc: str, timeout: float) -> bool | None:
    """Probe ``host:port`` once: False when a TLS handshake completes (the server speaks TLS;
    its certificate is verified by the real request, and a certificate error is then an error,
    never a reason to fall back); True when the handshake fails and the server answers a
    plain-HTTP request; None when nothing answers (connection refused: ask again next time).
    The handshake verifies nothing and loads no CA bundle, so the probe costs a round trip."""
    host, port = hostname_of(netloc), netloc.rsplit(":", 1)[-1]
    if not port.isdigit():
        return False
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            return False
    except (ConnectionRefusedError, socket.gaierror):
        return None
    except OSError:  # ssl.SSLError (not TLS: "wrong version number"), a reset, a timeout
        pass
    return answers_plain_http(netloc, timeout)


# What may carry a secret inside text we did not write (a registry's error message, a library's
# exception text quoting a URL): a URL's query (signed CDN URLs), an Authorization value, a
# ``token=``/``password=``-style pair.
_QUERY_RE = re.compile(r"\?[^\s'\"<>)\]]+")
_AUTH_VALUE_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_SECRET_PAIR_RE = re.compile(
    r"(?i)\b((?:access_|refresh_|id_)?token|password|secret|signature|credential)"
    r"(\"?\s*[=:]\s*\"?)[^\s&,;\"']+"
)


def redact_text(text: str, secrets: Collection[str] = ()) -> str:
    """Remove what could be a credential from text headed for a message or a log line: URL
    queries, Authorization values, ``token=…`` pairs and every string in ``secrets``."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    text = _QUERY_RE.sub("?…", text)
    text = _AUTH_VALUE_RE.sub(r"\1 <redacted>", text)
    return _SECRET_PAIR_RE.sub(r"\1\2<redacted>", text)


class _RedactingFilter(logging.Filter):
    """urllib3 logs every request line at DEBUG, signed CDN query strings included: rewrite
    those records through ``redact_text`` before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        record.msg = redact_text(message)
        record.args = None
        return True


for _name in ("urllib3.connectionpool", "urllib3.connection", "requests"):
    logging.getLogger(_name).addFilter(_RedactingFilter())


def _clean(text: str, limit: int = 200, secrets: Collection[str] = ()) -> str:
    """Text we did not write goes into our messages: control characters shown escaped (the
    one terminal sanitiser, ``termsafe``), anything that may be a credential redacted, bounded."""
    text = redact_text(sanitize(text.strip()), secrets)
    return text if len(text) <= limit else text[:limit] + "…"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (RFC 9110 §10.2.3): delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class HostBudget:
    """Blob requests in flight per host, for the whole process: each request waits until fewer
    than its ``limit`` run on its host. Fair: first requests of blobs (every small layer's only
    one) are served before extra ranged requests, whatever arrived first. Thread-safe."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._active: dict[str, int] = {}
        self._waiting_first: dict[str, int] = {}
        self._waiting: dict[str, int] = {}

    def acquire(self, host: str, limit: int, extra: bool) -> None:
        with self._cv:
            if not extra:
                self._waiting_first[host] = self._waiting_first.get(host, 0) + 1
            self._waiting[host] = self._waiting.get(host, 0) + 1
            self._cv.notify_all()
            try:
                while self._active.get(host, 0) >= limit or (
                    extra and self._waiting_first.get(host, 0) > 0
                ):
                    self._cv.wait()
            finally:
                self._waiting[host] -= 1
                if not extra:
                    self._waiting_first[host] -= 1
            self._active[host] = self._active.get(host, 0) + 1

    def try_acquire(self, host: str, limit: int) -> bool:
        """A first request's place at once, if fewer than ``limit`` run on ``host`` and no
        request waits for one there (an early request never overtakes a waiting one)."""
        with self._cv:
            if self._active.get(host, 0) >= limit or self._waiting.get(host, 0) > 0:
                return False
            self._active[host] = self._active.get(host, 0) + 1
            return True

    def active(self, host: str) -> int:
        """Places taken on ``host`` now."""
        with self._cv:
            return self._active.get(host, 0)

    def release(self, host: str) -> None:
        with self._cv:
            self._active[host] -= 1
            self._cv.notify_all()

    def waiting(self, host: str) -> int:
        """Requests waiting for a place on ``host``."""
        with self._cv:
            return self._waiting.get(host, 0)


class HostSlot:
    """One request's place in a ``HostBudget`` (a context manager)."""

    def __init__(self, budget: HostBudget, host: str, limit: int, extra: bool) -> None:
        self._budget, self._host, self._limit, self._extra = budget, host, limit, extra

    def __enter__(self) -> HostSlot:
        self._budget.acquire(self._host, self._limit, self._extra)
        return self

    def __exit__(self, *exc: object) -> None:
        self._budget.release(self._host)


_BUDGET = HostBudget()


def host_budget() -> HostBudget:
    """The process-wide budget every Transport shares (concurrent pulls, several Clients)."""
    return _BUDGET


class RateLimiter:
    """A token bucket of ``rate`` bytes/s (burst: a quarter second's worth, at least 64 KiB),
    shared by every connection that reads blob bodies. Thread-safe."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.burst = max(64 << 10, rate // 4)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int, sleep: Callable[[float], None] = time.sleep) -> None:
        """Spend ``n`` bytes; sleeps (outside the lock) for as long as the bucket is in debt."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            debt = -self._tokens
        if debt > 0:
            sleep(debt / self.rate)


_RATE_LIMITERS: dict[int, RateLimiter] = {}
_RATE_LOCK = threading.Lock()


def rate_limiter(rate: int) -> RateLimiter:
    """The process-wide bucket for ``rate``: every transport capped at the same rate shares it
    (a CLI process has one; an API user with two clients at one rate gets one cap in all)."""
    with _RATE_LOCK:
        found = _RATE_LIMITERS.get(rate)
        if found is None:
            found = _RATE_LIMITERS[rate] = RateLimiter(rate)
        return found


_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)([kKmMgG]?)")
_RATE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rate(text: str) -> int:
    """``--limit-rate`` as curl reads it: bytes/s, or with a k/M/G suffix (1024-based)."""
    m = _RATE_RE.fullmatch(text.strip())
    value = float(m[1]) * _RATE_UNITS[m[2].lower()] if m is not None else 0.0
    if m is None or value < 1 or value > 1 << 50:
        raise InvalidArgumentError(
            f"invalid rate {text[:40]!r}: expected bytes per second, at least 1",
            hint="e.g. --limit-rate 500k or --limit-rate 20M (k, M, G: 1024-based, as curl)",
        )
    return int(value)


class Transport:
    """Registry HTTP client shared by the resolver, fetcher and pusher. Thread-safe."""

    def __init__(
        self,
        config: TransportConfig = TransportConfig(),
        credentials: CredentialStore | None = None,
        *,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self._credentials = credentials
        self.session = session or requests.Session()
        # No ~/.netrc, no environment CA bundle: credentials and trust come from our config only.
        # Proxies from the environment are still honoured, per request (see _proxies).
        self.session.trust_env = False
        if config.max_connections < 1:
            raise InvalidArgumentError(
                f"max_connections must be at least 1, got {config.max_connections}",
                hint=f"TransportConfig(max_connections=N) with N >= 1; the default is "
                f"{DEFAULT_MAX_CONNECTIONS}",
            )
        if config.limit_rate is not None and config.limit_rate < 1:
            raise InvalidArgumentError(
                f"limit_rate must be positive, got {config.limit_rate}",
                hint="TransportConfig(limit_rate=N) in bytes/s, or None for no cap",
            )
        # Each host's pool keeps as many connections as the budget lets run at once (plus the
        # resolver's and pusher's few), so a blob request reuses a kept-alive connection; and
        # room for as many again that ``preconnect`` may still be opening while requests run
        # (a request that finds every place taken opens its own connection, and one given
        # back to a full pool is closed with a warning).
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=8, pool_maxsize=2 * config.max_connections + 4, max_retries=0
        )
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update(
            {"User-Agent": config.user_agent, "Accept-Encoding": "identity"}
        )
        self._tokens = TokenCache()
        self._token_locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        self._basic_hosts: set[str] = set()
        self._host_tls: dict[str, HostTLS] = {}
        # Hosts that may fall back, probed: True when the server failed a TLS handshake and
        # answered in plain HTTP, False when it speaks TLS (then TLS errors are errors).
        self._speaks_plain: dict[str, bool] = {}
        # Connections ``preconnect`` is opening per host, not yet back in the pool.
        self._preconnecting: dict[str, int] = {}
        # Every password and token this transport has used: scrubbed from registry-supplied text.
        self._secrets: set[str] = set()
        self.sleep: Callable[[float], None] = time.sleep
        self.budget = host_budget()
        self.rate: RateLimiter | None = (
            rate_limiter(config.limit_rate) if config.limit_rate is not None else None
        )

    def slot(self, url: str, *, extra: bool = False) -> HostSlot:
        """A place in ``url``'s host budget for one blob request (``with transport.slot(u):``).
        ``extra``: an additional ranged request of a blob that already streams, served after
        every waiting first request (a big blob's chunks never starve small layers)."""
        return HostSlot(self.budget, _netloc(url), self.config.max_connections, extra)

    def try_slot(self, url: str, *, spare: int = 0) -> Callable[[], None] | None:
        """A place in ``url``'s host budget now, leaving ``spare`` places free, or None (never
        waits); the caller calls what is returned, once, to give the place back."""
        host = _netloc(url)
        if not self.budget.try_acquire(host, self.config.max_connections - spare):
            return None
        once = threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):  # given back once, whoever calls it again
                self.budget.release(host)

        return release

    def preconnect(self, url: str, count: int) -> list[threading.Thread]:
        """Open connections to ``url``'s host ahead of need, in the background, until the
        host's pool holds ``count`` of them (never more than the budget): a blob request then
        finds a kept-alive connection instead of paying a connect (and TLS handshake) round
        trip. Best effort: a connection that fails to open is left to the request that needs
        it, which reports the error. Each connection is opened by requests' own code path for
        ``url`` (the same pool, TLS verification and client certificate a request gets);
        nothing is pre-opened through a proxy or to a host plain HTTP is not allowed to.
        Returns the threads opening them (tests join them; a pull never waits)."""
        count = min(count, self.config.max_connections)
        if count < 1:
            return []
        try:
            current = self._effective_url(url)
            self._check_url(current)
            if self._proxies(current):
                return []
            netloc = _netloc(current)
            tls = self._tls(netloc)
            verify, cert = self._verify(current), tls.cert if tls is not None else None
            adapter = self.session.get_adapter(current)
            if not isinstance(adapter, requests.adapters.HTTPAdapter):
                return []
            prepared = requests.Request("GET", current).prepare()
            pool = adapter.get_connection_with_tls_context(prepared, verify, None, cert)
            if not isinstance(pool, urllib3.HTTPConnectionPool):
                return []
            adapter.cert_verify(pool, current, verify, cert)  # type: ignore[no-untyped-call]
        except (RegistryError, requests.exceptions.RequestException) as e:
            log.debug("not pre-connecting to %s: %s", redact_url(url), e)
            return []
        except INPUT_ERRORS as e:
            log.debug("not pre-connecting to %s: %s", redact_url(url), e)
            return []
        with self._lock:
            opening = self._preconnecting.get(netloc, 0)
            start = max(0, count - opening)
            self._preconnecting[netloc] = opening + start
        # Take every place first (an idle connection counts as one and goes straight back),
        # so the ones being opened are not taken twice; then connect the new ones at once.
        taken = []
        try:
            for _ in range(start):
                taken.append(pool._get_conn(timeout=0))
        except urllib3.exceptions.HTTPError as e:  # the pool was closed meanwhile
            log.debug("not pre-connecting to %s: %s", redact_url(url), e)
        with self._lock:
            self._preconnecting[netloc] -= start - len(taken)
        threads = []
        for conn in taken:
            if conn.is_connected:
                self._give_back(pool, netloc, conn)
                continue
            th = threading.Thread(
                target=self._open_one,
                args=(pool, netloc, conn),
                daemon=True,
                name="fastdist-connect",
            )
            th.start()
            threads.append(th)
        return threads

    def _open_one(
        self, pool: urllib3.HTTPConnectionPool, netloc: str, conn: BaseHTTPConnection
    ) -> None:
        """Connect one ``preconnect`` connection and give it back to its pool."""
        try:
            conn.timeout = self.config.connect_timeout
            conn.connect()
            log.debug("pre-opened a connection to %s", netloc)
        except (OSError, ValueError, urllib3.exceptions.HTTPError) as e:
            # Best effort (refused, timed out, TLS not trusted): the request that needs the
            # connection opens its own and reports what fails.
            log.debug("pre-connecting to %s failed: %s", netloc, e)
            conn.close()
        finally:
            self._give_back(pool, netloc, conn)

    def _give_back(
        self, pool: urllib3.HTTPConnectionPool, netloc: str, conn: BaseHTTPConnection
    ) -> None:
        pool._put_conn(conn)
        with self._lock:
            self._preconnecting[netloc] -= 1

    def throttle(self, n: int) -> None:
        """Account ``n`` body bytes against ``limit_rate`` (sleeps while over the cap)."""
        if self.rate is not None:
            self.rate.take(n, self.sleep)

    # --- URL policy ----------------------------------------------------------------------------
    def configure_host(self, netloc: str, tls: HostTLS) -> None:
        """Settings for one ``host[:port]`` (a mirror from hosts.toml)."""
        with self._lock:
            self._host_tls[netloc.lower()] = tls

    def _tls(self, netloc: str) -> HostTLS | None:
        with self._lock:
            return self._host_tls.get(netloc.lower())

    def plain_http_allowed(self, host: str) -> bool:
        """Whether plain HTTP may be spoken to ``host`` at all: what ``prefers_plain_http``
        allows, and loopback hosts (a loopback server that hands us an http:// URL chose it)."""
        return self.prefers_plain_http(host) or is_loopback(host)

    def prefers_plain_http(self, host: str) -> bool:
        """Hosts spoken to in plain HTTP from the first request: those the user listed
        (``host`` or ``host:port``), mirrors whose hosts.toml URL says http:// (an explicit
        choice), and hosts seen answering in plain HTTP after TLS failed (``_effective_url``)."""
        h = host.lower()
        tls = self._tls(h)
        if tls is not None and tls.plain_http:
            return True
        with self._lock:
            if self._speaks_plain.get(h):
                return True
        return _host_in(h, self.config.plain_http_hosts)

    def may_fall_back(self, host: str) -> bool:
        """Hosts tried over TLS first whose plain-HTTP answer is accepted when TLS fails:
        loopback and ``insecure_skip_verify_hosts`` (docker's insecure registries). The port
        must be explicit: the fallback speaks plain HTTP to the same port."""
        h = host.lower()
        if not h.rsplit(":", 1)[-1].isdigit() or h.endswith("]"):
            return False
        return is_loopback(h) or _host_in(h, self.config.insecure_skip_verify_hosts)

    def base_url(self, registry_host: str) -> str:
        scheme = "http" if self.prefers_plain_http(registry_host) else "https"
        return f"{scheme}://{registry_host}"

    def url(self, registry_host: str, path: str) -> str:
        return self.base_url(registry_host) + path

    def _effective_url(self, url: str) -> str:
        """``url``, with https replaced by http for a host that may fall back (``may_fall_back``)
        and whose server, probed once, failed a TLS handshake and answered in plain HTTP."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return url  # refused with a RegistryError where it is used
        host = parts.netloc.rsplit("@", 1)[-1].lower()
        if parts.scheme != "https" or not self.may_fall_back(host):
            return url
        with self._lock:
            plain = self._speaks_plain.get(host)
        if plain is None:
            plain = speaks_plain_http(host, self.config.connect_timeout)
            if plain is not None:
                if plain:
                    log.info("%s answers in plain HTTP, not TLS: using http:// for it", host)
                with self._lock:
                    self._speaks_plain[host] = plain
        return urlunsplit(("http", *parts[1:])) if plain else url

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and self.plain_http_allowed(parts.netloc.rsplit("@", 1)[-1]):
            return
        raise RegistryError(
            f"refusing {redact_url(url)}: only https is allowed for this host",
            hint="add the host to the plain-HTTP allow list only if you trust the network",
            url=redact_url(url),
        )

    def _verify(self, url: str) -> bool | str:
        host = _netloc(url)
        tls = self._tls(host)
        if tls is not None and tls.verify is not True:
            return tls.verify
        if _host_in(host, self.config.insecure_skip_verify_hosts):
            return False
        for name in (host, hostname_of(host)):
            for key, path in self.config.host_ca_files.items():
                if key.lower() == name:
                    return path
        return self.config.ca_file or True

    @staticmethod
    def _proxies(url: str) -> dict[str, str]:
        return dict(requests.utils.get_environ_proxies(url))

    # --- public request API --------------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        registry: str | None,
        scope: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
        accept_status: Collection[int] = (),
        stall: bool = False,
        on_retry: RetryHook | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
    ) -> requests.Response:
        """Send a request and return the (streamed) response once its status is 2xx or listed
        in ``accept_status``; the caller closes it. ``registry`` is the host whose credentials
        apply (None: anonymous, for foreign URLs); they are sent only while the URL is on that
        host. Temporary failures are retried here (``max_retries`` overrides the config: a
        mirror gets few, its fallback is the next host); other failures raise typed errors.
        ``deadline`` (``time.monotonic()`` based; default: ``request_deadline`` from now)
        bounds every attempt and every wait between them."""
        if deadline is None:
            deadline = time.monotonic() + self.config.request_deadline
        attempt = 0
        waited_for_retry_after = 0.0
        while True:
            retry_after: float | None = None
            shown = redact_url(self._effective_url(url))  # http:// once a fallback is known
            if time.monotonic() >= deadline:
                raise self.deadline_error(method, url)
            try:
                resp = self._send(method, url, registry, scope, headers, body, stall, deadline)
            except requests.exceptions.SSLError as e:
                raise _tls_error(method, url, e) from None
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as e:
                err: RegistryError = RegistryError(
                    f"{method} {shown}: {_connection_reason(e)}",
                    url=shown,
                    temporary=True,
                    hint=f"is a registry reachable at {_netloc(url)}? check the name, the port "
                    "and the network (a proxy from $HTTPS_PROXY is used if set)",
                )
            except RegistryError as e:
                # Raised by the token flow inside _send: retry only what is temporary.
                if not e.temporary:
                    raise
                err = e
            except INPUT_ERRORS as e:
                # What requests/urllib3 raise on a URL or header they cannot use (a malformed
                # Location or realm that slipped past checked_url, a header value that is not
                # latin-1): the input is wrong, so no retry.
                raise RegistryError(
                    f"{method} {shown}: cannot send the request: "
                    f"{type(e).__name__}: {_clean(str(e), secrets=self._known_secrets())}",
                    url=shown,
                    hint=_BAD_URL_HINT,
                ) from e
            else:
                if 200 <= resp.status_code < 300 or resp.status_code in accept_status:
                    return resp
                try:
                    err = self.error_from_response(method, resp)
                    if err.temporary:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                finally:
                    resp.close()
            attempt += 1
            delay = self.retry_delay(
                err, attempt, retry_after, waited_for_retry_after, max_retries=max_retries
            )
            if delay is None or time.monotonic() + delay >= deadline:
                raise err
            if retry_after is not None:
                waited_for_retry_after += delay
            log.info("retrying %s (attempt %d in %.2fs): %s", method, attempt, delay, err)
            if on_retry is not None:
                on_retry(err, attempt, delay)
            self.sleep(delay)

    def get_bytes(
        self,
        url: str,
        *,
        registry: str | None,
        scope: str | None,
        limit: int,
        what: str,
        headers: Mapping[str, str] | None = None,
        max_retries: int | None = None,
    ) -> tuple[bytes, Mapping[str, str]]:
        """GET a small document whole (manifests, configs, tokens): capped at ``limit`` before
        reading past it, retried when the body is cut, all within one ``request_deadline``.
        Returns the body and response headers."""
        attempt = 0
        deadline = time.monotonic() + self.config.request_deadline
        while True:
            resp = self.request(
                "GET",
                url,
                registry=registry,
                scope=scope,
                headers=headers,
                max_retries=max_retries,
                deadline=deadline,
            )
            try:
                body = read_capped(
                    resp, limit, what, deadline=deadline, stall=self.config.read_timeout
                )
                return body, resp.headers
            except BODY_ERRORS as e:
                err = RegistryError(
                    f"GET {redact_url(url)}: body cut: {_clean(str(e))}",
                    url=redact_url(url),
                    temporary=True,
                )
            finally:
                resp.close()
            attempt += 1
            delay = self.retry_delay(err, attempt, max_retries=max_retries)
            if delay is None:
                raise err
            if time.monotonic() + delay >= deadline:
                raise self.deadline_error("GET", url) from err
            self.sleep(delay)

    def deadline_error(self, method: str, url: str) -> RegistryError:
        return RegistryError(
            f"{method} {redact_url(url)}: no complete answer within the "
            f"{self.config.request_deadline:g}s request deadline",
            url=redact_url(url),
            hint="the registry stalls or is very slow; try again later (the deadline is "
            "TransportConfig(request_deadline=...))",
        )

    def retry_delay(
        self,
        err: RegistryError,
        attempt: int,
        retry_after: float | None = None,
        waited_for_retry_after: float = 0.0,
        *,
        max_retries: int | None = None,
    ) -> float | None:
        """How long to wait before retry number ``attempt`` (from 1), or None to give up.
        The fetcher uses this too when a body is cut mid-stream, so one policy applies."""
        limit = self.config.max_retries if max_retries is None else max_retries
        if not err.temporary or attempt > limit:
            return None
        if retry_after is not None:
            if waited_for_retry_after + retry_after > self.config.max_retry_after:
                err.hint = err.hint or (
                    f"the registry asks to wait {retry_after:.0f}s, longer than the "
                    f"{self.config.max_retry_after:.0f}s allowed; try again later"
                )
                return None
            return retry_after
        cap = min(self.config.backoff_max, self.config.backoff_base * 2.0 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    def error_from_response(self, method: str, resp: requests.Response) -> RegistryError:
        """Map a failed response (distribution-spec error JSON, ``#error-codes``) to a typed
        error. Reads at most 64 KiB of the body."""
        url = redact_url(resp.url or "")
        status = resp.status_code
        code: str | None = None
        detail = ""
        try:
            # A malformed Content-Length means a body read until the connection closes: skip.
            declared_length(resp)
            raw = resp.raw.read(MAX_ERROR_BODY, decode_content=True) if resp.raw else b""
        except RegistryError:
            raw = b""
        except (requests.exceptions.RequestException, OSError, ValueError) as e:
            log.debug("could not read error body from %s: %s", url, e)
            raw = b""
        try:
            obj = json.loads(raw) if raw else None
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("errors"), list) and obj["errors"]:
            first = obj["errors"][0]
            if isinstance(first, dict):
                code = first.get("code") if isinstance(first.get("code"), str) else None
                msg = first.get("message")
                detail = msg if isinstance(msg, str) else ""
        reason = " ".join(
            x
            for x in (
                _clean(code or resp.reason or "", 80, self._known_secrets()),
                _clean(detail, 200, self._known_secrets()),
            )
            if x
        )
        message = f"{method} {url}: {status} {reason}".rstrip()
        if status == 401 or code == "UNAUTHORIZED":
            return AuthenticationError(
                message,
                status=status,
                code=code,
                url=url,
                hint="check your credentials (docker login) and the repository name",
            )
        if status == 403 or code == "DENIED":
            return AuthenticationError(
                message,
                status=status,
                code=code,
                url=url,
                hint="access denied: check that your account may use this repository",
            )
        if status == 404 or (code is not None and code.endswith("_UNKNOWN")):
            hint = (
                "check the repository name and the tag or digest"
                if "/manifests/" in url
                else "the registry lost this blob or its manifest is wrong; report it to the "
                "image's publisher"
            )
            return NotFoundError(message, status=status, code=code, url=url, hint=hint)
        temporary = status in _TEMPORARY_STATUSES or code in _TEMPORARY_CODES
        tls_hint: str | None = None
        if status == 400 and url.startswith("http://") and code is None:
            # Go's TLS servers (the registry, Harbor) answer plain HTTP with a bare 400.
            tls_hint = (
                "if this registry speaks TLS, drop --plain-http for it (a loopback "
                "registry is tried over TLS first by itself)"
            )
        return RegistryError(
            message, status=status, code=code, url=url, temporary=temporary, hint=tls_hint
        )

    # --- one attempt: auth + redirects -----------------------------------------------------------
    def _send(
        self,
        method: str,
        url: str,
        registry: str | None,
        scope: str | None,
        headers: Mapping[str, str] | None,
        body: Body | None,
        stall: bool,
        deadline: float,
    ) -> requests.Response:
        origin = registry.lower() if registry else None
        authorized = False
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            current = self._effective_url(current)
            self._check_url(current)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.deadline_error(method, url)
            timeout = (
                min(self.config.connect_timeout, remaining),
                min(self.config.stall_timeout if stall else self.config.read_timeout, remaining),
            )
            same_origin = origin is not None and _netloc(current) == origin
            hdrs = dict(headers or {})
            if same_origin and origin is not None:
                auth = self._auth_header(origin, scope)
                if auth:
                    hdrs["Authorization"] = auth
            stream = body() if callable(body) else None
            data: BinaryIO | bytes | None = stream if callable(body) else body
            tls = self._tls(_netloc(current))
            started = time.monotonic()
            try:
                resp = self.session.request(
                    method,
                    current,
                    headers=hdrs,
                    data=data,
                    allow_redirects=False,
                    stream=True,
                    timeout=timeout,
                    verify=self._verify(current),
                    cert=tls.cert if tls is not None else None,
                    proxies=self._proxies(current),
                    hooks={"response": _check_location},
                )
            except requests.exceptions.RequestException as e:
                if http_log.isEnabledFor(logging.DEBUG):
                    http_log.debug(
                        "%s %s -> %s (%.3fs)",
                        method,
                        redact_url(current),
                        type(e).__name__,
                        time.monotonic() - started,
                    )
                raise
            finally:
                if stream is not None:
                    stream.close()
            if http_log.isEnabledFor(logging.DEBUG):
                http_log.debug(
                    "%s %s -> %d (%s bytes, %.3fs to headers)",
                    method,
                    redact_url(current),
                    resp.status_code,
                    resp.headers.get("Content-Length", "?"),
                    time.monotonic() - started,
                )
            if resp.status_code in _REDIRECT_STATUSES and resp.headers.get("Location"):
                location = resp.headers["Location"]
                resp.close()
                target = checked_url(
                    location, current, what=f"{method} {redact_url(current)}: redirect to"
                )
                log.debug("redirect %s → %s", redact_url(current), redact_url(target))
                if resp.status_code == 303:
                    method, body = "GET", None
                current = target
                continue
            if resp.status_code == 401 and same_origin and origin is not None and not authorized:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.close()
                self._answer_challenge(
                    origin, scope, challenge, current, deadline, hdrs.get("Authorization")
                )
                authorized = True
                continue
            return resp
        raise RegistryError(
            f"{method} {redact_url(url)}: more than {MAX_REDIRECTS} redirects",
            url=redact_url(url),
        )

    # --- authentication ----------------------------------------------------------------------
    def _creds(self, host: str) -> Credentials | None:
        return self._credentials.get(host) if self._credentials is not None else None

    def _auth_header(self, host: str, scope: str | None) -> str | None:
        token = self._tokens.get(host, scope or "")
        if token is not None:
            self._remember_secret(token)
            return f"Bearer {token}"
        with self._lock:
            basic = host in self._basic_hosts
        if basic:
            creds = self._creds(host)
            if creds is not None and creds.username:
                self._remember_secret(creds.password)
                return _basic(creds)
        return None

    def _remember_secret(self, *values: str | None) -> None:
        with self._lock:
            self._secrets.update(v for v in values if v)

    def _known_secrets(self) -> list[str]:
        with self._lock:
            # Longest first, so a secret containing another is replaced whole.
            return sorted(self._secrets, key=len, reverse=True)

    def _token_flight(self, host: str, scope: str | None) -> threading.Lock:
        with self._lock:
            return self._token_locks.setdefault((host, scope or ""), threading.Lock())

    def _answer_challenge(
        self,
        host: str,
        scope: str | None,
        header: str,
        url: str,
        deadline: float,
        sent: str | None = None,
    ) -> None:
        """Answer a 401 whose request carried ``sent`` (its Authorization, or None)."""
        challenges = _parse_challenges(header)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            # One token request per (host, scope) at a time: the blob requests of a pull that
            # meet the same 401 together wait for it and use the token it brings.
            with self._token_flight(host, scope):
                cached = self._tokens.get(host, scope or "")
                if cached is not None and f"Bearer {cached}" != sent:
                    return  # fetched by another request while this one waited
                self._tokens.drop(host, scope or "")  # refused: never send it again
                token = self._fetch_token(host, scope, bearer, deadline)
                self._tokens.put(host, scope or "", token)
            return
        if any(c.scheme == "basic" for c in challenges):
            creds = self._creds(host)
            if creds is None or not creds.username:
                raise AuthenticationError(
                    f"{redact_url(url)}: the registry requires a login (Basic)",
                    status=401,
                    url=redact_url(url),
                    hint=f"log in first: docker login {host}",
                )
            with self._lock:
                self._basic_hosts.add(host)
            return
        raise AuthenticationError(
            f"{redact_url(url)}: 401 with no usable WWW-Authenticate challenge",
            status=401,
            url=redact_url(url),
        )

    def _fetch_token(
        self, host: str, scope: str | None, challenge: Challenge, deadline: float
    ) -> Token:
        """distribution token spec: GET realm?service&scope (anonymous or Basic), or the OAuth2
        refresh_token grant (POST) when we hold an identity token."""
        if not challenge.realm:
            raise AuthenticationError(f"registry {host}: Bearer challenge without a realm")
        realm = self._effective_url(
            checked_url(challenge.realm, what=f"registry {host}: token realm")
        )
        parts = urlsplit(realm)
        realm_host = parts.netloc.rsplit("@", 1)[-1]
        if parts.scheme == "http":
            if not self.plain_http_allowed(host):
                raise AuthenticationError(
                    f"registry {host}: refusing token realm {redact_url(realm)} over plain http",
                    url=redact_url(realm),
                    hint="the registry must use an https token realm",
                )
        elif parts.scheme != "https":
            raise AuthenticationError(f"registry {host}: bad token realm {redact_url(realm)}")
        scopes: list[str] = []
        for s in (scope, challenge.params.get("scope")):
            for item in (s or "").split(" "):
                if item and item not in scopes:
                    scopes.append(item)
        service = challenge.params.get("service")
        creds = self._creds(host)
        if creds is not None:
            self._remember_secret(creds.password, creds.identity_token)
        # Credentials go to the realm (docker does this) only over https, or to a host the user
        # allowed over plain http; never across a redirect (we do not follow any here).
        if creds is not None and parts.scheme == "http" and not self.plain_http_allowed(realm_host):
            log.warning("not sending credentials to plain-http token realm %s", redact_url(realm))
            creds = None
        headers: dict[str, str] = {}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self.deadline_error("GET", realm)
        timeout = (
            min(self.config.connect_timeout, remaining),
            min(self.config.read_timeout, remaining),
        )
        form: dict[str, str] | None = None
        params: list[tuple[str, str]] = []
        if creds is not None and creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": "fastdist",
                "access_type": "offline",
            }
            if service:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
        else:
            if creds is not None and creds.username:
                headers["Authorization"] = _basic(creds)
            if service:
                params.append(("service", service))
            params.extend(("scope", s) for s in scopes)
        try:
            resp = self.session.request(
                "POST" if form is not None else "GET",
                realm,
                data=form,
                params=params,
                headers=headers,
                allow_redirects=False,
                stream=True,
                timeout=timeout,
                verify=self._verify(realm),
                proxies=self._proxies(realm),
            )
        except requests.exceptions.SSLError as e:
            err = _tls_error("GET", realm, e)
            raise AuthenticationError(
                f"token realm: {err.message}", url=redact_url(realm), hint=err.hint
            ) from None
        with resp:
            if resp.status_code != 200:
                err = self.error_from_response("GET", resp)
                if resp.status_code in (401, 403):
                    raise AuthenticationError(
                        f"token realm {redact_url(realm)} refused: {resp.status_code}",
                        status=resp.status_code,
                        url=redact_url(realm),
                        hint=f"check your credentials for {host} (docker login {host})",
                    )
                err.message = f"token request failed: {err.message}"
                raise err
            try:
                raw = read_capped(
                    resp,
                    MAX_TOKEN_BODY,
                    "token response",
                    deadline=deadline,
                    stall=self.config.read_timeout,
                )
            except BODY_ERRORS as e:
                raise RegistryError(
                    f"token realm {redact_url(realm)}: answer cut: {_connection_reason(e)}",
                    url=redact_url(realm),
                    temporary=True,
                ) from None
        token = parse_token_response(raw)
        self._remember_secret(token.value)
        return token


def _connection_reason(e: BaseException) -> str:
    """The root cause of a requests/urllib3 connection failure in a few words (their own
    messages nest three exception reprs and bury "Connection refused" past any sane width)."""
    chain = _chain(e)
    # Most specific first: urllib3's NewConnectionError is itself a ConnectTimeoutError.
    checks: tuple[tuple[type[BaseException], str], ...] = (
        (urllib3.exceptions.NameResolutionError, "cannot resolve the host name"),
        (ConnectionRefusedError, "connection refused"),
        (ConnectionResetError, "connection reset by the server"),
        (urllib3.exceptions.ReadTimeoutError, "timed out waiting for the server"),
        (socket.timeout, "timed out"),
    )
    for cls, words in checks:
        if any(isinstance(c, cls) for c in chain):
            return words
    return f"{type(e).__name__}: {_clean(str(e))}"


def _check_location(resp: requests.Response, *args: object, **kwargs: object) -> None:
    """Response hook: a redirect's ``Location`` is checked before requests parses it (it
    does so even with ``allow_redirects=False``, raising a bare ValueError on a bad one)."""
    location = resp.headers.get("Location")
    if resp.status_code in _REDIRECT_STATUSES and location:
        method = resp.request.method if resp.request is not None else "GET"
        try:
            checked_url(location, resp.url, what=f"{method} {redact_url(resp.url)}: redirect to")
        except RegistryError:
            resp.close()
            raise


_TLS_HINT = (
    "if the registry uses a private CA, pass its certificate: --ca-file FILE "
    "(TransportConfig(host_ca_files=...), or ca in hosts.toml); --tls-verify=false skips "
    "verification for the reference's registry, only if you trust the network"
)


def _tls_error(method: str, url: str, e: BaseException) -> RegistryError:
    if _is_certificate_error(e):
        cert = next(c for c in _chain(e) if isinstance(c, ssl.SSLCertVerificationError))
        why = cert.verify_message or cert.reason or "verification failed"
        return RegistryError(
            f"{method} {redact_url(url)}: TLS certificate not trusted: {_clean(str(why))}",
            hint=_TLS_HINT,
            url=redact_url(url),
        )
    return RegistryError(
        f"{method} {redact_url(url)}: TLS failure: {_connection_reason(e)}",
        hint="the server does not speak TLS as expected on this port; for a registry that "
        "speaks plain HTTP pass --plain-http (TransportConfig(plain_http_hosts=...))",
        url=redact_url(url),
    )


# What requests and urllib3 raise when a URL or header value cannot be used: InvalidURL,
# InvalidHeader, InvalidSchema, MissingSchema (RequestException), LocationParseError and
# UnicodeEncodeError (ValueError), and urllib3's own errors that requests does not wrap.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    ValueError,
)

# Errors raised while reading a response body: the connection dropped or stalled mid-stream.
BODY_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,
    requests.exceptions.RequestException,
    OSError,
)


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def declared_length(resp: requests.Response) -> int | None:
    """The response's ``Content-Length`` (RFC 9110 §8.6), None when absent. A value that is
    not a decimal number (``-5``, ``1e3``, two different values) is refused: http.client reads
    such a body until the connection closes, and a kept-alive connection never does."""
    raw = resp.headers.get("Content-Length")
    if raw is None:
        return None
    values = {v.strip() for v in raw.split(",")}
    if len(values) != 1 or not all(v.isascii() and v.isdigit() for v in values):
        url = redact_url(resp.url or "")
        raise RegistryError(
            f"{resp.request.method if resp.request else 'GET'} {url}: invalid Content-Length "
            f"'{_clean(raw, 40)}'",
            url=url,
            status=resp.status_code,
            hint="the registry (or a proxy in front of it) sent a malformed response",
        )
    return int(values.pop())


def set_read_timeout(resp: requests.Response, seconds: float) -> None:
    """The socket timeout for the next reads of ``resp``'s body (a stall timeout, or what is
    left of a deadline)."""
    conn = getattr(resp.raw, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def read_capped(
    resp: requests.Response,
    limit: int,
    what: str,
    *,
    deadline: float | None = None,
    stall: float | None = None,
) -> bytes:
    """Read a whole body, refusing (before reading past it) anything over ``limit`` bytes, and
    giving up (RegistryError) when ``deadline`` (``time.monotonic()`` based) passes; each read
    waits at most ``stall`` seconds for a byte."""
    declared = declared_length(resp)
    if declared is not None and declared > limit:
        raise ManifestError(
            f"{what} from {redact_url(resp.url or '')} is {declared} bytes, "
            f"over the {limit}-byte limit"
        )
    chunks: list[bytes] = []
    total = 0
    while True:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RegistryError(
                    f"{what} from {redact_url(resp.url or '')}: body not complete within the "
                    "request deadline",
                    url=redact_url(resp.url or ""),
                    hint="the registry stalls or is very slow; try again later (the deadline "
                    "is TransportConfig(request_deadline=...))",
                )
            set_read_timeout(resp, remaining if stall is None else min(stall, remaining))
        want = min(65536, limit + 1 - total)
        # read1 returns what has arrived (urllib3 >= 2), so a dripping body meets the deadline
        # check between reads; read() would wait for all ``want`` bytes.
        read1 = getattr(resp.raw, "read1", None)
        chunk = (
            read1(want, decode_content=True)
            if read1 is not None
            else resp.raw.read(want, decode_content=True)
        )
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ManifestError(
                f"{what} from {redact_url(resp.url or '')} is over the {limit}-byte limit"
            )
    return b"".join(chunks)
