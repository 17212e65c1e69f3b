#!/usr/bin/env python3
"""A user-space link emulator: a TCP proxy that makes a loopback registry look far away.

This machine's kernel has no netem or fq qdiscs, so the far-link benchmark puts this proxy between
the pullers and the loopback registry. Per connection and direction it models a link as
*serialisation then propagation*:

- a byte read from one side is first paced: it leaves the "wire" when both the connection's
  per-direction cap (``conn_rate``) and the aggregate cap shared by every connection and direction
  (``agg_rate``) have room for it (two virtual-time pacers, GCRA style);
- it is then held for the one-way ``delay`` in a timed queue and written to the other side at
  ``sent + delay``. The queue is not a window: up to ``rate x delay`` bytes (the bandwidth-delay
  product) are in flight on each connection, so throughput is limited by the caps and not also
  by ``delay x buffer`` (the reader stops reading only when what it has paced but not yet
  delivered exceeds ``window`` bytes, by default 4 x the product, at least 4 MiB);
- the TCP handshake is charged: bytes from the client are not delivered before
  ``accept + 3 x delay`` (the SYN / SYN-ACK round trip a real connect costs before the first
  request leaves), so a new connection costs one RTT more than a reused one.

Not modelled: TCP slow start and loss (a connection gets its full rate from its first byte:
optimistic for every tool alike, and most for those opening many short connections), and the
receive-window limit of a real long link (Linux's default ``tcp_rmem`` maximum of 6 MiB would
hold one connection to roughly 40-75 MB/s at 80 ms RTT); ``LinkEmulator(window=...)`` caps the
bytes in flight per connection and direction to model one.

The proxy also parses the client → server byte stream as HTTP/1.x requests (pullers send no
request bodies, but ``Content-Length`` bodies are skipped) and records each request's connection,
method, path and ``Range`` header, so the benchmark can report requests per blob.

Threads with blocking sockets (the GIL is released in ``recv``/``sendall``); two threads per
connection and direction; most of its CPU is the kernel's socket copies. ``os.splice`` (socket →
pipe sized to the window → socket, no copy through Python) was tried and measured no cheaper
here, so the bytes go through Python.

``python benches/linkem.py --selftest`` measures achieved rate and RTT through each profile
against a local sink; ``python benches/linkem.py --upstream HOST:PORT --profile far-30-20`` runs
a standalone proxy and prints its address.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.linkem")

MB = 1_000_000  # link rates are decimal: 10 MB/s = 10,000,000 bytes/s
MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Profile:
    """A link: one-way delay (s), per-connection and aggregate caps (bytes/s, 0 = none)."""

    name: str
    delay: float
    conn_rate: float
    agg_rate: float

    @property
    def rtt(self) -> float:
        return 2 * self.delay

    def describe(self) -> str:
        def r(x: float) -> str:
            return f"{x / MB:g} MB/s" if x else "uncapped"

        return (
            f"{self.name}: RTT {self.rtt * 1000:g} ms, {r(self.conn_rate)} per connection, "
            f"{r(self.agg_rate)} in all"
        )


AGG_RATE = 300 * MB  # "an aggregate cap of a few hundred MB/s" (issue 18)
CONN_RATES = (10, 30, 100)  # MB/s
DELAYS_MS = (2, 20, 80)  # RTT, ms


def profile_name(conn_mb: int, rtt_ms: int) -> str:
    return f"far-{conn_mb}-{rtt_ms}"


def far_profiles() -> dict[str, Profile]:
    """The issue's grid: per-connection cap {10, 30, 100} MB/s x delay {2, 20, 80} ms, 300 MB/s
    in all. The delay is the round trip time (``far-30-20`` = 30 MB/s, 20 ms RTT)."""
    out = {}
    for c in CONN_RATES:
        for d in DELAYS_MS:
            n = profile_name(c, d)
            out[n] = Profile(n, d / 2000, c * MB, AGG_RATE)
    return out


PROFILES: dict[str, Profile] = {
    "loopback": Profile("loopback", 0.0, 0, 0),
    **far_profiles(),
}


def parse_profile(spec: str) -> Profile:
    """A name from PROFILES, or ``custom:CONN_MB/RTT_MS[/AGG_MB]`` (0 MB/s = uncapped)."""
    if spec in PROFILES:
        return PROFILES[spec]
    num = r"(\d+(?:\.\d+)?)"
    m = re.fullmatch(rf"custom:{num}/{num}(?:/{num})?", spec)
    if not m:
        raise ValueError(
            f"unknown link profile {spec!r} "
            f"(one of {', '.join(PROFILES)} or custom:CONN_MB/RTT_MS[/AGG_MB])"
        )
    conn, rtt, agg = float(m[1]), float(m[2]), float(m[3] or AGG_RATE / MB)
    return Profile(spec, rtt / 2000, conn * MB, agg * MB)


# ---------------------------------------------------------------------------------------------
# Pacing.


class Pacer:
    """A virtual-time rate limiter: ``reserve(n)`` books ``n`` bytes on the wire and returns the
    monotonic time at which their last byte has been sent. Thread-safe; ``rate`` 0 = no cap.

    ``tat`` (theoretical arrival time) never lags ``now`` by more than ``burst`` seconds, so a
    quiet link does not bank credit beyond a short burst. A ``backlogged`` reservation (the
    reader found a full piece waiting: the source was not idle, the emulator was late, e.g.
    descheduled on a loaded machine) may catch up on up to ``backlog`` seconds instead, so the
    emulator's own scheduling delays do not lower the link's rate."""

    def __init__(self, rate: float, burst: float = 0.002, backlog: float = 0.05) -> None:
        self.rate = rate
        self.burst = burst
        self.backlog = backlog
        self._tat = 0.0
        self._lock = threading.Lock()
        self.bytes = 0

    def reserve(self, n: int, now: float, backlogged: bool = False) -> float:
        with self._lock:
            self.bytes += n
            if not self.rate:
                return now
            credit = self.backlog if backlogged else self.burst
            self._tat = max(self._tat, now - credit) + n / self.rate
            return self._tat


def sleep_until(t: float) -> None:
    while (d := t - time.monotonic()) > 0:
        time.sleep(d)


# ---------------------------------------------------------------------------------------------
# HTTP request accounting (client → server direction).


@dataclasses.dataclass
class Request:
    conn: int
    t: float  # seconds since the emulator started
    method: str
    path: str
    range: str  # the Range header, "" if none


_REQ_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.[01]$")


class RequestParser:
    """Incremental HTTP/1.x request-head parser; skips ``Content-Length`` bodies."""

    def __init__(self, conn: int, sink: list[Request], t0: float, lock: threading.Lock) -> None:
        self.conn = conn
        self.sink = sink
        self.t0 = t0
        self.lock = lock
        self.buf = bytearray()
        self.skip = 0
        self.broken = False

    def feed(self, data: bytes | memoryview) -> None:
        if self.broken:
            return
        if self.skip:
            k = min(self.skip, len(data))
            self.skip -= k
            data = data[k:]
        self.buf += data
        while not self.skip and not self.broken:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 256 * 1024:  # not HTTP as we know it: stop looking
                    self.broken = True
                return
            head = bytes(self.buf[:end]).split(b"\r\n")
            del self.buf[: end + 4]
            m = _REQ_LINE.match(head[0])
            if not m:
                self.broken = True
                return
            hdrs: dict[str, str] = {}
            for line in head[1:]:
                name, _, val = line.partition(b":")
                hdrs[name.strip().lower().decode("latin-1")] = val.strip().decode("latin-1")
            with self.lock:
                self.sink.append(
                    Request(
                        self.conn,
                        time.monotonic() - self.t0,
                        m[1].decode(),
                        m[2].decode("latin-1"),
                        hdrs.get("range", ""),
                    )
                )
            body = int(hdrs.get("content-length", "0") or 0)
            k = min(body, len(self.buf))
            del self.buf[:k]
            self.skip = body - k


# ---------------------------------------------------------------------------------------------
# The proxy.


class _Direction:
    """One direction of one connection: a reader thread paces bytes into a timed queue, a writer
    thread delivers each piece at its due time."""

    def __init__(
        self,
        src: socket.socket,
        dst: socket.socket,
        pacers: tuple[Pacer, Pacer],
        delay: float,
        window: int,
        chunk: int,
        not_before: float,
        parser: RequestParser | None,
        done: threading.Event,
        em: LinkEmulator,
    ) -> None:
        self.em = em
        self.src, self.dst = src, dst
        self.pacers = pacers
        self.delay = delay
        self.window = window
        self.chunk = chunk
        self.not_before = not_before
        self.parser = parser
        self.q: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.cv = threading.Condition()
        self.done = done
        self.failed = False

    def start(self, name: str) -> list[threading.Thread]:
        ts = [
            threading.Thread(target=self._read, name=f"{name}-r", daemon=True),
            threading.Thread(target=self._write, name=f"{name}-w", daemon=True),
        ]
        for t in ts:
            t.start()
        return ts

    def _push(self, due: float, data: bytes) -> None:
        with self.cv:
            self.q.append((due, data))
            self.queued += len(data)
            self.cv.notify_all()

    def _read(self) -> None:
        try:
            while True:
                with self.cv:
                    while self.queued >= self.window and not self.failed:
                        self.cv.wait()
                    if self.failed:
                        return
                # recv (not recv_into + bytes()): one copy of each byte, kernel to the queue.
                data = self.src.recv(self.chunk)
                now = time.monotonic()
                n = len(data)
                if n == 0:
                    break
                if self.parser is not None:
                    self.parser.feed(data)
                sent = max(p.reserve(n, now, n == self.chunk) for p in self.pacers)
                due = max(max(sent, now) + self.delay, self.not_before)
                self._push(due, data)
                # Serialisation: do not read the next piece before this one is on the wire
                # (the source feels the cap as backpressure, as from a real bottleneck).
                sleep_until(sent - 0.002)
        except OSError:
            self.failed = True
        finally:
            self.em.add_cpu(time.thread_time())
        self._push(max(time.monotonic() + self.delay, self.not_before), b"")  # EOF

    def _write(self) -> None:
        try:
            while True:
                with self.cv:
                    while not self.q:
                        self.cv.wait()
                    due, data = self.q[0]
                sleep_until(due)
                with self.cv:
                    self.q.popleft()
                    self.queued -= len(data)
                    self.cv.notify_all()
                if not data:
                    if self.failed:
                        # The source was reset: pass the reset on (linger 0: the close in
                        # _serve sends RST; shutdown wakes the other direction's reader).
                        with contextlib.suppress(OSError):
                            self.dst.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0"
                            )
                            self.dst.shutdown(socket.SHUT_RDWR)
                    else:
                        with contextlib.suppress(OSError):
                            self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
        except OSError:
            self.failed = True
            with self.cv:
                self.cv.notify_all()
            with contextlib.suppress(OSError):
                self.src.shutdown(socket.SHUT_RDWR)
        finally:
            self.em.add_cpu(time.thread_time())
            self.done.set()


class LinkEmulator:
    """A TCP proxy from ``listen`` (default an ephemeral loopback port) to ``upstream`` through
    ``profile``. Use as a context manager; ``host`` is the ``HOST:PORT`` to give to clients."""

    def __init__(
        self,
        upstream: str,
        profile: Profile,
        listen: str = "127.0.0.1:0",
        window: int = 0,
        record_requests: bool = True,
    ) -> None:
        uh, _, up = upstream.rpartition(":")
        self.upstream = (uh or "127.0.0.1", int(up))
        self.profile = profile
        rate = min(r for r in (profile.conn_rate, profile.agg_rate, 10_000 * MB) if r)
        self.window = window or max(4 * MiB, int(4 * rate * profile.delay))
        # Pieces of ~2 ms of the capped rate: small enough to keep the pacing smooth, large
        # enough that an uncapped connection moves 256 KiB per system call.
        self.chunk = int(min(256 * 1024, max(16 * 1024, rate * 0.002)))
        self.agg = Pacer(profile.agg_rate)
        self.requests: list[Request] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        lh, _, lp = listen.rpartition(":")
        self._ls = socket.create_server((lh or "127.0.0.1", int(lp)), backlog=512)
        self.record_requests = record_requests
        self._stop = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._serving: list[threading.Thread] = []
        self.cpu = 0.0  # CPU seconds of the connection threads that have ended

    def add_cpu(self, seconds: float) -> None:
        with self._lock:
            self.cpu += seconds

    @property
    def host(self) -> str:
        h, p = self._ls.getsockname()[:2]
        return f"{h}:{p}"

    def __enter__(self) -> LinkEmulator:
        self._accept_thread = threading.Thread(target=self._accept, name="linkem", daemon=True)
        self._accept_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._ls.shutdown(socket.SHUT_RDWR)
        self._ls.close()
        with self._lock:
            socks = list(self._open)
        for s in socks:  # shutdown wakes the threads blocked on them; _serve closes them
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        with self._lock:
            serving = list(self._serving)
        for t in serving:  # so ``cpu`` counts every connection
            t.join(5)

    def reset_stats(self) -> None:
        with self._lock:
            self.requests = []
            self.connections = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "connections": self.connections,
                "requests": [dataclasses.asdict(r) for r in self.requests],
            }

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._ls.accept()
            except OSError:
                return
            accepted = time.monotonic()
            with self._lock:
                self.connections += 1
                cid = self.connections
            t = threading.Thread(
                target=self._serve, args=(c, cid, accepted), name=f"linkem-{cid}", daemon=True
            )
            with self._lock:
                self._serving = [x for x in self._serving if x.is_alive()] + [t]
            t.start()

    def _serve(self, c: socket.socket, cid: int, accepted: float) -> None:
        try:
            u = socket.create_connection(self.upstream, timeout=30)
        except OSError as e:
            log.warning("linkem: upstream %s: %s", self.upstream, e)
            c.close()
            return
        u.settimeout(None)
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        with self._lock:
            self._open.update((c, u))
        p = self.profile
        parser = (
            RequestParser(cid, self.requests, self._t0, self._lock)
            if self.record_requests
            else None
        )
        done_up, done_down = threading.Event(), threading.Event()
        up = _Direction(
            c,
            u,
            (Pacer(p.conn_rate), self.agg),
            p.delay,
            self.window,
            self.chunk,
            accepted + 3 * p.delay,  # SYN, SYN-ACK, then the request: 1.5 RTT
            parser,
            done_up,
            self,
        )
        down = _Direction(
            u,
            c,
            (Pacer(p.conn_rate), self.agg),
            p.delay,
            self.window,
            self.chunk,
            0.0,
            None,
            done_down,
            self,
        )
        threads = up.start(f"linkem-{cid}-up") + down.start(f"linkem-{cid}-down")
        done_up.wait()
        done_down.wait()
        for s in (c, u):
            with contextlib.suppress(OSError):
                s.close()
        with self._lock:
            self._open.difference_update((c, u))
        for t in threads:
            t.join(1)


# ---------------------------------------------------------------------------------------------
# Requests per blob (for the benchmark's tables).


def requests_per_blob(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise a request log: GETs of blobs (by digest), their ranged share, and connections."""
    per: dict[str, int] = {}
    ranged = 0
    other = 0
    for r in requests:
        m = re.search(r"/blobs/(sha256:[0-9a-f]{64})", r["path"])
        if m and r["method"] == "GET":
            per[m[1]] = per.get(m[1], 0) + 1
            ranged += bool(r["range"])
        else:
            other += 1
    counts = sorted(per.values())
    return {
        "blobs": len(per),
        "blob_gets": sum(counts),
        "ranged_gets": ranged,
        "max_per_blob": counts[-1] if counts else 0,
        "other_requests": other,
        "connections": len({r["conn"] for r in requests}),
    }


