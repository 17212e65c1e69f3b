"""Stream blobs from a registry into a sink, resuming with Range after a dropped connection.

distribution-spec ``#pulling-blobs``: ``GET /v2/<name>/blobs/<digest>``, usually redirected to
storage on another host (credentials are dropped there by the transport). The fetcher never
delivers more than ``desc.size`` bytes; verifying the digest is the sink's job (the content store
hashes while it writes). A body cut mid-stream is resumed from the sink's offset with
``Range: bytes=N-``; a server that ignores Range (200) has the already-held prefix skipped.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from typing import Protocol

import requests
import urllib3.exceptions

from .errors import (
    DigestMismatchError,
    ManifestError,
    NotFoundError,
    RegistryError,
    SizeMismatchError,
)
from .mirrors import MIRROR_RETRIES, Mirrors
from .oci import NONDISTRIBUTABLE_TYPES, Descriptor, sha256_digest
from .progress import Phase, Progress, ProgressEvent, no_progress
from .reference import Reference
from .sizes import over_limit
from .transport import (
    BODY_ERRORS,
    Transport,
    checked_url,
    declared_length,
    http_log,
    redact_url,
    set_read_timeout,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 512 << 10
PROGRESS_EVERY = 256 << 10
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class BlobSink(Protocol):
    """Where fetched bytes go (a content-store ingest, the native unpack pipeline…)."""

    @property
    def offset(self) -> int:
        """Bytes already held: where a (resumed) fetch starts."""
        ...

    def write(self, data: bytes) -> None:
        """Take the next bytes; may raise (the consumer failed), which stops the fetch."""
        ...


class BytesSink:
    """An in-memory sink for small blobs (configs)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def offset(self) -> int:
        return len(self._buf)

    def write(self, data: bytes) -> None:
        self._buf += data

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class _Truncated(Exception):
    """The body ended before ``desc.size`` bytes arrived."""


def _read_chunks(resp: requests.Response, limit: int) -> Iterator[bytes]:
    """The raw body as it arrives, at most ``limit`` bytes in all (the caller passes one more
    than it can accept, so an over-long body is detected without reading the rest).

    Each piece is what one ``read1`` returned: a fresh ``bytes`` that is handed on as it is (the
    native sink takes ``bytes`` without copying; gathering pieces into a bigger buffer cost two
    copies of every body byte under the GIL). ``read1`` returns what has arrived, up to
    CHUNK_SIZE, so a slow consumer gets big pieces and a fast one small ones, and every byte
    received before a drop or a stall has reached the sink when the error surfaces (the resume
    starts right after it). A read error ends the stream with _Truncated."""
    raw = resp.raw
    read1 = getattr(raw, "read1", None)  # urllib3 >= 2
    remaining = limit
    while remaining > 0:
        want = CHUNK_SIZE if remaining > CHUNK_SIZE else remaining
        try:
            if read1 is not None:
                piece = read1(want, decode_content=False)
            else:
                piece = raw.read(want, decode_content=False)
        except BODY_ERRORS as e:
            # Only read errors become retries; a failing sink.write propagates as it is.
            timed_out = isinstance(e, (TimeoutError, urllib3.exceptions.ReadTimeoutError)) or (
                isinstance(e.__context__, (TimeoutError, urllib3.exceptions.ReadTimeoutError))
            )
            why = "stalled: no data within the stall timeout" if timed_out else type(e).__name__
            raise _Truncated(why) from e
        if not piece:
            return
        remaining -= len(piece)
        yield piece


