"""Registry mirrors from containerd's ``certs.d/<host>/hosts.toml`` files: which hosts to try.

containerd's format (``docs/hosts.md``), read from a config dir (``--hosts-dir``,
``$FASTDIST_HOSTS_DIR``, else ``/etc/fastdist/certs.d`` then ``/etc/containerd/certs.d``)::

    server = "https://registry-1.docker.io"      # the upstream (default: the registry itself)

    [host."https://mirror.internal:5000"]
      capabilities = ["pull", "resolve"]          # default: pull, resolve, push
      skip_verify = false
      ca = "/etc/certs/mirror.pem"                # or a list; relative to the host's dir
      client = [["client.cert", "client.key"]]    # or "both.pem", or a list of either
      override_path = false                       # true: the URL path replaces /v2
      [host."https://mirror.internal:5000".header]
        x-custom = "value"

Mirrors (Harbor or distribution pull-through caches, Spegel, Dragonfly, Kraken) are tried in file
order with ``?ns=<upstream host>``; the upstream comes last. A mirror that fails with a connection
error or a temporary status is skipped for a cool-down (long enough for the rest of a pull), so a
dead mirror costs one failed attempt, not a timeout per blob. Manifests by tag are resolved only
on hosts with ``resolve``; blobs and manifests by digest come from hosts with ``pull`` (they are
verified locally, so a mirror cannot substitute content).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from .auth import valid_header_value
from .errors import HostsConfigError, NotFoundError, RegistryError
from .reference import Reference
from .transport import HostTLS, Transport

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_HOSTS_DIRS = (Path("/etc/fastdist/certs.d"), Path("/etc/containerd/certs.d"))
CAPABILITIES = frozenset({"pull", "resolve", "push"})
DEFAULT_COOLDOWN = 600.0
# Retries on a mirror before falling back: one quick retry, since the upstream is the fallback.
MIRROR_RETRIES = 1
MAX_HOSTS_TOML = 1 << 20
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.1 token


@dataclass(frozen=True)
class RegistryHost:
    """One place to send registry API requests for a repository's registry."""

    url: str  # scheme://host[:port][/path]
    capabilities: frozenset[str] = CAPABILITIES
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str | None], ...] = ()  # (cert, key or None when cert holds both)
    headers: tuple[tuple[str, str], ...] = ()
    override_path: bool = False
    upstream: bool = False  # the registry itself (or ``server``): no ns=, never skipped

    @property
    def netloc(self) -> str:
        """``host[:port]``: whose credentials apply, and the key for TLS settings."""
        return urlsplit(self.url).netloc.rsplit("@", 1)[-1].lower()

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    def api_url(self, path: str, ns: str | None = None) -> str:
        """The URL for the API ``path`` (``/v2/<name>/…``) on this host, with ``ns`` for
        mirrors. Without ``override_path`` the host's path gets ``/v2`` appended (containerd)."""
        if not path.startswith("/v2/"):
            raise ValueError(f"not a registry API path: {path!r}")
        parts = urlsplit(self.url)
        prefix = parts.path.rstrip("/")
        if not self.override_path and not prefix.endswith("/v2"):
            prefix += "/v2"
        full = prefix + path[len("/v2") :]
        query = urlencode({"ns": ns}) if ns and not self.upstream else ""
        return urlunsplit((parts.scheme, parts.netloc, full, query, ""))

    def header_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.headers:
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out