# ---------------------------------------------------------------------------------------------
# Self-test: a local sink server, N connections through each profile.


class _Source:
    """A loopback server: each connection sends ``size`` bytes after reading a 1-byte request
    (or echoes one byte back for the RTT probe, request b"p")."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ls = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.host = f"127.0.0.1:{self.ls.getsockname()[1]}"
        self.payload = os.urandom(1 << 20)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c:
            try:
                while req := c.recv(1):
                    if req == b"p":
                        c.sendall(b"p")
                        continue
                    left = self.size
                    view = memoryview(self.payload)
                    while left:
                        k = min(left, len(view))
                        c.sendall(view[:k])
                        left -= k
                    c.shutdown(socket.SHUT_WR)
                    return
            except OSError:
                return

    def close(self) -> None:
        self.ls.close()


def _drain(host: str, out: list[float], i: int) -> None:
    h, _, p = host.rpartition(":")
    with socket.create_connection((h, int(p))) as s:
        s.sendall(b"g")
        buf = bytearray(1 << 20)
        n = 0
        while k := s.recv_into(buf):
            n += k
    out[i] = n


def _rtt(host: str, probes: int = 5) -> tuple[float, float]:
    """(connect + first round trip, median round trip on the open connection), seconds."""
    h, _, p = host.rpartition(":")
    t0 = time.monotonic()
    with socket.create_connection((h, int(p))) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"p")
        s.recv(1)
        first = time.monotonic() - t0
        rtts = []
        for _ in range(probes):
            t = time.monotonic()
            s.sendall(b"p")
            s.recv(1)
            rtts.append(time.monotonic() - t)
    rtts.sort()
    return first, rtts[len(rtts) // 2]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def selftest(profiles: list[Profile], conns: list[int], size: int) -> int:
    """Measure each profile: achieved per-connection and aggregate rate against the caps,
    RTT against the configured one, and the proxy's CPU per GB moved."""
    print(
        "| profile | conns | bytes/conn | configured | achieved | ratio | RTT cfg | RTT new conn"
        " | RTT open conn | CPU s/GB | proxy CPU s/GB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    bad = 0
    for prof in profiles:
        for n in conns:
            src = _Source(size)
            with LinkEmulator(src.host, prof, record_requests=False) as em:
                first, rtt = _rtt(em.host)
                out = [0.0] * n
                ts = [threading.Thread(target=_drain, args=(em.host, out, i)) for i in range(n)]
                c0, t0 = _cpu(), time.monotonic()
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                wall = time.monotonic() - t0
                cpu = _cpu() - c0
            src.close()
            total = sum(out)
            caps = [r for r in (prof.conn_rate * n, prof.agg_rate) if r]
            configured = min(caps) if caps else 0
            achieved = total / wall
            # A transfer also waits a handshake and a request round trip: take them off.
            ideal = (total / configured if configured else 0) + 2 * prof.rtt
            ratio = ideal / wall if configured else float("nan")
            if configured and not 0.85 <= ratio <= 1.1:
                bad += 1
            print(
                f"| {prof.name} | {n} | {size / MB:.0f} MB | "
                + (f"{configured / MB:.0f} MB/s" if configured else "uncapped")
                + f" | {achieved / MB:.0f} MB/s | {ratio:.2f} | {prof.rtt * 1000:.0f} ms | "
                f"{first * 1000:.1f} ms | {rtt * 1000:.1f} ms | {cpu / (total / 1e9):.2f} | "
                f"{em.cpu / (total / 1e9):.2f} |"
            )
            sys.stdout.flush()
    print(
        "\nratio = (bytes / configured rate + 2 RTT) / measured time: 1.00 = the link as "
        "configured; < 1 = slower than configured (the proxy or the machine is the bottleneck). "
        "CPU s/GB: this process's CPU per GB moved: the proxy and the test's own source and sink "
        "(the proxy's own threads: the last column)."
    )
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(upstream: str, profile: Profile | None) -> Iterator[str]:
    """The ``HOST:PORT`` to use: through an emulator for ``profile``, else ``upstream`` itself."""
    if profile is None:
        yield upstream
        return
    with LinkEmulator(upstream, profile) as em:
        yield em.host


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--selftest", action="store_true", help="measure every profile and exit")
    ap.add_argument(
        "--profiles",
        default="loopback,far-10-2,far-30-20,far-100-2,far-100-80,custom:0/2/300",
        help="profiles for --selftest (comma list)",
    )
    ap.add_argument("--conns", default="1,8", help="connection counts for --selftest")
    ap.add_argument("--size-mb", type=float, default=0, help="bytes per connection (--selftest)")
    ap.add_argument("--upstream", help="HOST:PORT to forward to (proxy mode)")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument(
        "--profile", default="far-30-20", help="a profile name or custom:MB,RTT_MS[,AGG]"
    )
    ap.add_argument("--log", type=Path, help="proxy mode: write the request log (JSON) on exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s")
    try:
        if args.selftest:
            profs = [parse_profile(p) for p in args.profiles.split(",") if p]
            conns = [int(x) for x in args.conns.split(",") if x]
            size = int(args.size_mb * MB) if args.size_mb else 0
            rc = 0
            for p in profs:
                sz = size or _selftest_size(p)
                rc |= selftest([p], conns, sz)
            return rc
        if not args.upstream:
            ap.error("--upstream HOST:PORT (or --selftest)")
        prof = parse_profile(args.profile)
    except ValueError as e:
        ap.error(str(e))
    with LinkEmulator(args.upstream, prof, args.listen) as em:
        print(f"linkem: {em.host} -> {args.upstream} ({prof.describe()})", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
        if args.log:
            args.log.write_text(json.dumps(em.stats(), indent=1))
    return 0


def _selftest_size(p: Profile) -> int:
    """Bytes per connection: ~1.5 s at the capped rate (at least a few RTTs), at most 300 MB."""
    rate = min(r for r in (p.conn_rate, p.agg_rate, 400 * MB) if r)
    return int(min(300 * MB, max(4 * MB, rate * 1.5)))


if __name__ == "__main__":
    sys.exit(main())