class Fetcher:
    """Fetches blobs named by descriptors. Safe to use from several threads at once."""

    def __init__(self, transport: Transport, mirrors: Mirrors | None = None) -> None:
        self.transport = transport
        self.mirrors = mirrors

    def fetch(
        self,
        ref: Reference,
        desc: Descriptor,
        sink: BlobSink,
        progress: Progress = no_progress,
    ) -> None:
        """Stream ``desc``'s blob into ``sink`` from ``sink.offset`` to ``desc.size``."""
        if desc.urls and desc.media_type in NONDISTRIBUTABLE_TYPES:
            if self.transport.config.allow_foreign_urls:
                for raw_url in desc.urls:
                    try:
                        url = checked_url(raw_url, what=f"{desc.digest}: foreign URL")
                        self._fetch_from(url, None, None, desc, sink, progress)
                        return
                    except RegistryError as e:
                        log.warning(
                            "foreign URL %s failed (%s); trying the registry",
                            redact_url(raw_url),
                            e,
                        )
            else:
                log.info(
                    "%s: not using foreign URLs (not allowed); fetching from the registry",
                    desc.digest,
                )
        path = f"/v2/{ref.path}/blobs/{desc.digest}"
        if self.mirrors is None:
            url = self.transport.url(ref.registry, path)
            self._fetch_from(url, ref.registry, ref.scope(), desc, sink, progress)
            return
        # Mirrors in order, then the upstream. The sink keeps what a failed host delivered, so
        # the next host continues with a Range request; the digest proves the whole blob.
        for host in self.mirrors.hosts(ref, "pull"):
            try:
                self._fetch_from(
                    host.api_url(path, ns=ref.domain),
                    host.netloc,
                    ref.scope(),
                    desc,
                    sink,
                    progress,
                    headers=host.header_map(),
                    max_retries=None if host.upstream else MIRROR_RETRIES,
                )
                return
            except RegistryError as e:
                if host.upstream:
                    raise
                if not isinstance(e, NotFoundError):
                    self.mirrors.mark_failed(host, e)
                progress(
                    ProgressEvent(
                        Phase.RETRYING,
                        digest=desc.digest,
                        media_type=desc.media_type,
                        current=sink.offset,
                        total=desc.size,
                        message=f"mirror {host.url}: {e.message}; trying the next host",
                    )
                )

    def fetch_bytes(self, ref: Reference, desc: Descriptor, limit: int) -> bytes:
        """A small blob whole, verified (size and sha256); over ``limit`` is refused unread."""
        if desc.size > limit:
            raise ManifestError(f"blob {desc.digest} is {over_limit(desc.size, limit)}")
        sink = BytesSink()
        self.fetch(ref, desc, sink)
        data = sink.getvalue()
        if len(data) != desc.size:
            raise SizeMismatchError(
                f"blob {desc.digest}: got {len(data)} bytes, expected {desc.size}"
            )
        actual = sha256_digest(data)
        if actual != desc.digest:
            raise DigestMismatchError(f"blob {desc.digest}: content hashes to {actual}")
        return data

    def _fetch_from(
        self,
        url: str,
        registry: str | None,
        scope: str | None,
        desc: Descriptor,
        sink: BlobSink,
        progress: Progress,
        headers: Mapping[str, str] | None = None,
        max_retries: int | None = None,
    ) -> None:
        attempt = 0
        while True:
            start = sink.offset
            if start > desc.size:
                raise SizeMismatchError(
                    f"blob {desc.digest}: sink already holds {start} bytes, more than {desc.size}"
                )
            if start == desc.size and desc.size > 0:
                return
            try:
                self._stream_once(
                    url, registry, scope, desc, sink, progress, start, headers, max_retries
                )
                return
            except _Truncated as e:
                err = RegistryError(
                    f"GET {redact_url(url)}: body cut at byte {sink.offset} of {desc.size}: {e}",
                    url=redact_url(url),
                    temporary=True,
                )
            attempt += 1
            delay = self.transport.retry_delay(err, attempt, max_retries=max_retries)
            if delay is None:
                raise err
            log.info("%s: resuming from byte %d in %.2fs", desc.digest, sink.offset, delay)
            progress(
                ProgressEvent(
                    Phase.RETRYING,
                    digest=desc.digest,
                    media_type=desc.media_type,
                    current=sink.offset,
                    total=desc.size,
                    message=err.message,
                )
            )
            self.transport.sleep(delay)

    def _stream_once(
        self,
        url: str,
        registry: str | None,
        scope: str | None,
        desc: Descriptor,
        sink: BlobSink,
        progress: Progress,
        start: int,
        extra_headers: Mapping[str, str] | None = None,
        max_retries: int | None = None,
    ) -> None:
        headers = dict(extra_headers or {})
        if start > 0:
            headers["Range"] = f"bytes={start}-"
        started = time.monotonic()

        def on_retry(err: RegistryError, _attempt: int, _delay: float) -> None:
            progress(
                ProgressEvent(
                    Phase.RETRYING,
                    digest=desc.digest,
                    media_type=desc.media_type,
                    current=start,
                    total=desc.size,
                    message=err.message,
                )
            )

        resp = self.transport.request(
            "GET",
            url,
            registry=registry,
            scope=scope,
            headers=headers,
            stall=True,
            on_retry=on_retry,
            max_retries=max_retries,
        )
        with resp:
            # The request's deadline bounded the wait for headers; a blob's body may take
            # long, but never stall_timeout without a byte.
            set_read_timeout(resp, self.transport.config.stall_timeout)
            skip = self._prefix_to_skip(resp, desc, start, url)
            self._check_length(resp, desc, start, skip)
            received = start
            last_report = start
            # Read at most one byte past the promised size: enough to prove a blob too long.
            for chunk in _read_chunks(resp, skip + desc.size - start + 1):
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk = chunk[skip:]
                    skip = 0
                if received + len(chunk) > desc.size:
                    raise SizeMismatchError(
                        f"blob {desc.digest}: {redact_url(url)} sent more than the "
                        f"{desc.size} bytes the descriptor promises"
                    )
                sink.write(chunk)
                received += len(chunk)
                if received - last_report >= PROGRESS_EVERY or received == desc.size:
                    last_report = received
                    progress(
                        ProgressEvent(
                            Phase.DOWNLOADING,
                            digest=desc.digest,
                            media_type=desc.media_type,
                            current=received,
                            total=desc.size,
                        )
                    )
            if http_log.isEnabledFor(logging.DEBUG):
                http_log.debug(
                    "GET %s: body %d bytes in %.3fs",
                    redact_url(url),
                    received - start,
                    time.monotonic() - started,
                )
            if received < desc.size:
                raise _Truncated(f"connection closed after {received} of {desc.size} bytes")

    @staticmethod
    def _prefix_to_skip(resp: requests.Response, desc: Descriptor, start: int, url: str) -> int:
        if start == 0:
            return 0
        if resp.status_code == 206:
            m = _CONTENT_RANGE_RE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if m is None or int(m.group(1)) != start:
                raise RegistryError(
                    f"GET {redact_url(url)}: 206 with Content-Range "
                    f"{resp.headers.get('Content-Range', '')[:80]!r}, asked for bytes={start}-",
                    url=redact_url(url),
                    status=206,
                )
            return 0
        log.info("%s: server ignored Range; skipping %d held bytes", desc.digest, start)
        return start

    @staticmethod
    def _check_length(resp: requests.Response, desc: Descriptor, start: int, skip: int) -> None:
        declared = declared_length(resp)
        if declared is None:
            return
        total = start - skip + declared
        if total > desc.size:
            raise SizeMismatchError(
                f"blob {desc.digest}: {redact_url(resp.url or '')} announces {total} bytes, "
                f"the descriptor says {desc.size}"
            )
