"""Stream blobs from a registry into a sink, over parallel ranged connections when the link is
the limit, resuming with Range after a dropped connection.

distribution-spec ``#pulling-blobs``: ``GET /v2/<name>/blobs/<digest>``, usually redirected to
storage on another host (credentials are dropped there by the transport). The fetcher never
delivers more than ``desc.size`` bytes, in order and exactly once; verifying the digest is the
sink's job (the content store and the native pipeline hash while they write). A body cut
mid-stream is resumed from the sink's offset with ``Range: bytes=N-``; a server that ignores
Range (200) has the already-held prefix skipped.

Ranged fetch (``FetchConfig``): a blob of at least ``range_threshold`` bytes starts as one
stream (the "head"). When that stream shows the link, not the consumer, is the limit (it waits
on the socket longer than the sink works, and is slower than ``fast_rate``), and the server
said ``Accept-Ranges: bytes``, the head is cut off ``chunk_size`` further on and workers fetch
the rest as ``Range: bytes=a-b`` requests to the URL the head was redirected to (a signed
storage URL is followed once; when it expires, 400/403, the registry URL is asked again). Each
piece a worker reads goes straight into the sink at its offset (``BlobSink.write_at``: the
ingest file, written by the native side with the GIL released); the worker of the chunk the
prefix ends in ``advance``s it, and the sink consumes the contiguous prefix as it grows (the
native pipeline reads it back in 1 MiB spans, so small network pieces cost nothing
downstream). A worker claims a chunk only within ``window`` bytes of the prefix, so a stalled
chunk makes the others wait, never the bytes held past the prefix grow; none are held in
memory. The sink records its prefix while bytes lie past it, so after a crash only the
contiguous prefix is resumed from (``content.Ingest``). Every
request of a blob runs inside the host's connection budget (``transport.HostBudget``); extra
ranged requests yield to any blob's first request. A 200 to a ranged request, a wrong
``Content-Range`` or a missing ``Accept-Ranges`` ends in one stream from the sink's offset:
verified bytes are never fetched again.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from .errors import (
    DigestMismatchError,
    InvalidArgumentError,
    ManifestError,
    RegistryError,
    SizeMismatchError,
)
from .mirrors import MIRROR_RETRIES, Mirrors, RegistryHost
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
# Signed storage URLs re-resolved through the registry per blob before giving up.
MAX_RERESOLVE = 3


def _blob_event(phase: Phase, desc: Descriptor, current: int, message: str = "") -> ProgressEvent:
    """A progress event about ``desc``'s download, ``current`` bytes in."""
    return ProgressEvent(phase, desc.digest, desc.media_type, current, desc.size, message)


@dataclass(frozen=True)
class FetchConfig:
    """When and how a blob is fetched over several ranged connections.

    ``chunk_size`` 8 MiB: a ranged request costs one round trip of idle connection before its
    first byte, so a chunk of ``t`` seconds keeps its connection busy ``t / (t + rtt)`` of the
    time. On the far-link grid (per-connection 10/30/100 MB/s, RTT up to 80 ms) that is, for
    80 ms: at 10 MB/s 4 MiB 84 %, 8 MiB 91 %; at 30 MB/s 4 MiB 64 %, 8 MiB 78 %, 16 MiB 88 %;
    at 100 MB/s 8 MiB 51 %, 16 MiB 68 %. The idle round trips are covered by the budget's other
    connections; what a bigger chunk costs is depth: the window holds whole chunks, and with
    8 MiB a 64 MiB window is 8 chunks deep (one per connection of the default budget); 16 MiB
    would halve it. The window's bytes wait in the ingest file, not in memory: the 469 MB
    big-files pull peaked at 66-72 MB RSS through the emulator (30 and 100 MB/s, 20 ms; 120
    and 96 MB when chunks waited in memory).
    ``early_after`` 100 ms: a pull whose manifest took at least this long to resolve (a far
    registry: 40 ms of round trip or more) sends its layers' first GETs while the config is
    in flight (``send_early``), saving a round trip; a near one does not: it would save
    little, and processes that start pulling the same image at the same moment may each
    send a blob's early GET (the ingest lock still lets only one store and unpack it; within
    a process, and once a fetch of a blob has started anywhere, no early GET repeats it).
    0: always; None: never.
    ``range_threshold`` 16 MiB: smaller blobs are one request (two chunks or fewer gain less
    than the round trip they cost). ``adaptive``: start with one stream and split only when
    measured (every ``probe_bytes`` of the stream) to wait on the network; False splits at once
    (tests use it with small sizes). ``fast_rate``: a connection at least this fast (bytes/s)
    is not split: the published per-connection caps of registries and CDNs are below it, and
    on loopback the extra connections only cost CPU.
    """

    range_threshold: int = 16 << 20
    chunk_size: int = 8 << 20
    window: int = 64 << 20
    adaptive: bool = True
    probe_bytes: int = 4 << 20
    fast_rate: float = 256 * (1 << 20)
    early_after: float | None = 0.1

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.range_threshold < 1 or self.probe_bytes < 1:
            raise InvalidArgumentError(
                "FetchConfig: chunk_size, range_threshold and probe_bytes must be positive",
                hint="leave them out for the defaults (8 MiB chunks from 16 MiB blobs on)",
            )
        if self.window < self.chunk_size:
            raise InvalidArgumentError(
                f"FetchConfig: window ({self.window}) must hold at least one chunk "
                f"({self.chunk_size})",
                hint="make window a multiple of chunk_size (default 64 MiB of 8 MiB chunks)",
            )

    @property
    def ahead(self) -> int:
        """Chunks the window holds."""
        return self.window // self.chunk_size


