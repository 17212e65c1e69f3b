"""The benchmark's link emulator (benches/linkem.py): its rate accounting, its HTTP request log
and that bytes pass through it intact. No timing is asserted (the machine is shared): the pacer is
driven with explicit clock values, and the proxy is checked for what it delivers, not when."""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benches" / "linkem.py"
    spec = importlib.util.spec_from_file_location("bench_linkem", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_linkem"] = mod
    spec.loader.exec_module(mod)
    return mod


linkem = _load()


def test_pacer_books_bytes_at_its_rate() -> None:
    p = linkem.Pacer(1_000_000, burst=0.0)  # 1 MB/s
    assert p.reserve(500_000, now=10.0) == pytest.approx(10.5)
    # Back to back: the next piece queues behind the first.
    assert p.reserve(250_000, now=10.1) == pytest.approx(10.75)
    # After a quiet spell it starts from now, not from its old booking (no banked credit).
    assert p.reserve(100_000, now=20.0) == pytest.approx(20.1)
    assert p.bytes == 850_000


def test_pacer_burst_bounds_credit_and_zero_rate_is_uncapped() -> None:
    p = linkem.Pacer(1_000_000, burst=0.002)
    assert p.reserve(1_000, now=5.0) == pytest.approx(5.0 - 0.002 + 0.001)
    assert linkem.Pacer(0).reserve(10**9, now=3.0) == 3.0


def test_pacer_lets_a_backlogged_reader_catch_up() -> None:
    """A full piece waiting means the emulator, not the source, was late: up to ``backlog`` s
    of credit are kept, so its own scheduling delays do not lower the rate."""
    p = linkem.Pacer(1_000_000, burst=0.002, backlog=0.05)
    assert p.reserve(10_000, now=1.0) == pytest.approx(1.0 - 0.002 + 0.01)
    # Read 30 ms late with a full piece: booked right after the previous one.
    assert p.reserve(10_000, now=1.04, backlogged=True) == pytest.approx(1.018)
    # 200 ms late: at most 50 ms of catching up.
    assert p.reserve(10_000, now=1.3, backlogged=True) == pytest.approx(1.3 - 0.05 + 0.01)


def test_request_parser_splits_feeds_and_skips_bodies() -> None:
    out: list[object] = []
    rp = linkem.RequestParser(7, out, 0.0, threading.Lock())
    body = b"GET /fake HTTP/1.1\r\n\r\n"  # inside a body: not a request
    stream = (
        b"GET /v2/r/manifests/t HTTP/1.1\r\nHost: h\r\n\r\n"
        b"PUT /v2/r/blobs/uploads/x HTTP/1.1\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
        + b"GET /v2/r/blobs/sha256:"
        + b"a" * 64
        + b" HTTP/1.1\r\nRange: bytes=0-99\r\n\r\n"
    )
    for i in range(0, len(stream), 5):  # arbitrary piece boundaries
        rp.feed(stream[i : i + 5])
    got = [(r.conn, r.method, r.path, r.range) for r in out]  # type: ignore[attr-defined]
    assert got == [
        (7, "GET", "/v2/r/manifests/t", ""),
        (7, "PUT", "/v2/r/blobs/uploads/x", ""),
        (7, "GET", "/v2/r/blobs/sha256:" + "a" * 64, "bytes=0-99"),
    ]


def test_requests_per_blob() -> None:
    d = "sha256:" + "b" * 64
    log = [
        {"conn": 1, "method": "GET", "path": "/v2/r/manifests/t", "range": ""},
        {"conn": 1, "method": "GET", "path": f"/v2/r/blobs/{d}", "range": "bytes=0-9"},
        {"conn": 2, "method": "GET", "path": f"/v2/r/blobs/{d}", "range": "bytes=10-19"},
        {"conn": 3, "method": "HEAD", "path": f"/v2/r/blobs/{d}", "range": ""},
    ]
    assert linkem.requests_per_blob(log) == {
        "blobs": 1,
        "blob_gets": 2,
        "ranged_gets": 2,
        "max_per_blob": 2,
        "other_requests": 2,
        "connections": 3,
    }


def test_profiles_parse() -> None:
    p = linkem.parse_profile("far-30-20")
    assert (p.delay, p.conn_rate, p.agg_rate) == (0.01, 30e6, 300e6)
    c = linkem.parse_profile("custom:0/2/50")
    assert (c.delay, c.conn_rate, c.agg_rate) == (0.001, 0.0, 50e6)
    with pytest.raises(ValueError, match="unknown link profile"):
        linkem.parse_profile("far-7-7")
    assert len(linkem.far_profiles()) == 9


def test_proxy_delivers_both_directions_intact_and_logs_requests() -> None:
    """Through a capped, delayed link: every byte arrives, in order, both ways; half-close
    passes through; the request is in the log."""
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB, several pieces and pacing rounds
    ls = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        c, _ = ls.accept()
        with c:
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                buf += c.recv(65536)
            received.append(bytes(buf))
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=serve)
    t.start()
    prof = linkem.Profile("t", 0.001, 200e6, 400e6)
    with linkem.LinkEmulator(f"127.0.0.1:{ls.getsockname()[1]}", prof) as em:
        h, p = em.host.rsplit(":", 1)
        with socket.create_connection((h, int(p))) as s:
            req = b"GET /v2/x/blobs/sha256:" + b"c" * 64 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
            s.sendall(req)
            got = bytearray()
            while chunk := s.recv(1 << 20):
                got += chunk
        t.join()
        assert bytes(got) == payload
        assert received == [req]
        st = em.stats()
    ls.close()
    assert st["connections"] == 1
    assert [r["path"] for r in st["requests"]] == ["/v2/x/blobs/sha256:" + "c" * 64]
