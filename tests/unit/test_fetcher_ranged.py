"""Ranged parallel fetch against the fault registry: bytes in order and once, the bounded
window, fallbacks to one stream, per-chunk retries, signed redirects, the host budget, the rate
cap."""

from __future__ import annotations

import os
import threading

import pytest

from fakeregistry import FakeRegistry, Fault, covered_once
from fastdist.errors import InvalidArgumentError
from fastdist.fetcher import BytesSink, FetchConfig, Fetcher
from fastdist.oci import OCI_LAYER_GZIP, Descriptor, Digest
from fastdist.reference import Reference
from fastdist.transport import HostBudget, RateLimiter, Transport, TransportConfig, parse_rate

CH = 64 << 10  # chunk size of these tests
WINDOW = 4 * CH
BLOB = os.urandom(16 * CH + 12_345)
RANGED = FetchConfig(range_threshold=2 * CH, chunk_size=CH, window=WINDOW, adaptive=False)


def _setup(
    reg: FakeRegistry,
    data: bytes = BLOB,
    fetch: FetchConfig = RANGED,
    **config: object,
) -> tuple[Fetcher, Reference, Descriptor]:
    d = reg.add_blob(data)
    t = Transport(TransportConfig(backoff_base=0.001, backoff_max=0.01, **config))  # type: ignore[arg-type]
    t.sleep = lambda _s: None
    return (
        Fetcher(t, config=fetch),
        Reference.parse(f"{reg.host}/app"),
        Descriptor(OCI_LAYER_GZIP, Digest(d), len(data)),
    )


def test_ranged_fetch_delivers_the_blob_in_order_and_each_range_once() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        ranges = reg.ranges_served(desc.digest)
        assert len(ranges) == 17  # the head chunk, then one request per chunk
        assert all(b is not None for _, b in ranges)
        assert covered_once(ranges, len(BLOB))


def test_small_blobs_stay_single_requests() -> None:
    with FakeRegistry() as reg:
        small = os.urandom(2 * CH)
        fetcher, ref, desc = _setup(reg, small)
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == small
        assert [r.headers.get("range") for r in reg.requests] == [None]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(path_contains="/blobs/", ignore_range=True, range_start=3 * CH),
        Fault(path_contains="/blobs/", wrong_content_range=True, range_start=3 * CH),
        Fault(path_contains="/blobs/", ignore_range=True, range_start=0),
        Fault(path_contains="/blobs/", wrong_content_range=True, range_start=0),
    ],
    ids=["chunk-200", "chunk-wrong-content-range", "head-200", "head-wrong-content-range"],
)
def test_a_refused_range_falls_back_to_one_stream_from_the_verified_offset(fault: Fault) -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        reg.add_fault(fault)
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB  # in order, exactly once: any repeat would show here
        ranges = reg.ranges_served(desc.digest)
        if fault.range_start:
            # One open stream to the end (logged in any order with chunks still in flight when
            # the refusal came), from the verified offset: the head is not fetched again.
            streams = [start for start, end in ranges if end is None]
            assert len(streams) == 1, ranges
            assert streams[0] >= CH, ranges
        elif fault.ignore_range:
            assert ranges == [(0, CH - 1)]  # the 200 carried the whole blob: nothing more
        else:
            assert ranges == [(0, CH - 1), (0, None)]


def test_a_206_without_accept_ranges_is_used_as_it_is() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        reg.add_fault(Fault(path_contains="/blobs/", no_accept_ranges=True, times=-1))
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert covered_once(reg.ranges_served(desc.digest), len(BLOB))


def test_without_accept_ranges_an_adaptive_fetch_never_splits() -> None:
    adaptive = FetchConfig(
        range_threshold=2 * CH, chunk_size=CH, window=WINDOW, probe_bytes=1, fast_rate=1e18
    )
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, fetch=adaptive)
        reg.add_fault(Fault(path_contains="/blobs/", no_accept_ranges=True, times=-1))
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert reg.ranges_served(desc.digest) == [(0, None)]