def hosts_dirs(hosts_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where to look: the explicit dir, else ``$FASTDIST_HOSTS_DIR``, else the defaults."""
    if hosts_dir is not None:
        return [Path(hosts_dir)]
    env = os.environ.get("FASTDIST_HOSTS_DIR")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return list(DEFAULT_HOSTS_DIRS)


def find_hosts_toml(domain: str, dirs: Sequence[Path]) -> Path | None:
    """The first ``<dir>/<domain>/hosts.toml``, else the first ``<dir>/_default/hosts.toml``."""
    for name in (domain, "_default"):
        for d in dirs:
            p = d / name / "hosts.toml"
            if p.is_file():
                return p
    return None


def parse_hosts_toml(data: bytes, host_dir: Path, upstream_url: str) -> list[RegistryHost]:
    """The hosts to try, in order: the ``[host."…"]`` entries, then the server (upstream).

    ``upstream_url`` is the server when the file sets none. Relative ``ca``/``client`` paths are
    resolved against ``host_dir`` (the directory holding the file).
    """
    # Imported here: most pulls have no hosts.toml and never parse TOML.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.9/3.10
        import tomli as tomllib

    where = str(host_dir / "hosts.toml")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise HostsConfigError(f"{where}: invalid TOML: {e}") from None
    hosts: list[RegistryHost] = []
    table = doc.get("host", {})
    if not isinstance(table, dict):
        raise HostsConfigError(f"{where}: [host] must be a table of URLs")
    for url, entry in table.items():
        if not isinstance(entry, dict):
            raise HostsConfigError(f"{where}: host {url!r} must be a table")
        hosts.append(_host(url, entry, host_dir, where, upstream=False))
    server = doc.get("server", upstream_url)
    if not isinstance(server, str) or not server:
        raise HostsConfigError(f"{where}: server must be a URL string")
    hosts.append(_host(server, doc, host_dir, where, upstream=True))
    return hosts


def _host(
    url: str, entry: Mapping[str, Any], host_dir: Path, where: str, upstream: bool
) -> RegistryHost:
    if "://" not in url:
        url = "https://" + url  # containerd defaults to https
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HostsConfigError(f"{where}: host {url!r} is not an http(s) URL")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise HostsConfigError(f"{where}: host {url!r} must not carry userinfo, query or fragment")
    caps = entry.get("capabilities", sorted(CAPABILITIES))
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise HostsConfigError(f"{where}: {url}: capabilities must be a list of strings")
    unknown = set(caps) - CAPABILITIES
    if unknown:
        raise HostsConfigError(f"{where}: {url}: unknown capabilities {sorted(unknown)}")
    skip = entry.get("skip_verify", False)
    if not isinstance(skip, bool):
        raise HostsConfigError(f"{where}: {url}: skip_verify must be true or false")
    override = entry.get("override_path", False)
    if not isinstance(override, bool):
        raise HostsConfigError(f"{where}: {url}: override_path must be true or false")

    def path(p: object) -> str:
        if not isinstance(p, str) or not p:
            raise HostsConfigError(f"{where}: {url}: expected a file path, got {p!r}")
        return str(Path(p) if os.path.isabs(p) else host_dir / p)

    ca_raw = entry.get("ca", [])
    ca = tuple(path(x) for x in (ca_raw if isinstance(ca_raw, list) else [ca_raw]))
    client: list[tuple[str, str | None]] = []
    client_raw = entry.get("client", [])
    for item in client_raw if isinstance(client_raw, list) else [client_raw]:
        if isinstance(item, list):
            if len(item) not in (1, 2):
                raise HostsConfigError(f"{where}: {url}: client pairs are [cert, key]")
            client.append((path(item[0]), path(item[1]) if len(item) == 2 else None))
        else:
            client.append((path(item), None))
    headers: list[tuple[str, str]] = []
    header_raw = entry.get("header", {})
    if not isinstance(header_raw, dict):
        raise HostsConfigError(f"{where}: {url}: header must be a table")
    for k, v in header_raw.items():
        if not _HEADER_NAME_RE.fullmatch(k):
            raise HostsConfigError(f"{where}: {url}: {k!r} is not a valid header name")
        for value in v if isinstance(v, list) else [v]:
            if not isinstance(value, str) or not valid_header_value(value):
                raise HostsConfigError(
                    f"{where}: {url}: header {k!r} must be strings without control or "
                    "non-latin-1 characters"
                )
            headers.append((k, value))
    return RegistryHost(
        url=url.rstrip("/"),
        capabilities=frozenset(caps),
        skip_verify=skip,
        ca=ca,
        client=tuple(client),
        headers=tuple(headers),
        override_path=override,
        upstream=upstream,
    )


class Mirrors:
    """The hosts to try per reference (hosts.toml or just the registry), remembering failures.

    The upstream of a registry without a ``server`` line is ``transport.base_url`` (https
    unless the host is known to speak plain HTTP). Mirrors' TLS settings are handed to the
    transport. Thread-safe.
    """

    def __init__(
        self,
        dirs: Sequence[Path],
        transport: Transport,
        cooldown: float = DEFAULT_COOLDOWN,
    ) -> None:
        self.dirs = list(dirs)
        self.transport = transport
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._configs: dict[str, list[RegistryHost]] = {}
        self._failed: dict[str, float] = {}  # mirror URL → when it failed
        self.clock = time.monotonic

    def configured(self, ref: Reference) -> list[RegistryHost]:
        """Every host for ``ref``'s registry in order, upstream last (cached per domain)."""
        with self._lock:
            cached = self._configs.get(ref.domain)
        if cached is not None:
            return cached
        upstream = self.transport.base_url(ref.registry)
        found = find_hosts_toml(ref.domain, self.dirs)
        if found is None:
            hosts = [RegistryHost(upstream, upstream=True)]
        else:
            try:
                st = found.stat()
                if st.st_size > MAX_HOSTS_TOML:
                    raise HostsConfigError(f"{found}: over {MAX_HOSTS_TOML} bytes")
                data = found.read_bytes()
            except OSError as e:
                raise HostsConfigError(f"cannot read {found}: {e.strerror}") from None
            hosts = parse_hosts_toml(data, found.parent, upstream)
            for h in hosts:
                self._configure_tls(h)
            log.debug("%s: hosts from %s: %s", ref.domain, found, ", ".join(h.url for h in hosts))
        with self._lock:
            self._configs[ref.domain] = hosts
        return hosts

    def _configure_tls(self, h: RegistryHost) -> None:
        if len(h.ca) > 1:
            log.warning("%s: using the first of %d ca files", h.url, len(h.ca))
        verify: bool | str = False if h.skip_verify else (h.ca[0] if h.ca else True)
        cert: tuple[str, str] | str | None = None
        if h.client:
            c, k = h.client[0]
            cert = (c, k) if k is not None else c
        self.transport.configure_host(
            h.netloc, HostTLS(verify=verify, cert=cert, plain_http=h.scheme == "http")
        )

    def hosts(self, ref: Reference, capability: str) -> list[RegistryHost]:
        """Hosts with ``capability`` to try now: mirrors that have not failed recently, then
        the upstream (always, whatever its listed capabilities: it is the registry itself)."""
        now = self.clock()
        out = []
        for h in self.configured(ref):
            if h.upstream:
                out.append(h)
                continue
            if capability not in h.capabilities:
                continue
            with self._lock:
                failed_at = self._failed.get(h.url)
            if failed_at is not None and now - failed_at < self.cooldown:
                continue
            out.append(h)
        return out

    def first_success(
        self,
        ref: Reference,
        capability: str,
        attempt: Callable[[RegistryHost], T],
        *,
        on_skip: Callable[[RegistryHost, RegistryError], None] | None = None,
    ) -> T:
        """``attempt`` on each host of ``hosts(ref, capability)`` in order until one succeeds:
        the one loop the resolver and the fetcher share. A mirror's RegistryError moves on to
        the next host (and, unless the mirror merely lacks the object, skips the mirror for the
        cool-down); the upstream's is raised."""
        for host in self.hosts(ref, capability):
            try:
                return attempt(host)
            except RegistryError as e:
                if host.upstream:
                    raise
                if isinstance(e, NotFoundError):
                    log.info("mirror %s does not have it (%s); trying the next host", host.url, e)
                else:
                    self.mark_failed(host, e)
                if on_skip is not None:
                    on_skip(host, e)
        raise AssertionError("the upstream host is always tried last")  # pragma: no cover

    def mark_failed(self, host: RegistryHost, why: object) -> None:
        """Skip ``host`` for the cool-down (never the upstream)."""
        if host.upstream:
            return
        with self._lock:
            first = host.url not in self._failed
            self._failed[host.url] = self.clock()
        if first:
            log.warning("mirror %s failed (%s); using the next host for this pull", host.url, why)


__all__ = [
    "DEFAULT_HOSTS_DIRS",
    "HostsConfigError",
    "Mirrors",
    "RegistryHost",
    "find_hosts_toml",
    "hosts_dirs",
    "parse_hosts_toml",
]