class BlobSink(Protocol):
    """Where fetched bytes go (a content-store ingest, the native unpack pipeline…).

    ``write`` appends in order (one stream); a ranged fetch ``write_at``s chunks at their
    offsets, from several threads, and ``advance``s the contiguous prefix as it grows (the
    sink consumes bytes below it, exactly once and in order). ``prepare_ahead`` is called once
    before the first ``write_at``: from then on the sink's storage may hold bytes past
    ``offset`` that are not part of the prefix (a crash must not take them for it)."""

    @property
    def offset(self) -> int:
        """Bytes already held in order: where a (resumed) fetch starts."""
        ...

    def write(self, data: bytes) -> None:
        """Take the next bytes; may raise (the consumer failed), which stops the fetch."""
        ...

    def prepare_ahead(self) -> None:
        """Ranged writes past ``offset`` are about to start."""
        ...

    def write_at(self, offset: int, data: bytes) -> None:
        """Hold ``data`` at ``offset`` (at or past ``offset``; thread-safe)."""
        ...

    def advance(self, end: int) -> None:
        """``[0, end)`` is written: consume up to there (called by one thread at a time)."""
        ...


class BytesSink:
    """An in-memory sink for small blobs (configs)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._end = 0  # the prefix; _buf may hold ranged bytes past it
        self._lock = threading.Lock()

    @property
    def offset(self) -> int:
        return self._end

    def write(self, data: bytes) -> None:
        with self._lock:
            self._put(self._end, data)
            self._end += len(data)

    def prepare_ahead(self) -> None:
        pass

    def write_at(self, offset: int, data: bytes) -> None:
        with self._lock:
            if offset < self._end:
                raise ValueError(f"write at {offset}, below the prefix ({self._end})")
            self._put(offset, data)

    def _put(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > len(self._buf):
            self._buf.extend(bytes(end - len(self._buf)))
        self._buf[offset:end] = data

    def advance(self, end: int) -> None:
        with self._lock:
            self._end = max(self._end, min(end, len(self._buf)))

    def getvalue(self) -> bytes:
        return bytes(self._buf[: self._end])


class _Truncated(Exception):
    """The body ended before ``desc.size`` bytes arrived."""


class _RangesRefused(Exception):
    """The server answered a ranged request with something else than the range asked for."""


def _read_chunks(
    resp: requests.Response, limit: int, throttle: Callable[[int], None] | None = None
) -> Iterator[bytes]:
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
        if throttle is not None:
            throttle(len(piece))
        yield piece


def _content_range(resp: requests.Response) -> tuple[int, int, str] | None:
    m = _CONTENT_RANGE_RE.fullmatch(resp.headers.get("Content-Range", "").strip())
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m is not None else None


def _accepts_ranges(resp: requests.Response) -> bool:
    """RFC 9110 §14.3: ``Accept-Ranges: bytes`` (a 206 proves it too)."""
    if resp.status_code == 206:
        return True
    values = resp.headers.get("Accept-Ranges", "").lower().replace(",", " ").split()
    return "bytes" in values


class _Plan:
    """A big blob's head stream: where it stops (``end``), and the window of chunks after it
    once the head decided to split. ``ranged`` False: one stream to the end."""

    def __init__(self, size: int, end: int, ranged: bool) -> None:
        self.size = size
        self.end = end
        self.ranged = ranged
        self.window: _Window | None = None
        self.next_probe = 0
        # Since the last probe: seconds waiting on the socket, seconds in the sink, and bytes.
        self.t_net = 0.0
        self.t_sink = 0.0
        self.bytes = 0
        self.probes = 0

    def one_stream(self) -> None:
        """No (more) ranged requests: the head goes to the end; running workers stop."""
        self.ranged = False
        self.end = self.size
        if self.window is not None:
            self.window.close()
            self.window = None


class _Chunk:
    __slots__ = ("begin", "done", "end", "pos")

    def __init__(self, begin: int, end: int) -> None:
        self.begin = begin
        self.end = end
        self.pos = begin  # next byte to fetch (the sink holds [begin, pos))
        self.done = False


#: How far the prefix grows between the consumer's wake-ups (its progress events).
_WAKE_EVERY = 1 << 20


class _Window:
    """The chunks of ``[begin, size)`` fetched by worker threads straight into the sink at
    their offsets (``BlobSink.write_at``); the worker of the chunk the prefix ends in
    ``advance``s it as its pieces land, so the sink consumes the prefix as it grows, in big
    spans, and no piece waits in memory. A chunk is claimed only while it lies within
    ``ahead`` chunks of the one the prefix ends in (``head``), so at most ``ahead *
    chunk_size`` bytes are held past the prefix, whatever stalls. The calling thread waits in
    ``consume`` for the prefix to reach the end (and reports progress)."""

    def __init__(
        self,
        fetcher: Fetcher,
        job: _Job,
        url: str,
        begin: int,
        sink: BlobSink,
        observe: Callable[[int], None] | None,
    ) -> None:
        cfg = fetcher.config
        self.fetcher = fetcher
        self.job = job
        self.sink = sink
        self.origin = job.url
        self.url = url  # where the head was redirected to (a signed storage URL), or origin
        size = job.desc.size
        self.begin = begin
        self.chunks = [
            _Chunk(b, min(b + cfg.chunk_size, size)) for b in range(begin, size, cfg.chunk_size)
        ]
        self.ahead = cfg.ahead
        self.head = 0  # the chunk the prefix ends in
        self.claimed = 0  # chunks handed to workers
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)  # workers wait here for a chunk to claim
        self.ready = threading.Condition(self.lock)  # the consumer waits here
        # False while the head stream still writes [.., begin): the prefix cannot pass begin.
        self.consuming = False
        self.frontier = begin  # the prefix end last given to the sink (once consuming)
        self.woken = begin
        self.fetched = 0  # bytes the workers wrote
        self.closed = False
        self.error: BaseException | None = None
        self.refused: str | None = None
        self.observe = observe
        self.resolves = 0
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self.sink.prepare_ahead()
        n = min(self.ahead, len(self.chunks), self.fetcher.transport.config.max_connections)
        for i in range(n):
            t = threading.Thread(target=self._work, name=f"fastdist-range-{i}", daemon=True)
            self.threads.append(t)
            t.start()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.cv.notify_all()
            self.ready.notify_all()

    def stopped(self) -> bool:
        with self.lock:
            return self.closed

    def _advance(self) -> None:
        """Move ``head`` past done chunks and give the sink the new prefix end (lock held;
        never once closed: a fallback stream owns the sink's prefix then)."""
        if self.closed or not self.consuming:
            return
        moved = False
        while self.head < len(self.chunks) and self.chunks[self.head].done:
            self.head += 1
            moved = True
        end = self.chunks[self.head].pos if self.head < len(self.chunks) else self.job.desc.size
        if end > self.frontier:
            self.sink.advance(end)
            self.frontier = end
        if moved:
            self.cv.notify_all()
        if moved or self.frontier - self.woken >= _WAKE_EVERY:
            self.woken = self.frontier
            self.ready.notify()

    # --- workers ---------------------------------------------------------------------------
    def _claim(self) -> _Chunk | None:
        with self.cv:
            while not self.closed and self.claimed < len(self.chunks):
                k = self.claimed
                if k < self.head + self.ahead:
                    self.claimed += 1
                    return self.chunks[k]
                self.cv.wait()
            return None

    def _fail(self, refused: str | None, error: BaseException | None) -> None:
        with self.lock:
            self.refused = self.refused or refused
            self.error = self.error or error
            self.closed = True
            self.cv.notify_all()
            self.ready.notify_all()

    def _work(self) -> None:
        while True:
            chunk = self._claim()
            if chunk is None:
                return
            try:
                self._fetch_chunk(chunk)
            except _RangesRefused as e:
                self._fail(str(e), None)
                return
            except Exception as e:  # noqa: BLE001 — handed to the consumer, which raises it
                self._fail(None, e)
                return

    def _fetch_chunk(self, chunk: _Chunk) -> None:
        job = self.job
        transport = self.fetcher.transport
        attempt = 0
        while chunk.pos < chunk.end:
            with self.lock:
                if self.closed:
                    return
                url = self.url
            try:
                with transport.slot(url, extra=True):
                    if self.stopped():  # stopped while this worker waited for a place
                        return
                    self._get_range(chunk, url)
                continue
            except _Truncated as e:
                err = RegistryError(
                    f"GET {redact_url(url)}: range cut at byte {chunk.pos} of "
                    f"{chunk.begin}-{chunk.end - 1}: {e}",
                    url=redact_url(url),
                    temporary=True,
                )
            except RegistryError as e:
                if e.status in (400, 403) and url != self.origin:
                    # An expired signed URL: ask the registry again for a fresh redirect.
                    with self.lock:
                        self.resolves += 1
                        again = self.resolves <= MAX_RERESOLVE
                        if again and self.url == url:
                            self.url = self.origin
                    if again:
                        log.info("%s: %s; asking the registry again", job.desc.digest, e)
                        continue
                raise
            attempt += 1
            delay = transport.retry_delay(err, attempt, max_retries=job.max_retries)
            if delay is None:
                raise err
            log.info("%s: range %d- again in %.2fs: %s", job.desc.digest, chunk.pos, delay, err)
            transport.sleep(delay)

    def _get_range(self, chunk: _Chunk, url: str) -> None:
        job = self.job
        transport = self.fetcher.transport
        size = job.desc.size
        headers = {**job.headers, "Range": f"bytes={chunk.pos}-{chunk.end - 1}"}
        resp = transport.request(
            "GET",
            url,
            registry=job.registry,
            scope=job.scope,
            headers=headers,
            stall=True,
            max_retries=job.max_retries,
        )
        with resp:
            if url == self.origin and resp.url and resp.url != url:
                with self.lock:
                    self.url = resp.url  # follow the (new) redirect once, not per chunk
            set_read_timeout(resp, transport.config.stall_timeout)
            got = _content_range(resp)
            want = (chunk.pos, chunk.end - 1)
            if (
                resp.status_code != 206
                or got is None
                or got[:2] != want
                or (got[2] not in ("*", str(size)))
            ):
                raise _RangesRefused(
                    f"asked for bytes={want[0]}-{want[1]}, got {resp.status_code} with "
                    f"Content-Range {resp.headers.get('Content-Range', '')[:80]!r}"
                )
            declared = declared_length(resp)
            if declared is not None and declared != chunk.end - chunk.pos:
                raise _RangesRefused(
                    f"Content-Length {declared} for a range of {chunk.end - chunk.pos} bytes"
                )
            for piece in _read_chunks(resp, chunk.end - chunk.pos, transport.throttle):
                # Straight to its offset (native sinks: the GIL released); a late write of a
                # closed window lands past the prefix, where the fallback stream overwrites it.
                self.sink.write_at(chunk.pos, piece)
                with self.lock:
                    if self.closed:
                        return
                    chunk.pos += len(piece)
                    self.fetched += len(piece)
                    if self.observe is not None:
                        self.observe(self.fetched - (self.frontier - self.begin))
                    if self.head < len(self.chunks) and self.chunks[self.head] is chunk:
                        self._advance()
            if chunk.pos < chunk.end:
                raise _Truncated(f"connection closed at byte {chunk.pos}")
            with self.lock:
                chunk.done = True
                self._advance()

    # --- the consumer --------------------------------------------------------------------------
    def consume(self, progress: Progress) -> None:
        """Wait (on the calling thread) until the sink's prefix reaches the blob's end, once
        the head stream has written up to ``begin``; raises what stopped the workers."""
        desc = self.job.desc
        last_report = self.begin
        with self.lock:
            self.consuming = True
            self._advance()
        while True:
            with self.lock:
                while (
                    self.head < len(self.chunks)
                    and self.frontier - last_report < PROGRESS_EVERY
                    and not self.closed
                ):
                    self.ready.wait()
                if self.error is not None:
                    raise self.error
                if self.refused is not None:
                    raise _RangesRefused(self.refused)
                finished = self.head >= len(self.chunks)
                if self.closed and not finished:
                    raise _Truncated("the ranged fetch stopped")
                frontier = self.frontier
            if frontier > last_report:
                last_report = frontier
                progress(_blob_event(Phase.DOWNLOADING, desc, frontier))
            if finished:
                return


@dataclass(frozen=True)
class _Job:
    """One blob from one host: what every request of it needs."""

    url: str
    registry: str | None
    scope: str | None
    desc: Descriptor
    headers: Mapping[str, str]
    max_retries: int | None


#: An early GET reads a blob of up to this many bytes whole into memory (so its connection and
#: place in the budget serve the next early request at once), up to EARLY_MEMORY per pull.
EARLY_BODY_MAX = 1 << 20
EARLY_MEMORY = 32 << 20


class _Early:
    """A blob's first GET, sent ahead of need (``Fetcher.send_early``) while the image's config
    is still in flight. A small blob's body is read whole into memory by the sending lane (which
    keeps its place in the budget for the next one); a bigger blob's response is kept with its
    body unread, holding its place until the layer's fetch read it (``take`` then ``release``)
    or it was dropped unread (``drop``)."""

    def __init__(self, job: _Job, release: Callable[[], None] | None) -> None:
        self.job = job
        self._release = release
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._result: requests.Response | bytes | None = None
        self.state = "queued"  # queued -> sending -> taken | dropped; queued -> cancelled

    def _request(self, transport: Transport) -> requests.Response | None:
        job = self.job
        try:
            return transport.request(
                "GET",
                job.url,
                registry=job.registry,
                scope=job.scope,
                headers=job.headers,
                stall=True,
                max_retries=job.max_retries,
            )
        except Exception as e:  # noqa: BLE001 — the layer's own request reports it
            log.debug("%s: early request failed (%s); it is sent again", job.desc.digest, e)
            return None

    def run_held(self, transport: Transport) -> None:
        """Send, and keep the response with its body unread."""
        self._settle(self._request(transport))

    def run_buffered(self, transport: Transport) -> None:
        """Send, and read the whole body: exactly ``desc.size`` bytes, else nothing (the
        layer's own request then gets the real answer, with its retries and errors)."""
        size = self.job.desc.size
        body: bytes | None = None
        resp = self._request(transport)
        if resp is not None:
            with resp:
                try:
                    set_read_timeout(resp, transport.config.stall_timeout)
                    declared = declared_length(resp)
                    if resp.status_code == 200 and declared in (None, size):
                        data = b"".join(_read_chunks(resp, size + 1, transport.throttle))
                        body = data if len(data) == size else None
                except Exception as e:  # noqa: BLE001 — the layer's own request reports it
                    log.debug("%s: early body failed (%s)", self.job.desc.digest, e)
        self._settle(body)

    def _settle(self, result: requests.Response | bytes | None) -> None:
        with self._lock:
            self._result = result
            dropped = self.state == "dropped"
        self._ready.set()
        if dropped:
            self._close()

    def claim(self) -> bool:
        """For a sender: whether to send this one (its layer did not take it meanwhile)."""
        with self._lock:
            if self.state != "queued":
                return False
            self.state = "sending"
            return True

    def take(self) -> requests.Response | bytes | None:
        """The response (body unread) or the whole body, once it came; None if it was never
        sent or failed (the caller then sends its own request; ``release`` either way)."""
        with self._lock:
            if self.state == "queued":
                self.state = "cancelled"
                return None
            self.state = "taken"
        self._ready.wait()
        return self._result

    def release(self) -> None:
        if self._release is not None:
            self._release()

    def drop(self) -> None:
        """Close an early request no layer took (its connection is dropped if its body was
        not read) and give back its place."""
        with self._lock:
            if self.state in ("taken", "cancelled", "dropped"):
                return
            never_sent = self.state == "queued"
            self.state = "dropped"
            ready = self._ready.is_set()
        if ready or never_sent:
            self._close()

    def _close(self) -> None:
        try:
            if isinstance(self._result, requests.Response):
                self._result.close()
        finally:
            self._result = None
            self.release()


def _early_key(job: _Job) -> tuple[str, str]:
    """Early requests are found by host and digest."""
    return (urlsplit(job.url).netloc, job.desc.digest)


class EarlyRequests:
    """The early GETs of one pull (``Fetcher.send_early``); ``close`` drops those no layer
    took (a failed pull, a blob another process stored meanwhile)."""

    def __init__(self, fetcher: Fetcher, early: list[_Early]) -> None:
        self._fetcher = fetcher
        self.early = early

    def close(self) -> None:
        for e in self.early:
            self._fetcher._forget(e)
            e.drop()

    def __enter__(self) -> EarlyRequests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Fetcher:
    """Fetches blobs named by descriptors. Safe to use from several threads at once.

    ``observe_window``: called with the bytes waiting in a ranged fetch's window each time
    they grow (tests prove the bound with it)."""

    def __init__(
        self,
        transport: Transport,
        mirrors: Mirrors | None = None,
        config: FetchConfig | None = None,
    ) -> None:
        self.transport = transport
        self.mirrors = mirrors
        self.config = config or FetchConfig()
        self.observe_window: Callable[[int], None] | None = None
        self._early: dict[tuple[str, str], _Early] = {}
        self._early_lock = threading.Lock()

    def _jobs(self, ref: Reference, desc: Descriptor) -> Iterator[_Job]:
        """The registry hosts' requests for ``desc``, in the order they are tried (mirrors
        first); foreign URLs are the caller's."""
        path = f"/v2/{ref.path}/blobs/{desc.digest}"
        if self.mirrors is None:
            yield _Job(
                self.transport.url(ref.registry, path), ref.registry, ref.scope(), desc, {}, None
            )
            return
        for host in self.mirrors.hosts(ref, "pull"):
            yield self._host_job(ref, desc, host)

    @staticmethod
    def _host_job(ref: Reference, desc: Descriptor, host: RegistryHost) -> _Job:
        return _Job(
            host.api_url(f"/v2/{ref.path}/blobs/{desc.digest}", ns=ref.domain),
            host.netloc,
            ref.scope(),
            desc,
            dict(host.header_map()),
            None if host.upstream else MIRROR_RETRIES,
        )

    def send_early(
        self,
        ref: Reference,
        descs: Sequence[Descriptor],
        resolved_in: float,
        wanted: Callable[[Descriptor], bool] = lambda _d: True,
    ) -> EarlyRequests:
        """Send the first GET of each of ``descs`` now, to the host tried first, in places of
        the host budget that are free now (one is always left for the request that must come
        first, the image's config), so a pull's layer requests are in flight while its config
        is: one round trip fewer. Small blobs go through lanes that read each body whole (at
        most EARLY_MEMORY in all) and send the next at once, so an image of more small layers
        than the budget still takes one wave; a bigger blob's response waits, body unread, for
        its layer. A layer's fetch takes its early answer instead of sending the request
        (``_stream``); what none takes is dropped by ``EarlyRequests.close``. A blob that
        would come from foreign URLs is not sent early. Nothing is sent when the manifest
        was resolved in less than ``FetchConfig.early_after`` (``resolved_in`` seconds), nor a
        blob ``wanted`` says no to right before it would be sent (stored or being fetched by
        another thread or process meanwhile)."""
        after = self.config.early_after
        if after is None or resolved_in < after:
            return EarlyRequests(self, [])
        small: list[_Early] = []
        sent: list[_Early] = []
        memory = 0
        for desc in descs:
            if desc.urls and desc.media_type in NONDISTRIBUTABLE_TYPES:
                continue
            job = next(self._jobs(ref, desc), None)
            if job is None:
                break
            key = _early_key(job)
            buffered = desc.size <= EARLY_BODY_MAX and memory + desc.size <= EARLY_MEMORY
            if not wanted(desc):
                continue  # stored, or being fetched, meanwhile
            with self._early_lock:
                if key in self._early:
                    continue  # sent by a concurrent pull already
                release = None if buffered else self.transport.try_slot(job.url, spare=1)
                if not buffered and release is None:
                    continue  # the budget is full: sent when its layer starts
                early = _Early(job, release)
                self._early[key] = early
            sent.append(early)
            if buffered:
                memory += desc.size
                small.append(early)
            elif early.claim():
                threading.Thread(
                    target=early.run_held,
                    args=(self.transport,),
                    daemon=True,
                    name="fastdist-early",
                ).start()
        queue = list(small)
        lock = threading.Lock()

        def lane(release: Callable[[], None]) -> None:
            try:
                while True:
                    with lock:
                        if not queue:
                            return
                        early = queue.pop(0)
                    if wanted(early.job.desc) and early.claim():
                        early.run_buffered(self.transport)
            finally:
                release()

        for _ in small:
            release = self.transport.try_slot(small[0].job.url, spare=1)
            if release is None:
                break  # the rest wait in the queue for a lane (or their layers send them)
            threading.Thread(
                target=lane, args=(release,), daemon=True, name="fastdist-early"
            ).start()
        return EarlyRequests(self, sent)

    def _take_early(self, job: _Job) -> _Early | None:
        """The early request of ``job``'s blob on its host, if one was sent with the same
        credentials and headers. It may have gone through another repository of that host
        (a blob two images of one pull share): the bytes are the same blob, verified alike,
        and this client was allowed to read it there."""
        key = _early_key(job)
        with self._early_lock:
            early = self._early.get(key)
            sent = early.job if early is not None else None
            if sent is None or (sent.registry, sent.scope is None, sent.headers) != (
                job.registry,
                job.scope is None,
                job.headers,
            ):
                return None
            del self._early[key]
            return early

    def _forget(self, early: _Early) -> None:
        key = _early_key(early.job)
        with self._early_lock:
            if self._early.get(key) is early:
                del self._early[key]

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
        if self.mirrors is None:
            self._fetch_job(next(self._jobs(ref, desc)), sink, progress)
            return

        def attempt(host: RegistryHost) -> None:
            self._fetch_job(self._host_job(ref, desc, host), sink, progress)

        def skipped(host: RegistryHost, e: RegistryError) -> None:
            progress(
                _blob_event(
                    Phase.RETRYING,
                    desc,
                    sink.offset,
                    f"mirror {host.url}: {e.message}; trying the next host",
                )
            )

        # Mirrors in order, then the upstream. The sink keeps what a failed host delivered, so
        # the next host continues with a Range request; the digest proves the whole blob.
        self.mirrors.first_success(ref, "pull", attempt, on_skip=skipped)

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
        self._fetch_job(
            _Job(url, registry, scope, desc, dict(headers or {}), max_retries), sink, progress
        )

    def _fetch_job(self, job: _Job, sink: BlobSink, progress: Progress) -> None:
        desc = job.desc
        cfg = self.config
        plan: _Plan | None = None
        offset = sink.offset
        if desc.size >= cfg.range_threshold and desc.size - offset > 2 * cfg.chunk_size:
            if cfg.adaptive:
                plan = _Plan(desc.size, desc.size, ranged=True)
                plan.next_probe = offset + cfg.probe_bytes
            else:
                plan = _Plan(desc.size, offset + cfg.chunk_size, ranged=True)
        try:
            self._stream(job, sink, progress, plan)
            window = plan.window if plan is not None else None
            if window is not None:
                try:
                    window.consume(progress)
                except _RangesRefused as e:
                    log.info(
                        "%s: ranged requests refused (%s); one stream from byte %d",
                        desc.digest,
                        e,
                        sink.offset,
                    )
                    assert plan is not None
                    plan.one_stream()
            if sink.offset < desc.size:
                self._stream(job, sink, progress, None)
        finally:
            if plan is not None:
                plan.one_stream()  # stops the workers, whatever happened

    def _stream(self, job: _Job, sink: BlobSink, progress: Progress, plan: _Plan | None) -> None:
        """The head stream: from ``sink.offset`` to ``plan.end`` (the blob's end without a
        plan), resumed after cuts within the transport's retry policy."""
        desc = job.desc
        attempt = 0
        while True:
            start = sink.offset
            end = plan.end if plan is not None else desc.size
            if start > desc.size:
                raise SizeMismatchError(
                    f"blob {desc.digest}: sink already holds {start} bytes, more than {desc.size}"
                )
            if start >= end and (desc.size > 0 or start > 0):
                return
            # The blob's early GET (send_early), if one was sent: it asked for the whole blob.
            early = self._take_early(job) if start == 0 and attempt == 0 else None
            try:
                got = early.take() if early is not None else None
                if isinstance(got, requests.Response) and (plan is None or plan.end >= desc.size):
                    try:
                        self._stream_once(job, sink, progress, start, plan, got)
                    finally:
                        assert early is not None
                        early.release()
                elif isinstance(got, bytes) and plan is None:
                    sink.write(got)  # the whole blob, read by the early request
                    progress(_blob_event(Phase.DOWNLOADING, desc, desc.size))
                else:
                    if early is not None:
                        if isinstance(got, requests.Response):
                            got.close()
                        early.release()
                    with self.transport.slot(job.url):
                        self._stream_once(job, sink, progress, start, plan)
                if plan is None or sink.offset >= plan.end:
                    return
                continue
            except _RangesRefused as e:
                assert plan is not None
                log.info("%s: %s; one stream instead", desc.digest, e)
                plan.one_stream()
                continue
            except _Truncated as e:
                err = RegistryError(
                    f"GET {redact_url(job.url)}: body cut at byte {sink.offset} of "
                    f"{desc.size}: {e}",
                    url=redact_url(job.url),
                    temporary=True,
                )
            attempt += 1
            delay = self.transport.retry_delay(err, attempt, max_retries=job.max_retries)
            if delay is None:
                raise err
            log.info("%s: resuming from byte %d in %.2fs", desc.digest, sink.offset, delay)
            progress(_blob_event(Phase.RETRYING, desc, sink.offset, err.message))
            self.transport.sleep(delay)

    def _stream_once(
        self,
        job: _Job,
        sink: BlobSink,
        progress: Progress,
        start: int,
        plan: _Plan | None,
        early: requests.Response | None = None,
    ) -> None:
        """One request of the head stream from ``start`` (or ``early``'s answer: the whole
        blob asked for ahead of need) into ``sink``."""
        desc, url = job.desc, job.url
        headers = dict(job.headers)
        bounded = plan is not None and plan.end < desc.size
        if bounded:
            assert plan is not None
            headers["Range"] = f"bytes={start}-{plan.end - 1}"
        elif start > 0:
            headers["Range"] = f"bytes={start}-"
        started = time.monotonic()

        def on_retry(err: RegistryError, _attempt: int, _delay: float) -> None:
            progress(_blob_event(Phase.RETRYING, desc, start, err.message))

        resp = early or self.transport.request(
            "GET",
            url,
            registry=job.registry,
            scope=job.scope,
            headers=headers,
            stall=True,
            on_retry=on_retry,
            max_retries=job.max_retries,
        )
        with resp:
            # The request's deadline bounded the wait for headers; a blob's body may take
            # long, but never stall_timeout without a byte.
            set_read_timeout(resp, self.transport.config.stall_timeout)
            skip = self._prefix_to_skip(resp, desc, start, url, plan)
            self._check_length(resp, desc, start, skip)
            if plan is not None and plan.ranged and not _accepts_ranges(resp):
                log.debug("%s: no Accept-Ranges: bytes; one stream", desc.digest)
                plan.one_stream()
            received = start
            last_report = start
            t0 = time.monotonic()
            t_net = t_sink = 0.0
            # Read at most one byte past the promised size: enough to prove a blob too long.
            for chunk in _read_chunks(resp, skip + desc.size - start + 1, self.transport.throttle):
                t1 = time.monotonic()
                t_net += t1 - t0
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        t0 = time.monotonic()
                        continue
                    chunk = chunk[skip:]
                    skip = 0
                if received + len(chunk) > desc.size:
                    raise SizeMismatchError(
                        f"blob {desc.digest}: {redact_url(url)} sent more than the "
                        f"{desc.size} bytes the descriptor promises"
                    )
                if plan is not None and received + len(chunk) > plan.end:
                    chunk = chunk[: plan.end - received]  # the workers fetch the rest
                sink.write(chunk)
                received += len(chunk)
                if received - last_report >= PROGRESS_EVERY or received == desc.size:
                    last_report = received
                    progress(_blob_event(Phase.DOWNLOADING, desc, received))
                t0 = time.monotonic()
                t_sink += t0 - t1
                if plan is not None:
                    plan.t_net += t_net
                    plan.t_sink += t_sink
                    plan.bytes += len(chunk)
                    t_net = t_sink = 0.0
                    if plan.ranged and plan.window is None:
                        self._maybe_split(job, plan, resp, received, sink)
                    if received >= plan.end:
                        break  # closing the response drops this connection's unread rest
            if http_log.isEnabledFor(logging.DEBUG):
                http_log.debug(
                    "GET %s: body %d bytes in %.3fs",
                    redact_url(url),
                    received - start,
                    time.monotonic() - started,
                )
            if plan is not None and received >= plan.end:
                return
            if received < desc.size:
                raise _Truncated(f"connection closed after {received} of {desc.size} bytes")

    def _maybe_split(
        self, job: _Job, plan: _Plan, resp: requests.Response, received: int, sink: BlobSink
    ) -> None:
        """Start the ranged workers for the rest of the blob when this stream is the limit
        (or at once, not ``adaptive``); the head then stops one chunk further on.

        Adaptive: judged every ``probe_bytes`` on that stretch alone, from the second on (the
        first fills the sink's queues, so its writes return at once whatever the consumer's
        speed). The link is the limit when the stream waited on the socket more than twice as
        long as in the sink, and is slower than ``fast_rate``."""
        cfg = self.config
        if cfg.adaptive:
            if received < plan.next_probe:
                return
            plan.next_probe = received + cfg.probe_bytes
            t_net, t_sink, n = plan.t_net, plan.t_sink, plan.bytes
            plan.t_net = plan.t_sink = 0.0
            plan.bytes = 0
            plan.probes += 1
            if plan.probes < 2:
                return
            rate = n / t_net if t_net > 0 else float("inf")
            if t_net <= 2 * t_sink or rate >= cfg.fast_rate:
                return  # the consumer, or nothing, is the limit: one stream is enough
            begin = received + cfg.chunk_size
        else:
            begin = plan.end
        if plan.size - begin < cfg.chunk_size:
            plan.one_stream()  # too little left to be worth another connection
            return
        log.debug(
            "%s: ranged fetch of bytes %d- in %d-byte chunks",
            job.desc.digest,
            begin,
            cfg.chunk_size,
        )
        plan.end = begin
        plan.window = _Window(self, job, resp.url or job.url, begin, sink, self.observe_window)
        plan.window.start()

    @staticmethod
    def _prefix_to_skip(
        resp: requests.Response, desc: Descriptor, start: int, url: str, plan: _Plan | None
    ) -> int:
        bounded = plan is not None and plan.end < desc.size
        if start == 0 and not bounded:
            return 0
        if resp.status_code == 206:
            got = _content_range(resp)
            want_end = plan.end - 1 if plan is not None and bounded else desc.size - 1
            # A bounded range must come back exactly; an open one from where it was asked.
            exact = got is not None and got[1] == want_end and got[2] in ("*", str(desc.size))
            if got is None or got[0] != start or (bounded and not exact):
                if bounded:
                    raise _RangesRefused(
                        f"asked for bytes={start}-{want_end}, got Content-Range "
                        f"{resp.headers.get('Content-Range', '')[:80]!r}"
                    )
                raise RegistryError(
                    f"GET {redact_url(url)}: 206 with Content-Range "
                    f"{resp.headers.get('Content-Range', '')[:80]!r}, asked for bytes={start}-",
                    url=redact_url(url),
                    status=206,
                )
            return 0
        if plan is not None:
            plan.one_stream()  # a 200 to a range: the whole blob comes on this connection
        if start:
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