def test_a_chunk_cut_mid_body_is_refetched_from_where_it_stopped() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        reg.add_fault(Fault(path_contains="/blobs/", cut_after=1000, range_start=5 * CH))
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        ranges = reg.ranges_served(desc.digest)
        assert (5 * CH + 1000, 6 * CH - 1) in ranges
        assert len(ranges) == 18


def test_a_stalled_chunk_connection_is_replaced() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, stall_timeout=0.5)
        reg.add_fault(Fault(path_contains="/blobs/", stall_after=1000, range_start=2 * CH))
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert (2 * CH + 1000, 3 * CH - 1) in reg.ranges_served(desc.digest)


def test_read_ahead_stays_within_the_window_while_the_first_chunk_stalls() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, stall_timeout=1.0)
        reg.add_fault(Fault(path_contains="/blobs/", stall_after=1000, range_start=0))
        seen: list[int] = []
        fetcher.observe_window = seen.append
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert seen
        assert max(seen) <= WINDOW
        # While the head stalled, workers could claim only the window's chunks: the head's
        # retry (from byte 1000) comes after at most WINDOW / CH chunk requests.
        ranges = reg.ranges_served(desc.digest)
        retry = ranges.index((1000, CH - 1))
        assert 1 <= retry <= 1 + WINDOW // CH


def test_an_expired_signed_redirect_is_resolved_again_without_credentials() -> None:
    with FakeRegistry(hostname="localhost") as cdn, FakeRegistry(auth="token") as reg:
        fetcher, ref, desc = _setup(reg)
        cdn.blobs[desc.digest] = BLOB
        reg.add_fault(Fault(path_contains="/blobs/", redirect_to=cdn.url, times=-1))
        cdn.add_fault(Fault(path_contains="/blobs/", status=403, code="DENIED", range_start=4 * CH))
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert all(r.authorization is None for r in cdn.requests)
        on_registry = reg.ranges_served(desc.digest)
        # The head, then the chunk whose signed URL expired; every other chunk went straight
        # to the storage URL the head was redirected to.
        assert on_registry[0] == (0, CH - 1)
        assert (4 * CH, 5 * CH - 1) in on_registry
        assert len(on_registry) <= 1 + WINDOW // CH
        assert len(reg.token_requests) == 1


def test_the_host_budget_is_never_exceeded_by_concurrent_fetches() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, max_connections=2)
        smalls = [os.urandom(5000 + i) for i in range(6)]
        descs = [desc] + [
            Descriptor(OCI_LAYER_GZIP, Digest(reg.add_blob(b)), len(b)) for b in smalls
        ]
        want = [BLOB, *smalls]
        sinks = [BytesSink() for _ in descs]
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                fetcher.fetch(ref, descs[i], sinks[i])
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(descs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert [s.getvalue() for s in sinks] == want
        assert 1 <= reg.peak_blob_gets <= 2


def test_a_blob_first_request_goes_before_waiting_extra_ranges() -> None:
    budget = HostBudget()
    budget.acquire("h", 1, extra=False)
    order: list[str] = []

    def take(name: str, extra: bool) -> None:
        budget.acquire("h", 1, extra=extra)
        order.append(name)
        budget.release("h")

    extra = threading.Thread(target=take, args=("extra", True))
    extra.start()
    with budget._cv:
        assert budget._cv.wait_for(lambda: budget.waiting("h") == 1, 10)
    first = threading.Thread(target=take, args=("first", False))
    first.start()
    with budget._cv:
        assert budget._cv.wait_for(lambda: budget.waiting("h") == 2, 10)
    budget.release("h")
    extra.join()
    first.join()
    assert order == ["first", "extra"]


def test_token_is_fetched_once_per_scope_for_concurrent_blob_requests() -> None:
    with FakeRegistry(auth="token") as reg:
        fetcher, ref, desc = _setup(reg)
        smalls = [os.urandom(3000 + i) for i in range(5)]
        descs = [desc] + [
            Descriptor(OCI_LAYER_GZIP, Digest(reg.add_blob(b)), len(b)) for b in smalls
        ]
        sinks = [BytesSink() for _ in descs]
        threads = [
            threading.Thread(target=fetcher.fetch, args=(ref, d, s))
            for d, s in zip(descs, sinks, strict=True)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert [s.getvalue() for s in sinks] == [BLOB, *smalls]
        assert len(reg.token_requests) == 1


@pytest.mark.parametrize(
    ("text", "value"),
    [("100", 100), ("500k", 500 << 10), ("20M", 20 << 20), ("1g", 1 << 30), ("1.5K", 1536)],
)
def test_limit_rate_reads_curl_suffixes(text: str, value: int) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["", "0", "-5", "10x", "1.5.2", "k", "10 M", "0.1"])
def test_limit_rate_refuses_bad_values_with_a_typed_error(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid rate") as info:
        parse_rate(text)
    assert info.value.hint


def test_rate_limiter_makes_readers_wait_for_bytes_over_the_rate() -> None:
    import time

    rate = 256 << 10
    bucket = RateLimiter(rate)
    slept: list[float] = []
    began = time.monotonic()
    for _ in range(16):
        bucket.take(64 << 10, slept.append)
    elapsed = time.monotonic() - began
    # 1 MiB at 256 KiB/s, less the burst and the time that really passed, must be waited for.
    assert sum(slept) >= (1 << 20) / rate - bucket.burst / rate - elapsed - 1e-6


def test_concurrent_stalled_fetches_each_hold_at_most_their_window_past_the_prefix() -> None:
    # Chunks go straight to the sink at their offsets (no piece waits in memory); what a
    # window may hold past its sink's contiguous prefix is bounded per blob, whatever stalls.
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, stall_timeout=1.0)
        other = os.urandom(len(BLOB))
        descs = [desc, Descriptor(OCI_LAYER_GZIP, Digest(reg.add_blob(other)), len(other))]
        for d in descs:  # both heads stall: every other chunk lands ahead of the prefix
            reg.add_fault(Fault(path_contains=d.digest, stall_after=1000, range_start=0))
        held: list[int] = []
        fetcher.observe_window = held.append
        sinks = [BytesSink(), BytesSink()]
        threads = [
            threading.Thread(target=fetcher.fetch, args=(ref, d, s))
            for d, s in zip(descs, sinks, strict=True)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert [s.getvalue() for s in sinks] == [BLOB, other]
        assert held
        assert max(held) <= WINDOW


def test_an_adaptive_fetch_splits_when_the_link_is_the_limit() -> None:
    # The head drips (the server is slow) while the in-memory sink takes bytes at once: the
    # stream waits on the network, so the rest comes as ranges; on a fast link it would not.
    adaptive = FetchConfig(
        range_threshold=2 * CH, chunk_size=CH, window=WINDOW, probe_bytes=CH // 2
    )
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, fetch=adaptive)
        reg.add_fault(Fault(path_contains="/blobs/", drip=0.002, drip_chunk=4096))
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        ranges = reg.ranges_served(desc.digest)
        assert ranges[0] == (0, None)
        assert len(ranges) > 1
        assert all(b is not None for _, b in ranges[1:])


def test_after_a_crash_the_verified_prefix_is_kept_and_only_the_rest_is_fetched() -> None:
    held = 3 * CH + 100  # what the sink verified before the process died
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        sink = BytesSink()
        sink.write(BLOB[:held])
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        ranges = reg.ranges_served(desc.digest)
        assert min(a for a, _ in ranges) == held
        assert covered_once(
            [(a - held, None if b is None else b - held) for a, b in ranges], len(BLOB) - held
        )


def test_limit_rate_caps_every_connection_of_a_ranged_fetch_together() -> None:
    import time

    rate = 1 << 20
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, limit_rate=rate)
        slept: list[float] = []
        fetcher.transport.sleep = slept.append  # the bucket's waits, recorded instead of slept
        began = time.monotonic()
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        elapsed = time.monotonic() - began
        assert sink.getvalue() == BLOB
        assert len(reg.ranges_served(desc.digest)) > 1  # several connections shared the cap
        bucket = fetcher.transport.rate
        assert bucket is not None
        assert sum(slept) >= (len(BLOB) - bucket.burst) / rate - elapsed - 1e-6
